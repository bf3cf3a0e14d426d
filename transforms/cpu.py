"""Post-processing of probability maps with numpy and OpenCV: normalize, smoothing, erode-dilate and
threshold, applied to every 2-D map of a float32 (H, W) or (C, H, W) array.

Also holds the parameter checks shared with the torch implementation, which must match these ops exactly.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike

CpuOp = Callable[[np.ndarray], np.ndarray]


def check_kernel_size(k: int, op: str) -> int:
    """Return `k` as an int, or raise ValueError naming `op` unless it is an integer >= 1."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"{op}: kernel size k={k!r} is not an integer >= 1; use e.g. k=3")
    return int(k)


def check_iterations(iterations: int, op: str) -> int:
    """Return `iterations` as an int, or raise ValueError naming `op` unless it is an integer >= 0."""
    if isinstance(iterations, bool) or not isinstance(iterations, numbers.Integral) or iterations < 0:
        raise ValueError(f"{op}: iterations={iterations!r} is not an integer >= 0; use e.g. iterations=1")
    return int(iterations)


def check_threshold(t: float) -> float:
    """Return `t` as a float, or raise ValueError unless it is a number in [0, 1]."""
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise ValueError(f"threshold {t!r} is not a number; choose a value in [0, 1] such as 0.5")
    if not 0 <= t <= 1:
        raise ValueError(f"threshold {t!r} is outside [0, 1]; choose a value in [0, 1] such as 0.5")
    return float(t)


def _as_maps(x: ArrayLike) -> np.ndarray:
    """`x` as a float32 (H, W) or (C, H, W) array, or ValueError for any other shape."""
    array = np.asarray(x, dtype=np.float32)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise ValueError(f"probability map of shape {array.shape} is not a non-empty (H, W) or (C, H, W) "
                         "array; pass one map or a stack of maps")
    return array


def _per_map(x: ArrayLike, fn: CpuOp) -> np.ndarray:
    """Apply the 2-D operation `fn` to every (H, W) map of `x`, keeping the shape of `x`."""
    array = _as_maps(x)
    maps = array.reshape((-1, *array.shape[-2:]))
    if len(maps) == 1:  # the usual binary map: no stacking copy
        return fn(np.ascontiguousarray(maps[0])).reshape(array.shape)
    return np.stack([fn(np.ascontiguousarray(m)) for m in maps]).reshape(array.shape)


@dataclass(frozen=True)
class Normalize:
    """Per-map z-score (x − mean) / std, so that one threshold suits maps of any contrast; a constant
    map (std 0) becomes all zeros instead of NaN."""

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Return the float32 z-scored maps of `x`, computed in float64."""
        x64 = _as_maps(x).astype(np.float64)
        centred = x64 - x64.mean(axis=(-2, -1), keepdims=True)
        std = np.sqrt((centred**2).mean(axis=(-2, -1), keepdims=True))
        z = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
        return z.astype(np.float32)


@dataclass(frozen=True)
class Smoothing:
    """k×k mean filter (cv2.blur, BORDER_REFLECT_101) that evens out pixel noise in the maps."""

    k: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_kernel_size(self.k, "smoothing"))

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Return the float32 box-filtered maps of `x` (identity for k=1)."""
        if self.k == 1:
            return _as_maps(x).copy()
        return _per_map(x, lambda m: cv2.blur(m, (self.k, self.k), borderType=cv2.BORDER_REFLECT_101))


@dataclass(frozen=True)
class ErodeDilate:
    """Morphological opening: `iterations` erosions then `iterations` dilations with a k×k square,
    removing specks smaller than the kernel; pixels outside the image are ignored."""

    k: int = 3
    iterations: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "k", check_kernel_size(self.k, "erode_dilate"))
        object.__setattr__(self, "iterations", check_iterations(self.iterations, "erode_dilate"))

    def _open(self, m: np.ndarray) -> np.ndarray:
        """Opening of one 2-D map."""
        kernel = np.ones((self.k, self.k), dtype=np.uint8)
        eroded = cv2.erode(m, kernel, iterations=self.iterations)
        return cv2.dilate(eroded, kernel, iterations=self.iterations)

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Return the float32 opened maps of `x` (identity for k=1 or iterations=0)."""
        if self.k == 1 or self.iterations == 0:
            return _as_maps(x).copy()
        return _per_map(x, self._open)


@dataclass(frozen=True)
class Threshold:
    """Binarise: 1 where the map is above `t` (compared in float32), else 0."""

    t: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "t", check_threshold(self.t))

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Return the uint8 0/1 masks of `x`."""
        return (_as_maps(x) > np.float32(self.t)).astype(np.uint8)


@dataclass(frozen=True)
class Compose:
    """A post-processing chain: applies its ops in order."""

    ops: Sequence[CpuOp]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Return `x` after every op of the chain."""
        out = _as_maps(x)
        for op in self.ops:
            out = op(out)
        return out
