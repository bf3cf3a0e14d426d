"""Tiled prediction of a large crop: equal-size overlapping tiles, batched, blended with linear
ramps across each overlap so that no seam shows."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from segmenter.errors import CysegError


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[list[int], int]:
    """Start offsets and the common tile size covering [0, length) with at least `overlap` between tiles.

    The fewest tiles of size <= `tile` are used, all of the same size (a multiple of `multiple` when
    possible, so the model pads nothing) and spread evenly: every tile can share one batch.
    """
    if tile <= overlap:
        raise CysegError(f"tile size {tile} must be larger than the overlap {overlap}; lower --overlap")
    if length <= tile:
        return [0], length
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)
    size = min(tile, math.ceil(size / multiple) * multiple)
    if n == 1:
        return [0], length
    return [round(i * (length - size) / (n - 1)) for i in range(n)], size


def _ramp(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """1-D blending weight: rises over `before` pixels, falls over `after`, 1 in between, never 0."""
    w = torch.ones(size, device=device)
    pos = torch.arange(size, device=device, dtype=torch.float32)
    if before > 0:
        w = torch.minimum(w, (pos + 1) / (before + 1))
    if after > 0:
        w = torch.minimum(w, (size - pos) / (after + 1))
    return w


def predict_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    n_out: int,
    tile: int,
    overlap: int,
    batch: int,
    multiple: int = 1,
) -> torch.Tensor:
    """Run `forward` (N,C,h,w -> N,n_out,h,w probabilities) over a (C, H, W) image; return (n_out, H, W).

    Each pixel's value is the weighted mean of the tiles covering it; weights ramp linearly to
    near zero at tile borders that face another tile, where predictions lack context.
    """
    _, height, width = image.shape
    ys, th = tile_starts(height, tile, overlap, multiple)
    xs, tw = tile_starts(width, tile, overlap, multiple)
    if len(ys) == 1 and len(xs) == 1:
        return forward(image[None])[0]
    device = image.device
    acc = torch.zeros((n_out, height, width), device=device)
    norm = torch.zeros((height, width), device=device)
    boxes = [(y, x) for y in ys for x in xs]

    def weight(starts: list[int], i: int, size: int) -> torch.Tensor:
        before = starts[i - 1] + size - starts[i] if i > 0 else 0
        after = starts[i] + size - starts[i + 1] if i + 1 < len(starts) else 0
        return _ramp(size, before, after, device)

    wy = {y: weight(ys, i, th) for i, y in enumerate(ys)}
    wx = {x: weight(xs, i, tw) for i, x in enumerate(xs)}
    for b in range(0, len(boxes), batch):
        chunk = boxes[b:b + batch]
        probs = forward(torch.stack([image[:, y:y + th, x:x + tw] for y, x in chunk]))
        for (y, x), p in zip(chunk, probs):
            w = wy[y][:, None] * wx[x][None, :]
            acc[:, y:y + th, x:x + tw] += p * w
            norm[y:y + th, x:x + tw] += w
    return acc / norm
