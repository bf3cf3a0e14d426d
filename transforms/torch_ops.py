"""Post-processing of (N, C, H, W) probability maps in torch on any device, giving the same results
as the numpy/OpenCV ops in `transforms.cpu` (same windows, borders and float32 rounding)."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transforms.cpu import check_iterations, check_kernel_size, check_threshold

TorchOp = Callable[[torch.Tensor], torch.Tensor]


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    """`x` as a float32 (N, C, H, W) tensor, or ValueError for any other shape."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or 0 in x.shape:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"probability maps {shape} are not a non-empty (N, C, H, W) tensor; "
                         "add batch and channel dimensions")
    return x.to(torch.float32)


def _window(k: int) -> tuple[int, int]:
    """Pixels before and after the centre in OpenCV's k-wide window (anchor k // 2, also for even k)."""
    return k // 2, k - 1 - k // 2


def _reflect101_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source index of each position of a padded axis under BORDER_REFLECT_101 (dcb|abcd|cba), for any pad."""
    pos = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(pos)
    period = 2 * (n - 1)
    pos = pos.remainder(period)
    return torch.where(pos < n, pos, period - pos)


def _window_max(x: torch.Tensor, k: int) -> torch.Tensor:
    """Maximum over OpenCV's k×k window, ignoring pixels outside the image."""
    before, after = _window(k)
    padded = F.pad(x, (before, after, before, after), value=-math.inf)
    return F.max_pool2d(padded, k, stride=1)


@dataclass(frozen=True)
class TorchNormalize:
    """Per-map z-score (x − mean) / std like `cpu.Normalize`; a constant map becomes all zeros."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 z-scored maps of `x`, computed in float64."""
        x64 = _as_batch(x).to(torch.float64)
        centred = x64 - x64.mean(dim=(-2, -1), keepdim=True)
        std = (centred**2).mean(dim=(-2, -1), keepdim=True).sqrt()
        positive = std > 0
        z = torch.where(positive, centred / torch.where(positive, std, 1.0), 0.0)
        return z.to(torch.float32)


@dataclass(frozen=True)
class TorchSmoothing:
    """k×k mean filter with reflect-101 borders like `cpu.Smoothing` (window sums in float64, as OpenCV)."""

    k: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_kernel_size(self.k, "smoothing"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 box-filtered maps of `x` (identity for k=1)."""
        x = _as_batch(x)
        if self.k == 1:
            return x
        before, after = _window(self.k)
        rows = _reflect101_index(x.shape[-2], before, after, x.device)
        cols = _reflect101_index(x.shape[-1], before, after, x.device)
        padded = x.to(torch.float64).index_select(-2, rows).index_select(-1, cols)
        sums = F.avg_pool2d(padded, self.k, stride=1, divisor_override=1)
        return (sums * (1.0 / (self.k * self.k))).to(torch.float32)


@dataclass(frozen=True)
class TorchErodeDilate:
    """Morphological opening like `cpu.ErodeDilate`: `iterations` erosions then `iterations` dilations
    with a k×k square, by max pooling; pixels outside the image are ignored."""

    k: int = 3
    iterations: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_kernel_size(self.k, "erode_dilate"))
        object.__setattr__(self, "iterations", check_iterations(self.iterations, "erode_dilate"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the float32 opened maps of `x` (identity for k=1 or iterations=0)."""
        x = _as_batch(x)
        if self.k == 1:
            return x
        for _ in range(self.iterations):
            x = -_window_max(-x, self.k)
        for _ in range(self.iterations):
            x = _window_max(x, self.k)
        return x


@dataclass(frozen=True)
class TorchThreshold:
    """Binarise like `cpu.Threshold`: 1 where the map is above `t` (compared in float32), else 0."""

    t: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "t", check_threshold(self.t))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return the uint8 0/1 masks of `x`."""
        t32 = float(torch.tensor(self.t, dtype=torch.float32))
        return (_as_batch(x) > t32).to(torch.uint8)


@dataclass(frozen=True)
class TorchCompose:
    """A post-processing chain on tensors: applies its ops in order."""

    ops: Sequence[TorchOp]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return `x` after every op of the chain."""
        out = _as_batch(x)
        for op in self.ops:
            out = op(out)
        return out
