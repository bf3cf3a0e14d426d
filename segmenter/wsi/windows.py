"""Windows over a slide region (DESIGN §6): the run's options, the region, SLDC's window topology,
which part of each window it owns (up to the middle of its overlaps), and the boxes around the tissue
that inference covers when background is skipped."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import shapely
import sldc
from shapely.geometry import Polygon

from segmenter.base import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE
from segmenter.errors import CysegError
from segmenter.tiling import tile_spans
from segmenter.wsi.cores import box_shapes
from segmenter.wsi.packing import BoxShape

if TYPE_CHECKING:
    from segmenter.base import Segmenter
    from segmenter.wsi.tissue import SlideTissue, TissueMask


log = logging.getLogger(__name__)
# a window whose tissue boxes hold at least this share of its pixels is inferred whole (tiled): boxes
# that cover most of it, several overlapping, would compute more than its tiles do
DENSE_SHARE = 0.5
# tissue this far (processing px) beyond the part a window owns, on a side it shares, is left to the
# neighbour that owns it: the objects there are the neighbour's, and predicted foreground reaches
# only a few pixels past the tissue mask
OWNED_SLACK = 16


@dataclass(frozen=True)
class WsiOptions:
    """Everything that changes the polygons of a whole-slide run (hashed into the cache key)."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch: int = DEFAULT_BATCH
    tta: bool = False
    amp: bool = True
    window_size: int = 4096
    window_overlap: int = 256
    downsample: float = 1.0
    skip_background: bool = True
    tissue_margin: int = 64  # bench/wsi.py measures the context a cell needs (docs/benchmarks.md)
    threshold: float | None = None
    simplify: float = 1.0
    min_area: float | None = None  # level-0 px²; None: the model's own (Segmenter.auto_min_areas)
    merge_tolerance: float = 1.0
    instances: bool = True  # separate touching objects (models trained with instances); False: connected regions

    def tiling(self) -> dict[str, Any]:
        """The keyword arguments `Segmenter.predict` takes from these options."""
        return {"tile": self.tile, "overlap": self.overlap, "batch": self.batch, "tta": self.tta, "amp": self.amp}

    def working_min_areas(self, seg: Segmenter) -> dict[str, float]:
        """Per class, the least object area in processing pixels: `min_area` brought down from level 0,
        or the model's own (`Segmenter.auto_min_areas`, in the pixels it was trained on, which the
        processing resolution matches)."""
        if self.min_area is not None:
            return dict.fromkeys(seg.labels, self.min_area / self.downsample ** 2)
        return seg.auto_min_areas()

    def check(self) -> None:
        """Reject combinations that cannot work."""
        if self.window_size < self.tile:
            raise CysegError(f"--window-size {self.window_size} must be >= --tile {self.tile}")
        if self.window_overlap < 2 * self.merge_tolerance or self.window_overlap >= self.window_size // 2:
            raise CysegError(f"--window-overlap {self.window_overlap} must be in [2, window size / 2)")
        if self.downsample < 1:
            raise CysegError(f"processing downsample {self.downsample} is finer than level 0; choose >= 1")


@dataclass(frozen=True)
class Region:
    """A box of the slide in level-0 pixels."""

    x: int
    y: int
    w: int
    h: int


def parse_region(text: str | None, width: int, height: int) -> Region:
    """'x,y,w,h' (level-0 pixels, top-left origin) -> Region, clipped to the slide (with a warning);
    None -> the whole slide."""
    if not text:
        return Region(0, 0, width, height)
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError as exc:
        raise CysegError(f"--window '{text}' must be four integers x,y,w,h (level-0 pixels)") from exc
    if w <= 0 or h <= 0:
        raise CysegError(f"--window '{text}' has zero or negative size; give a positive width and height")
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise CysegError(f"--window '{text}' lies outside the slide ({width}x{height}); give a box inside it")
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        log.warning("--window %s reaches beyond the %dx%d slide: clipped to %d,%d,%d,%d", text, width, height,
                    x0, y0, x1 - x0, y1 - y0)
    return Region(x0, y0, x1 - x0, y1 - y0)


@dataclass
class WindowTask:
    """One window: where it lies (processing pixels, relative to the region), which part it owns,
    and which of its tiles hold tissue."""

    index: int
    x: int
    y: int
    w: int
    h: int
    own: tuple[int, int, int, int]
    tiles: int
    boxes: list[tuple[int, int, int, int]] | None
    skipped: int = 0
    sides: tuple[bool, bool, bool, bool] = (False, False, False, False)  # a neighbour (left, top, right, bottom)
    shapes: list[BoxShape | None] | None = field(default=None, compare=False, repr=False)  # per box (cores.py)


class _Extent(sldc.Image):
    """An SLDC image that is only a size: SLDC supplies the window topology, not the pixels."""

    def __init__(self, width: int, height: int):
        self._w, self._h = width, height

    @property
    def width(self) -> int:
        return self._w

    @property
    def height(self) -> int:
        return self._h

    @property
    def channels(self) -> int:
        return 3

    @property
    def np_image(self):
        raise CysegError("a whole slide is never loaded at once")


def window_topology(width: int, height: int, opts: WsiOptions) -> sldc.TileTopology:
    """SLDC's topology of windows over a region of `width` x `height` processing pixels."""
    return sldc.TileTopology(_Extent(width, height), sldc.DefaultTileBuilder(), max_width=opts.window_size,
                             max_height=opts.window_size, overlap=opts.window_overlap)


def _owned(offset: int, size: int, before: int | None, after: int | None) -> tuple[int, int]:
    """The part [start, end) of a window (relative) it owns: up to the middle of each overlap."""
    start = (before - offset) // 2 if before is not None else 0
    end = size - (offset + size - after) // 2 if after is not None else size
    return start, end


def owned_box(topology: sldc.TileTopology, wid: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the part of window `wid` it owns, relative to the region."""
    tile = topology.tile(wid)
    x, y, w, h = tile.offset_x, tile.offset_y, tile.width, tile.height
    top, bottom, left, right = topology.tile_neighbours(wid)
    x0, x1 = _owned(x, w, topology.tile(left).offset_x + topology.tile(left).width if left else None,
                    topology.tile(right).offset_x if right else None)
    y0, y1 = _owned(y, h, topology.tile(top).offset_y + topology.tile(top).height if top else None,
                    topology.tile(bottom).offset_y if bottom else None)
    return x + x0, y + y0, x + x1, y + y1


def near_cuts(polygons: list[Polygon], topology: sldc.TileTopology, wid: int, tolerance: float) -> np.ndarray:
    """Which of a window's polygons come within `tolerance` of a side it shares with a neighbour:
    the only ones that can merge with another window's (the others lie wholly inside its owned box)."""
    if not polygons:
        return np.zeros(0, bool)
    x0, y0, x1, y1 = owned_box(topology, wid)
    top, bottom, left, right = topology.tile_neighbours(wid)
    minx, miny, maxx, maxy = shapely.bounds(np.asarray(polygons, dtype=object)).T
    margin = tolerance + 1
    return ((left is not None) & (minx <= x0 + margin)) | ((right is not None) & (maxx >= x1 - margin)) | \
        ((top is not None) & (miny <= y0 + margin)) | ((bottom is not None) & (maxy >= y1 - margin))


def plan_windows(topology: sldc.TileTopology, region: Region, opts: WsiOptions,
                 tissue: SlideTissue | TissueMask | None, multiple: int) -> list[WindowTask]:
    """One task per window, with ownership boxes and per-tile tissue flags (tiles laid out as
    `process_window` lays them, for a network whose sides must be multiples of `multiple`), and the
    tissue boxes with their shapes (`segmenter.wsi.cores`); a window dense with tissue (DENSE_SHARE)
    gets no boxes and is inferred whole."""
    tasks = []
    for wid in range(1, topology.tile_count + 1):
        tile = topology.tile(wid)
        x, y, w, h = tile.offset_x, tile.offset_y, tile.width, tile.height
        x0, y0, x1, y1 = owned_box(topology, wid)
        x0, y0, x1, y1 = x0 - x, y0 - y, x1 - x, y1 - y
        ys = tile_spans(h, opts.tile, opts.overlap, multiple)
        xs = tile_spans(w, opts.tile, opts.overlap, multiple)
        boxes, skipped, shapes = None, 0, None
        if tissue is not None:
            claimed = _claimed((x0, y0, x1, y1), topology.tile_neighbours(wid), w, h, opts.tissue_margin)
            mask = window_tissue(tissue, region, (x, y, w, h), opts)
            boxes = tissue_boxes(mask, region, (x, y, w, h), opts, claimed)
            if sum(bw * bh for _, _, bw, bh in boxes) >= DENSE_SHARE * w * h:
                boxes = None  # tissue almost everywhere: whole tiles cost less than the boxes
            else:
                skipped = sum(not any(intersects((tx, ty, tw, th), b) for b in boxes)
                              for ty, th in ys for tx, tw in xs)
                shapes = box_shapes(mask, region, (x, y, w, h), boxes, opts, opts.tile)
        top, bottom, left, right = topology.tile_neighbours(wid)
        sides = (left is not None, top is not None, right is not None, bottom is not None)
        tasks.append(WindowTask(wid, x, y, w, h, (x0, y0, x1 - x0, y1 - y0), len(ys) * len(xs), boxes, skipped,
                                sides, shapes))
    return tasks


def _claimed(owned: tuple[int, int, int, int], neighbours: tuple[Any, Any, Any, Any], width: int, height: int,
             margin: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), window-relative: the box a piece of tissue must reach for the window to box
    it. It is the owned part grown by OWNED_SLACK on the sides shared with a neighbour, and reaches
    past the window and its tissue margin on the others."""
    top, bottom, left, right = neighbours
    x0, y0, x1, y1 = owned
    far = margin + 1
    return (x0 - OWNED_SLACK if left else -far, y0 - OWNED_SLACK if top else -far,
            x1 + OWNED_SLACK if right else width + far, y1 + OWNED_SLACK if bottom else height + far)


def intersects(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes (x, y, w, h) share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def window_tissue(tissue: SlideTissue | TissueMask, region: Region, window: tuple[int, int, int, int],
                  opts: WsiOptions) -> TissueMask:
    """The tissue mask of a window (processing pixels relative to the region) grown by the tissue
    margin, at the slide's fine resolution (`SlideTissue.window_mask`)."""
    x, y, w, h = window
    ds, grow = opts.downsample, opts.tissue_margin
    return tissue.window_mask(region.x + (x - grow) * ds, region.y + (y - grow) * ds, (w + 2 * grow) * ds,
                              (h + 2 * grow) * ds)


def tissue_boxes(tissue: TissueMask, region: Region, window: tuple[int, int, int, int], opts: WsiOptions,
                 claimed: tuple[int, int, int, int] | None = None) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h, window-relative processing pixels) that cover the window's tissue.

    Each connected piece of the tissue mask (a cell, a cluster, a fragment) that reaches the window
    or its tissue margin gets its own box, fitted at the mask's resolution and grown by the tissue
    margin (the real surroundings the network needs to predict an object as it would inside the
    slide); overlapping boxes are merged where one box costs no more than the two. Inference then
    covers the boxes only: on a mostly empty slide far less than whole tiles would, and on
    scattered cells about what the cells and their context cover. The margin trades context for
    work: a thinner one changes more masks at box edges, a wider one infers more glass (bench/wsi.py
    measures the context cells need and both effects: docs/benchmarks.md, "Whole slides")."""
    x, y, w, h = window
    ds, d, (ox, oy) = opts.downsample, tissue.downsample, tissue.origin
    grow = opts.tissue_margin  # processing pixels
    # the window grown by the margin, in mask pixels (level-0 = region origin + processing px x ds)
    mx0 = max(0, math.floor((region.x + (x - grow) * ds - ox) / d))
    my0 = max(0, math.floor((region.y + (y - grow) * ds - oy) / d))
    mx1 = min(tissue.mask.shape[1], math.ceil((region.x + (x + w + grow) * ds - ox) / d))
    my1 = min(tissue.mask.shape[0], math.ceil((region.y + (y + h + grow) * ds - oy) / d))
    if mx1 <= mx0 or my1 <= my0:
        return []
    piece = tissue.mask[my0:my1, mx0:mx1].astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(piece, connectivity=8)
    boxes = []
    for cx, cy, cw, ch, _ in stats[1:n]:
        # the piece in window-relative processing pixels; its box grown by the margin, clipped to the window
        tx0 = math.floor(((mx0 + cx) * d + ox - region.x) / ds) - x
        ty0 = math.floor(((my0 + cy) * d + oy - region.y) / ds) - y
        tx1 = math.ceil(((mx0 + cx + cw) * d + ox - region.x) / ds) - x
        ty1 = math.ceil(((my0 + cy + ch) * d + oy - region.y) / ds) - y
        if claimed is not None and not intersects((tx0, ty0, tx1 - tx0, ty1 - ty0), _as_box(claimed)):
            continue
        bx0, by0, bx1, by1 = max(0, tx0 - grow), max(0, ty0 - grow), min(w, tx1 + grow), min(h, ty1 + grow)
        if bx1 > bx0 and by1 > by0:
            boxes.append((bx0, by0, bx1 - bx0, by1 - by0))
    return sorted(merge_overlapping(boxes, cheaper_only=True))


def _as_box(corners: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) -> (x, y, w, h)."""
    return corners[0], corners[1], corners[2] - corners[0], corners[3] - corners[1]


def merge_overlapping(boxes: list[tuple[int, int, int, int]],
                      cheaper_only: bool = False) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) with overlapping pairs replaced by their bounding box until none is left to
    merge: every overlapping pair, or with `cheaper_only` the pairs whose bounding box holds no more
    pixels than the two boxes (other overlapping boxes are inferred apart and blended)."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if not intersects(a, b):
                    continue
                x0, y0 = min(a[0], b[0]), min(a[1], b[1])
                union = (x0, y0, max(a[0] + a[2], b[0] + b[2]) - x0, max(a[1] + a[3], b[1] + b[3]) - y0)
                if cheaper_only and union[2] * union[3] > a[2] * a[3] + b[2] * b[3]:
                    continue
                boxes[i] = union
                boxes.pop(j)
                merged = True
                break
            if merged:
                break
    return boxes


def box_groups(boxes: list[tuple[int, int, int, int]], pad: int, width: int,
               height: int) -> list[tuple[tuple[int, int, int, int], list[tuple[int, int, int, int]]]]:
    """Disjoint areas (x, y, w, h) that hold the boxes with `pad` pixels of background around each
    (clipped to the window), each with the boxes it holds: post-processing and tracing one area
    sees exactly what it would see in the whole window when `pad` exceeds the chain's radius."""
    grown = [(max(0, x - pad), max(0, y - pad), min(width, x + w + pad), min(height, y + h + pad))
             for x, y, w, h in boxes]
    areas = merge_overlapping([(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in grown])
    members: list[list[tuple[int, int, int, int]]] = [[] for _ in areas]
    for box, (x0, y0, x1, y1) in zip(boxes, grown, strict=True):
        k = next(i for i, (ax, ay, aw, ah) in enumerate(areas)
                 if ax <= x0 and ay <= y0 and x1 <= ax + aw and y1 <= ay + ah)
        members[k].append(box)
    return sorted(zip(areas, members, strict=True))
