"""The candidates `cyseg suggest` scores on a slide (`segmenter.suggest`): the squares of a grid over
its tissue, away from the regions annotated already; the squares that touch those regions describe
what is annotated, whose look-alikes need no suggestion."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from segmenter.errors import CysegError
from segmenter.subsets import sample
from segmenter.suggest import Candidate
from segmenter.wsi.slide import SlideReader
from segmenter.wsi.tissue import TissueMask

MIN_TISSUE = 0.05  # a tile is a candidate when tissue covers at least this fraction of it


def slide_tiles(reader: SlideReader, tissue: TissueMask, size: int, excluded: Iterable[Any],
                limit: int, seed: int) -> tuple[list[Candidate], list[Candidate]]:
    """(candidates, annotated) tiles of a slide: the `size`-pixel grid squares (level 0) inside the
    slide that tissue covers by MIN_TISSUE or more, split by whether they touch an `excluded` region
    (annotated already); a seeded sample of `limit` of each when there are more. A CysegError when
    no candidate is left."""
    from shapely.geometry import box
    from shapely.strtree import STRtree

    if size < 16:
        raise CysegError(f"--size {size} must be at least 16 pixels")
    if size > min(reader.width, reader.height):
        raise CysegError(f"--size {size} does not fit in slide {reader.path} ({reader.width}x{reader.height}); "
                         "give a smaller --size")
    excluded = [g for g in excluded if g is not None and not g.is_empty]
    tree = STRtree(excluded) if excluded else None
    tiles: list[Candidate] = []
    annotated: list[Candidate] = []
    for y in range(0, reader.height - size + 1, size):
        for x in range(0, reader.width - size + 1, size):
            if tissue.fraction(x, y, size, size) < MIN_TISSUE:
                continue
            touched = tree is not None and len(tree.query(box(x, y, x + size, y + size), predicate="intersects"))
            (annotated if touched else tiles).append(Candidate(str(reader.path), (x, y, size, size)))
    if not tiles:
        why = f" ({len(annotated)} tissue tile(s) are annotated already)" if annotated else ""
        raise CysegError(f"slide {reader.path} has no tissue tile of {size} px left to suggest{why}; check the "
                         "slide (a blank slide?) or give a smaller --size")
    return sample(tiles, limit, seed), sample(annotated, limit, seed)
