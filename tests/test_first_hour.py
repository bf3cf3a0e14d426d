"""What a new user meets in the first hour: the surprises of issue 16, each pinned by a test."""
from __future__ import annotations

import json

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
    expected = f"cyseg: error: --out {tmp_path / 'taken'} is a file; give a folder for the demo's outputs"
    assert result.stderr.strip() == expected


def test_a_window_partly_outside_the_slide_is_clipped_with_a_warning(tiny_model, ihc_image, tmp_path):
    from conftest import write_rgb

    slide = tmp_path / "slide.png"
    write_rgb(slide, ihc_image)  # 512 x 512
    small = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "96", "--device", "cpu"]
    clipped = invoke(["segment", tiny_model, slide, "--window", "300,200,400,500", "--out", tmp_path / "a.geojson",
                      "--cache", tmp_path / "c1", *small])
    assert clipped.exit_code == 0, clipped.output
    warning = [line for line in clipped.stderr.splitlines() if "clipped" in line]
    assert warning == ["cyseg: --window 300,200,400,500 reaches beyond the 512x512 slide: clipped to 300,200,212,312"]
    inside = invoke(["segment", tiny_model, slide, "--window", "300,200,212,312", "--out", tmp_path / "b.geojson",
                     "--cache", tmp_path / "c2", *small])
    assert inside.exit_code == 0 and "clipped" not in inside.stderr

    def geometries(name: str) -> list:
        return [f["geometry"] for f in json.loads((tmp_path / name).read_text())["features"]]

    assert geometries("a.geojson") == geometries("b.geojson") != []


def test_both_commands_print_their_version():
    import subprocess
    import sys
    from importlib.metadata import version
    from pathlib import Path

    for prog in ("cyseg", "cydata"):
        result = subprocess.run([str(Path(sys.executable).parent / prog), "--version"], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout == f"{prog} {version('cyseg')}\n", result
