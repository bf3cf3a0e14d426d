"""Classes and instances in the whole-slide engine: each object kept once and whole across windows
(on synthetic labels, exactly; on a mosaic of real tiles, against one window), cell objects with
their nuclei, each class's regions, and one Cytomine term per class."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TRAIN_BOXES, VAL_BOXES, invoke, nuclei_mask, write_grey, write_rgb
from shapely.geometry import shape
from shapely.strtree import STRtree
from skimage.segmentation import expand_labels

from segmenter.cells import label_polygons
from segmenter.wsi.objects import join_objects, owned_objects
from segmenter.wsi.windows import Region, WsiOptions, plan_windows, window_topology
from transforms.instances import connected_instances
from unet import load_segmenter

CROP = 160
FAST = ["--tile", "256", "--overlap", "32", "--simplify", "0", "--min-area", "20", "--no-skip-background",
        "--device", "cpu"]


def best_iou(polygon, others) -> float:
    return max((polygon.intersection(o).area / polygon.union(o).area for o in others
                if polygon.intersects(o)), default=0.0)


# ---------------------------------------------------------------- the ownership rule, exactly

def scattered_objects(size: int, seed: int) -> np.ndarray:
    """int32 labels: small discs that often touch, and two long bars wider than any window overlap."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    n = 0
    for _ in range(140):
        cy, cx, r = rng.integers(0, size), rng.integers(0, size), rng.integers(4, 12)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)
        if disc.sum() > 10:
            n += 1
            labels[disc] = n
    for y0, x0, h, w in ((100, 30, 24, 520), (250, 300, 330, 20)):
        n += 1
        labels[y0:y0 + h, x0:x0 + w][labels[y0:y0 + h, x0:x0 + w] == 0] = n
    return np.where(connected_instances(labels > 0) > 0, labels, 0)


def test_each_object_is_kept_once_and_whole_whatever_the_windows():
    labels = scattered_objects(600, 0)
    truth = label_polygons(labels)
    opts = WsiOptions(tile=128, overlap=16, window_size=256, window_overlap=64)
    topology = window_topology(600, 600, opts)
    tasks = plan_windows(topology, Region(0, 0, 600, 600), opts, None, 16)
    assert len(tasks) > 4
    windows = []
    for task in tasks:
        crop = labels[task.y:task.y + task.h, task.x:task.x + task.w]
        probs = np.ones(crop.shape, np.float32)
        windows.append((task.index, owned_objects(crop, probs, (0, 0, task.w, task.h), task, "cell")))
    assert any(props.get("cut") for _, located in windows for _, props in located)  # the bars are cut
    joined = join_objects(windows, topology, opts.merge_tolerance)
    assert len(joined) == len(truth)
    found = [p for p, _ in joined]
    assert all(best_iou(polygon, found) > 0.995 for polygon, _ in truth.values())  # SLDC joins within 1 px
    assert all(props["class"] == "cell" and "cut" not in props for _, props in joined)


def test_an_object_two_windows_separate_differently_is_kept_once():
    # window 1 merges a and b into one object centred in window 2's part, so it drops the pair; window 2
    # splits them and owns only b: a must come from what window 2 saw, once
    opts = WsiOptions(tile=128, overlap=16, window_size=256, window_overlap=64)
    topology = window_topology(448, 256, opts)
    tasks = plan_windows(topology, Region(0, 0, 448, 256), opts, None, 16)
    assert len(tasks) == 2 and tasks[0].own[2] == 224
    split = np.zeros((256, 448), np.int32)
    split[100:140, 200:222], split[100:140, 224:254] = 1, 2
    merged = np.where(split > 0, 1, 0).astype(np.int32)
    windows = []
    for task, labels in zip(tasks, (merged, split), strict=True):
        crop = labels[task.y:task.y + task.h, task.x:task.x + task.w]
        windows.append((task.index, owned_objects(crop, np.ones(crop.shape, np.float32), (0, 0, task.w, task.h),
                                                  task, "cell")))
    joined = join_objects(windows, topology, opts.merge_tolerance)
    truth = label_polygons(split)
    assert len(joined) == 2
    assert all(best_iou(polygon, [p for p, _ in joined]) > 0.99 for polygon, _ in truth.values())
    assert all("seen" not in props for _, props in joined)


# ---------------------------------------------------------------- a cell + nucleus model on real tiles

def write_cell_nucleus_set(root: Path, ihc: np.ndarray, boxes: list[tuple[int, int]]) -> Path:
    """Crops of the IHC image with cell (nuclei grown by 4 px, touching ones kept apart) and nucleus
    instances, in the masks_3class convention."""
    nuclei = connected_instances(nuclei_mask(ihc))
    cells = expand_labels(nuclei, 4)
    for i, (y, x) in enumerate(boxes):
        stem, box = f"c{i:02d}", (slice(y, y + CROP), slice(x, x + CROP))
        write_rgb(root / "images" / f"{stem}.png", ihc[box])
        classes = np.where(nuclei[box] > 0, 2, np.where(cells[box] > 0, 1, 0)).astype(np.uint8)
        write_grey(root / "masks" / f"{stem}.png", classes)
        write_grey(root / "masks_instance" / f"{stem}_cell.png", cells[box].astype(np.uint16))
        write_grey(root / "masks_instance" / f"{stem}_nucleus.png", nuclei[box].astype(np.uint16))
    (root / "dataset.json").write_text(json.dumps({"classes": ["cell", "nucleus"], "instances": True}))
    return root


def train_cell_nucleus(root: Path, ihc: np.ndarray, *options: str) -> Path:
    """A cell + nucleus instance model trained on IHC crops (`options`: further `cyseg train` options)."""
    train = write_cell_nucleus_set(root / "train", ihc, TRAIN_BOXES)
    val = write_cell_nucleus_set(root / "val", ihc, VAL_BOXES)
    out = root / "cn.pt"
    # 6 epochs: enough for separate nuclei; a 3-epoch model paints blobs of many nuclei wider than the window
    # overlap, whose fragments the windows cut and join differently from one whole window
    result = invoke(["-q", "train", train, "--val", val, "--instances", "--out", out, "--n", "8", "--depth", "3",
                     "--crop", "96", "--batch", "4", "--steps-per-epoch", "15", "--epochs", "6", "--lr", "0.01",
                     "--resolution", "1", "--workers", "0", "--device", "cpu", *options])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


@pytest.fixture(scope="module")
def cell_nucleus_model(tmp_path_factory, ihc_image) -> Path:
    return train_cell_nucleus(tmp_path_factory.mktemp("cell_nucleus"), ihc_image)


@pytest.fixture(scope="module")
def contour_marked_model(tmp_path_factory, ihc_image) -> Path:
    """A cell + nucleus model trained with --contours whose separation is marked by the contour cores."""
    trained = train_cell_nucleus(tmp_path_factory.mktemp("contours"), ihc_image, "--contours", "--epochs", "10")
    seg = load_segmenter(trained, device="cpu")
    for params in seg.separation.values():
        params.update(marks="contour", contour=0.5, nucleus_seeds=False)
    return seg.save(trained.with_name("contour-marked.pt"))


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory, ihc_image) -> Path:
    """A 1024x1024 mosaic of the real IHC tile and its mirror images."""
    rows = [np.hstack([ihc_image, ihc_image[:, ::-1]]), np.hstack([ihc_image[::-1], ihc_image[::-1, ::-1]])]
    path = tmp_path_factory.mktemp("mosaic") / "mosaic.png"
    write_rgb(path, np.vstack(rows))
    return path


def objects_of(path: Path) -> dict[str, list]:
    """{cell, nucleus: polygons} of a slide GeoJSON of cell objects and nucleus detections."""
    out: dict[str, list] = {"cell": [], "nucleus": []}
    for feature in json.loads(path.read_text())["features"]:
        out[feature["properties"]["classification"]["name"]].append(shape(feature["geometry"]))
        if "nucleusGeometry" in feature:
            out["nucleus"].append(shape(feature["nucleusGeometry"]))
    return out


@pytest.mark.parametrize("model", ["cell_nucleus_model", "contour_marked_model"])
def test_windows_neither_cut_nor_duplicate_objects_on_a_real_mosaic(model, mosaic, tmp_path, request):
    runs = {}
    for name, size, overlap in (("windows", 384, 128), ("whole", 1024, 128)):
        out = tmp_path / f"{name}.geojson"
        result = invoke(["-q", "segment", request.getfixturevalue(model), mosaic, "--as-slide", "--out", out,
                         "--window-size", size, "--window-overlap", overlap, *FAST])
        assert result.exit_code == 0, result.output
        runs[name] = objects_of(out)
        summary = json.loads(out.read_text())["properties"]["summary"]
        assert summary["instances"] is True and set(summary["objects"]) == {"cell", "nucleus"}
    for cls in ("cell", "nucleus"):
        windowed, whole = runs["windows"][cls], runs["whole"][cls]
        assert len(whole) > 50, cls
        assert abs(len(windowed) - len(whole)) <= 0.005 * len(whole), (cls, len(windowed), len(whole))
        assert np.mean([best_iou(p, windowed) for p in whole]) >= 0.95, cls
        # no duplicates: two objects of a class share at most a seam (windows see slightly different context)
        tree = STRtree(windowed)
        pairs = tree.query(windowed, predicate="intersects").T
        assert all(windowed[a].intersection(windowed[b]).area < 0.2 * min(windowed[a].area, windowed[b].area)
                   for a, b in pairs if a < b), cls


def test_objects_separated_group_by_group_equal_those_of_the_whole_area(cell_nucleus_model):
    """The engine separates an area's instances one group of nearby foreground at a time; the objects
    are those of the whole area at once (touching discs with a distance peak each, some split)."""
    import torch

    import segmenter.wsi.engine as engine
    from segmenter.instances import instance_labels
    from segmenter.wsi.windows import WindowTask
    from unet import load_segmenter

    seg = load_segmenter(cell_nucleus_model)
    assert seg.instance_classes
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:240, :300]
    inside, distance = np.zeros((240, 300), np.float32), np.zeros((240, 300), np.float32)
    for _ in range(30):
        y, x, r = rng.integers(0, 240), rng.integers(0, 300), rng.integers(5, 15)
        d = np.sqrt((yy - y) ** 2 + (xx - x) ** 2)
        inside = np.maximum(inside, (d <= r).astype(np.float32))
        distance = np.maximum(distance, np.clip(1 - d / r, 0, 1))
    probs = torch.from_numpy(np.stack([inside] * seg.n_classes + [distance] * len(seg.instance_classes)))
    area = (0, 0, 300, 240)
    task = WindowTask(index=0, x=0, y=0, w=300, h=240, own=area, tiles=1, boxes=None)
    masks = seg.class_masks(probs).numpy()
    components = cv2.connectedComponents((inside > 0).astype(np.uint8), connectivity=8)[0] - 1
    for opts in (WsiOptions(), WsiOptions(min_area=0.0)):
        grouped = engine._area_objects(seg, probs, task, area, opts)
        objects = instance_labels(seg, masks, probs.numpy(), min_areas=opts.working_min_areas(seg))
        whole = [item for c, label in enumerate(seg.labels)
                 for item in owned_objects(objects[seg.channels[c]], probs.numpy()[c], area, task, label)]
        assert sorted(p.wkt for p, _ in grouped) == sorted(p.wkt for p, _ in whole)
    assert len(whole) > len(seg.labels) * components  # touching discs were split
    assert engine._area_objects(seg, probs, task, area, WsiOptions(min_area=4 * 300 * 240)) == []


def test_the_least_object_areas_come_down_from_level_0_or_from_the_model(cell_nucleus_model):
    from unet import load_segmenter

    seg = load_segmenter(cell_nucleus_model)
    seg.min_area = {"nucleus": 30.0}  # chosen for nuclei only: cells fall back to the speck rule
    assert WsiOptions(min_area=400.0, downsample=2.0).working_min_areas(seg) == {"cell": 100.0, "nucleus": 100.0}
    assert WsiOptions(downsample=2.0).working_min_areas(seg) == {"cell": seg.smallest_object("cell"),
                                                                 "nucleus": 30.0}


def test_cell_objects_hold_their_nucleus_and_regions_per_class(cell_nucleus_model, mosaic, tmp_path):
    out, masks = tmp_path / "cells.geojson", tmp_path / "mask.png"
    result = invoke(["-q", "segment", cell_nucleus_model, mosaic, "--as-slide", "--out", out, "--window-size", 512,
                     "--window-overlap", 128, "--mask-out", masks, *FAST])
    assert result.exit_code == 0, result.output
    features = json.loads(out.read_text())["features"]
    cells = [f for f in features if f["properties"]["objectType"] == "cell"]
    assert cells and any("nucleusGeometry" in f for f in cells)
    for feature in cells:
        if "nucleusGeometry" in feature:
            assert shape(feature["geometry"]).intersects(shape(feature["nucleusGeometry"]))
            assert "Nucleus: Area px^2" in feature["properties"]["measurements"]
    for name in ("cell", "nucleus"):  # one low-resolution mask per class
        mask = cv2.imread(str(tmp_path / f"mask_{name}.png"), cv2.IMREAD_GRAYSCALE)
        assert mask is not None and mask.shape == (64, 64) and mask.max() == 255

    regions = tmp_path / "regions.geojson"
    result = invoke(["-q", "segment", cell_nucleus_model, mosaic, "--as-slide", "--out", regions, "--window-size",
                     512, "--window-overlap", 128, "--no-instances", *FAST])
    assert result.exit_code == 0, result.output
    collection = json.loads(regions.read_text())
    names = {f["properties"]["classification"]["name"] for f in collection["features"]}
    assert names == {"cell", "nucleus"}
    assert all(f["properties"]["objectType"] == "annotation" for f in collection["features"])
    assert collection["properties"]["summary"]["instances"] is False
    # regions merge touching cells: never more cell regions than cell objects
    assert collection["properties"]["summary"]["objects"]["cell"] <= len(objects_of(out)["cell"])


def test_a_bare_term_for_a_model_of_two_classes_is_one_line(cell_nucleus_model, tmp_path):
    result = invoke(["segment", cell_nucleus_model, "--cytomine-image", "7", "--upload", "--term", "12",
                     "--out", tmp_path / "x.geojson"])
    assert result.exit_code == 2
    assert "--term 12: the model finds cell, nucleus; give one term per class: --term cell=ID --term nucleus=ID" \
        in result.stderr
    result = invoke(["segment", cell_nucleus_model, "--cytomine-image", "7", "--upload", "--term", "gland=3"])
    assert result.exit_code == 2 and "the model finds no class 'gland'" in result.stderr
    assert not (tmp_path / "x.geojson").exists()


def test_cytomine_upload_gives_each_class_its_term(cell_nucleus_model, cytomine_seed, monkeypatch, tmp_path):
    server = cytomine_seed.server
    for name, value in (("HOST", server.url), ("PUBLIC_KEY", server.public_key), ("PRIVATE_KEY", server.private_key)):
        monkeypatch.setenv(f"CYTOMINE_{name}", value)
    cell_term, nucleus_term = cytomine_seed.terms["cluster"], cytomine_seed.terms["nucleus"]
    out = tmp_path / "remote.geojson"
    args = ["-q", "segment", cell_nucleus_model, "--cytomine-image", cytomine_seed.image, "--out", out,
            "--window", "0,0,400,300", "--upload", "--term", f"cell={cell_term}", "--term", f"nucleus={nucleus_term}",
            *FAST]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    found = objects_of(out)
    stored = server.annotations(image=cytomine_seed.image)
    by_term = {t: sum(a["terms"] == [t] for a in stored) for t in (cell_term, nucleus_term)}
    assert by_term == {cell_term: len(found["cell"]), nucleus_term: len(found["nucleus"])} and len(stored) == sum(
        by_term.values()) > 0
    assert result.stdout.count("upload complete") == 2
    assert invoke(args).exit_code == 0 and len(server.annotations(image=cytomine_seed.image)) == len(stored)
