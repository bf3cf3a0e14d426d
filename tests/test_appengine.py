"""The App Engine task's entry point (`python -m cyseg.appengine`, the App Engine image's command)
run in temporary input and output folders: on a pyramidal TIFF made here (so a fresh clone tests
it) and on the real slide CMU-1-Small-Region.svs of ../shared/data when present. The outputs are
what the App Engine accepts (arrays with array.yml, one valid GeoJSON geometry per item) and are
the polygons of `cyseg segment` on the same slide, y flipped into Cytomine's bottom-left frame.
Every bad input stops the run with one line, exit status 2, and no output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, invoke
from shapely.geometry import shape
from shapely.ops import unary_union

from cyseg import appengine, appengine_io
from cyseg.appengine_io import Bounds, image_file, read_boolean, read_number, write_arrays
from segmenter.cytomine.geometry import flip_y
from segmenter.errors import CysegError
from segmenter.wsi.pyramid import write_pyramid
from segmenter.wsi.readers import open_slide

GLASS = (236, 232, 238)
SLIDE_SHAPE = (1408, 1024)  # height, width: not square, so a flip of the wrong axis shows


def entry_point() -> list[str]:
    """The App Engine image's command (appengine.Dockerfile's ENTRYPOINT) with this interpreter."""
    lines = [line for line in (REPO / "appengine.Dockerfile").read_text().splitlines()
             if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1
    command = json.loads(lines[0][len("ENTRYPOINT"):])
    assert command[0] == "python3"
    return [sys.executable, *command[1:]]


def run_task(inputs: Path, outputs: Path) -> subprocess.CompletedProcess:
    """The image's command on these folders (the App Engine runs it with /inputs and /outputs)."""
    return subprocess.run([*entry_point(), "--inputs", str(inputs), "--outputs", str(outputs), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "CYSEG_MODEL": "default"})


def task_folders(root: Path, slide: Path, **values: str) -> tuple[Path, Path]:
    """/inputs as the App Engine fills it: the slide as `image` (no extension), one file per value."""
    inputs, outputs = root / "inputs", root / "outputs"
    inputs.mkdir(parents=True)
    if slide.is_dir():
        shutil.copytree(slide, inputs / "image")
    else:
        shutil.copyfile(slide, inputs / "image")
    for name, value in values.items():
        (inputs / name).write_text(value)
    return inputs, outputs


def read_array(folder: Path) -> list[str]:
    """An App Engine array: array.yml's size, then exactly the items 0 .. size-1."""
    import yaml

    size = yaml.safe_load((folder / "array.yml").read_text())["size"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["array.yml", *map(str, range(size))])
    return [(folder / str(i)).read_text() for i in range(size)]


def check_outputs(outputs: Path, width: int, height: int) -> tuple[list, list[float]]:
    """The task's outputs as the App Engine validates them; returns the geometries and probabilities."""
    assert sorted(p.name for p in outputs.iterdir()) == [appengine.CELLS, appengine.PROBABILITIES]  # nothing else
    cells, probabilities = read_array(outputs / appengine.CELLS), read_array(outputs / appengine.PROBABILITIES)
    assert len(cells) == len(probabilities) > 0
    geometries = []
    for item in cells:
        geojson = json.loads(item)
        assert set(geojson) == {"type", "coordinates"} and geojson["type"] in ("Polygon", "MultiPolygon")
        geometry = shape(geojson)
        assert geometry.is_valid and not geometry.is_empty
        minx, miny, maxx, maxy = geometry.bounds
        assert 0 <= minx <= maxx <= width and 0 <= miny <= maxy <= height
        geometries.append(geometry)
    values = [float(p) for p in probabilities]  # plain numbers, as Java's Double.parseDouble reads them
    assert all(p == p.strip() for p in probabilities) and all(0 <= v <= 1 for v in values)
    return geometries, values


def compare_with_segment(geometries: list, probabilities: list[float], geojson: Path, height: int) -> None:
    """The task's cells are `cyseg segment`'s polygons (top-left frame) flipped: y -> height - y."""
    features = json.loads(geojson.read_text())["features"]
    expected = [shape(f["geometry"]) for f in features]
    assert abs(len(expected) - len(geometries)) <= max(1, len(expected) // 100)
    back = unary_union([flip_y(g, height) for g in geometries])
    reference = unary_union(expected)
    assert back.intersection(reference).area / back.union(reference).area > 0.99
    if len(expected) == len(geometries):
        assert np.allclose(probabilities, [f["properties"]["mean_probability"] for f in features], atol=0.02)


@pytest.fixture(scope="module")
def pyramid_slide(tmp_path_factory, ihc_image) -> Path:
    """A pyramidal TIFF at 0.5 µm/px: two copies of the IHC image on glass, nearer the top."""
    image = np.empty((*SLIDE_SHAPE, 3), np.uint8)
    image[:] = GLASS
    image[64:576, 32:544] = ihc_image
    image[448:960, 480:992] = ihc_image[::-1]
    return write_pyramid(tmp_path_factory.mktemp("slide") / "ihc.tif", image, compression="zlib", mpp=0.5)


# ----------------------------------------------------------------------------- whole runs -------

@pytest.mark.slow
def test_task_on_a_pyramidal_tiff_gives_the_polygons_of_cyseg_segment(tmp_path, pyramid_slide):
    inputs, outputs = task_folders(tmp_path, pyramid_slide)
    done = run_task(inputs, outputs)
    assert done.returncode == 0, done.stderr
    assert "cells" in done.stdout and str(outputs) in done.stdout
    height, width = SLIDE_SHAPE
    geometries, probabilities = check_outputs(outputs, width, height)
    result = invoke(["segment", "default", pyramid_slide, "--out", tmp_path / "segment.geojson", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    compare_with_segment(geometries, probabilities, tmp_path / "segment.geojson", height)
    # cells of the upper copy of the image lie in the upper part of the slide: high y in Cytomine's frame
    assert max(g.centroid.y for g in geometries) > height - 576


@pytest.mark.slow
def test_task_on_the_real_slide_gives_the_polygons_of_cyseg_segment(tmp_path, shared_data):
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    inputs, outputs = task_folders(tmp_path, slide, threshold="0.5", tta="false", min_area=" \n")
    done = run_task(inputs, outputs)
    assert done.returncode == 0, done.stderr
    with open_slide(slide) as reader:
        width, height = reader.width, reader.height
    geometries, probabilities = check_outputs(outputs, width, height)
    result = invoke(["segment", "default", slide, "--out", tmp_path / "segment.geojson", "--threshold", "0.5",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    compare_with_segment(geometries, probabilities, tmp_path / "segment.geojson", height)


def test_options_are_those_of_cyseg_segment():
    """An input left out means what leaving out the option of `cyseg segment` means: the options
    the engine gets are those `cyseg segment MODEL SLIDE` parses to."""
    from cyseg.cli import cli

    with cli.commands["segment"].make_context("segment", ["default", "slide.svs"]) as ctx:
        parsed = ctx.params
    inputs = appengine.TaskInputs(Path("x"), 1, None, False, None, None)
    options = appengine.slide_options(inputs)
    for name, value in options.items():
        assert parsed[name] == value, name
    assert parsed["mpp"] is None and parsed["magnification"] is None and parsed["window"] is None


# ----------------------------------------------------------------------------- bad inputs -------

def run_main(inputs: Path, outputs: Path, capsys) -> str:
    """Run the entry point in-process on bad inputs: exit status 2, one line; returns it."""
    with pytest.raises(SystemExit) as exit_info:
        appengine.main(["--inputs", str(inputs), "--outputs", str(outputs), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cyseg-appengine: error: input "), err
    assert not outputs.exists()  # nothing written
    return err


@pytest.mark.parametrize("values, needle", [
    ({"threshold": "abc"}, "input threshold is 'abc', not a number"),
    ({"threshold": "2"}, "input threshold is 2; it must be between 0 and 1"),
    ({"threshold": "nan"}, "finite"),
    ({"mpp": "0"}, "input mpp is 0; it must be > 0"),
    ({"mpp": "0.1"}, "finer than level 0"),  # the slide is at 0.5 µm/px
    ({"min_area": "-5"}, "input min_area is -5; it must be >= 0"),
    ({"tta": "maybe"}, "input tta is 'maybe'; it must be true or false"),
])
def test_bad_parameter_stops_the_run(tmp_path, pyramid_slide, capsys, values, needle):
    inputs, outputs = task_folders(tmp_path, pyramid_slide, **values)
    assert needle in run_main(inputs, outputs, capsys)


def test_missing_image_stops_the_run(tmp_path, capsys):
    (tmp_path / "inputs").mkdir()
    assert "input image is missing" in run_main(tmp_path / "inputs", tmp_path / "outputs", capsys)


@pytest.mark.parametrize("content", ["noise", "truncated"])
def test_unreadable_image_stops_the_run(tmp_path, pyramid_slide, capsys, content):
    bad = tmp_path / "bad"
    data = pyramid_slide.read_bytes()[:4096] if content == "truncated" else np.random.default_rng(0).bytes(4096)
    bad.write_bytes(data)
    inputs, outputs = task_folders(tmp_path, bad)
    err = run_main(inputs, outputs, capsys)
    assert "input image" in err and str(inputs / "image") in err
    assert "cyseg-task-" not in err  # named by the input, not by a temporary link


def test_bad_input_through_the_image_command(tmp_path, pyramid_slide):
    """The image's command itself: exit status 2 and one line on stderr (no traceback, no warnings)."""
    bad = tmp_path / "bad"
    bad.write_bytes(pyramid_slide.read_bytes()[:4096])
    inputs, outputs = task_folders(tmp_path, bad)
    done = run_task(inputs, outputs)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("cyseg-appengine: error: input image")
    assert not outputs.exists()


# ----------------------------------------------------------------------------- inputs -----------

@pytest.mark.parametrize("text, value", [("0.5", 0.5), (" 5e-1\n", 0.5), ("1", 1.0), ("1.0E-1", 0.1), ("+0.25", 0.25),
                                         ("", None), ("  \n", None)])
def test_number_inputs_take_the_forms_the_app_engine_writes(tmp_path, text, value):
    (tmp_path / "threshold").write_text(text)
    assert read_number(tmp_path, "threshold", Bounds(geq=0, leq=1)) == value
    assert read_number(tmp_path, "absent", Bounds(geq=0, leq=1)) is None


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("False\n", False), ("TRUE", True),
                                         ("", None)])
def test_boolean_inputs(tmp_path, text, value):
    (tmp_path / "tta").write_text(text)
    assert read_boolean(tmp_path, "tta") is value


@pytest.mark.parametrize("text", ["1", "yes", "inf"])
def test_scalar_inputs_refuse_other_words(tmp_path, text):
    (tmp_path / "tta").write_text(text)
    with pytest.raises(CysegError, match="input tta"):
        read_boolean(tmp_path, "tta")
    (tmp_path / "mpp").write_text("inf")
    with pytest.raises(CysegError, match="finite"):
        read_number(tmp_path, "mpp", Bounds(gt=0))


def test_a_folder_is_no_scalar_input(tmp_path):
    (tmp_path / "threshold").mkdir()
    with pytest.raises(CysegError, match=r"input threshold .* is a folder"):
        read_number(tmp_path, "threshold", Bounds(geq=0, leq=1))


def test_image_format_is_told_from_the_content(tmp_path, ihc_image, pyramid_slide):
    work = tmp_path / "work"
    work.mkdir()
    for suffix in (".png", ".jpg"):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        cv2.imwrite(str(folder / f"x{suffix}"), ihc_image[:, :, ::-1])
        (folder / f"x{suffix}").rename(folder / "image")
        path = image_file(folder, "image", work)
        assert path.suffix == suffix and path.resolve() == (folder / "image").resolve()
        with open_slide(path) as reader:
            assert (reader.width, reader.height) == (512, 512)
        path.unlink()
    shutil.copyfile(pyramid_slide, tmp_path / "image")
    assert image_file(tmp_path, "image", work).suffix == ".tif"


def test_real_slides_without_their_extension(tmp_path, shared_data):
    """An SVS named `image` is linked as .svs; a WSI DICOM folder (a zip the App Engine unzipped)
    is read in place, all of its levels."""
    slides = shared_data / "slides"
    inputs, _ = task_folders(tmp_path / "svs", slides / "CMU-1-Small-Region.svs")
    work = tmp_path / "work"
    work.mkdir()
    read = appengine.read_inputs(inputs, work)
    assert read.slide.suffix == ".svs" and read.height == 2967
    inputs, _ = task_folders(tmp_path / "dicom", slides / "cmu-1-small-region-dicom")
    read = appengine.read_inputs(inputs, work)
    assert read.slide.parent == inputs / "image" and read.height == 2967
    with open_slide(read.slide) as reader:
        assert reader.format == "dicom" and reader.level_count > 2


def test_a_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "notes.txt").write_text("no slide here")
    with pytest.raises(CysegError, match="without a DICOM file"):
        image_file(tmp_path, "image", tmp_path)


# ----------------------------------------------------------------------------- outputs ----------

def test_arrays_are_written_as_the_app_engine_reads_them(tmp_path):
    out = tmp_path / "outputs"
    write_arrays(out, {"cells": ['{"type": "Point", "coordinates": [1, 2]}'] * 3, "probabilities": []})
    assert (out / "cells" / "array.yml").read_text() == "size: 3\n"
    assert read_array(out / "cells") == ['{"type": "Point", "coordinates": [1, 2]}'] * 3
    assert read_array(out / "probabilities") == []
    write_arrays(out, {"cells": ["a"], "probabilities": ["0.5"]})  # a rerun replaces the earlier outputs
    assert read_array(out / "cells") == ["a"] and sorted(os.listdir(out)) == ["cells", "probabilities"]


def test_outputs_are_all_or_nothing(tmp_path, monkeypatch):
    moved = []

    def replace_then_fail(src, dst):
        if moved:
            raise OSError(28, "No space left on device")
        moved.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(appengine_io.os, "replace", replace_then_fail)
    out = tmp_path / "outputs"
    with pytest.raises(CysegError, match=r"cannot write the outputs .* No space left"):
        write_arrays(out, {"cells": ["a"], "probabilities": ["0.5"]})
    assert moved and os.listdir(out) == []  # the first array was taken back, no staging folder left


# ----------------------------------------------------------------------------- threads ----------

@pytest.mark.parametrize("files, limit", [
    ({"cpu.max": "200000 100000\n"}, 2),
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cpu_limit_of_the_container(tmp_path, files, limit):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert appengine.cpu_limit(tmp_path) == limit
