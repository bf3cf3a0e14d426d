"""descriptor.yml (the App Engine task) is valid against docs/appengine-task.schema.json, our
statement of the App Engine's task schema; it has what the App Engine's uploader reads beyond that
schema; and its inputs and outputs are exactly those the entry point (cyseg.appengine) reads and
writes, with the same constraints."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

from cyseg import appengine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR = yaml.safe_load((REPO / "descriptor.yml").read_text(encoding="utf-8"))
SCHEMA = json.loads((REPO / "docs" / "appengine-task.schema.json").read_text())
SOURCE_COMMIT = "bdb2a01ebf6f382370b491dd4e66fdecc923dcb0"


def validate(descriptor: dict) -> None:
    jsonschema.validate(descriptor, SCHEMA, cls=jsonschema.Draft202012Validator,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def changed(path: str, value: object) -> dict:
    """The descriptor with the key at dotted `path` set to `value` (None: removed)."""
    broken = copy.deepcopy(DESCRIPTOR)
    *parents, last = path.split(".")
    node = broken
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return broken


def test_schema_is_a_schema_and_names_its_source():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert "app-engine/src/main/resources/schemas/tasks/task.v0.json" in SCHEMA["description"]
    assert SOURCE_COMMIT in SCHEMA["description"]


def test_descriptor_is_valid_against_the_schema():
    validate(DESCRIPTOR)
    assert DESCRIPTOR["$schema"].endswith("/app-engine/src/main/resources/schemas/tasks/task.v0.json")


@pytest.mark.parametrize("path, value", [
    ("name_short", None),  # read by the uploader without a null check
    ("configuration.input_folder", None),
    ("configuration.output_folder", None),
    ("configuration.input_folder", "inputs"),  # not absolute
    ("namespace", "org.cyseg.cell-segmentation"),  # '-' cuts the registry name
    ("namespace", "cyseg"),  # not reverse-DNS
    ("name", "cy"),  # 3 to 30 characters
    ("name", "cyseg: cell segmentation"),
    ("version", "0.1"),  # semver
    ("authors", []),
    ("description", "x" * 2049),
    ("configuration.resources.ram", "8GB"),  # not a Kubernetes quantity
    ("configuration.resources.cpus", 0),
    ("inputs.threshold.type", {"id": "number", "gte": 0}),  # a misspelt constraint
    ("inputs.threshold.type", {"id": "number", "gt": 0, "geq": 0}),  # exclusive bounds together
    ("inputs.threshold.default", "0.5"),  # a default of another type
    ("inputs.image.default", "slide.svs"),  # images take no default
    ("inputs.image.type", {"id": "image", "formats": ["svs"]}),
    ("inputs.image.type", {"id": "image", "max_file_size": "20G"}),  # the size parser needs a unit
    ("inputs.image.description", None),
    ("outputs.cells.type", {"id": "array"}),  # no subtype
    ("outputs.cells.type", "polygon"),
    ("outputs.cells.default", []),
])
def test_schema_catches_the_mistakes_the_app_engine_would_reject(path, value):
    with pytest.raises(jsonschema.ValidationError):
        validate(changed(path, value))


def test_authors_need_all_four_fields_and_is_contact():
    for field in ("first_name", "last_name", "organization", "email", "is_contact"):
        author = {k: v for k, v in DESCRIPTOR["authors"][0].items() if k != field}
        with pytest.raises(jsonschema.ValidationError):
            validate({**DESCRIPTOR, "authors": [author]})
    with pytest.raises(jsonschema.ValidationError):
        validate({**DESCRIPTOR, "authors": [{**DESCRIPTOR["authors"][0], "email": "not an address"}]})


def test_parameter_names_are_file_names():
    with pytest.raises(jsonschema.ValidationError):
        validate({**DESCRIPTOR, "outputs": {**DESCRIPTOR["outputs"], "cell-probs": DESCRIPTOR["outputs"]["cells"]}})


def test_what_the_uploader_reads_beyond_the_schema():
    """TaskService.uploadTask reads name_short, input_folder and output_folder with no null check;
    the folders are where the entry point reads and writes by default."""
    assert isinstance(DESCRIPTOR["name_short"], str) and DESCRIPTOR["name_short"]
    configuration = DESCRIPTOR["configuration"]
    assert Path(configuration["input_folder"]) == appengine.INPUT_FOLDER
    assert Path(configuration["output_folder"]) == appengine.OUTPUT_FOLDER
    options = {p.name: p.default for p in appengine.task_command.params}
    assert (options["inputs_folder"], options["outputs_folder"]) == (appengine.INPUT_FOLDER, appengine.OUTPUT_FOLDER)


def test_bundle_names_follow_the_namespace_and_the_package_version():
    namespace, version = DESCRIPTOR["namespace"], DESCRIPTOR["version"]
    assert "-" not in namespace
    assert version == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert DESCRIPTOR["configuration"]["image"]["file"] == f"/{namespace}-{version}.tar"


def test_resources_need_no_network_and_no_gpu_by_default():
    resources = DESCRIPTOR["configuration"]["resources"]
    assert resources["internet"] is False and resources["gpus"] == 0 and resources["cpus"] >= 1
    assert resources["ram"].endswith("Gi") and int(resources["ram"][:-2]) >= 4


def _bounds(spec: dict) -> appengine.Bounds:
    return appengine.Bounds(gt=spec.get("gt"), geq=spec.get("geq"), leq=spec.get("leq"))


def test_inputs_are_those_the_entry_point_reads():
    inputs = DESCRIPTOR["inputs"]
    assert set(inputs) == {appengine.IMAGE, *appengine.NUMBERS, *appengine.BOOLEANS}
    assert not inputs[appengine.IMAGE].get("optional", False)
    assert all(inputs[name].get("optional") is True for name in inputs if name != appengine.IMAGE)
    for name, bounds in appengine.NUMBERS.items():
        spec = inputs[name]["type"]
        assert spec["id"] == "number" and _bounds(spec) == bounds, name
        # an input left out means what leaving out the option of `cyseg segment` means: no default here
        assert "default" not in inputs[name], name
    for name in appengine.BOOLEANS:
        assert inputs[name]["type"] == "boolean" and inputs[name]["default"] is False


def test_image_input_takes_whole_slides():
    """The App Engine checks the format 'tiff' as a flat (untiled) TIFF and measures images with
    Java's ImageIO: listing formats or maximum sizes would refuse every whole slide."""
    spec = DESCRIPTOR["inputs"][appengine.IMAGE]["type"]
    assert spec["id"] == "image"
    assert not {"formats", "max_width", "max_height"} & set(spec)


def test_outputs_are_those_the_entry_point_writes():
    outputs = DESCRIPTOR["outputs"]
    assert set(outputs) == {appengine.CELLS, appengine.PROBABILITIES}
    assert outputs[appengine.CELLS]["type"] == {"id": "array", "subtype": "geometry"}
    assert outputs[appengine.PROBABILITIES]["type"] == {"id": "array", "subtype": {"id": "number", "geq": 0, "leq": 1}}


def test_schema_accepts_every_type_in_its_short_and_long_forms():
    """Our schema must not refuse what the App Engine takes: every type, with its constraints."""
    inputs = {
        "n": {"description": "d", "type": "integer", "default": 3, "optional": True},
        "n2": {"description": "d", "type": {"id": "integer", "gt": 0, "lt": 10}},
        "x": {"description": "d", "type": "number", "default": 0.5},
        "x2": {"description": "d", "type": {"id": "number", "geq": 0, "leq": 1, "nan_allowed": True,
                                            "infinity_allowed": False}},
        "s": {"description": "d", "type": {"id": "string", "min_length": 1, "max_length": 9}, "default": "a"},
        "b": {"description": "d", "type": {"id": "boolean"}, "default": True},
        "e": {"description": "d", "type": {"id": "enumeration", "values": ["a", "b"]}, "default": "a"},
        "t": {"description": "d", "type": {"id": "datetime", "after": "2020-01-01T00:00:00Z"}},
        "g": {"description": "d", "type": "geometry", "display_name": "ROI"},
        "f": {"description": "d", "type": {"id": "file", "max_file_size": "100 MiB", "formats": ["text"]}},
        "i": {"description": "d", "type": {"id": "image", "max_width": 4000, "max_height": 4000,
                                           "formats": ["png", "jpeg", "tiff", "dicom", "wsidicom"]}},
        "a": {"description": "d", "type": {"id": "array", "subtype": {"id": "array", "subtype": "integer"},
                                           "min_size": 1, "max_size": 9},
              "dependencies": {"matching": ["inputs/n"]}},
    }
    outputs = {"o": {"description": "d", "type": "geometry", "dependencies": {"derived_from": "inputs/i"}},
               "p": {"description": "d", "type": {"id": "array", "subtype": {"id": "number", "geq": 0}},
                     "dependencies": {"matching": ["outputs/o"]}}}
    validate({**DESCRIPTOR, "inputs": inputs, "outputs": outputs})
