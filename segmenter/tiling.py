"""Tiled prediction of a large crop: overlapping tiles sized to waste as little compute as
possible, batched by shape, blended with cubic ramps across each overlap so no seam shows."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import torch

from segmenter.errors import CysegError


def tile_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """(start, size) of the tiles covering [0, length), neighbours overlapping by >= `overlap`.

    Uses the fewest tiles of size <= `tile`; sizes are multiples of `multiple` (so the network
    pads nothing) and as even as possible, so the pixels computed exceed the pixels covered by
    little more than the overlaps themselves.
    """
    if tile <= overlap:
        raise CysegError(f"tile size {tile} must be larger than the overlap {overlap}; lower --overlap")
    if overlap < 0:
        raise CysegError(f"overlap {overlap} must be >= 0")
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    total = length + (n - 1) * overlap
    base = max(multiple, (total // n) // multiple * multiple)
    sizes = [min(base, tile)] * n
    i = 0
    while sum(sizes) < total:
        sizes[i % n] = min(sizes[i % n] + multiple, tile)
        i += 1
    extra = sum(sizes) - total
    spans, start = [], 0
    for k, size in enumerate(sizes):
        spans.append((start, size))
        if k + 1 < n:
            start += size - overlap - (extra * (k + 1) // (n - 1) - extra * k // (n - 1))
    return spans


def _ramp(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """1-D blending weight: rises over `before` pixels, falls over `after`, 1 in between, never 0.

    The cube of a linear ramp: pixels next to a tile border, disturbed by the network's zero
    padding, get almost no weight, which a linear ramp would still give them (tests/test_seams.py
    holds the default tiling to the untiled prediction)."""
    w = torch.ones(size, device=device)
    pos = torch.arange(size, device=device, dtype=torch.float32)
    if before > 0:
        w = torch.minimum(w, (pos + 1) / (before + 1))
    if after > 0:
        w = torch.minimum(w, (size - pos) / (after + 1))
    return w**3


def box_weights(height: int, width: int, margin: int, device: torch.device) -> torch.Tensor:
    """(height, width) blending weight of a box predicted on its own: the tiles' ramp rising over
    `margin` px from each border, where the box lacks context, so where boxes overlap each pixel is
    taken mostly from the box that saw the most around it."""
    return _ramp(height, margin, margin, device)[:, None] * _ramp(width, margin, margin, device)[None, :]


def _weights(spans: list[tuple[int, int]], device: torch.device) -> list[torch.Tensor]:
    """Each span's ramp divided by the sum of all ramps at each position: along one axis the weights
    of the tiles covering a pixel add up to 1, so across the grid (products of one weight per axis)
    they do too, and blending needs neither a weight map nor a final division."""
    ramps = []
    for i, (start, size) in enumerate(spans):
        before = spans[i - 1][0] + spans[i - 1][1] - start if i > 0 else 0
        after = start + size - spans[i + 1][0] if i + 1 < len(spans) else 0
        ramps.append(_ramp(size, before, after, device))
    total = torch.zeros(spans[-1][0] + spans[-1][1], device=device)
    for (start, size), ramp in zip(spans, ramps, strict=True):
        total[start:start + size] += ramp
    return [ramp / total[start:start + size] for (start, size), ramp in zip(spans, ramps, strict=True)]


def predict_tiled(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    n_out: int,
    tile: int,
    overlap: int,
    batch: int,
    multiple: int = 1,
    into: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run `forward` (N,C,h,w -> N,n_out,h,w probabilities) over a (C, H, W) image; return (n_out, H, W).

    Each pixel's value is the weighted mean of the tiles covering it; weights ramp (cubically) to
    near zero at tile borders that face another tile, where predictions lack context.

    With `into` (a (n_out, H, W) tensor, e.g. a view of a larger canvas) the probabilities, times
    `scale` (H, W) when given, are added to it and it is returned: no image-sized result of its own.
    """
    _, height, width = image.shape
    ys = tile_spans(height, tile, overlap, multiple)
    xs = tile_spans(width, tile, overlap, multiple)
    if len(ys) == 1 and len(xs) == 1:
        probs = forward(image[None])[0]
        if into is None:
            return probs
        return into.add_(probs) if scale is None else into.addcmul_(probs, scale)
    device = image.device
    wy, wx = _weights(ys, device), _weights(xs, device)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for i, (_, h) in enumerate(ys):
        for j, (_, w) in enumerate(xs):
            groups[(h, w)].append((i, j))
    acc = torch.zeros((n_out, height, width), device=device) if into is None else into
    for (h, w), members in groups.items():
        for b in range(0, len(members), batch):
            chunk = members[b:b + batch]
            probs = forward(torch.stack([image[:, ys[i][0]:ys[i][0] + h, xs[j][0]:xs[j][0] + w] for i, j in chunk]))
            for (i, j), p in zip(chunk, probs, strict=True):
                y, x = ys[i][0], xs[j][0]
                weight = wy[i][:, None] * wx[j][None, :]
                if scale is not None:
                    weight = weight * scale[y:y + h, x:x + w]
                acc[:, y:y + h, x:x + w].addcmul_(p, weight)
    return acc
