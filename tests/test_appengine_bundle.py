"""tools/build_task_bundle.py writes the zip the App Engine's uploader takes: descriptor.yml and the
image tar at its root, the tar named so that the registry name derived from it is the one the
image was tagged with. Docker cannot run here: a stand-in tar is passed with --image-tar, and the
docker step is checked for the commands it runs."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR_TEXT = (REPO / "descriptor.yml").read_text(encoding="utf-8")
DESCRIPTOR = yaml.safe_load(DESCRIPTOR_TEXT)
TAR_NAME = f"{DESCRIPTOR['namespace']}-{DESCRIPTOR['version']}.tar"


def load_tool():
    spec = importlib.util.spec_from_file_location("build_task_bundle", REPO / "tools" / "build_task_bundle.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bundle = load_tool()


def uploader_image_name(entry: str) -> str:
    """What the App Engine makes of the tar entry's name (TaskService.getImage): the text before
    the first '-' with '.' -> '/' is the repository, the rest (without .tar) the tag."""
    full = entry[:-len(".tar")]
    return f"{full[:full.index('-')].replace('.', '/')}:{full[full.index('-') + 1:]}"


@pytest.fixture
def fake_tar(tmp_path) -> Path:
    tar = tmp_path / "saved.tar"
    tar.write_bytes(b"stand-in for `docker save` output\n" * 100)
    return tar


def build_main(*args: object) -> None:
    bundle.main([str(a) for a in args])


def test_zip_holds_the_descriptor_and_the_tar_at_its_root(tmp_path, fake_tar):
    out = tmp_path / "task.zip"
    build_main("--image-tar", fake_tar, "--out", out)
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == sorted(["descriptor.yml", TAR_NAME])
        assert z.read("descriptor.yml").decode() == DESCRIPTOR_TEXT
        assert z.read(TAR_NAME) == fake_tar.read_bytes()
        # what the uploader matches: the descriptor by its whole (lower-cased) entry name, one .tar entry
        assert [n for n in z.namelist() if re.fullmatch(r"descriptor\.(yml|yaml)", n.lower())] == ["descriptor.yml"]
        assert [n for n in z.namelist() if n.endswith(".tar")] == [TAR_NAME]
    names = bundle.bundle_names(DESCRIPTOR)
    assert names.tar == TAR_NAME and uploader_image_name(TAR_NAME) == names.image
    assert names.image == f"{DESCRIPTOR['namespace'].replace('.', '/')}:{DESCRIPTOR['version']}"
    assert f"/{TAR_NAME}" == DESCRIPTOR["configuration"]["image"]["file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved.tar", "task.zip"]  # no temporary left


def test_default_name_is_namespace_and_version(tmp_path, fake_tar, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_main("--image-tar", fake_tar)
    assert (tmp_path / f"{DESCRIPTOR['namespace']}-{DESCRIPTOR['version']}.zip").is_file()


def test_gpus_are_set_in_the_bundled_descriptor_only(tmp_path, fake_tar):
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "cuda.zip"
    build_main("--image-tar", fake_tar, "--gpus", 1, "--out", out)
    with zipfile.ZipFile(out) as z:
        text = z.read("descriptor.yml").decode()
    bundled = yaml.safe_load(text)
    assert bundled["configuration"]["resources"]["gpus"] == 1
    assert {**bundled, "configuration": DESCRIPTOR["configuration"]} == DESCRIPTOR  # nothing else changed
    assert text.splitlines()[0] == DESCRIPTOR_TEXT.splitlines()[0]  # comments kept
    schema = json.loads((REPO / "docs" / "appengine-task.schema.json").read_text())
    jsonschema.validate(bundled, schema, cls=jsonschema.Draft202012Validator)
    assert (REPO / "descriptor.yml").read_text(encoding="utf-8") == DESCRIPTOR_TEXT


def test_docker_step_tags_with_the_registry_name_and_saves(tmp_path, monkeypatch):
    commands = []

    def fake_run(command, check):
        commands.append(command)
        if command[1] == "save":
            Path(command[command.index("--output") + 1]).write_bytes(b"image layers")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bundle.subprocess, "run", fake_run)
    out = tmp_path / "task.zip"
    build_main("--image", "cyseg-appengine:latest", "--out", out)
    reference = bundle.bundle_names(DESCRIPTOR).image
    assert commands[0] == ["docker", "tag", "cyseg-appengine:latest", reference]
    assert commands[1][:3] == ["docker", "save", "--output"] and commands[1][3].endswith(f"/{TAR_NAME}")
    assert commands[1][4] == reference
    with zipfile.ZipFile(out) as z:
        assert z.read(TAR_NAME) == b"image layers"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task.zip"]  # the saved tar went with its temporary folder


def test_without_docker_one_line_and_no_zip(tmp_path, monkeypatch, capsys):
    def no_docker(command, check):
        raise FileNotFoundError(2, "No such file or directory", "docker")

    monkeypatch.setattr(bundle.subprocess, "run", no_docker)
    with pytest.raises(SystemExit) as exit_info:
        build_main("--image", "cyseg-appengine", "--out", tmp_path / "task.zip")
    message = str(exit_info.value.code)
    assert message.startswith("build_task_bundle: error: docker tag") and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_a_tar_the_uploader_cannot_read_is_refused(tmp_path):
    big = tmp_path / "big.tar"
    with big.open("wb") as f:  # sparse: no disk space used
        f.truncate(bundle.MAX_TAR_BYTES + 1)
    with pytest.raises(SystemExit, match="at most 2 GiB"):
        build_main("--image-tar", big, "--out", tmp_path / "task.zip")
    empty = tmp_path / "empty.tar"
    empty.touch()
    with pytest.raises(SystemExit, match="missing or empty"):
        build_main("--image-tar", empty, "--out", tmp_path / "task.zip")
    assert not (tmp_path / "task.zip").exists()


def test_a_namespace_with_a_dash_is_refused(tmp_path, fake_tar):
    descriptor = tmp_path / "descriptor.yml"
    descriptor.write_text(DESCRIPTOR_TEXT.replace(f"namespace: {DESCRIPTOR['namespace']}", "namespace: org.cy-seg.x"))
    with pytest.raises(SystemExit, match="holds '-'"):
        build_main("--image-tar", fake_tar, "--descriptor", descriptor, "--out", tmp_path / "task.zip")
    assert not (tmp_path / "task.zip").exists()
