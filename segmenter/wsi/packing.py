"""Small tissue boxes packed side by side onto sheets of one tile: scattered cells then share forward
passes, which on a CPU cost several times more per pixel for one small box than for a full tile."""
from __future__ import annotations

from dataclasses import dataclass

Box = tuple[int, int, int, int]  # x, y, w, h


@dataclass(frozen=True)
class Sheet:
    """One image of `width` x `height` pixels holding boxes, each at its (x, y) on the sheet."""

    width: int
    height: int
    places: tuple[tuple[Box, tuple[int, int]], ...]


def packable(box: Box, tile: int) -> bool:
    """Whether a box is small enough to share a sheet (both sides within half a tile)."""
    return max(box[2], box[3]) <= tile // 2


def pack(boxes: list[Box], tile: int, multiple: int = 1) -> list[Sheet]:
    """Shelf packing: the boxes, tallest first, left to right in rows on sheets at most `tile` square,
    side by side without gaps; each sheet trimmed to what it holds, sides rounded up to `multiple`."""
    sheets: list[Sheet] = []
    places: list[tuple[Box, tuple[int, int]]] = []
    x = y = row = 0
    for box in sorted(boxes, key=lambda b: (-b[3], -b[2], b[1], b[0])):
        w, h = box[2], box[3]
        if x + w > tile:
            x, y, row = 0, y + row, 0
        if y + h > tile:
            sheets.append(_sheet(places, multiple))
            places, x, y, row = [], 0, 0, 0
        places.append((box, (x, y)))
        x, row = x + w, max(row, h)
    if places:
        sheets.append(_sheet(places, multiple))
    return sheets


def _sheet(places: list[tuple[Box, tuple[int, int]]], multiple: int) -> Sheet:
    """A sheet just large enough for its boxes."""
    width = max(px + box[2] for box, (px, _) in places)
    height = max(py + box[3] for box, (_, py) in places)
    up = lambda v: -(-v // multiple) * multiple  # noqa: E731
    return Sheet(up(width), up(height), tuple(places))
