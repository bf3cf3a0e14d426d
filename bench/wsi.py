"""Whole-slide benchmark, one model, one run:

1. the bare model forward (MP/s) on the default tiles (1024 px, batch 1): the ceiling, with the
   network as inference runs it (batch norms folded), and the trained module as it is for reference;
2. cyseg's whole-slide engine on a tissue-dense region with background skipping off (MP/s of
   slide area, polygons included) and MONAI's `sliding_window_inference` on the same network and
   region (mask only), interleaved, best of two each;
3. the whole mostly-empty slide with and without background skipping, with peak RSS of each
   run (a separate `cyseg segment` process) and the ground-truth foreground lost in skipped tiles;
4. the same on slides shaped like cytology (bench/cytology.py: real cells cut out by their masks,
   scattered on glass, single and in small clusters) at each of `--cytology-fills`, under
   `cytology` in the results, with the time a 100,000 x 170,000-pixel slide would take at that
   fill (its area over the measured throughput with skipping: arithmetic, not a run), where each
   run's time went (reading and the network, the objects, the rest) and the bound the floor sets:
   the skipping run with its reading and network replaced by the bare network on the floor alone.

The slides are BUILT from real annotated tiles and cells (bench/mosaic.py, bench/cytology.py) as
pyramidal tiled TIFFs.

    python bench/wsi.py [--size 16384] [--fill 0.08] [--cytology-fills 0.01,0.05,0.15] [--model default] [--workers N]
                        [--out bench/results/wsi_cpu.json]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RunClock, write_results  # noqa: E402
from bench.cytology import cytology_layout, describe_cytology  # noqa: E402
from bench.mosaic import Placement, describe, foreground_total, layout, render  # noqa: E402
from bench.throughput import bare_forward  # noqa: E402
from cyseg.models import resolve_model  # noqa: E402
from segmenter.allocator import freeze_loaded_objects, keep_freed_memory  # noqa: E402
from segmenter.base import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE, Segmenter  # noqa: E402
from segmenter.precision import autocast, precision_name  # noqa: E402
from segmenter.wsi.cores import cell_pixels, cells_any  # noqa: E402
from segmenter.wsi.engine import SHAPE_STEP, box_sheets, forward_box  # noqa: E402
from segmenter.wsi.pyramid import write_pyramid_streaming  # noqa: E402
from segmenter.wsi.readers import open_slide  # noqa: E402
from segmenter.wsi.tissue import SlideTissue, TissueMask, slide_tissue  # noqa: E402
from segmenter.wsi.windows import Region, WsiOptions, plan_windows, window_topology  # noqa: E402
from unet import load_segmenter  # noqa: E402

TARGETS = {"cyseg_vs_bare": ">= 0.80", "cyseg_vs_monai": ">= 1.0", "skip_speedup": ">= 3",
           "peak_rss_mb": "< 2048", "gt_foreground_lost_fraction": "< 0.01"}
CYTOLOGY_TARGETS = {"fill_0.05": {"inferred_vs_floor": "<= 2", "skip_speedup": ">= 4",
                                  "gt_foreground_lost_fraction": "< 0.005",
                                  "masks_differ_fraction_of_fg": "< 0.005", "peak_rss_mb": "<= without skipping",
                                  "full_slide_minutes": "< 15"}}
FULL_SLIDE_SIDE = 170_000  # the slide size users plan for: 100,000 x 170,000 pixels
FULL_SLIDE_MP = 100_000 * FULL_SLIDE_SIDE / 1e6


def build_slide(path: Path, size: int, fill: float) -> list[Placement]:
    """Write the mosaic slide; return its placements (for ground truth)."""
    placements = layout(size, size, fill)
    write_pyramid_streaming(path, size, size, lambda x, y, w, h: render(placements, x, y, w, h),
                            description=describe(size, size, placements), mpp=0.5)
    return placements


def densest_region(placements, size: int, side: int) -> Region:
    """A side x side box holding the most tissue (for the skipping-off comparisons)."""
    best, best_box = -1, Region(0, 0, side, side)
    step = side // 4
    for y in range(0, size - side + 1, step):
        for x in range(0, size - side + 1, step):
            covered = sum(max(0, min(x + side, p.x + p.mask.shape[1]) - max(x, p.x)) *
                          max(0, min(y + side, p.y + p.mask.shape[0]) - max(y, p.y)) for p in placements)
            if covered > best:
                best, best_box = covered, Region(x, y, side, side)
    return best_box


def lost_foreground(slide_path: Path, placements, seg: Segmenter, opts: WsiOptions,
                    tissue: SlideTissue | TissueMask | None = None) -> dict:
    """Ground-truth foreground pixels where the engine keeps no prediction (outside the cores of the
    boxes packed on sheets and outside the boxes predicted alone), the share of the slide the tissue
    boxes cover, and the pixels the network computes on them (boxes that overlap count twice, packed
    boxes as the sheets they are on; as a share of the slide's). The tissue is the engine's
    (`slide_tissue`) unless given."""
    reader = open_slide(slide_path)
    tissue = slide_tissue(reader) if tissue is None else tissue
    region = Region(0, 0, reader.width, reader.height)
    topology = window_topology(reader.width, reader.height, opts)
    tasks = plan_windows(topology, region, opts, tissue, seg.multiple)
    covered = np.zeros((reader.height // 8 + 1, reader.width // 8 + 1), bool)
    kept = np.zeros_like(covered)
    computed = 0
    for task in tasks:
        boxes = [(0, 0, task.w, task.h)] if task.boxes is None else task.boxes  # None: a dense window, whole
        sheets = box_sheets(task, opts.tile, seg.multiple)
        packed = {b for sheet in sheets for b, _ in sheet.places}
        shapes = dict(zip(task.boxes or [], task.shapes or [], strict=False))
        for bx, by, bw, bh in boxes:
            _mark(covered, np.ones((bh, bw), bool), task.x + bx, task.y + by)
            kept_px = cell_pixels(shapes[bx, by, bw, bh].core, bw, bh) \
                if (bx, by, bw, bh) in packed else np.ones((bh, bw), bool)
            _mark(kept, kept_px, task.x + bx, task.y + by)
        computed += sum(s.width * s.height for s in sheets)
        computed += sum(math.prod(forward_box(b, opts.tile, SHAPE_STEP, task.w, task.h)[2:])
                        for b in boxes if b not in packed)
    n_tiles, n_skipped = sum(t.tiles for t in tasks), sum(t.skipped for t in tasks)
    lost = 0
    for p in placements:
        ys, xs = np.nonzero(p.mask)
        lost += int((~kept[(p.y + ys) // 8, (p.x + xs) // 8]).sum())
    total = foreground_total(placements)
    return {"tiles": n_tiles, "tiles_skipped": n_skipped, "area_inferred_fraction": float(covered.mean()),
            "pixels_computed_fraction": computed / (reader.width * reader.height),
            "gt_foreground_px": total, "gt_foreground_lost_px": lost,
            "gt_foreground_lost_fraction": lost / max(total, 1)}


def _mark(cells: np.ndarray, mask: np.ndarray, x: int, y: int, step: int = 8) -> None:
    """Set the cells (`step` pixels a side) of a level-0 grid that any pixel of `mask`, placed at
    (x, y), covers."""
    hit = cells_any(np.pad(mask, ((y % step, 0), (x % step, 0))), step)
    r0, c0 = y // step, x // step
    rows, cols = min(hit.shape[0], cells.shape[0] - r0), min(hit.shape[1], cells.shape[1] - c0)
    cells[r0:r0 + rows, c0:c0 + cols] |= hit[:rows, :cols]


def cyseg_region_throughput(seg: Segmenter, model_path: Path, slide_path: Path, region: Region, skip: bool) -> float:
    """MP/s of the in-process engine on a region (no cache)."""
    from segmenter.wsi.scaleout import InProcess
    from segmenter.wsi.segment import segment_slide

    reader = open_slide(slide_path)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        segment_slide(seg, model_path, reader, Path(tmp) / "r.geojson", WsiOptions(skip_background=skip),
                      InProcess(seg), f"{region.x},{region.y},{region.w},{region.h}", None, progress=False)
        return region.w * region.h / 1e6 / (time.perf_counter() - start)


def monai_throughput(seg: Segmenter, slide_path: Path, region: Region) -> float | None:
    """MP/s of MONAI's sliding_window_inference (read + normalise + infer + threshold) on the region."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return None
    reader = open_slide(slide_path)
    seg.model.eval()
    net = seg.inference_model()  # the network cyseg runs, so only the engines differ
    start = time.perf_counter()
    pixels = reader.read(region.x, region.y, region.w, region.h)
    x = seg.to_input(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    def predictor(t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(net(t.contiguous(memory_format=torch.channels_last)).float())

    with torch.inference_mode(), autocast(seg.device):  # the precision cyseg runs in
        probs = sliding_window_inference(x, roi_size=(DEFAULT_TILE, DEFAULT_TILE), sw_batch_size=DEFAULT_BATCH,
                                         predictor=predictor, overlap=DEFAULT_OVERLAP / DEFAULT_TILE, mode="gaussian")
        (probs > seg.threshold).cpu()
    return region.w * region.h / 1e6 / (time.perf_counter() - start)


def run_mask(path: Path, size: int) -> np.ndarray:
    """The foreground (any class) of a run's GeoJSON on a size x size slide, at level 0."""
    from shapely.geometry import shape

    from segmenter.wsi.segment import low_resolution_mask

    polygons = [shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]
    return low_resolution_mask(polygons, Region(0, 0, size, size), 1.0) > 0


def mask_agreement(a: Path, b: Path, size: int) -> dict:
    """How far the polygons of two runs on the same slide differ: pixels inside one run's polygons
    and not the other's, as a fraction of the second run's foreground, and the Dice of the two."""
    ma, mb = run_mask(a, size), run_mask(b, size)
    both, fa, fb = int(np.count_nonzero(ma & mb)), int(np.count_nonzero(ma)), int(np.count_nonzero(mb))
    return {"differing_px": fa + fb - 2 * both, "differing_fraction_of_fg": (fa + fb - 2 * both) / max(fb, 1),
            "dice": 2 * both / max(fa + fb, 1)}


def cli_run(model: str, slide: Path, out: Path, skip: bool, workers: int = 0) -> dict:
    """A real `cyseg segment` process on the whole slide (its windows over `workers` Dask processes,
    0: in-process): seconds and peak RSS, measured by a wrapper process so earlier runs do not count
    (with workers: the largest single process)."""
    command = [sys.executable, "-m", "cyseg.cli", "-q", "segment", model, str(slide), "--out", str(out),
               "--cache", str(out.parent / f"cache-{skip}"), "--skip-background" if skip else "--no-skip-background",
               "--workers", str(workers)]
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kb = int(done.stdout.strip().splitlines()[-1])
    summary = json.loads(out.read_text())["properties"]["summary"]
    return {"seconds": seconds, "peak_rss_mb": round(peak_kb / 1024, 1), "summary": summary}


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--fill", type=float, default=0.08)
    parser.add_argument("--cytology-fills", default="0.01,0.05,0.15",
                        help="cell fractions of the cytology-shaped slides ('' : none)")
    parser.add_argument("--region", type=int, default=4096)
    parser.add_argument("--model", default="default")
    parser.add_argument("--workers", type=int, default=0,
                        help="Dask worker processes of the whole-slide `cyseg segment` runs (0: in-process)")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def load_model(name: str) -> tuple[Path, Segmenter]:
    """The model file and its segmenter, loaded as every cyseg command loads it: with the heap policy
    on and the loaded objects frozen out of the cyclic garbage collector."""
    keep_freed_memory()
    model_path = resolve_model(name)
    seg = load_segmenter(model_path)
    freeze_loaded_objects()
    return model_path, seg


def timed_build(slide: Path, size: int, fill: float) -> list[Placement]:
    """Build the mosaic slide, saying how long it took; its placements."""
    t0 = time.perf_counter()
    placements = build_slide(slide, size, fill)
    print(f"built {slide} ({size}x{size}, {len(placements)} real tiles) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return placements


def bare_forwards(seg: Segmenter) -> dict[str, float]:
    """MP/s of the bare network on the default tiles: folded (the ceiling) and as trained, best of
    two each, and folded in float32."""
    bare = max(bare_forward(seg, DEFAULT_TILE, DEFAULT_BATCH, 5.0) for _ in range(2))
    plain = max(bare_forward(seg, DEFAULT_TILE, DEFAULT_BATCH, 5.0, plain=True) for _ in range(2))
    float32 = bare_forward(seg, DEFAULT_TILE, DEFAULT_BATCH, 5.0, amp=False)
    return {"bare_forward_float32_mp_s": float32, "bare_forward_mp_s": bare, "bare_forward_unfolded_mp_s": plain}


def region_comparison(seg: Segmenter, model_path: Path, slide: Path, region: Region, bare: float) -> dict[str, Any]:
    """MP/s of cyseg's engine (skipping off) and of MONAI on the region, interleaved, two runs each:
    the machine's speed drifts between minutes, so each keeps the better of its two."""
    engine_runs, monai_runs = [], []
    for _ in range(2):
        engine_runs.append(cyseg_region_throughput(seg, model_path, slide, region, skip=False))
        monai_runs.append(monai_throughput(seg, slide, region))
    engine = max(engine_runs)
    monai = None if None in monai_runs else max(monai_runs)
    return {"cyseg_no_skip_region_mp_s": engine, "cyseg_region_runs_mp_s": engine_runs,
            "monai_region_runs_mp_s": monai_runs, "cyseg_vs_bare": engine / bare,
            "monai_region_mp_s": monai, "cyseg_vs_monai": None if monai is None else engine / monai}


def print_forwards(precision: str, bare: dict[str, float], compared: dict[str, Any]) -> None:
    """One line: the bare network, the engine and MONAI."""
    engine, monai = compared["cyseg_no_skip_region_mp_s"], compared["monai_region_mp_s"]
    print(f"bare forward {bare['bare_forward_mp_s']:.3f} MP/s in {precision} (unfolded module "
          f"{bare['bare_forward_unfolded_mp_s']:.3f}, float32 {bare['bare_forward_float32_mp_s']:.3f}) | cyseg (no "
          f"skipping) {engine:.3f} MP/s ({compared['cyseg_vs_bare']:.1%}) | "
          f"MONAI {monai if monai is None else f'{monai:.3f}'} MP/s", flush=True)


def skipping_loss(slide: Path, placements: list[Placement], seg: Segmenter) -> dict[str, Any]:
    """What background skipping leaves out with the default options (see `lost_foreground`)."""
    loss = lost_foreground(slide, placements, seg, WsiOptions())
    print(f"skipping: {loss['tiles_skipped']}/{loss['tiles']} tiles skipped, {loss['area_inferred_fraction']:.1%} "
          f"of the slide inferred, ground-truth foreground lost {loss['gt_foreground_lost_fraction']:.4%}", flush=True)
    return loss


def whole_slide(model: str, slide: Path, size: int, work: Path, workers: int) -> dict[str, Any]:
    """`cyseg segment` on the whole slide with and without background skipping, and how far the two
    runs' masks differ."""
    with_skip = cli_run(model, slide, work / "skip.geojson", skip=True, workers=workers)
    print(f"whole slide with skipping: {with_skip['seconds']:.0f} s, peak RSS {with_skip['peak_rss_mb']} MB",
          flush=True)
    without = cli_run(model, slide, work / "noskip.geojson", skip=False, workers=workers)
    print(f"whole slide without skipping: {without['seconds']:.0f} s, peak RSS {without['peak_rss_mb']} MB",
          flush=True)
    agreement = mask_agreement(work / "skip.geojson", work / "noskip.geojson", size)
    print(f"skipping vs not: masks differ on {agreement['differing_fraction_of_fg']:.3%} of the foreground "
          f"(Dice {agreement['dice']:.5f})", flush=True)
    megapixels = size * size / 1e6
    return {"whole_slide_skip": {**with_skip, "mp_per_s": megapixels / with_skip["seconds"]},
            "whole_slide_no_skip": {**without, "mp_per_s": megapixels / without["seconds"]},
            "skip_speedup": without["seconds"] / with_skip["seconds"], "skip_vs_no_skip_masks": agreement}


CONTEXT_MARGINS = (0, 8, 16, 32, 64, 96, 128)  # px of real surroundings a cell is inferred with
CONTEXT_REFERENCE = 256  # the reference prediction sees this much around the cell
CONTEXT_TOLERANCE = 0.005  # masks within this fraction of the cell's foreground count as unchanged


def cell_mask_with_context(seg: Segmenter, placements: list[Placement], cell: Placement, size: int,
                           margin: int) -> np.ndarray:
    """The model's mask (any class) inside a cell's box when the cell is inferred on its box grown by
    `margin` px and cut there."""
    h, w = cell.mask.shape
    x0, y0 = max(0, cell.x - margin), max(0, cell.y - margin)
    x1, y1 = min(size, cell.x + w + margin), min(size, cell.y + h + margin)
    with torch.inference_mode():
        masks = seg.class_masks(seg.predict(render(placements, x0, y0, x1 - x0, y1 - y0))).cpu().numpy().any(axis=0)
    return masks[cell.y - y0:cell.y - y0 + h, cell.x - x0:cell.x - x0 + w]


def context_needed(seg: Segmenter, placements: list[Placement], size: int, sample: int = 24) -> dict[str, Any]:
    """How much real surroundings a cell needs: each of `sample` cells is predicted on its box grown
    by m px (cut there, as inference on a box cuts it) and compared, inside its box, with the
    prediction that sees CONTEXT_REFERENCE px around it; the context is the least m at which 95 % of
    the cells' masks differ by less than CONTEXT_TOLERANCE of their foreground."""
    rng = np.random.default_rng(0)
    chosen = [placements[i] for i in rng.choice(len(placements), min(sample, len(placements)), replace=False)]
    differ: dict[int, list[float]] = {m: [] for m in CONTEXT_MARGINS}
    for cell in chosen:
        reference = cell_mask_with_context(seg, placements, cell, size, CONTEXT_REFERENCE)
        for m in CONTEXT_MARGINS:
            changed = cell_mask_with_context(seg, placements, cell, size, m) != reference
            differ[m].append(float(changed.sum()) / max(int(cell.mask.sum()), 1))
    share = {m: float(np.mean(np.asarray(v) < CONTEXT_TOLERANCE)) for m, v in differ.items()}
    needed = next((m for m in CONTEXT_MARGINS if share[m] >= 0.95), CONTEXT_REFERENCE)
    return {"context_px": needed, "cells_sampled": len(chosen), "share_unchanged_by_margin": share,
            "mean_differing_fraction_by_margin": {m: float(np.mean(v)) for m, v in differ.items()}}


def truth_dice(folder: Path, placements: list[Placement], size: int) -> dict[str, float]:
    """Dice of the skipping and unskipped runs' foreground with the slide's true cells: whether the
    pixels where the two runs differ cost accuracy."""
    truth = render(placements, 0, 0, size, size, "mask") > 0
    dice = {}
    for key, name in (("skip", "skip"), ("no_skip", "noskip")):
        found = run_mask(folder / f"{name}.geojson", size)
        dice[key] = 2 * int(np.count_nonzero(found & truth)) / max(int(found.sum()) + int(truth.sum()), 1)
    return dice


def full_size_boxes(slide: Path, placements: list[Placement], seg: Segmenter, size: int) -> dict[str, Any]:
    """The boxes skipping infers when the slide's overview mask is as coarse as a 100,000 x 170,000
    slide's (one pixel per FULL_SLIDE_SIDE / 2048 level-0 pixels): fitted on the fine window masks, as
    the engine does, and fitted on that overview itself; the per-slide figure holds when the first
    matches the slide's own."""
    side = max(1, round(2048 * size / FULL_SLIDE_SIDE))
    tissue = slide_tissue(open_slide(slide), max_side=side)
    fine = lost_foreground(slide, placements, seg, WsiOptions(), tissue)
    coarse = lost_foreground(slide, placements, seg, WsiOptions(), tissue.overview)
    return {"overview_downsample": tissue.overview.downsample, "area_inferred_fraction": fine["area_inferred_fraction"],
            "gt_foreground_lost_fraction": fine["gt_foreground_lost_fraction"],
            "overview_only_area_inferred_fraction": coarse["area_inferred_fraction"]}


def inference_floor(placements: list[Placement], size: int, context: int, bare_mp_s: float) -> dict[str, Any]:
    """The least work skipping could do: the cells dilated by the context they need (as a fraction of
    the slide) and the bare network's time on exactly those pixels."""
    import cv2

    scale = 8
    cells = render_mask_small(placements, size, scale)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * (context // scale) + 1,) * 2)
    grown = cv2.dilate(cells, kernel) > 0
    fraction = float(grown.mean())
    return {"floor_area_fraction": fraction, "floor_bare_seconds": fraction * size * size / 1e6 / bare_mp_s}


def time_split(run: dict[str, Any], in_process: bool) -> dict[str, float | None]:
    """Where a whole-slide run's seconds went: reading pixels and running the network, separating
    and tracing objects, and the rest (process start, tissue detection, joining windows, writing),
    which is only the difference of the two clocks when the windows ran in the process."""
    summary = run["summary"]
    rest = run["seconds"] - summary["window_seconds"] if in_process else None
    return {"inference_s": summary["inference_seconds"], "objects_s": summary["object_seconds"], "rest_s": rest}


def floor_bound(whole: dict[str, Any], floor: dict[str, Any], in_process: bool) -> dict[str, Any]:
    """What skipping could give at best: the skipping run with its reading and network replaced by
    the bare network on the floor's pixels alone, all else as measured: the speed-up over the run
    without skipping and the time of a 100,000 x 170,000-pixel slide."""
    skip, noskip = whole["whole_slide_skip"], whole["whole_slide_no_skip"]
    split = {"skip": time_split(skip, in_process), "no_skip": time_split(noskip, in_process)}
    if not in_process:
        return {"time_split": split}
    best = skip["seconds"] - split["skip"]["inference_s"] + floor["floor_bare_seconds"]
    minutes = FULL_SLIDE_MP / skip["summary"]["megapixels"] * best / 60
    return {"time_split": split,
            "inference_speedup": split["no_skip"]["inference_s"] / max(split["skip"]["inference_s"], 1e-9),
            "skip_speedup_at_floor": noskip["seconds"] / best, "full_slide_minutes_at_floor": minutes,
            "full_slide_at_floor_arithmetic": f"{FULL_SLIDE_MP:.0f} MP / {skip['summary']['megapixels']:.1f} MP x "
                                              f"({skip['seconds']:.1f} - {split['skip']['inference_s']:.1f} + "
                                              f"{floor['floor_bare_seconds']:.1f}) s / 60"}


def render_mask_small(placements: list[Placement], size: int, scale: int) -> np.ndarray:
    """The cells' mask at 1/`scale` (uint8 0/1): a pixel is set when any cell pixel falls in it."""
    out = np.zeros((size // scale + 1, size // scale + 1), np.uint8)
    for p in placements:
        ys, xs = np.nonzero(p.mask)
        out[(p.y + ys) // scale, (p.x + xs) // scale] = 1
    return out


def cytology_slide(model: str, seg: Segmenter, size: int, fill: float, work: Path, bare_mp_s: float,
                   workers: int) -> dict[str, Any]:
    """Build one cytology-shaped slide and measure skipping on it as on the mosaic."""
    slide = work / f"cytology-{fill:g}.tif"
    t0 = time.perf_counter()
    placements = cytology_layout(size, size, fill)
    write_pyramid_streaming(slide, size, size, lambda x, y, w, h: render(placements, x, y, w, h),
                            description=describe_cytology(size, size, placements, fill), mpp=0.5)
    print(f"built {slide} ({len(placements)} cells, {foreground_total(placements) / size ** 2:.2%} of the area) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    loss = skipping_loss(slide, placements, seg)
    context = context_needed(seg, placements, size)
    floor = inference_floor(placements, size, context["context_px"], bare_mp_s)
    print(f"cytology {fill:.0%}: cells need {context['context_px']} px of context; the floor is "
          f"{floor['floor_area_fraction']:.1%} of the slide ({floor['floor_bare_seconds']:.0f} s of bare network), "
          f"skipping infers {loss['area_inferred_fraction']:.1%} (computes {loss['pixels_computed_fraction']:.1%})",
          flush=True)
    full_size = full_size_boxes(slide, placements, seg, size)
    print(f"cytology {fill:.0%}: through a 100k x 170k slide's overview "
          f"(1 px = {full_size['overview_downsample']:.0f} px) the boxes cover "
          f"{full_size['area_inferred_fraction']:.1%} "
          f"({full_size['overview_only_area_inferred_fraction']:.1%} if fitted on the overview)", flush=True)
    folder = work / f"cytology-{fill:g}"
    folder.mkdir()
    whole = whole_slide(model, slide, size, folder, workers)
    skip = whole["whole_slide_skip"]
    truth = truth_dice(folder, placements, size)
    print(f"cytology {fill:.0%}: Dice with the true cells {truth['skip']:.4f} skipping, {truth['no_skip']:.4f} not",
          flush=True)
    minutes = FULL_SLIDE_MP / skip["mp_per_s"] / 60
    print(f"cytology {fill:.0%}: a 100,000 x 170,000 slide at {skip['mp_per_s']:.2f} MP/s takes {minutes:.0f} min",
          flush=True)
    bound = floor_bound(whole, floor, workers == 0)
    if "skip_speedup_at_floor" in bound:
        split = bound["time_split"]
        print(f"cytology {fill:.0%}: reading + network {split['no_skip']['inference_s']:.0f} s -> "
              f"{split['skip']['inference_s']:.0f} s ({bound['inference_speedup']:.1f}x), objects "
              f"{split['no_skip']['objects_s']:.0f} s -> {split['skip']['objects_s']:.0f} s; at the floor skipping "
              f"would be {bound['skip_speedup_at_floor']:.1f}x faster and a full slide "
              f"{bound['full_slide_minutes_at_floor']:.0f} min", flush=True)
    return {"cells": len(placements), "cell_fraction": foreground_total(placements) / size ** 2,
            "skip_speedup": whole["skip_speedup"], "area_inferred_fraction": loss["area_inferred_fraction"],
            "gt_foreground_lost_fraction": loss["gt_foreground_lost_fraction"],
            "peak_rss_mb": skip["peak_rss_mb"], "peak_rss_mb_no_skip": whole["whole_slide_no_skip"]["peak_rss_mb"],
            "masks_differ_fraction_of_fg": whole["skip_vs_no_skip_masks"]["differing_fraction_of_fg"],
            "context": context, **floor,
            "pixels_computed_fraction": loss["pixels_computed_fraction"],
            "inferred_vs_floor": loss["pixels_computed_fraction"] / max(floor["floor_area_fraction"], 1e-9),
            "skipping": loss, "full_size_overview": full_size, "dice_vs_truth": truth, **whole,
            "full_slide_minutes": minutes,
            "full_slide_arithmetic": f"{FULL_SLIDE_MP:.0f} MP / {skip['mp_per_s']:.3f} MP/s / 60", **bound}


def run_header(args: argparse.Namespace, device: str, placements: list[Placement], model_path: Path,
               region: Region, precision: str) -> dict[str, Any]:
    """The results file's description of the run: machine, slide, model, region and precision."""
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {"benchmark": "wsi", "device": device, "gpu": gpu, "cpu_threads": torch.get_num_threads(),
            "segment_workers": args.workers,
            "platform": platform.platform(),
            "slide": {"size": [args.size, args.size], "tiles_placed": len(placements), "fill": args.fill,
                      "description": describe(args.size, args.size, placements)},
            "model": str(model_path), "region": region.__dict__, "precision": precision}


def main() -> None:
    args = parse_args()
    clock = RunClock()
    model_path, seg = load_model(args.model)
    device, precision = str(seg.device), precision_name(seg.device)
    work = Path(tempfile.mkdtemp(prefix="cyseg-wsi-"))
    slide = work / "mosaic.tif"
    placements = timed_build(slide, args.size, args.fill)
    region = densest_region(placements, args.size, args.region)
    bare = bare_forwards(seg)
    compared = region_comparison(seg, model_path, slide, region, bare["bare_forward_mp_s"])
    print_forwards(precision, bare, compared)
    loss = skipping_loss(slide, placements, seg)
    whole = whole_slide(args.model, slide, args.size, work, args.workers)
    out = args.out or ROOT / "bench" / "results" / f"wsi_{device.split(':')[0]}.json"
    partial = out.with_name(f"{out.stem}.partial.json")  # what a stopped run measured; the report never reads it
    result = {**run_header(args, device, placements, model_path, region, precision), **bare, **compared,
              "skipping": loss, **whole, "targets": TARGETS, "cytology": {"targets": CYTOLOGY_TARGETS}}
    write_results(partial, result)
    for fill in (float(f) for f in args.cytology_fills.split(",") if f.strip()):
        result["cytology"][f"fill_{fill:g}"] = cytology_slide(args.model, seg, args.size, fill, work,
                                                             bare["bare_forward_mp_s"], args.workers)
        write_results(partial, result)
    result["run"] = clock.record()
    write_results(out, result)
    partial.unlink()
    print(f"skip speed-up {result['skip_speedup']:.1f}x; results written to {out}")


if __name__ == "__main__":
    main()
