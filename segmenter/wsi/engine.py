"""Segmenting one window of a slide (DESIGN §6): read and infer the whole window or only its
tissue boxes (tiled, batched and blended by the Segmenter), post-process on the model's device, and
trace the polygons of the part of the window it owns. Windows are planned in `segmenter.wsi.windows`,
cached in `segmenter.wsi.cache` and merged in `segmenter.wsi.merge`."""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from shapely.geometry import Polygon

from segmenter.instances import instance_labels
from segmenter.polygons import mask_to_polygons
from segmenter.wsi.cache import WindowResult
from segmenter.wsi.objects import owned_objects
from segmenter.wsi.windows import Region, WindowTask, WsiOptions, box_groups
from transforms.chain import chain_radius

if TYPE_CHECKING:
    from segmenter.base import Segmenter
    from segmenter.wsi.slide import SlideReader


def read_box(reader: SlideReader, region: Region, x: int, y: int, w: int, h: int, downsample: float) -> np.ndarray:
    """Pixels of a box (processing pixels, relative to the region) at the processing resolution,
    read from the best pyramid level."""
    level = reader.level_for_downsample(downsample)
    level_ds = reader.level_downsamples[level]
    lw = max(1, math.ceil(w * downsample / level_ds))
    lh = max(1, math.ceil(h * downsample / level_ds))
    pixels = reader.read(region.x + round(x * downsample), region.y + round(y * downsample), lw, lh, level)
    if (lw, lh) != (w, h):
        pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)
    return pixels


def process_window(seg: Segmenter, reader: SlideReader, region: Region, task: WindowTask,
                   opts: WsiOptions) -> WindowResult:
    """Segment one window: read and infer the whole window, or only its tissue boxes (tiled,
    batched, blended), post-process on the device, keep the owned part, trace its polygons.

    With tissue boxes and a local post-processing chain, each group of boxes is post-processed and
    traced on its own area (the boxes plus background beyond the chain's reach): the same polygons
    as for the whole window, for work proportional to the tissue rather than to the window."""
    start = time.perf_counter()
    if task.boxes is not None and not task.boxes:
        return WindowResult(task.index, [], [], task.tiles, task.tiles, time.perf_counter() - start)
    radius = chain_radius(seg.postprocess)
    if task.boxes is None or radius is None:
        areas = [((0, 0, task.w, task.h), task.boxes)]
    else:
        areas = box_groups(task.boxes, radius + 2, task.w, task.h)
    located: list[tuple[Polygon, dict[str, Any]]] = []
    for area, boxes in areas:
        probs = _area_probabilities(seg, reader, region, task, opts, area, boxes)
        if opts.instances and seg.instance_classes:
            located += _area_objects(seg, probs, task, area, opts)
        else:
            located += _owned_polygons(seg, probs, task, area, opts)
    return WindowResult(task.index, [p for p, _ in located], [props for _, props in located], task.tiles,
                        task.skipped, time.perf_counter() - start)


def _area_probabilities(seg: Segmenter, reader: SlideReader, region: Region, task: WindowTask, opts: WsiOptions,
                        area: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]] | None) -> torch.Tensor:
    """Probabilities (C, h, w) over an area of the window: inferred on the whole area, or on its
    boxes only (zero elsewhere)."""
    ax, ay, aw, ah = area
    tiling = {"tile": opts.tile, "overlap": opts.overlap, "batch": opts.batch, "tta": opts.tta, "amp": opts.amp}
    if boxes is None:
        return seg.predict(read_box(reader, region, task.x + ax, task.y + ay, aw, ah, opts.downsample), **tiling)
    probs = torch.zeros((seg.n_outputs, ah, aw), device=seg.device)
    for bx, by, bw, bh in boxes:
        pixels = read_box(reader, region, task.x + bx, task.y + by, bw, bh, opts.downsample)
        probs[:, by - ay:by - ay + bh, bx - ax:bx - ax + bw] = seg.predict(pixels, **tiling)
    return probs


def _owned_polygons(seg: Segmenter, probs: torch.Tensor, task: WindowTask, area: tuple[int, int, int, int],
                    opts: WsiOptions) -> list[tuple[Polygon, dict[str, Any]]]:
    """Post-process an area's probabilities on the device and trace each class's polygons in the
    part of it the window owns (processing pixels relative to the region); they are joined across
    window borders later (`segmenter.wsi.merge`)."""
    ax, ay, aw, ah = area
    ox, oy, ow, oh = task.own
    x0, y0, x1, y1 = max(ax, ox), max(ay, oy), min(ax + aw, ox + ow), min(ay + ah, oy + oh)
    if x1 <= x0 or y1 <= y0:
        return []
    with torch.inference_mode():
        rows, cols = slice(y0 - ay, y1 - ay), slice(x0 - ax, x1 - ax)
        masks = seg.class_masks(probs, opts.threshold)[:, rows, cols].cpu().numpy()
        owned = probs[:seg.n_classes, rows, cols].cpu().numpy()
    return [(polygon, {**props, "class": label}) for c, label in enumerate(seg.labels)
            for polygon, props in mask_to_polygons(masks[c], owned[c], offset=(task.x + x0, task.y + y0))]


def _area_objects(seg: Segmenter, probs: torch.Tensor, task: WindowTask, area: tuple[int, int, int, int],
                  opts: WsiOptions) -> list[tuple[Polygon, dict[str, Any]]]:
    """Separate the instances of an area (all of it: objects reach into the overlap) and keep those
    the window owns (`segmenter.wsi.objects`)."""
    with torch.inference_mode():
        masks = seg.class_masks(probs, opts.threshold).cpu().numpy()
        probs_np = probs.cpu().numpy()
    objects = instance_labels(seg, masks, probs_np)
    return [located for c, label in enumerate(seg.labels)
            for located in owned_objects(objects[seg.channels[c]], probs_np[c], area, task, label)]
