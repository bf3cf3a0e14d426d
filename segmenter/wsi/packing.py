"""Tissue boxes packed side by side onto sheets of one tile: scattered cells then share forward
passes, which on a CPU cost several times more per pixel for one small box than for a full tile.
The packing is rectpack's MaxRects, the usual heuristic for tight packings, placing each box
bottom-left: a sheet's boxes gather in one corner, so the last, partly filled sheet of a window trims
small."""
from __future__ import annotations

from dataclasses import dataclass

from rectpack import MaxRectsBl, PackingBin, PackingMode, newPacker

Box = tuple[int, int, int, int]  # x, y, w, h


@dataclass(frozen=True)
class Sheet:
    """One image of `width` x `height` pixels holding boxes, each at its (x, y) on the sheet."""

    width: int
    height: int
    places: tuple[tuple[Box, tuple[int, int]], ...]


def packable(box: Box, tile: int) -> bool:
    """Whether a box fits on a sheet (both sides within one tile)."""
    return max(box[2], box[3]) <= tile


def pack(boxes: list[Box], tile: int, multiple: int = 1) -> list[Sheet]:
    """The boxes on as few sheets of at most `tile` square as MaxRects finds, side by side without
    gaps or rotation (largest first, each sheet chosen for the best fit); each sheet trimmed to
    what it holds, sides rounded up to `multiple`. The same boxes always give the same sheets."""
    if not boxes:
        return []
    order = sorted(boxes)
    packer = newPacker(mode=PackingMode.Offline, bin_algo=PackingBin.BBF, pack_algo=MaxRectsBl, rotation=False)
    for i, (_, _, w, h) in enumerate(order):
        packer.add_rect(w, h, rid=i)
    packer.add_bin(tile, tile, count=len(order))
    packer.pack()
    sheets: dict[int, list[tuple[Box, tuple[int, int]]]] = {}
    for sheet, x, y, _, _, i in packer.rect_list():
        sheets.setdefault(sheet, []).append((order[i], (x, y)))
    return [_sheet(places, multiple) for _, places in sorted(sheets.items())]


def _sheet(places: list[tuple[Box, tuple[int, int]]], multiple: int) -> Sheet:
    """A sheet just large enough for its boxes."""
    width = max(px + box[2] for box, (px, _) in places)
    height = max(py + box[3] for box, (_, py) in places)
    up = lambda v: -(-v // multiple) * multiple  # noqa: E731
    return Sheet(up(width), up(height), tuple(places))
