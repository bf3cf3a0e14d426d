"""The core of each tissue box: its tissue grown by half the tissue margin, on cells of GRID pixels
over the box and a border of half a margin around it (`packing.border`), so that tissue at a box's
edge keeps its whole core too. A packed box's predictions are kept on its core only, and cores are
what `segmenter.wsi.packing` keeps apart on a sheet; the glass around them is shared."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segmenter.wsi.packing import GRID, Box, border

if TYPE_CHECKING:
    from segmenter.wsi.tissue import TissueMask
    from segmenter.wsi.windows import Region, WsiOptions


def box_cores(tissue: TissueMask, region: Region, window: Box, boxes: list[Box], opts: WsiOptions,
              tile: int) -> list[np.ndarray | None]:
    """Per box (window-relative processing pixels), its core: a bool grid with one cell per GRID x
    GRID pixels of the box grown by `border` on each side, True where tissue inside the box lies
    within half the tissue margin (the mask's own pixels, grown by a disc); None for a box longer
    than `tile`, which is never packed."""
    reach = max(1, math.ceil(opts.tissue_margin / 2 * opts.downsample / tissue.downsample))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    pad = border(opts.tissue_margin)
    return [_core(tissue, region, window, box, opts.downsample, pad, disc) if max(box[2:]) <= tile else None
            for box in boxes]


def _core(tissue: TissueMask, region: Region, window: Box, box: Box, downsample: float, pad: int,
          disc: np.ndarray) -> np.ndarray:
    """One box's core (see `box_cores`)."""
    bx, by, bw, bh = box
    d, (ox, oy) = tissue.downsample, tissue.origin
    cols = np.floor((region.x + (window[0] + bx + np.arange(-pad, bw + pad)) * downsample - ox) / d).astype(np.int64)
    rows = np.floor((region.y + (window[1] + by + np.arange(-pad, bh + pad)) * downsample - oy) / d).astype(np.int64)
    reach = disc.shape[0] // 2
    x0, y0 = int(cols[0]) - reach, int(rows[0]) - reach
    inside = np.zeros((int(rows[-1]) + reach + 1 - y0, int(cols[-1]) + reach + 1 - x0), np.uint8)
    mh, mw = tissue.mask.shape
    sx0, sy0 = max(int(cols[pad]), 0), max(int(rows[pad]), 0)  # the box's own tissue, with room to grow
    sx1, sy1 = min(int(cols[pad + bw - 1]) + 1, mw), min(int(rows[pad + bh - 1]) + 1, mh)
    if sx1 > sx0 and sy1 > sy0:
        inside[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = tissue.mask[sy0:sy1, sx0:sx1]
    grown = cv2.dilate(inside, disc)[np.ix_(rows - y0, cols - x0)]
    return _cells(grown.astype(bool))


def _cells(pixels: np.ndarray) -> np.ndarray:
    """A (h, w) bool mask as GRID-pixel cells: a cell is True if any of its pixels is."""
    h, w = pixels.shape
    rows, cols = -(-h // GRID), -(-w // GRID)
    padded = np.zeros((rows * GRID, cols * GRID), bool)
    padded[:h, :w] = pixels
    return padded.reshape(rows, GRID, cols, GRID).any(axis=(1, 3))


def core_pixels(core: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    """A core (or a grid like it) as a bool mask of its box's (height, width) pixels."""
    pad = border(margin)
    return core.repeat(GRID, axis=0).repeat(GRID, axis=1)[pad:pad + height, pad:pad + width]


def grown_cells(cells: np.ndarray, pixels: int) -> np.ndarray:
    """A grid of cells grown by a disc of `pixels` (rounded up to whole cells)."""
    reach = max(1, -(-pixels // GRID))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
    return cv2.dilate(cells.astype(np.uint8), disc, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
