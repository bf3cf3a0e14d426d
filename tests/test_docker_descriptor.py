"""descriptor.json, the Dockerfile and `cyseg job` agree (Docker cannot build here): the
descriptor is valid against the schema of what Cytomine's software router reads, every
placeholder of its command line belongs to an input, the command the router builds from it is
accepted by `cyseg job` with values of the right types, and the image's entry point plus the
command line's leading words reach `cyseg job`. Both Dockerfiles (the job's and the App Engine
task's) are hadolint clean, install alike, work on a CUDA base without Python or with uid 1000
taken (their shell steps run with stubbed commands), and state the CPU image's size target."""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from cyseg.cli import cli
from segmenter.base import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR = json.loads((REPO / "descriptor.json").read_text())
SCHEMA = json.loads((REPO / "docs" / "cytomine-descriptor.schema.json").read_text())
CONNECTION = ["cytomine_host", "cytomine_public_key", "cytomine_private_key", "cytomine_id_project",
              "cytomine_id_software"]


def expanded(value: str, ident: str) -> str:
    """The router's substitution of @ID / @id in an input's fields (Interpreter.parseParameter)."""
    return value.replace("@ID", ident.upper()).replace("@id", ident)


def value_key(item: dict) -> str:
    return expanded(item.get("value-key") or "[@ID]", item["id"])


def flag(item: dict) -> str:
    return expanded(item.get("command-line-flag") or "", item["id"])


def router_command(descriptor: dict, values: dict) -> list[str]:
    """The argument words Cytomine builds for a job (JobRuntimeService.getCommandJobWithArgs):
    each input with a non-empty value (given, else the default) replaces its value-key by
    '<flag> <value>'; inputs without a value leave their placeholder; split on spaces."""
    command = descriptor["command-line"]
    for item in descriptor["inputs"]:
        value = values.get(item["id"], item.get("default-value"))
        if value is None or str(value) == "":
            continue
        replacement = f"{flag(item)} {value}" if flag(item) else str(value)
        command = command.replace(value_key(item), replacement)
    return command.split(" ")


def dockerfile_entrypoint() -> list[str]:
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1
    return json.loads(lines[0][len("ENTRYPOINT"):].strip())


def parse_job(argv: list[str]) -> dict:
    """Parse `cyseg <argv>` the way the console script would, without running the job."""
    assert argv[0] == "job"
    with cli.commands["job"].make_context("job", list(argv[1:])) as ctx:
        return ctx.params


def test_descriptor_is_valid_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(DESCRIPTOR, SCHEMA, cls=jsonschema.Draft202012Validator)
    # the schema catches the usual mistakes
    for broken in ({**DESCRIPTOR, "schema-version": "0.2"},
                   {**DESCRIPTOR, "container-image": {"image": "cyseg/x"}},
                   {**DESCRIPTOR, "inputs": [{**DESCRIPTOR["inputs"][0], "default_value": 1},
                                             *DESCRIPTOR["inputs"][1:]]},
                   {**DESCRIPTOR, "inputs": [i for i in DESCRIPTOR["inputs"] if i["id"] != "cytomine_id_software"]},
                   {k: v for k, v in DESCRIPTOR.items() if k != "command-line"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_inputs_and_placeholders_match():
    inputs = DESCRIPTOR["inputs"]
    ids = [i["id"] for i in inputs]
    assert ids[:5] == CONNECTION and len(set(ids)) == len(ids)
    for item in inputs[:5]:
        assert item["set-by-server"] is True and item["optional"] is False
    required = {"cytomine_id_images": ("ListDomain", True), "cytomine_id_roi_term": ("Domain", True),
                "cytomine_id_predicted_term": ("Domain", False), "threshold": ("Number", True),
                "tile_size": ("Number", True), "tile_overlap": ("Number", True), "batch_size": ("Number", True),
                "min_area": ("Number", True), "model_path": ("String", True)}
    by_id = {i["id"]: i for i in inputs}
    for ident, (kind, optional) in required.items():
        assert by_id[ident]["type"] == kind and by_id[ident].get("optional", False) is optional, ident
    assert "default-value" not in by_id["threshold"], "empty: the model's own (calibrated) threshold"
    assert by_id["cytomine_id_images"]["uri"] == "/api/project/$currentProject$/imageinstance.json"
    words = DESCRIPTOR["command-line"].split(" ")
    keys = [value_key(i) for i in inputs]
    placeholders = [w for w in words if re.fullmatch(r"\[?[A-Z][A-Z0-9_]*\]?", w)]
    assert sorted(placeholders) == sorted(keys)  # every placeholder has an input, every input a placeholder
    for a in keys:  # the router substitutes with replaceAll: no key may occur inside another word
        assert sum(w.count(a) for w in words) == 1, a
    assert all(flag(i) == f"--{i['id']}" for i in inputs)


def test_entrypoint_and_command_line_prefix_agree():
    entrypoint = dockerfile_entrypoint()
    assert entrypoint == ["cyseg", "job"]
    prefix = DESCRIPTOR["command-line"].split(" ")[:2]
    assert prefix == entrypoint  # "singularity run IMAGE cyseg job ..." -> cyseg job cyseg job --flags
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cyseg"] == "cyseg.cli:main"
    assert "job" in cli.commands


def test_router_command_parses_with_the_right_types():
    values = {"cytomine_host": "https://cytomine.example.org", "cytomine_public_key": "pub-key",
              "cytomine_private_key": "priv-key", "cytomine_id_project": 77, "cytomine_id_software": 88,
              "cytomine_id_images": "12,34", "cytomine_id_roi_term": 5, "cytomine_id_predicted_term": 6}
    argv = router_command(DESCRIPTOR, values)
    # what the container runs: the entry point, then the router's words
    full = dockerfile_entrypoint() + argv
    assert full[0] == "cyseg"
    params = parse_job(full[1:])
    # no default: the placeholders stay, ignored
    assert params["words"] == ("cyseg", "job", "THRESHOLD", "MIN_AREA")
    assert params["cytomine_host"] == "https://cytomine.example.org"
    assert (params["cytomine_id_project"], params["cytomine_id_software"]) == (77, 88)
    assert (params["cytomine_id_roi_term"], params["cytomine_id_predicted_term"]) == (5, 6)
    assert params["cytomine_id_images"] == "12,34"
    defaults = {i["id"]: i.get("default-value") for i in DESCRIPTOR["inputs"]}
    assert params["threshold"] is None and params["min_area"] is None and params["tta"] is False
    for ident in ("tile_size", "tile_overlap", "batch_size", "window_size"):
        assert params[ident] == defaults[ident] and isinstance(params[ident], int), ident
    # a job started from Cytomine tiles as `cyseg segment` does by default
    assert (defaults["tile_size"], defaults["tile_overlap"], defaults["batch_size"]) == \
        (DEFAULT_TILE, DEFAULT_OVERLAP, DEFAULT_BATCH)
    assert params["model_path"] == defaults["model_path"]
    # every flag of the descriptor is an option of `cyseg job`
    options = {opt for p in cli.commands["job"].params if isinstance(p, click.Option) for opt in p.opts}
    assert {flag(i) for i in DESCRIPTOR["inputs"]} <= options
    help_text = cli.commands["job"].get_help(click.Context(cli.commands["job"], info_name="job"))
    for item in DESCRIPTOR["inputs"]:
        assert flag(item) in help_text


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("yes", True), ("1", True),
                                             ("false", False), ("FALSE", False), ("no", False), ("0", False)])
def test_boolean_input_takes_cytomine_spellings(value, expected):
    argv = router_command(DESCRIPTOR, {"cytomine_id_project": 1, "tta": value})
    assert parse_job(["job", *argv[2:]])["tta"] is expected


def test_boolean_input_refuses_other_words():
    from segmenter.errors import CysegError

    with pytest.raises(CysegError, match=r"--tta 'maybe' must be true or false"):
        parse_job(["job", "--cytomine_id_project", "1", "--tta", "maybe"])


def test_optional_inputs_left_empty_leave_placeholders_that_are_ignored():
    values = {"cytomine_host": "http://h", "cytomine_public_key": "a", "cytomine_private_key": "b",
              "cytomine_id_project": 1, "cytomine_id_software": 2, "cytomine_id_predicted_term": 3}
    argv = router_command(DESCRIPTOR, values)
    assert "CYTOMINE_ID_IMAGES" in argv and "CYTOMINE_ID_ROI_TERM" in argv
    params = parse_job(["job", *argv[2:]])
    assert params["cytomine_id_images"] is None and params["cytomine_id_roi_term"] is None
    from cyseg.job import ignored_positionals

    assert ignored_positionals(params["words"]) == ["CYTOMINE_ID_IMAGES", "CYTOMINE_ID_ROI_TERM", "THRESHOLD",
                                                    "MIN_AREA"]
    # an empty value that an older core would still substitute ("--flag " + "") parses as None too
    older = shlex.split("job --cytomine_id_project 1 --cytomine_id_roi_term '' --threshold 0.5")
    assert parse_job(older)["cytomine_id_roi_term"] is None


def test_dockerfile_is_slim_cpu_by_default_and_installs_the_package():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(r"^ARG TORCH_SPEC=torch==2\.13\.0$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    torch_at = text.index('pip install --constraint /app/constraints.txt "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"')
    package_at = text.index("pip install --constraint /app/constraints.txt /app/src")
    assert text.index("COPY constraints.txt /app/constraints.txt") < torch_at < package_at  # pinned before anything
    assert "COPY descriptor.json /app/descriptor.json" in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # every package of pyproject.toml is copied into the build context of `pip install`
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for top in {p.rstrip("*").split(".")[0] for p in packages}:
        assert re.search(rf"^COPY {top} /app/src/{top}$", text, re.M), top
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert ".venv" in ignored and "tests" in ignored and ".git" in ignored
    assert not any(line in ignored for line in ("cyseg", "segmenter", "descriptor.json", "pyproject.toml"))


# ------------------------------------------------------- both images: CUDA bases, user, size, lint --
DOCKERFILES = ["Dockerfile", "appengine.Dockerfile"]


def run_steps(name: str) -> list[str]:
    """The RUN instructions of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in (REPO / name).read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    return [line[len("RUN "):].strip() for line in text.splitlines() if line.startswith("RUN ")]


def run_in_stub_shell(tmp_path: Path, step: str, stubs: str) -> list[str]:
    """Run a RUN step's shell code with every outside command a stub that logs its arguments (PATH is
    an empty folder, globs are not expanded: nothing of this machine is touched); returns the log."""
    log = tmp_path / "log"
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    script = f'set -f\nlog() {{ echo "$*" >> {log}; }}\n{stubs}\n{step}\n'
    done = subprocess.run(["/bin/bash", "-c", script], env={"PATH": str(empty)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_dockerfile_is_hadolint_clean(name):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (lint extra)")
    done = subprocess.run([hadolint, str(REPO / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_a_base_without_python_gets_python_and_a_venv(tmp_path, name):
    """The nvidia/cuda bases have no Python: the step installs the distribution's python3 and venv,
    then the venv everything goes into; on a base with Python it only makes the venv."""
    [step] = [s for s in run_steps(name) if "python3 -m venv" in s]
    apt = 'apt-get() { log apt-get "$@"; python3() { log python3 "$@"; }; }\nrm() { log rm "$@"; }'
    assert run_in_stub_shell(tmp_path, step, apt) == [
        "apt-get update", "apt-get install -y --no-install-recommends python3 python3-venv",
        "rm -rf /var/lib/apt/lists/*", "python3 -m venv /opt/venv"]
    (tmp_path / "log").unlink()
    assert run_in_stub_shell(tmp_path, step, apt + '\npython3() { log python3 "$@"; }') == ["python3 -m venv /opt/venv"]
    text = (REPO / name).read_text()
    venv_path = text.index("ENV PATH=/opt/venv/bin:$PATH")
    assert text.index("python3 -m venv /opt/venv") < venv_path < text.index("python3 -m pip install")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_uid_1000_is_freed_for_the_user_where_the_base_has_taken_it(tmp_path, name):
    """Ubuntu 24.04 images (nvidia/cuda) give uid 1000 to 'ubuntu'; python:3.11-slim has no such user."""
    [step] = [s for s in run_steps(name) if "useradd" in s]
    tools = 'userdel() { log userdel "$@"; }\nuseradd() { log useradd "$@"; }'
    taken = 'id() { if [ "$1" = -nu ]; then echo ubuntu; fi; }'
    assert run_in_stub_shell(tmp_path, step, f"{tools}\n{taken}") == [
        "userdel --remove ubuntu", "useradd --create-home --uid 1000 --shell /usr/sbin/nologin cyseg"]
    (tmp_path / "log").unlink()
    assert run_in_stub_shell(tmp_path, step, f"{tools}\nid() {{ return 1; }}") == [
        "useradd --create-home --uid 1000 --shell /usr/sbin/nologin cyseg"]
    assert re.findall(r"^USER (\S+)$", (REPO / name).read_text(), re.M) == ["1000:1000"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_cuda_build_is_documented_with_matching_versions(name):
    header = (REPO / name).read_text().split("\nARG ")[0]
    base = re.search(r"BASE_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu24\.04", header)
    index = re.search(r"TORCH_INDEX=https://download\.pytorch\.org/whl/cu(\d+)", header)
    assert base and index and index.group(1) == base.group(1) + base.group(2)  # the wheels' CUDA = the base's


def test_app_engine_image_installs_like_the_job_image_and_runs_the_task():
    job, task = ((REPO / name).read_text() for name in DOCKERFILES)
    install = [line for line in job.splitlines() if re.match(r"(ARG|COPY (?!descriptor)|RUN|ENV|USER|WORKDIR)\b", line)]
    assert [line for line in task.splitlines() if line in install] == install  # same steps, same order
    assert "COPY descriptor" not in task
    entry = [line for line in task.splitlines() if line.startswith(("ENTRYPOINT", "CMD"))]
    assert entry == ['ENTRYPOINT ["python3", "-m", "cyseg.appengine"]']  # run with no arguments
    done = subprocess.run([sys.executable, "-m", "cyseg.appengine", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("cyseg-appengine ")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_size_target_is_stated_with_its_derivation(name):
    header = (REPO / name).read_text().split("\nARG ")[0]
    assert "Size target: the CPU image stays under 2 GB" in header
    rows = dict(re.findall(r"^#\s+(.+?)\s+(\d\.\d\d) GB$", header, re.M))
    parts = [float(v) for k, v in rows.items() if k != "total"]
    assert len(parts) == 4 and abs(sum(parts) - float(rows["total"])) < 0.005 and float(rows["total"]) < 2


def test_runtime_packages_fit_the_size_target():
    """What the target's derivation adds up, measured in this environment: the installed runtime
    packages (CPU torch) plus the base and cyseg's share stay under 2 GB, so the App Engine's
    2 GiB limit on the saved image holds too."""
    import importlib.metadata as metadata
    import importlib.util

    import torch

    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch is installed: the target is for the CPU image")
    spec = importlib.util.spec_from_file_location("freeze_constraints", REPO / "tools" / "freeze_constraints.py")
    freeze = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(freeze)
    wanted = set(freeze.runtime_closure()) | {"torch"}
    installed = 0
    for dist in metadata.distributions():
        if freeze._key(dist.metadata["Name"]) in wanted:
            installed += sum(f.locate().stat().st_size for f in dist.files or [] if f.locate().is_file())
    base_and_cyseg = (0.15 + 0.02) * 1e9
    assert installed + base_and_cyseg < 2e9 < 2**31
