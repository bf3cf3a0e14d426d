"""Segmenting one window of a slide (DESIGN §6): read and infer the whole window or only its
tissue boxes (tiled, batched and blended by the Segmenter), post-process on the model's device, and
trace the polygons of the part of the window it owns. Windows are planned in `segmenter.wsi.windows`,
cached in `segmenter.wsi.cache` and merged in `segmenter.wsi.merge`."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from shapely.geometry import Polygon

from segmenter.instances import instance_labels
from segmenter.polygons import mask_to_polygons
from segmenter.tiling import box_weights
from segmenter.wsi.cache import WindowResult
from segmenter.wsi.cores import cell_pixels, cells_any
from segmenter.wsi.objects import owned_objects
from segmenter.wsi.packing import Box, Sheet, pack, packable
from segmenter.wsi.windows import Region, WindowTask, WsiOptions, box_groups, intersects
from transforms.chain import chain_radius

# forward passes on a CPU pay again for each new input shape (kernels built and cached per shape, and
# the caches grow with every shape): sheets and boxes rounded up to multiples of this share a few
SHAPE_STEP = 128
# instances are separated group by group of foreground that touches at this coarser scale
GROUP_CELL = 16

if TYPE_CHECKING:
    from segmenter.base import Segmenter
    from segmenter.wsi.slide import SlideReader


def read_box(reader: SlideReader, region: Region, x: int, y: int, w: int, h: int, downsample: float) -> np.ndarray:
    """Pixels of a box (processing pixels, relative to the region) at the processing resolution,
    read from the best pyramid level (`SlideReader.read_at`)."""
    return reader.read_at(region.x + round(x * downsample), region.y + round(y * downsample), w, h, downsample)


def process_window(seg: Segmenter, reader: SlideReader, region: Region, task: WindowTask,
                   opts: WsiOptions) -> WindowResult:
    """Segment one window: read and infer the whole window, or only its tissue boxes (tiled,
    batched, blended), post-process on the device, keep the owned part, trace its polygons; timed
    in all and in reading and inference.

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
    packed = _packed_box_probabilities(seg, reader, region, task, opts) if task.boxes else {}
    inference = time.perf_counter() - start
    located: list[tuple[Polygon, dict[str, Any]]] = []
    for area, boxes in areas:
        begun = time.perf_counter()
        probs = _area_probabilities(seg, reader, region, task, opts, area, boxes, packed)
        inference += time.perf_counter() - begun
        if opts.instances and seg.instance_classes:
            located += _area_objects(seg, probs, task, area, opts)
        else:
            located += _owned_polygons(seg, probs, task, area, opts)
    return WindowResult(task.index, [p for p, _ in located], [props for _, props in located], task.tiles,
                        task.skipped, time.perf_counter() - start, inference)


def _packed_box_probabilities(seg: Segmenter, reader: SlideReader, region: Region, task: WindowTask,
                              opts: WsiOptions) -> dict[Box, tuple[torch.Tensor, torch.Tensor]]:
    """Probabilities (C, h, w) of each tissue box of the window whose shape fits in a tile, with its
    core as a (h, w) mask: predicted packed on sheets of one tile by their shapes
    (`segmenter.wsi.packing`), zero outside the core. Scattered cells then cost what they and their
    context cover, not one underfilled forward pass each, nor the rectangles around them."""
    out: dict[Box, tuple[torch.Tensor, torch.Tensor]] = {}
    shapes = dict(zip(task.boxes or [], task.shapes or [], strict=False))
    for sheet in box_sheets(task, opts.tile, seg.multiple):
        pieces = [read_box(reader, region, task.x + bx, task.y + by, bw, bh, opts.downsample)
                  for (bx, by, bw, bh), _ in sheet.places]
        cores = [cell_pixels(shapes[box].core, box[2], box[3]) for box, _ in sheet.places]
        rings = [cell_pixels(shapes[box].ring, box[2], box[3]) for box, _ in sheet.places]
        probs = seg.predict(_sheet_canvas(sheet, pieces, rings, cores), **opts.tiling())
        for (box, at), mask in zip(sheet.places, cores, strict=True):
            core = torch.from_numpy(mask).to(seg.device)
            out[box] = (_cut(probs, at, box[2], box[3]).mul_(core), core)
    return out


def box_sheets(task: WindowTask, tile: int, multiple: int) -> list[Sheet]:
    """The sheets a window's boxes whose shapes fit in a tile are predicted on: packed by their
    shapes (`segmenter.wsi.packing`), sides rounded up to multiples of SHAPE_STEP (and of the
    network's `multiple`). A window planned without shapes packs nothing."""
    pairs = [(box, shape) for box, shape in zip(task.boxes or [], task.shapes or [], strict=False)
             if shape is not None and packable(shape, tile)]
    return pack([b for b, _ in pairs], [s for _, s in pairs], tile, math.lcm(multiple, SHAPE_STEP))


def _sheet_canvas(sheet: Sheet, pieces: list[np.ndarray], rings: list[np.ndarray],
                  cores: list[np.ndarray]) -> np.ndarray:
    """A sheet's pixels: glass, then each box's own pixels on its ring, then each core on top, so
    that no box's surroundings hide another's tissue."""
    canvas = np.empty((sheet.height, sheet.width, 3), np.uint8)
    canvas[:] = _glass(pieces)
    for layer in (rings, cores):
        for (_, at), pixels, mask in zip(sheet.places, pieces, layer, strict=True):
            _paste(canvas, pixels, mask, at)
    return canvas


def _overlap(at: tuple[int, int], width: int, height: int, shape: tuple[int, ...]) -> tuple[slice, slice, slice, slice]:
    """Where a box placed at `at` meets a sheet of `shape` (rows, cols, ...): the sheet's rows and
    columns, then the box's."""
    x, y = at
    x0, y0, x1, y1 = max(0, x), max(0, y), min(shape[1], x + width), min(shape[0], y + height)
    return slice(y0, y1), slice(x0, x1), slice(y0 - y, y1 - y), slice(x0 - x, x1 - x)


def _paste(canvas: np.ndarray, pixels: np.ndarray, mask: np.ndarray, at: tuple[int, int]) -> None:
    """Copy a box's pixels under `mask` onto the sheet at `at` (clipped to the sheet)."""
    rows, cols, box_rows, box_cols = _overlap(at, pixels.shape[1], pixels.shape[0], canvas.shape)
    cv2.copyTo(pixels[box_rows, box_cols], mask[box_rows, box_cols].view(np.uint8), canvas[rows, cols])


def _cut(probs: torch.Tensor, at: tuple[int, int], width: int, height: int) -> torch.Tensor:
    """A box's (C, height, width) view of a sheet's probabilities, zero where it reaches past it."""
    rows, cols, box_rows, box_cols = _overlap(at, width, height, tuple(probs.shape[1:]))
    out = probs.new_zeros((probs.shape[0], height, width))
    out[:, box_rows, box_cols] = probs[:, rows, cols]
    return out


def _glass(pieces: list[np.ndarray]) -> np.ndarray:
    """The median colour of the outermost pixels of the boxes: glass, since each box holds its
    tissue with a margin around it."""
    rims = [np.concatenate([p[0], p[-1], p[:, 0], p[:, -1]]) for p in pieces]
    return np.median(np.concatenate(rims), axis=0).astype(np.uint8)


def _area_probabilities(seg: Segmenter, reader: SlideReader, region: Region, task: WindowTask, opts: WsiOptions,
                        area: Box, boxes: list[Box] | None,
                        packed: dict[Box, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Probabilities (C, h, w) over an area of the window: inferred on the whole area, or on its
    boxes only (zero elsewhere; blended where boxes overlap), packed boxes taken (and dropped) from
    `packed`, each on its core only."""
    ax, ay, aw, ah = area
    if boxes is None:
        return seg.predict(read_box(reader, region, task.x + ax, task.y + ay, aw, ah, opts.downsample),
                           **opts.tiling())
    probs = torch.zeros((seg.n_outputs, ah, aw), device=seg.device)
    blended = any(intersects(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    weight = torch.zeros((ah, aw), device=seg.device) if blended else None
    for box in boxes:
        bx, by, bw, bh = box
        rows, cols = slice(by - ay, by - ay + bh), slice(bx - ax, bx - ax + bw)
        w = None if weight is None else box_weights(bh, bw, opts.tissue_margin, seg.device)
        box_probs, core = packed.pop(box, (None, None))
        if box_probs is None:
            _predict_box(seg, reader, region, task, opts, box, probs[:, rows, cols], w)
        elif w is None:
            probs[:, rows, cols] = box_probs
        else:
            w = w * core
            probs[:, rows, cols].addcmul_(box_probs, w)
        if weight is not None:
            weight[rows, cols] += w
    return probs if weight is None else probs.div_(weight.clamp_(min=torch.finfo(weight.dtype).tiny))


def _predict_box(seg: Segmenter, reader: SlideReader, region: Region, task: WindowTask, opts: WsiOptions,
                 box: Box, into: torch.Tensor, scale: torch.Tensor | None) -> None:
    """Add a large box's probabilities (times `scale`) into its view of the canvas, predicted on
    the box grown to a shape shared with other boxes (`forward_box`; the extra rim is real slide
    around it) and cut back, or straight into the canvas when no growth was needed."""
    fx, fy, fw, fh = forward_box(box, opts.tile, SHAPE_STEP, task.w, task.h)
    pixels = read_box(reader, region, task.x + fx, task.y + fy, fw, fh, opts.downsample)
    if (fw, fh) == box[2:]:
        seg.predict(pixels, **opts.tiling(), into=into, scale=scale, multiple=SHAPE_STEP)
        return
    x, y = box[0] - fx, box[1] - fy
    probs = seg.predict(pixels, **opts.tiling(), multiple=SHAPE_STEP)[:, y:y + box[3], x:x + box[2]]
    if scale is None:
        into.add_(probs)
    else:
        into.addcmul_(probs, scale)


def forward_box(box: Box, tile: int, step: int, width: int, height: int) -> Box:
    """The box a large box is predicted on: each side up to `tile` rounded up to a multiple of
    `step` (longer sides are tiled in multiples of it), grown evenly around the box and shifted to
    stay within the window (`width` x `height`), which a side longer than it cannot."""
    def axis(start: int, size: int, limit: int) -> tuple[int, int]:
        grown = size if size > tile else -(-size // step) * step
        if grown > limit:
            return start, size
        return min(max(0, start - (grown - size) // 2), limit - grown), grown

    (x, w), (y, h) = axis(box[0], box[2], width), axis(box[1], box[3], height)
    return x, y, w, h


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
    the window owns (`segmenter.wsi.objects`), one group of nearby foreground at a time
    (`foreground_groups`): objects are separated within their own connected foreground, so this
    gives the objects of the whole area for work that follows the objects, not the glass between.
    Objects under the least areas are dropped before any is kept (specks seed no cell)."""
    with torch.inference_mode():
        masks = seg.class_masks(probs, opts.threshold).cpu().numpy()
        probs_np = probs.cpu().numpy()
    ax, ay, _, _ = area
    located: list[tuple[Polygon, dict[str, Any]]] = []
    for (x, y, w, h), member in foreground_groups(masks.any(axis=0), GROUP_CELL):
        rows, cols = slice(y, y + h), slice(x, x + w)
        objects = instance_labels(seg, masks[:, rows, cols] * member, probs_np[:, rows, cols],
                                  min_areas=opts.working_min_areas(seg))
        located += [item for c, label in enumerate(seg.labels)
                    for item in owned_objects(objects[seg.channels[c]], probs_np[c, rows, cols],
                                              (ax + x, ay + y, w, h), task, label)]
    return located


def foreground_groups(foreground: np.ndarray, cell: int) -> Iterator[tuple[Box, np.ndarray]]:
    """The groups of a (H, W) foreground mask that touch at 1/`cell` resolution: each group's box
    and which of the box's pixels belong to it (bool, box-sized). Every 8-connected component of the
    foreground lies whole in one group, and no pixel is in two."""
    height, width = foreground.shape
    coarse = cells_any(foreground, cell).view(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(coarse, connectivity=8)
    for g in range(1, n):
        gx, gy, gw, gh = (int(v) for v in stats[g, :4])
        x, y = gx * cell, gy * cell
        w, h = min(gw * cell, width - x), min(gh * cell, height - y)
        member = cell_pixels(labels[gy:gy + gh, gx:gx + gw] == g, w, h, cell)
        yield (x, y, w, h), member
