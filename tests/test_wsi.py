"""The whole-slide engine through the real CLI: windows merged with SLDC, background skipping,
resume from the window cache, Dask scale-out, several slides, and its bad-input paths."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import torch
from click.testing import CliRunner
from shapely.geometry import Polygon, box, shape
from shapely.ops import unary_union

from cyseg.cli import cli
from segmenter.wsi.cache import WindowResult
from segmenter.wsi.merge import merge_windows
from segmenter.wsi.pyramid import write_pyramid
from segmenter.wsi.windows import WsiOptions, near_cuts, owned_box, window_topology
from unet import UNetSegmenter, load_segmenter

GLASS = (236, 232, 238)
# small windows and tiles so that a 1.5-MP test slide has many of both
SMALL = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "96", "--simplify", "0",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def mosaic(ihc_image) -> np.ndarray:
    """1536x1024 slide: four quarters of the IHC image on glass, plus one whole IHC image."""
    out = np.empty((1024, 1536, 3), np.uint8)
    out[:] = GLASS
    out[0:512, 0:512] = ihc_image
    out[600:856, 700:956] = ihc_image[:256, :256]
    out[100:356, 1200:1456] = ihc_image[256:, 256:]
    return out


@pytest.fixture(scope="module")
def slide(tmp_path_factory, mosaic) -> Path:
    path = tmp_path_factory.mktemp("slides") / "mosaic.tif"
    write_pyramid(path, mosaic, compression="zlib", description="BUILT for tests from skimage's IHC image")
    return path


def run(args: list[str]):
    return CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False, prog_name="cyseg")


def polygons_of(path: Path) -> list[Polygon]:
    return [shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]


def rasterise(polygons: list[Polygon], shape_hw: tuple[int, int]) -> np.ndarray:
    if not polygons:
        return np.zeros(shape_hw, np.uint8)
    return rasterio.features.rasterize([(p, 1) for p in polygons], out_shape=shape_hw, dtype=np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_slide_polygons_match_the_crop_prediction(tiny_model, slide, mosaic, tmp_path):
    out = tmp_path / "s.geojson"
    result = run(["segment", str(tiny_model), str(slide), "--out", str(out), "--no-skip-background", *SMALL])
    assert result.exit_code == 0, result.output
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection"
    summary = collection["properties"]["summary"]
    assert summary["windows"] == window_topology(1536, 1024, WsiOptions(window_size=512,
                                                                        window_overlap=96)).tile_count == 12
    assert summary["tiles_skipped"] == 0
    assert 0 < summary["inference_seconds"] < summary["window_seconds"] <= summary["seconds"]
    assert summary["object_seconds"] == pytest.approx(summary["window_seconds"] - summary["inference_seconds"],
                                                      abs=0.002)
    polygons = polygons_of(out)
    assert polygons and all(p.is_valid for p in polygons)
    for feature in collection["features"]:
        assert feature["properties"]["area"] > 0 and 0 <= feature["properties"]["mean_probability"] <= 1
    # the same model on the whole image at once: windows, ownership cuts and merging change nothing
    reference = load_segmenter(tiny_model, device="cpu").segment(mosaic, tile=256, overlap=32)
    assert iou(rasterise(polygons, mosaic.shape[:2]), reference) > 0.98


def test_objects_cut_by_window_borders_come_out_whole(tiny_model, slide, tmp_path):
    out = tmp_path / "s.geojson"
    assert run(["segment", str(tiny_model), str(slide), "--out", str(out), "--no-skip-background",
                *SMALL]).exit_code == 0
    polygons = polygons_of(out)
    # no polygon edge runs along an ownership cut (the middle of the window overlaps)
    topology = window_topology(1536, 1024, WsiOptions(window_size=512, window_overlap=96))
    cuts = sorted({topology.tile(i).offset_x + 48 for i in range(1,
                                                                 topology.tile_count + 1) if topology.tile(i).offset_x})
    for x in cuts:
        line = box(x - 0.01, 0, x + 0.01, 1024)
        straddling = [p for p in polygons if p.intersects(line) and p.bounds[0] < x - 1 and p.bounds[2] > x + 1]
        touching = [p for p in polygons
                    if p.intersects(line) and (abs(p.bounds[0] - x) < 0.5 or abs(p.bounds[2] - x) < 0.5)]
        assert straddling or not touching  # cells crossing a cut are whole, none ends exactly on it in pairs
        for a in touching:
            assert not any(b is not a and b.distance(a) < 0.5 for b in touching)


def test_merge_joins_polygons_that_meet_at_a_cut():
    """Two halves of one object owned by neighbouring windows come back as one polygon."""
    opts = WsiOptions(window_size=512, window_overlap=96, simplify=0)
    topology = window_topology(1000, 400, opts)
    cut = topology.tile(2).offset_x + 48
    left = WindowResult(1, [box(cut - 40, 100, cut, 160)], [{"mean_probability": 0.8}], 1, 0, 0.0)
    right = WindowResult(2, [box(cut, 110, cut + 30, 150)], [{"mean_probability": 0.6}], 1, 0, 0.0)
    others = [WindowResult(i, [], [], 1, 0, 0.0) for i in range(3, topology.tile_count + 1)]
    merged = merge_windows([left, right, *others], topology, opts)
    assert len(merged) == 1
    polygon, mean_probability = merged[0]
    assert polygon.area == pytest.approx(40 * 60 + 30 * 40)
    assert mean_probability == pytest.approx((0.8 * 2400 + 0.6 * 1200) / 3600, abs=1e-3)


def test_merge_sends_only_polygons_near_shared_sides_through_sldc_with_the_same_result():
    """Cells scattered over a 3x2 window grid, many cut by the ownership lines: merging only the
    polygons near shared sides gives exactly what SLDC's merger gives on all of them."""
    import sldc

    opts = WsiOptions(window_size=512, window_overlap=96, simplify=0)
    topology = window_topology(1300, 900, opts)
    rng = np.random.default_rng(0)
    cells = [box(x, y, x + w, y + h) for x, y, w, h in zip(rng.uniform(0, 1260, 400), rng.uniform(0, 860, 400),
                                                           rng.uniform(5, 40, 400), rng.uniform(5, 40,
                                                                                                400), strict=True)]
    cells = list(unary_union(cells).geoms)
    results, n_near, n_all = [], 0, 0
    for wid in range(1, topology.tile_count + 1):
        pieces = [c.intersection(box(*owned_box(topology, wid))) for c in cells]  # what this window traces
        parts = [g for piece in pieces for g in getattr(piece, "geoms", [piece]) if isinstance(g,
                                                                                               Polygon) and g.area > 0]
        near = near_cuts(parts, topology, wid, opts.merge_tolerance)
        n_near, n_all = n_near + int(near.sum()), n_all + len(parts)
        results.append(WindowResult(wid, parts, [{"mean_probability": 0.5}] * len(parts), 1, 0, 0.0))
    assert 0 < n_near < n_all / 2  # most polygons skip SLDC's pairwise comparisons
    reference = sldc.SemanticMerger(tolerance=opts.merge_tolerance).merge(
        [r.index for r in results], [r.polygons for r in results], topology)
    merged = [p for p, _ in merge_windows(results, topology, opts)]
    normal = lambda polygons: sorted(p.normalize().wkt for p in polygons)  # noqa: E731
    assert normal(merged) == normal(reference) and len(merged) == len(cells)


def test_background_skipping_skips_glass_and_keeps_cells(tiny_model, slide, mosaic, tmp_path):
    full, skipped = tmp_path / "full.geojson", tmp_path / "skip.geojson"
    assert run(["segment", str(tiny_model), str(slide), "--out", str(full), "--no-skip-background",
                *SMALL]).exit_code == 0
    assert run(["segment", str(tiny_model), str(slide), "--out", str(skipped), "--skip-background",
                *SMALL]).exit_code == 0
    summary = json.loads(skipped.read_text())["properties"]["summary"]
    assert summary["tiles_skipped"] > 0
    a, b = rasterise(polygons_of(full), mosaic.shape[:2]), rasterise(polygons_of(skipped), mosaic.shape[:2])
    assert (a & ~b.astype(bool)).sum() <= 0.01 * a.sum()  # < 1 % of the foreground lost


def test_resume_after_interruption_gives_the_identical_result(tiny_model, slide, tmp_path, monkeypatch):
    import segmenter.wsi.engine as wsi

    reference = tmp_path / "ref.geojson"
    assert run(["segment", str(tiny_model), str(slide), "--out", str(reference), "--cache", str(tmp_path / "c0"),
                *SMALL]).exit_code == 0
    real = wsi.process_window
    calls = {"n": 0}

    def dies_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out, cache = tmp_path / "resumed.geojson", tmp_path / "cache"
    monkeypatch.setattr(wsi, "process_window", dies_after_three)
    interrupted = run(["segment", str(tiny_model), str(slide), "--out", str(out), "--cache", str(cache), *SMALL])
    assert interrupted.exit_code != 0 and "Aborted" in interrupted.output  # Ctrl-C
    assert not out.exists()
    assert len(list(cache.rglob("window-*.json"))) == 3
    monkeypatch.setattr(wsi, "process_window", real)
    assert run(["segment", str(tiny_model), str(slide), "--out", str(out), "--cache", str(cache),
                *SMALL]).exit_code == 0
    resumed = json.loads(out.read_text())
    assert resumed["properties"]["summary"]["windows_cached"] == 3
    assert resumed["features"] == json.loads(reference.read_text())["features"]


def test_dask_local_cluster_gives_the_same_polygons(tiny_model, slide, tmp_path):
    single, dask = tmp_path / "single.geojson", tmp_path / "dask.geojson"
    assert run(["segment", str(tiny_model), str(slide), "--out", str(single), "--cache", str(tmp_path / "c1"),
                *SMALL]).exit_code == 0
    result = run(["segment", str(tiny_model), str(slide), "--out", str(dask), "--cache", str(tmp_path / "c2"),
                  "--workers", "2", *SMALL])
    assert result.exit_code == 0, result.output
    a, b = polygons_of(single), polygons_of(dask)
    assert len(a) == len(b)
    assert unary_union(a).symmetric_difference(unary_union(b)).area == pytest.approx(0, abs=1e-6)


def test_slide_with_tta_matches_the_crop_prediction_with_tta(tiny_model, slide, mosaic, tmp_path):
    plain, tta = tmp_path / "plain.geojson", tmp_path / "tta.geojson"
    for out, extra in ((plain, []), (tta, ["--tta"])):
        assert run(["segment", str(tiny_model), str(slide), "--out", str(out), "--no-skip-background", *SMALL,
                    *extra]).exit_code == 0
    mask = rasterise(polygons_of(tta), mosaic.shape[:2])
    reference = load_segmenter(tiny_model, device="cpu").segment(mosaic, tile=256, overlap=32, tta=True)
    assert iou(mask, reference) > 0.98
    assert (mask != rasterise(polygons_of(plain), mosaic.shape[:2])).sum() > 0, "--tta must reach the slide engine"


@pytest.mark.parametrize("skip", ["--skip-background", "--no-skip-background"])
def test_slide_with_a_half_resolution_model_matches_the_crop_prediction(skip, tiny_model, slide, mosaic, tmp_path):
    content = torch.load(tiny_model, weights_only=True)
    content["preprocess"]["resolution"] = 0.5
    half = tmp_path / "half.pt"
    torch.save(content, half)
    out = tmp_path / "s.geojson"
    assert run(["segment", str(half), str(slide), "--out", str(out), skip, *SMALL]).exit_code == 0
    mask = rasterise(polygons_of(out), mosaic.shape[:2])
    assert mask.shape == mosaic.shape[:2], "polygons are in level-0 pixels, not network pixels"
    reference = load_segmenter(half, device="cpu").segment(mosaic, tile=256, overlap=32)
    assert iou(mask, reference) > 0.97


def test_several_slides_and_a_window_and_a_mask(tiny_model, slide, tmp_path):
    second = tmp_path / "second.tif"
    second.write_bytes(slide.read_bytes())
    out = tmp_path / "out"
    assert run(["segment", str(tiny_model), str(slide), str(second), "--out", str(out), *SMALL]).exit_code == 0
    assert sorted(p.name for p in out.glob("*.geojson")) == ["mosaic.geojson", "second.geojson"]
    win, mask = tmp_path / "w.geojson", tmp_path / "w.png"
    assert run(["segment", str(tiny_model), str(slide), "--window", "100,50,700,600", "--out", str(win),
                "--mask-out", str(mask), *SMALL]).exit_code == 0
    for p in polygons_of(win):
        minx, miny, maxx, maxy = p.bounds
        assert minx >= 100 and miny >= 50 and maxx <= 800 and maxy <= 650
    import cv2

    assert cv2.imread(str(mask), cv2.IMREAD_UNCHANGED).shape == (38, 44)  # ceil(600/16), ceil(700/16)


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cyseg: error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_slide_inputs(tiny_model, slide, tmp_path):
    garbage = tmp_path / "broken.svs"
    garbage.write_bytes(b"not a slide at all" * 100)
    one_line_error(run(["segment", str(tiny_model), str(garbage), "--out", str(tmp_path / "x.geojson")]), "broken.svs")
    odd = tmp_path / "slide.xyz"
    odd.write_bytes(b"\x00" * 64)
    one_line_error(run(["segment", str(tiny_model), str(odd), "--out", str(tmp_path / "y.geojson")]), "slide.xyz",
                   "unsupported")
    one_line_error(run(["segment", str(tiny_model), str(slide), "--window", "1600,0,100,100", *SMALL]),
                   "outside the slide")
    one_line_error(run(["segment", str(tiny_model), str(slide), "--window", "0,0,0,100", *SMALL]), "zero or negative "
                   "size")
    one_line_error(run(["segment", str(tiny_model), str(slide), "--window", "a,b,c,d", *SMALL]), "four integers")
    assert not list(tmp_path.glob("*.geojson"))


def test_model_with_other_input_channels_is_refused(slide, tmp_path):
    grey = UNetSegmenter({"in_channels": 1, "n": 2, "depth": 2}, device="cpu")
    grey.save(tmp_path / "grey.pt")
    one_line_error(run(["segment", str(tmp_path / "grey.pt"), str(slide), "--out", str(tmp_path / "g.geojson"),
                        *SMALL]),
                   "1 input channels")
    assert not (tmp_path / "g.geojson").exists()


def test_disk_full_while_writing_leaves_no_output(tiny_model, slide, tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "full.geojson"
    one_line_error(run(["segment", str(tiny_model), str(slide), "--out", str(out), "--cache", str(tmp_path / "c"),
                        *SMALL]),
                   "No space left", "free disk space")
    assert not out.exists() and not list(tmp_path.glob(".full.geojson*"))


def test_box_areas_give_the_polygons_of_whole_windows(tiny_model, slide, tmp_path, monkeypatch):
    """Post-processing and tracing each group of tissue boxes on its own area (the default with
    skipping) gives exactly the polygons of post-processing the whole window."""
    import segmenter.wsi.engine as wsi

    groups: list[int] = []
    real_box_groups = wsi.box_groups
    monkeypatch.setattr(wsi, "box_groups", lambda *a: groups.append(len(out := real_box_groups(*a))) or out)
    per_area = tmp_path / "areas.geojson"
    wide = [*SMALL, "--window-size", "1024", "--skip-background"]  # windows holding separate pieces of tissue
    assert run(["segment", str(tiny_model), str(slide), "--out", str(per_area), *wide]).exit_code == 0
    monkeypatch.setattr(wsi, "chain_radius", lambda spec: None)  # as for a chain that looks at the whole map
    whole = tmp_path / "whole.geojson"
    assert run(["segment", str(tiny_model), str(slide), "--out", str(whole), *wide,
                "--cache", str(tmp_path / "c2")]).exit_code == 0
    key = lambda p: p.wkb  # noqa: E731
    assert sorted(map(key, polygons_of(per_area))) == sorted(map(key, polygons_of(whole)))
    assert len(polygons_of(whole)) > 5 and max(groups) >= 2, groups


def test_box_groups_pad_merge_and_keep_their_boxes():
    from segmenter.wsi.windows import box_groups

    boxes = [(10, 10, 20, 20), (34, 10, 5, 5), (100, 100, 10, 10), (0, 150, 10, 10)]
    groups = box_groups(boxes, 3, 160, 160)
    assert groups == [((0, 147, 13, 13), [(0, 150, 10, 10)]),
                      ((7, 7, 35, 26), [(10, 10, 20, 20), (34, 10, 5, 5)]),
                      ((97, 97, 16, 16), [(100, 100, 10, 10)])]


def test_chain_radius():
    from transforms.chain import chain_radius, default_chain, idi_chain

    assert chain_radius(default_chain(erode_k=3, erode_iterations=2, smoothing_k=5)) == 2 * 2 * 1 + 2
    assert chain_radius([{"op": "threshold", "t": 0.5}]) == 0
    assert chain_radius(idi_chain()) is None


def test_window_results_round_trip_through_the_cache_format() -> None:
    holed = Polygon([(0, 0), (50, 0), (50, 40), (0, 40)], [[(10, 10), (20, 10), (20, 20), (10, 20)]])
    result = WindowResult(7, [holed, box(60, 5, 70.5, 9)], [{"area": 1900.0}, {"area": 42.0}], 4, 1, 0.25, 0.125)
    back = WindowResult.from_json(json.loads(json.dumps(result.to_json())))
    assert [p.equals_exact(q, 0) for p, q in zip(back.polygons, result.polygons, strict=True)] == [True, True]
    assert (back.index, back.props, back.tiles, back.skipped, back.seconds, back.inference_seconds) == \
        (7, result.props, 4, 1, 0.25, 0.125)
    older = {k: v for k, v in result.to_json().items() if k != "inference_seconds"}  # a cache written before the split
    assert WindowResult.from_json(older).inference_seconds == 0.0
    empty = WindowResult.from_json(json.loads(json.dumps(WindowResult(2, [], [], 1, 1, 0.0).to_json())))
    assert empty.polygons == [] and empty.index == 2



def _scattered_cells(n: int, seed: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list]:
    """A 4096² tissue mask (1 px = 8 level-0 px) of round cells and small clusters, with the
    engine's boxes and shapes for one 4096² window of it (margin 64)."""
    import cv2

    from segmenter.wsi.cores import box_shapes
    from segmenter.wsi.tissue import TissueMask
    from segmenter.wsi.windows import Region, tissue_boxes

    rng = np.random.default_rng(seed)
    mask = np.zeros((512, 512), np.uint8)
    for x, y, r in zip(rng.integers(20, 490, n), rng.integers(20, 490, n), rng.integers(3, 14, n), strict=True):
        cv2.circle(mask, (int(x), int(y)), int(r), 1, -1)
    tissue, opts = TissueMask(mask.astype(bool), 8.0), WsiOptions()
    boxes = tissue_boxes(tissue, Region(0, 0, 4096, 4096), (0, 0, 4096, 4096), opts)
    shapes = box_shapes(tissue, Region(0, 0, 4096, 4096), (0, 0, 4096, 4096), boxes, opts, 1024)
    return mask, boxes, shapes


def _own(tissue: np.ndarray) -> np.ndarray:
    """The pieces of a box's tissue that do not reach its sides (the others' tissue reaches in)."""
    from scipy import ndimage

    labels, _ = ndimage.label(tissue, np.ones((3, 3)))
    edges = set(labels[0]) | set(labels[-1]) | set(labels[:, 0]) | set(labels[:, -1])
    return (labels > 0) & ~np.isin(labels, list(edges))


def test_boxes_are_packed_onto_sheets_by_their_shapes_keeping_others_tissue_a_margin_away():
    from scipy import ndimage

    from segmenter.wsi.packing import GRID, BoxShape, pack, packable

    mask, boxes, shapes = _scattered_cells(60, 0)
    assert all(s is not None and packable(s, 1024) for s in shapes)
    assert not packable(BoxShape(np.ones((65, 3), bool), np.ones((65, 3), bool)), 1024)  # taller than a sheet
    sheets = pack(boxes, shapes, 1024, multiple=128)
    assert pack(list(reversed(boxes)), list(reversed(shapes)), 1024, multiple=128) == sheets
    assert pack([], [], 1024) == []
    assert sorted(b for s in sheets for b, _ in s.places) == sorted(boxes)
    shape_of = dict(zip(boxes, shapes, strict=True))
    for sheet in sheets:
        assert sheet.width <= 1024 and sheet.height <= 1024 and sheet.width % 128 == 0 and sheet.height % 128 == 0
        owner = np.zeros((sheet.height // GRID, sheet.width // GRID), int)
        tissue = np.zeros((sheet.height, sheet.width), int)  # each box's tissue a margin inside it, numbered
        for k, ((bx, by, bw, bh), (x, y)) in enumerate(sheet.places, start=1):
            shape = shape_of[bx, by, bw, bh]
            rows, cols = np.nonzero(shape.ring)
            assert (rows + y // GRID).min() >= 0 and (cols + x // GRID).min() >= 0  # rings stay on the sheet
            assert (rows + y // GRID).max() < owner.shape[0] and (cols + x // GRID).max() < owner.shape[1]
            rows, cols = np.nonzero(shape.core)
            assert (owner[rows + y // GRID, cols + x // GRID] == 0).all()  # no two cores share a cell
            owner[rows + y // GRID, cols + x // GRID] = k
            ys, xs = np.nonzero(np.kron(_own(mask[by // 8:(by + bh) // 8, bx // 8:(bx + bw) // 8]), np.ones((8, 8))))
            tissue[ys + y, xs + x] = k
        for k in range(1, len(sheet.places) + 1):  # others' tissue lies a margin away (to a mask pixel)
            away = ndimage.distance_transform_edt(tissue != k)
            assert away[(tissue > 0) & (tissue != k)].min(initial=np.inf) >= 64 - 8
    rectangles = sum(w * h for _, _, w, h in boxes)
    assert sum(s.width * s.height for s in sheets) < rectangles  # less than any packing of the boxes themselves


def test_a_box_core_is_its_own_tissue_grown_by_half_the_margin():
    from segmenter.wsi.cores import WHOLE_SHARE, box_shapes, cell_pixels
    from segmenter.wsi.packing import GRID
    from segmenter.wsi.tissue import TissueMask
    from segmenter.wsi.windows import Region

    mask = np.zeros((64, 64), bool)
    mask[10:14, 10:14] = True  # a cell at level-0 pixels 80..112 (8 px per mask pixel)
    mask[10:14, 30:40] = True  # another box's cell reaching into this box from its right side
    box = (80 - 64, 80 - 64, 32 + 128, 32 + 128)
    region, window = Region(0, 0, 512, 512), (0, 0, 512, 512)
    (shape,) = box_shapes(TissueMask(mask, 8.0), region, window, [box], WsiOptions(), 1024)
    assert shape.core.shape == (-(-box[3] // GRID), -(-box[2] // GRID)) == shape.ring.shape
    core, ring = cell_pixels(shape.core, box[2], box[3]), cell_pixels(shape.ring, box[2], box[3])
    assert core[64:96, 64:96].all() and core[64 - 32:96 + 32, 80].all()  # the cell and half a margin
    assert not core[:64 - 32 - GRID].any() and not core[96 + 32 + GRID:].any()  # no further
    assert not core[80, 96 + 32 + GRID:].any()  # the other box's cell is not this one's
    assert ring[64 - 64:96 + 64, 80].all() and (ring >= core).all()  # the ring: the full margin around the cell
    ring_mask = np.zeros((64, 64), bool)
    ring_mask[10:14, 10:14], ring_mask[12, 6:18] = True, True  # a cell with a lumen: its hull's holes are its own
    ring_mask[11:13, 11:13] = False
    (holed,) = box_shapes(TissueMask(ring_mask, 8.0), region, window, [box], WsiOptions(), 1024)
    assert cell_pixels(holed.core, box[2], box[3])[80, 80]
    full = np.zeros((128, 128), bool)
    full[10:90, 10:90] = True  # tissue filling most of its box: kept whole
    big = (80 - 64, 80 - 64, 640 + 128, 640 + 128)
    (whole,) = box_shapes(TissueMask(full, 8.0), Region(0, 0, 1024, 1024), (0, 0, 1024, 1024), [big], WsiOptions(),
                          1024)
    assert whole.core.all() and whole.ring.all() and WHOLE_SHARE < 1
    assert box_shapes(TissueMask(mask, 8.0), region, window, [(0, 0, 1100, 50)], WsiOptions(), 1024) == [None]


@pytest.mark.parametrize("box, window, expected", [
    ((300, 40, 700, 500), (3600, 4000), (266, 34, 768, 512)),  # grown evenly to multiples of 128
    ((0, 0, 513, 640), (3600, 4000), (0, 0, 640, 640)),  # kept inside at the near edges
    ((2990, 3400, 600, 590), (3600, 4000), (2960, 3360, 640, 640)),  # and at the far edges
    ((100, 100, 1500, 700), (3600, 4000), (100, 66, 1500, 768)),  # a side longer than the tile is tiled
    ((50, 0, 600, 990), (3600, 1000), (30, 0, 640, 990)),  # no room in the window for 1024
])
def test_large_boxes_are_predicted_on_shared_shapes_within_the_window(box, window, expected):
    from segmenter.wsi.engine import forward_box

    x, y, w, h = forward_box(box, 1024, 128, *window)
    assert (x, y, w, h) == expected
    assert x <= box[0] and y <= box[1] and x + w >= box[0] + box[2] and y + h >= box[1] + box[3]
    assert min(x, y) >= 0 and x + w <= window[0] and y + h <= window[1]


def test_foreground_groups_hold_each_component_whole_and_each_pixel_once():
    import cv2

    from segmenter.wsi.engine import foreground_groups

    rng = np.random.default_rng(3)
    foreground = np.zeros((203, 317), bool)
    for _ in range(40):  # blobs, some touching, some cut by the array's edges
        y, x, r = rng.integers(-5, 208), rng.integers(-5, 322), rng.integers(2, 12)
        yy, xx = np.ogrid[:203, :317]
        foreground |= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    owner = np.zeros(foreground.shape, int)
    for k, ((x, y, w, h), member) in enumerate(foreground_groups(foreground, 16), start=1):
        assert member.shape == (h, w) and x % 16 == 0 and y % 16 == 0 and x + w <= 317 and y + h <= 203
        view = owner[y:y + h, x:x + w]
        assert not (view[member] > 0).any()  # no pixel in two groups
        view[member] = k
    assert (owner[foreground] > 0).all()
    _, components = cv2.connectedComponents(foreground.view(np.uint8), connectivity=8)
    for c in range(1, components.max() + 1):
        assert len(np.unique(owner[components == c])) == 1  # a component lies whole in one group


def test_overlapping_tissue_boxes_merge_only_when_one_box_costs_no_more():
    from segmenter.wsi.windows import merge_overlapping

    diagonal = [(0, 0, 100, 100), (60, 60, 100, 100)]  # their bounding box would hold 160² > 2 x 100² pixels
    assert sorted(merge_overlapping(diagonal, cheaper_only=True)) == diagonal
    assert merge_overlapping(diagonal) == [(0, 0, 160, 160)]
    assert merge_overlapping([(0, 0, 100, 100), (10, 10, 100, 100)], cheaper_only=True) == [(0, 0, 110, 110)]


def test_a_slide_is_previewed_once_for_the_scope_check_and_tissue_detection(tiny_model, slide, tmp_path, monkeypatch):
    from segmenter.wsi.slide import PREVIEW_SIDE, SlideReader

    sides: list[int] = []
    real = SlideReader.thumbnail
    monkeypatch.setattr(SlideReader, "thumbnail", lambda self, side, *a: sides.append(side) or real(self, side, *a))
    assert run(["segment", str(tiny_model), str(slide), "--out", str(tmp_path / "s.geojson"), *SMALL]).exit_code == 0
    assert sides.count(PREVIEW_SIDE) == 1, sides


def test_a_window_dense_with_tissue_is_inferred_whole_and_a_sparse_one_by_boxes():
    from segmenter.wsi.tissue import TissueMask
    from segmenter.wsi.windows import Region, plan_windows

    opts = WsiOptions(tile=256, overlap=32, window_size=1024, window_overlap=96)
    dense = np.zeros((64, 128), bool)
    dense[:, :64] = True  # the left window is all tissue, the right one holds a single cell
    dense[30, 100] = True
    tissue = TissueMask(dense, 16.0)
    tasks = plan_windows(window_topology(2048, 1024, opts), Region(0, 0, 2048, 1024), opts, tissue, 16)
    assert tasks[0].boxes is None and tasks[0].skipped == 0
    sparse = tasks[1]  # level-0 x 928..1952: the dense window's edge and the cell, boxed
    assert (1600 - 928 - 64, 480 - 64, 16 + 128, 16 + 128) in sparse.boxes and sparse.skipped > 0


def test_tissue_in_the_part_a_neighbour_owns_is_boxed_by_that_neighbour_only():
    from segmenter.wsi.tissue import TissueMask
    from segmenter.wsi.windows import OWNED_SLACK, Region, intersects, plan_windows

    opts = WsiOptions(tile=256, overlap=32, window_size=1024, window_overlap=96)
    cells = np.zeros((64, 128), bool)  # 16 level-0 px per mask pixel; windows own up to x = 976
    cells[10, 60] = True  # x 960..976: owned by the left window, within the right one's slack
    cells[30, 63] = True  # x 1008..1024: inside the left window, in the part the right one owns
    assert 976 + OWNED_SLACK <= 1008
    left, right = plan_windows(window_topology(2048, 1024, opts), Region(0, 0, 2048, 1024), opts,
                               TissueMask(cells, 16.0), 16)[:2]
    assert (960 - 64, 160 - 64, 1024 - 896, 144) in left.boxes  # clipped at the window's edge
    assert not any(intersects(box, (1008, 480, 16, 16)) for box in left.boxes)
    assert sorted(right.boxes) == [(0, 160 - 64, 976 - 928 + 64, 144), (1008 - 928 - 64, 480 - 64, 144, 144)]
