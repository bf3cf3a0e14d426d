"""The shape of each tissue box (`segmenter.wsi.packing.BoxShape`) on cells of GRID pixels over the
box: its core, the box's own tissue grown by half the tissue margin, where its predictions are
kept; its ring, the core grown by half a margin more, the surroundings pasted with it on a sheet."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segmenter.wsi.packing import GRID, Box, BoxShape

if TYPE_CHECKING:
    from segmenter.wsi.tissue import TissueMask
    from segmenter.wsi.windows import Region, WsiOptions

# a box whose core covers at least this share of it is kept whole: packing by shape would save little
# there, and the whole box keeps what the network predicts past the tissue mask (a lumen cut open by
# the edge of a section)
WHOLE_SHARE = 0.7


def box_shapes(tissue: TissueMask, region: Region, window: Box, boxes: list[Box], opts: WsiOptions,
               tile: int) -> list[BoxShape | None]:
    """Per box (window-relative processing pixels), its shape: the core covers the cells within half
    the tissue margin of the box's own tissue (`_own_tissue`, the mask's pixels grown by a disc), or
    the whole box (WHOLE_SHARE); the ring, the core grown by half a margin, both within the box.
    None for a box longer than `tile`, which is never packed."""
    half = opts.tissue_margin / 2
    reach = max(1, math.ceil(half * opts.downsample / tissue.downsample))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    shapes: list[BoxShape | None] = []
    for box in boxes:
        if max(box[2:]) > tile:
            shapes.append(None)
            continue
        core = _core(tissue, region, window, box, opts.downsample, disc)
        if core.sum() >= WHOLE_SHARE * core.size:
            core[:] = True
        shapes.append(BoxShape(core, grown_cells(core, math.ceil(half))))
    return shapes


def _core(tissue: TissueMask, region: Region, window: Box, box: Box, downsample: float,
          disc: np.ndarray) -> np.ndarray:
    """One box's core cells (see `box_shapes`)."""
    bx, by, bw, bh = box
    d, (ox, oy) = tissue.downsample, tissue.origin
    cols = np.floor((region.x + (window[0] + bx + np.arange(bw)) * downsample - ox) / d).astype(np.int64)
    rows = np.floor((region.y + (window[1] + by + np.arange(bh)) * downsample - oy) / d).astype(np.int64)
    x0, y0, x1, y1 = int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
    own = np.zeros((y1 - y0, x1 - x0), np.uint8)  # the box's own tissue, in mask pixels
    mh, mw = tissue.mask.shape
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, mw), min(y1, mh)
    if sx1 > sx0 and sy1 > sy0:
        # sides where the box ends inside the window: tissue touching them is another box's
        inner = (bx > 0 and sx0 == x0, by > 0 and sy0 == y0,
                 bx + bw < window[2] and sx1 == x1, by + bh < window[3] and sy1 == y1)
        own[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = _own_tissue(tissue.mask[sy0:sy1, sx0:sx1].astype(np.uint8),
                                                                  inner)
    grown = cv2.dilate(own, disc, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cells_any(grown[np.ix_(rows - y0, cols - x0)].astype(bool), GRID)


def _own_tissue(tissue: np.ndarray, inner: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """A box's own tissue: each connected piece of its tissue mask (uint8) replaced by its convex
    hull, since a gland's lumen or a cell's pale centre is part of what the network predicts there
    however far from the tissue mask it lies; pieces that touch an `inner` side (left, top, right,
    bottom) are left out: a box holds its own tissue a margin inside those sides, so such a piece
    belongs to another box, which predicts it with its own surroundings."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(tissue, connectivity=8)
    h, w = tissue.shape
    own = np.zeros_like(tissue)
    for k in range(1, n):
        x, y, cw, ch = (int(v) for v in stats[k, :4])
        if (inner[0] and x == 0) or (inner[1] and y == 0) or (inner[2] and x + cw == w) or (inner[3] and y + ch == h):
            continue
        cv2.fillConvexPoly(own, cv2.convexHull(cv2.findNonZero((labels == k).astype(np.uint8))), 1)
    return own


def cells_any(mask: np.ndarray, cell: int) -> np.ndarray:
    """A (h, w) bool mask as a grid of `cell`-pixel cells (the last row and column may hold fewer
    pixels): a cell is True if any of its pixels is."""
    h, w = mask.shape
    rows, cols = -(-h // cell), -(-w // cell)
    padded = np.zeros((rows * cell, cols * cell), bool)
    padded[:h, :w] = mask
    return padded.reshape(rows, cell, cols, cell).any(axis=(1, 3))


def cell_pixels(cells: np.ndarray, width: int, height: int, cell: int = GRID) -> np.ndarray:
    """A grid of `cell`-pixel cells as a (height, width) bool pixel mask."""
    return cells.repeat(cell, axis=0).repeat(cell, axis=1)[:height, :width]


def grown_cells(cells: np.ndarray, pixels: int) -> np.ndarray:
    """A grid of cells grown by a disc of `pixels` (rounded up to whole cells), within the grid."""
    reach = max(1, -(-pixels // GRID))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    return cv2.dilate(cells.astype(np.uint8), disc, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
