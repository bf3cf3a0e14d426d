"""What a new user meets in the first hour: the surprises of issue 16, each pinned by a test."""
from __future__ import annotations

from conftest import invoke


def test_rerunning_the_demo_into_the_same_folder_says_it_replaces_it(tmp_path):
    first = invoke(["demo", "--out", tmp_path / "demo"])
    assert first.exit_code == 0, first.output
    assert "already holds a demo run" not in first.stderr
    again = invoke(["demo", "--out", tmp_path / "demo"])
    assert again.exit_code == 0, again.output
    lines = [line for line in again.stderr.splitlines() if "already holds a demo run" in line]
    assert len(lines) == 1 and str(tmp_path / "demo") in lines[0]


def test_demo_refuses_a_file_as_its_output_folder(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    result = invoke(["demo", "--out", tmp_path / "taken"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"cyseg: error: --out {tmp_path / 'taken'} is a file; give a folder for the demo's outputs"
