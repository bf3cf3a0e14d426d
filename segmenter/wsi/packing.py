"""Tissue boxes packed onto sheets of one tile by their shapes: scattered cells then share forward
passes (on a CPU one small box costs several times more per pixel than a full tile), and a sheet
holds what the cells need rather than the rectangles around them.

Each box carries its shape (`segmenter.wsi.cores`) on a grid of GRID-pixel cells over the box: its
core, the tissue it predicts grown by half the tissue margin, and its ring, the core grown by half
a margin more: the real surroundings its tissue needs. Cores never overlap on a sheet and rings stay
on it, so every tissue pixel keeps a full margin of its own surroundings and the nearest foreign
tissue lies a margin away or more, as across glass; only glass is shared. Each shape goes, largest
first, to the first sheet with room, where it grows the sheet least or reaches least far down; a few
orders and both rules are tried, and the smallest total area wins."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, w, h
GRID = 16  # pixels per side of the cells shapes are drawn and packed on


@dataclass(frozen=True)
class BoxShape:
    """A box's core and ring: bool grids of GRID-pixel cells over the box (see the module)."""

    core: np.ndarray
    ring: np.ndarray

    def bounds(self) -> tuple[int, int, int, int]:
        """The cells (x0, y0, x1, y1) the ring spans."""
        rows, cols = np.nonzero(self.ring.any(axis=1))[0], np.nonzero(self.ring.any(axis=0))[0]
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass(frozen=True)
class Sheet:
    """One image of `width` x `height` pixels holding boxes, each box's top-left corner at (x, y) on
    the sheet; a box may reach past the sheet's edges, its ring never does."""

    width: int
    height: int
    places: tuple[tuple[Box, tuple[int, int]], ...]


def packable(shape: BoxShape, tile: int) -> bool:
    """Whether a box's ring fits on a sheet of one tile."""
    if not shape.core.any():
        return False
    x0, y0, x1, y1 = shape.bounds()
    return max(x1 - x0, y1 - y0) <= tile // GRID


_ORDERS: tuple[Callable[[np.ndarray], tuple[int, ...]], ...] = (
    lambda c: (-int(c.sum()),),  # the most core cells first
    lambda c: (-c.size,),  # the largest extent first
    lambda c: (-c.shape[0], -c.shape[1]),  # the tallest first
    lambda c: (-max(c.shape), -c.size),  # the longest first
)


def pack(boxes: list[Box], shapes: list[BoxShape], tile: int, multiple: int = 1) -> list[Sheet]:
    """The boxes on sheets of at most `tile` square by their shapes (each `packable`), the cheapest
    of a few greedy orders; each sheet trimmed to what it holds, sides rounded up to `multiple`. The
    same boxes always give the same sheets."""
    if not boxes:
        return []
    pieces = [(box, *_cut(shape)) for box, shape in sorted(zip(boxes, shapes, strict=True), key=lambda bs: bs[0])]
    best: list[Sheet] | None = None
    for order, lowest in itertools.product(_ORDERS, (False, True)):
        ranked = sorted(pieces, key=lambda p: order(p[1]))  # stable: ties keep the boxes' order
        sheets = [_sheet(placed, multiple) for placed in _place(ranked, tile // GRID, lowest)]
        if best is None or sum(s.width * s.height for s in sheets) < sum(s.width * s.height for s in best):
            best = sheets
    return best or []


def _cut(shape: BoxShape) -> tuple[np.ndarray, tuple[int, int]]:
    """A box's core cut to the cells its ring spans (float32, for matchTemplate), with where the
    cut starts in the box's grid."""
    x0, y0, x1, y1 = shape.bounds()
    return np.ascontiguousarray(shape.core[y0:y1, x0:x1], dtype=np.float32), (x0, y0)


Placed = tuple[Box, tuple[int, int], tuple[int, int]]  # a box, its cut's offset in its grid, the cell it starts at


def _place(pieces: list[tuple[Box, np.ndarray, tuple[int, int]]], room: int,
           lowest: bool) -> list[tuple[list[Placed], tuple[int, int]]]:
    """Greedy placement on sheets of `room` x `room` cells: each piece on the first sheet with room,
    where it grows that sheet's extent least, or with `lowest` where its bottom is highest. Returns
    each sheet's pieces and extent (rows, cols)."""
    occupied: list[np.ndarray] = []
    sheets: list[tuple[list[Placed], tuple[int, int]]] = []
    for box, cut, offset in pieces:
        for s, grid in enumerate(occupied):
            spot = _best_spot(grid, cut, sheets[s][1], lowest)
            if spot is not None:
                break
        else:
            occupied.append(np.zeros((room, room), np.float32))
            sheets.append(([], (0, 0)))
            s, spot = len(occupied) - 1, (0, 0)
        (y, x), (h, w) = spot, cut.shape
        occupied[s][y:y + h, x:x + w] += cut
        members, (rows, cols) = sheets[s]
        sheets[s] = ([*members, (box, offset, (x, y))], (max(rows, y + h), max(cols, x + w)))
    return sheets


def _best_spot(grid: np.ndarray, cut: np.ndarray, extent: tuple[int, int], lowest: bool) -> tuple[int, int] | None:
    """Where (row, col) a cut fits on a sheet's occupied cells without overlap, growing the sheet's
    extent least or, with `lowest`, reaching least far down (then topmost, then leftmost); None if
    nowhere."""
    overlap = cv2.matchTemplate(grid, cut, cv2.TM_CCORR)
    free = np.argwhere(overlap < 0.5)
    if not len(free):
        return None
    h, w = cut.shape
    grown = np.maximum(extent[0], free[:, 0] + h) * np.maximum(extent[1], free[:, 1] + w)
    cost = free[:, 0] + h if lowest else grown
    best = np.lexsort((free[:, 1], free[:, 0], cost))[0]
    return int(free[best, 0]), int(free[best, 1])


def _sheet(placed: tuple[list[Placed], tuple[int, int]], multiple: int) -> Sheet:
    """A sheet just large enough for its rings, sides rounded up to `multiple`; each box's origin on it."""
    members, (rows, cols) = placed
    up = lambda v: -(-v // multiple) * multiple  # noqa: E731
    places = tuple((box, ((cx - ox) * GRID, (cy - oy) * GRID)) for box, (ox, oy), (cx, cy) in members)
    return Sheet(up(cols * GRID), up(rows * GRID), places)
