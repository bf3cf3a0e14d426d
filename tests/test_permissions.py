"""Outputs follow the umask like every other tool's: folders written under a temporary name and
renamed into place must not keep the 0700 mode of `mkdtemp`, or a colleague on a shared server
cannot read them."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_with_umask(umask: int, *args: object) -> subprocess.CompletedProcess:
    command = " ".join(shlex.quote(str(a)) for a in args)
    return subprocess.run(["bash", "-c", f"umask {umask:03o} && exec {command}"], capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def modes(root: Path) -> dict[str, set[int]]:
    """The permission bits found under `root` (itself included), for folders and for files."""
    found: dict[str, set[int]] = {"dirs": {root.stat().st_mode & 0o777}, "files": set()}
    for path in root.rglob("*"):
        found["dirs" if path.is_dir() else "files"].add(path.stat().st_mode & 0o777)
    return found


def assert_follows(root: Path, umask: int) -> None:
    assert modes(root) == {"dirs": {0o777 & ~umask}, "files": {0o666 & ~umask}}, root


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_segment_output_folder_follows_the_umask(tiny_model, ihc_dataset, tmp_path, umask):
    out = tmp_path / "seg"
    result = run_with_umask(umask, "cyseg", "-q", "segment", tiny_model, ihc_dataset.val, "--out", out)
    assert result.returncode == 0, result.stderr
    assert_follows(out, umask)


def test_evaluate_split_and_demo_outputs_follow_the_umask(tiny_model, ihc_dataset, tmp_path):
    umask = 0o022
    report, demo = tmp_path / "report", tmp_path / "demo"
    train, test = tmp_path / "train", tmp_path / "test"
    for args in (("cyseg", "-q", "evaluate", tiny_model, ihc_dataset.val, "--out", report, "--overlays"),
                 ("cydata", "-q", "split", ihc_dataset.train, "--train", "0.5", "--out-train", train,
                  "--out-test", test),
                 ("cyseg", "-q", "demo", "--out", demo)):
        result = run_with_umask(umask, *args)
        assert result.returncode == 0, result.stderr
    for root in (report, train, test, demo):
        assert_follows(root, umask)
