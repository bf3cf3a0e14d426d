"""One whole-slide run, end to end: open the slide, find the tissue, plan windows, run the
pending ones (cached as they finish), merge, convert to slide coordinates and write GeoJSON
(and optionally a low-resolution mask). Prints a progress bar and returns a summary."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from segmenter.cells import assign_nucleus_polygons, object_features
from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_path
from segmenter.io.digest import file_digest
from segmenter.io.images import write_png
from segmenter.polygons import classified_collection, write_geojson
from segmenter.wsi.cache import WindowCache, WindowResult, cache_key
from segmenter.wsi.merge import merge_classes, to_slide_coordinates
from segmenter.wsi.windows import (
    Region,
    WindowTask,
    WsiOptions,
    parse_region,
    plan_windows,
    window_topology,
)

if TYPE_CHECKING:
    import sldc

    from segmenter.base import Segmenter
    from segmenter.wsi.scaleout import DaskRunner, InProcess
    from segmenter.wsi.slide import SlideReader

log = logging.getLogger(__name__)
MOST = 0.8  # tissue on more of the region than this is unlike a cytology slide: warn
MOST_FOREGROUND = 0.5  # cells called on more of the region than this: warn


def low_resolution_mask(polygons, region: Region, downsample: float) -> np.ndarray:
    """The polygons rasterised at 1/`downsample` of level 0 over the region (uint8 0/255)."""
    return np.where(low_resolution_labels(polygons, region, downsample) > 0, 255, 0).astype(np.uint8)


def low_resolution_labels(polygons, region: Region, downsample: float) -> np.ndarray:
    """The polygons rasterised at 1/`downsample` of level 0 over the region, polygon i as label i + 1 (int32)."""
    import rasterio.features
    from affine import Affine

    height, width = max(1, math.ceil(region.h / downsample)), max(1, math.ceil(region.w / downsample))
    if not polygons:
        return np.zeros((height, width), np.int32)
    transform = Affine(downsample, 0, region.x, 0, downsample, region.y)
    return rasterio.features.rasterize(((p, i + 1) for i, p in enumerate(polygons)), out_shape=(height, width),
                                       transform=transform, fill=0, dtype=np.int32)


@dataclass
class SlidePlan:
    """What a run works through: the region, its window topology and tasks, the model's digest and
    the window cache keyed by slide, model, region and options."""

    region: Region
    topology: sldc.TileTopology
    tasks: list[WindowTask]
    digest: str
    cache: WindowCache
    tissue_fraction: float | None  # of the region, when background is skipped


def segment_slide(seg: Segmenter, model_path: Path, reader: SlideReader, out: Path, opts: WsiOptions,
                  runner: InProcess | DaskRunner, region_text: str | None = None, cache_root: Path | None = None,
                  mask_out: Path | None = None, mask_downsample: float = 16.0, label: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Segment a slide (or a window of it) and write `out` (GeoJSON, slide pixel coordinates): each
    class's regions, or for a model trained with instances (unless `opts.instances` is off) one
    object per cell and nucleus, as QuPath cell objects. A one-class model's polygons are classified
    as `label` (default its class, else cell). `mask_out` gets the polygons rasterised (per class,
    <stem>_<class>.png, for a model of named classes)."""
    opts.check()
    labels = (label,) if label and seg.n_classes == 1 else seg.labels
    if seg.in_channels != 3:
        raise CysegError(f"model {model_path} expects {seg.in_channels} input channels but slides are read as RGB; "
                         "use a model trained on RGB images")
    start = time.perf_counter()
    plan = _plan_slide(seg, model_path, reader, opts, region_text, cache_root)
    results, skipped = _run_windows(plan, reader, opts, runner, model_path, progress)
    min_areas = (dict.fromkeys(seg.labels, opts.min_area) if opts.min_area is not None else
                 {label: area * opts.downsample ** 2 for label, area in seg.min_areas(None).items()})
    separated = bool(opts.instances and seg.instance_classes)
    polygons = _slide_polygons(results, plan, opts, min_areas, seg.labels, separated)
    seconds = time.perf_counter() - start
    region, tiles = plan.region, sum(r.tiles for r in results)
    foreground = sum(props["area"] for _, props in polygons if props["class"] == seg.labels[0]) / (region.w * region.h)
    counts = {name: sum(props["class"] == name for _, props in polygons) for name in seg.labels}
    summary = {
        "slide": str(reader.path), "region": asdict(region), "windows": len(plan.tasks),
        "windows_cached": plan.cache.hits, "tiles": tiles, "tiles_skipped": skipped, "polygons": len(polygons),
        "objects": dict(zip(labels, counts.values(), strict=True)), "instances": separated,
        "min_area": {label: round(area, 1) for label, area in min_areas.items()},
        "tissue_fraction": None if plan.tissue_fraction is None else round(plan.tissue_fraction, 4),
        "foreground_fraction": round(foreground, 4),
        "seconds": round(seconds, 3), "megapixels": region.w * region.h / 1e6,
        **_window_seconds(results),
        "mp_per_s": round(region.w * region.h / 1e6 / seconds, 3),
    }
    _warn_if_implausible(reader, foreground)
    extra = {"slide": reader.describe(), "model": {"path": str(model_path), "sha256": plan.digest},
             "options": asdict(opts), "summary": summary, "coordinates": "level-0 pixels, top-left origin"}
    write_geojson(out, slide_collection(polygons, seg.labels, labels, separated, extra))
    if mask_out is not None:
        _write_masks(mask_out, polygons, seg, region, mask_downsample)
    log.info("%s: %d tiles (%d skipped as background), %d polygons, %.1f s, %.2f MP/s -> %s",
             Path(reader.path).name, tiles, skipped, len(polygons), seconds, summary["mp_per_s"], out)
    return summary


def _plan_slide(seg: Segmenter, model_path: Path, reader: SlideReader, opts: WsiOptions, region_text: str | None,
               cache_root: Path | None) -> SlidePlan:
    """The region to segment, the tissue in it (when background is skipped), its windows and their cache."""
    from segmenter.wsi.tissue import slide_tissue

    region = parse_region(region_text, reader.width, reader.height)
    tissue = slide_tissue(reader) if opts.skip_background else None
    covered = None if tissue is None else tissue.overview.fraction(region.x, region.y, region.w, region.h)
    if covered is not None and covered > MOST:
        log.warning("%s: tissue detection finds tissue on %.0f %% of the %s: cytology slides are mostly glass, so "
                    "this may be a dark-background (fluorescence) slide or a full tissue section; check the result",
                    Path(reader.path).name, 100 * covered, "window" if region_text else "slide")
    topology = window_topology(math.ceil(region.w / opts.downsample), math.ceil(region.h / opts.downsample), opts)
    tasks = plan_windows(topology, region, opts, tissue, seg.multiple)
    digest = file_digest(model_path)
    cache = WindowCache(None if cache_root is None else cache_root / cache_key(reader.identity(), digest, region, opts))
    return SlidePlan(region, topology, tasks, digest, cache, covered)


def _window_seconds(results: list[WindowResult]) -> dict[str, float]:
    """What the windows cost, summed over them (more than the run's seconds when windows run side by
    side; a cached window counts what it cost when computed): in all, in reading pixels and running
    the network, and in the rest (separating, tracing and keeping objects: work that follows the
    cells, not the glass)."""
    total, inference = sum(r.seconds for r in results), sum(r.inference_seconds for r in results)
    return {"window_seconds": round(total, 3), "inference_seconds": round(inference, 3),
            "object_seconds": round(total - inference, 3)}


def _warn_if_implausible(reader: SlideReader, foreground: float) -> None:
    """A model that calls most of a slide cells has met something it was not trained for (a
    fluorescence slide, another stain, another scale): say so rather than hand over one big polygon."""
    if foreground > MOST_FOREGROUND:
        log.warning("%s: the model called %.0f %% of the region foreground, far more than cells cover on a "
                    "cytology slide; if the slide is fluorescence or another modality than the model's training "
                    "images, the polygons are not cells", Path(reader.path).name, 100 * foreground)


def _run_windows(plan: SlidePlan, reader: SlideReader, opts: WsiOptions, runner: InProcess | DaskRunner,
                 model_path: Path, progress: bool) -> tuple[list[WindowResult], int]:
    """Every window's result: from the cache, or run by `runner` (and cached as it finishes), with a
    progress bar in tiles; returns them and the number of tiles skipped as background."""
    results, pending = [], []
    for task in plan.tasks:
        cached = plan.cache.load(task.index)
        (results if cached is not None else pending).append(cached if cached is not None else task)
    bar = tqdm(total=sum(t.tiles for t in plan.tasks), unit="tile", desc=Path(reader.path).name,
               disable=not progress, dynamic_ncols=True)
    bar.update(sum(r.tiles for r in results))
    if plan.cache.hits:
        log.info("%d of %d windows already done (cache %s)", plan.cache.hits, len(plan.tasks), plan.cache.folder)
    skipped = sum(r.skipped for r in results)
    for result in runner.run(pending, reader, plan.region, opts, str(model_path), plan.digest):
        plan.cache.store(result)
        results.append(result)
        skipped += result.skipped
        bar.update(result.tiles)
        bar.set_postfix(skipped=skipped)
    bar.close()
    return results, skipped


def _slide_polygons(results: list[WindowResult], plan: SlidePlan, opts: WsiOptions, min_areas: dict[str, float],
                    labels: tuple[str, ...], separated: bool) -> list[tuple[Any, dict[str, Any]]]:
    """The windows' polygons of each class joined across window borders, in slide coordinates, with
    their class, area and mean probability; those under their class's `min_areas` (level-0 px²) dropped."""
    polygons = []
    for polygon, found in merge_classes(results, plan.topology, opts, labels, separated):
        polygon = to_slide_coordinates(polygon, plan.region, opts.downsample)
        if polygon.area < min_areas[found["class"]]:
            continue
        props: dict[str, Any] = {"class": found["class"], "area": float(polygon.area)}
        if found["mean_probability"] is not None:
            props["mean_probability"] = found["mean_probability"]
        polygons.append((polygon, props))
    return polygons


def slide_collection(polygons: list[tuple[Any, dict[str, Any]]], classes: tuple[str, ...], names: tuple[str, ...],
                     separated: bool, extra: dict[str, Any]) -> dict[str, Any]:
    """The slide's GeoJSON: QuPath cell objects (each cell with its nucleus) for instances, else each
    class's polygons classified by its name (`names`, in the order of the model's `classes`)."""
    by_class: dict[str, list[tuple[Any, dict[str, Any]]]] = {name: [] for name in classes}
    for polygon, props in polygons:
        by_class[props["class"]].append((polygon, {k: v for k, v in props.items() if k != "class"}))
    if not separated:
        return classified_collection(dict(zip(names, by_class.values(), strict=True)), extra)
    cells = next((by_class[c] for c in classes if c != "nucleus"), [])
    nuclei = by_class.get("nucleus", [])
    owner = assign_nucleus_polygons([p for p, _ in cells], [p for p, _ in nuclei])
    features = object_features(dict(enumerate(cells)), dict(enumerate(nuclei)), owner,
                               label=next((n for c, n in zip(classes, names, strict=True) if c != "nucleus"), "cell"))
    return {"type": "FeatureCollection", "features": features, "properties": extra}


def _write_masks(mask_out: Path, polygons: list[tuple[Any, dict[str, Any]]], seg: Segmenter, region: Region,
                 downsample: float) -> None:
    """The polygons rasterised: `mask_out` for a model of one unnamed class, else one
    <stem>_<class>.png beside it per class."""
    for name in seg.labels:
        path = mask_out if not seg.classes else mask_out.with_name(f"{mask_out.stem}_{name}{mask_out.suffix}")
        with atomic_path(path) as tmp:
            write_png(tmp, low_resolution_mask([p for p, props in polygons if props["class"] == name], region,
                                               downsample))
