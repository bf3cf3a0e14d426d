"""cydata import: dataset folders from local images and QuPath GeoJSON exports, through the real CLI.

The synthetic images are colour ramps whose every pixel tells its position, so a crop that is one
pixel off fails; annotations are axis-aligned rectangles with integer corners, whose pixels under
the pixel-centre rule are exactly the array slice [y0:y1, x0:x1]. The real-data tests rebuild the
ISBI 2014 masks from their per-cell GeoJSON and crop a real SVS slide, when ../shared/data is present.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
import pytest
import tifffile
from click.testing import CliRunner

from cydata.cli import cli
from cydata.crops import span
from segmenter.io.dataset import open_dataset
from segmenter.io.images import read_image

# ---------------------------------------------------------------- builders

def ramp(width: int, height: int) -> np.ndarray:
    """RGB uint8 image whose pixels encode their position (x, y and a mix of both)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([x % 251, y % 241, (7 * x + 3 * y) % 256]).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[list[int]]]:
    """Polygon coordinates of a rectangle (one closed ring)."""
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def feature(geometry: dict[str, Any], cls: str | None = None, object_type: str = "annotation",
            **extra: Any) -> dict[str, Any]:
    """A feature as QuPath 0.4/0.5 exports it."""
    properties: dict[str, Any] = {"objectType": object_type}
    if cls is not None:
        properties["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "id": f"uuid-{len(json.dumps(geometry))}", "geometry": geometry,
            "properties": properties, **extra}


def polygon(x0: int, y0: int, x1: int, y1: int, cls: str | None = None, **kw: Any) -> dict[str, Any]:
    return feature({"type": "Polygon", "coordinates": rect(x0, y0, x1, y1)}, cls, **kw)


def write_geojson(path: Path, features: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


# A 300x200 image: every kind of object QuPath exports, two of them to be skipped.
SMALL_W, SMALL_H = 300, 200
SMALL_FEATURES = [
    polygon(10, 20, 60, 70, "Tumor"),
    feature({"type": "MultiPolygon", "coordinates": [rect(100, 10, 120, 30), rect(130, 40, 150, 90)]}, "Tumor"),
    feature({"type": "Polygon", "coordinates": rect(200, 100, 240, 150)}, "Lymphocyte", "cell",
            nucleusGeometry={"type": "Polygon", "coordinates": rect(210, 110, 230, 130)}),
    polygon(-20, 150, 40, 190, "Tumor"),                  # partly outside: clipped at x = 0
    polygon(250, 20, 290, 60, "Other"),
    polygon(400, 300, 420, 320, "Tumor"),                 # wholly outside: skipped
    feature({"type": "Point", "coordinates": [50, 50]}, "Tumor"),   # draws nothing: skipped
]
SMALL_BOXES = {"Tumor": [(10, 20, 60, 70), (100, 10, 120, 30), (130, 40, 150, 90), (0, 150, 40, 190)],
               "Lymphocyte": [(200, 100, 240, 150)], "Other": [(250, 20, 290, 60)]}


def expected_mask(width: int, height: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[max(y0, 0):y1, max(x0, 0):x1] = 255
    return mask


def run(*args: Any):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def imported(*args: Any) -> Path:
    """Run 'cydata import' and return the dataset folder it prints."""
    result = run("import", *args)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def error_of(*args: Any) -> str:
    """Run a command expected to fail; its one-line message without the 'cydata: error: ' prefix (the
    warnings that name skipped annotations may come before it)."""
    result = run("-q", *args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("cydata: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output, result.stderr
    return errors[0][len("cydata: error: "):]


def mask_of(folder: Path, stem: str) -> np.ndarray:
    return cv2.imread(str(folder / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)


@pytest.fixture
def small(tmp_path) -> tuple[Path, Path]:
    """The 300x200 image and its GeoJSON (one file)."""
    return (write_png(tmp_path / "in" / "small.png", ramp(SMALL_W, SMALL_H)),
            write_geojson(tmp_path / "ann" / "small.geojson", SMALL_FEATURES))


# ---------------------------------------------------------------- crops, masks, manifest

def test_whole_image_masks_every_class_but_the_rois_and_skips_what_draws_nothing(tmp_path, small):
    image, geojson = small
    result = run("import", image, "--annotations", geojson, "--out", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    assert "skipped 2 annotation(s)" in result.stderr
    assert "small.geojson feature 5: it lies outside the 300x200 image" in result.stderr
    assert "small.geojson feature 6: a Point draws nothing in a mask" in result.stderr
    ds = tmp_path / "ds"
    assert [i.stem for i in open_dataset(ds).items] == ["small"]
    assert np.array_equal(read_image(ds / "images" / "small.png"), ramp(SMALL_W, SMALL_H))
    boxes = [b for boxes in SMALL_BOXES.values() for b in boxes]
    assert np.array_equal(mask_of(ds, "small"), expected_mask(SMALL_W, SMALL_H, boxes))
    manifest = json.loads((ds / "dataset.json").read_text())
    item = manifest["items"]["small"]
    assert item["kind"] == "roi" and item["slide"] == "small" and item["crop"] == [0, 0, SMALL_W, SMALL_H]
    assert item["source"] == str(image.resolve()) and item["annotations"] == str(geojson.resolve())
    assert item["mask_features"] == [0, 1, 2, 3, 4]
    assert manifest["qupath_classes"] == ["Lymphocyte", "Other", "Tumor"] and "classes" not in manifest
    assert [s["feature"] for s in manifest["skipped"]] == [5, 6]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_class_filter_draws_only_the_classes_asked_for(tmp_path, small):
    image, geojson = small
    ds = imported(image, "--annotations", geojson, "--out", tmp_path / "ds", "--class", "Tumor",
                  "--class", "Lymphocyte")
    boxes = SMALL_BOXES["Tumor"] + SMALL_BOXES["Lymphocyte"]   # the cell's outline, not just its nucleus
    assert np.array_equal(mask_of(ds, "small"), expected_mask(SMALL_W, SMALL_H, boxes))
    assert json.loads((ds / "dataset.json").read_text())["qupath_classes"] == ["Lymphocyte", "Tumor"]


def test_rois_are_covered_by_crops_of_size_and_draw_no_mask(tmp_path):
    width, height = 1000, 700
    image = write_png(tmp_path / "in" / "slideA.png", ramp(width, height))
    cells = [(150, 120, 200, 180), (500, 300, 560, 390), (780, 110, 830, 140), (900, 620, 960, 690)]
    features = [polygon(100, 100, 800, 400, "Region*"), polygon(900, 600, 950, 650, "Region*"),
                *(polygon(*c, "Tumor") for c in cells)]
    write_geojson(tmp_path / "ann" / "slideA.geojson", features)
    ds = imported(image, "--annotations", tmp_path / "ann", "--out", tmp_path / "ds", "--size", "256")
    items = json.loads((ds / "dataset.json").read_text())["items"]
    # ROI 0 (700x300 px): 3 columns from x=100 to 800, 2 rows from y=100 to 400; ROI 1 (50x50) is
    # padded around its centre (925, 625) and shifted inside the image
    boxes = {f"slideA_roi0_r{r}c{c}": [x, y, 256, 256] for r, y in enumerate((100, 144))
             for c, x in enumerate((100, 322, 544))}
    boxes["slideA_roi1_r0c0"] = [744, 444, 256, 256]
    assert {stem: item["crop"] for stem, item in items.items()} == boxes
    full = ramp(width, height)
    whole_mask = expected_mask(width, height, cells)
    for stem, (x, y, w, h) in boxes.items():
        assert np.array_equal(read_image(ds / "images" / f"{stem}.png"), full[y:y + h, x:x + w]), stem
        assert np.array_equal(mask_of(ds, stem), whole_mask[y:y + h, x:x + w]), stem
        assert items[stem]["kind"] == "roi" and items[stem]["slide"] == "slideA"
    assert items["slideA_roi0_r1c2"]["roi"] == [100, 100, 800, 400] and items["slideA_roi0_r1c2"]["tile"] == [1, 2]


def test_a_large_slide_without_rois_gives_one_crop_centred_on_each_annotation(tmp_path):
    width, height = 900, 600
    image = tmp_path / "in" / "big.tif"
    image.parent.mkdir()
    tifffile.imwrite(image, ramp(width, height), photometric="rgb")
    cells = [(100, 100, 140, 160), (860, 560, 900, 600), (400, 300, 700, 350)]   # the last is wider than a crop
    write_geojson(tmp_path / "ann" / "big.tif.geojson", [polygon(*c, "Cell") for c in cells])  # <name>.geojson
    ds = imported(image, "--annotations", tmp_path / "ann", "--out", tmp_path / "ds", "--size", "128",
                  "--max-image-side", "512")
    items = json.loads((ds / "dataset.json").read_text())["items"]
    assert items["big_a0"]["crop"] == [56, 66, 128, 128]      # centred on (120, 130)
    assert items["big_a1"]["crop"] == [772, 472, 128, 128]    # shifted inside the slide's corner
    assert items["big_a2"]["crop"] == [486, 261, 128, 128]    # centred on (550, 325)
    full, whole_mask = ramp(width, height), expected_mask(width, height, cells)
    for stem, item in items.items():
        x, y, w, h = item["crop"]
        assert item["kind"] == "cell" and item["slide"] == "big"
        assert np.array_equal(read_image(ds / "images" / f"{stem}.png"), full[y:y + h, x:x + w])
        assert np.array_equal(mask_of(ds, stem), whole_mask[y:y + h, x:x + w])


def test_older_exports_and_folders_of_images_with_their_geojson(tmp_path):
    folder = tmp_path / "project"
    write_png(folder / "a.png", ramp(64, 48))
    write_png(folder / "b.jpg", ramp(40, 40))
    # QuPath 0.2: a plain list of features; derived classes as a list of names; a GeoJSON beside the images
    old = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rect(4, 4, 20, 30)},
            "properties": {"classification": {"names": ["Tumor", "Positive"], "colorRGB": -3670016}}}]
    (folder / "a.geojson").write_text(json.dumps(old))
    write_geojson(folder / "b.jpg.geojson", [polygon(0, 0, 10, 10)])
    ds = imported(folder, "--annotations", folder, "--out", tmp_path / "ds")
    assert sorted(i.stem for i in open_dataset(ds).items) == ["a", "b"]
    assert np.array_equal(mask_of(ds, "a"), expected_mask(64, 48, [(4, 4, 20, 30)]))
    assert json.loads((ds / "dataset.json").read_text())["qupath_classes"] == ["Tumor: Positive", "Unclassified"]
    assert error_of("import", folder, "--annotations", folder, "--out", tmp_path / "x", "--class", "Tumor").startswith(
        "--class Tumor: no annotation has this class; the classes found are: Tumor: Positive, Unclassified")


def test_split_by_slide_keeps_each_image_on_one_side(tmp_path):
    for k, name in enumerate(("s1", "s2", "s3", "s4")):
        write_png(tmp_path / "in" / f"{name}.png", ramp(600, 300))
        write_geojson(tmp_path / "ann" / f"{name}.geojson",
                      [polygon(0, 0, 300, 300, "Region*"), polygon(300, 0, 600, 300, "Region*"),
                       polygon(10 + k, 10, 50, 50, "Cell")])
    ds = imported(tmp_path / "in", "--annotations", tmp_path / "ann", "--out", tmp_path / "ds", "--size", "300")
    assert len(open_dataset(ds)) == 8                       # one crop per ROI, two ROIs per image
    train, test = tmp_path / "train", tmp_path / "test"
    result = run("split", ds, "--by-slide", "--train", "0.5", "--out-train", train, "--out-test", test)
    assert result.exit_code == 0, result.output
    sides = [{i.slide for i in open_dataset(side).items} for side in (train, test)]
    assert sides[0] and sides[1] and sides[0].isdisjoint(sides[1]) and sides[0] | sides[1] == {"s1", "s2", "s3", "s4"}


# ---------------------------------------------------------------- bad input

def _bad_inputs(tmp_path: Path, small: tuple[Path, Path]) -> dict[str, tuple[list[Any], str]]:
    image, geojson = small
    other = write_png(tmp_path / "in" / "other.png", ramp(32, 32))
    (tmp_path / "bad.geojson").write_text("{not json")
    (tmp_path / "shape.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": rect(0, 0, 2, 2)}))
    far = write_geojson(tmp_path / "far.geojson", [polygon(500, 500, 600, 600, "Tumor")])
    big = write_png(tmp_path / "big" / "big.png", ramp(200, 100))
    return {
        "missing image": ([tmp_path / "nope.png", "--annotations", geojson], "image {t}/nope.png does not exist"),
        "missing annotations": ([image, "--annotations", tmp_path / "none"], "--annotations {t}/none does not exist"),
        "not json": ([image, "--annotations", tmp_path / "bad.geojson"], "{t}/bad.geojson is not valid JSON"),
        "not geojson": ([image, "--annotations", tmp_path / "shape.geojson"],
                        "{t}/shape.geojson is not GeoJSON (a FeatureCollection of Features expected, found Polygon)"),
        "no annotations file": ([image, other, "--annotations", tmp_path / "ann"],
                                "image {t}/in/other.png has no annotations file (looked for {t}/ann/other.geojson"),
        "one file, two images": ([image, other, "--annotations", geojson], "is one file but 2 images were given"),
        "unknown class": ([image, "--annotations", geojson, "--class", "Stroma"],
                          "--class Stroma: no annotation has this class; the classes found are: Lymphocyte, Other, "
                          "Tumor"),
        "unknown roi class": ([image, "--annotations", geojson, "--roi-class", "ROI"],
                              "--roi-class ROI: no annotation"),
        "class both": ([image, "--annotations", geojson, "--class", "Tumor", "--roi-class", "Tumor"],
                       "--class Tumor is also a --roi-class"),
        "zero items": ([big, "--annotations", far, "--max-image-side", "64"], "nothing to import from 1 image(s)"),
        "bad size": ([image, "--annotations", geojson, "--size", "0"], "--size 0 must be at least 1 pixel"),
    }


@pytest.mark.parametrize("case", ["missing image", "missing annotations", "not json", "not geojson",
                                  "no annotations file", "one file, two images", "unknown class", "unknown roi class",
                                  "class both", "zero items", "bad size"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, small, case):
    args, expected = _bad_inputs(tmp_path, small)[case]
    message = error_of("import", *args, "--out", tmp_path / "out" / "ds")
    assert expected.format(t=tmp_path) in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_an_existing_output_folder_is_refused(tmp_path, small):
    image, geojson = small
    (tmp_path / "ds").mkdir()
    assert "output folder" in error_of("import", image, "--annotations", geojson, "--out", tmp_path / "ds")


# ---------------------------------------------------------------- real data

def test_isbi_cell_polygons_rebuild_the_published_masks(tmp_path, shared_data):
    """ISBI 2014: the per-cell GeoJSON (a stand-in for a QuPath export) must give back masks/ (any
    cell = 255). Its outlines run along pixel edges (pixel-corner convention), so rasterising at
    pixel centres selects exactly the annotated pixels: no pixel may differ, and the crops are the images."""
    root = shared_data / "isbi2014_synthetic"
    ds = imported(root / "images", "--annotations", root / "cells", "--out", tmp_path / "ds")
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    assert sorted(i.stem for i in open_dataset(ds).items) == stems and len(stems) == 45
    differing = 0
    for stem in stems:
        differing += int((mask_of(ds, stem) != cv2.imread(str(root / "masks" / f"{stem}.png"), 0)).sum())
        assert np.array_equal(read_image(ds / "images" / f"{stem}.png"), read_image(root / "images" / f"{stem}.png"))
    assert differing == 0


def test_a_real_slide_is_cropped_over_its_roi(tmp_path, shared_data):
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    geojson = write_geojson(tmp_path / "roi.geojson", [polygon(1000, 1200, 1500, 1400, "Region*"),
                                                       polygon(1100, 1250, 1180, 1330, "Tumor")])
    ds = imported(slide, "--annotations", geojson, "--out", tmp_path / "ds", "--size", "256")
    items = json.loads((ds / "dataset.json").read_text())["items"]
    columns = span(1000, 1500, 256, 2220)
    assert len(items) == len(columns) == 2
    with openslide.OpenSlide(str(slide)) as reader:
        for stem, item in items.items():
            x, y, w, h = item["crop"]
            expected = np.asarray(reader.read_region((x, y), 0, (w, h)).convert("RGB"))
            assert np.array_equal(read_image(ds / "images" / f"{stem}.png"), expected)
            assert np.array_equal(mask_of(ds, stem), expected_mask(2220, 2967, [(1100, 1250, 1180, 1330)])[
                y:y + h, x:x + w])
