"""Dice and Jaccard on numpy binary masks (nonzero = foreground) for evaluation reports, plus the
mean and standard deviation of per-image scores. Two empty masks score 1, never NaN."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _counts(preds: ArrayLike, targets: ArrayLike, ndim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image int64 counts |A∩B|, |A| and |B| of `ndim`-dimensional mask arrays of the same shape."""
    pred = np.asarray(preds) != 0
    target = np.asarray(targets) != 0
    if pred.ndim != ndim or pred.shape != target.shape:
        layout = "(H, W)" if ndim == 2 else "(N, H, W)"
        raise ValueError(f"prediction {pred.shape} and target {target.shape} must both be {layout} masks "
                         "of the same shape; compare masks of equal size")
    axes = (-2, -1)
    inter, p_sum, t_sum = (np.asarray(np.count_nonzero(m, axis=axes)) for m in (pred & target, pred, target))
    return inter, p_sum, t_sum


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, and 1 where den is 0 (both masks empty)."""
    return np.divide(num, den, out=np.ones(np.shape(den), dtype=np.float64), where=den != 0)


def per_image_dice(preds: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Dice 2|A∩B|/(|A|+|B|) of each (H, W) pair in (N, H, W) stacks, as a float64 (N,) array."""
    inter, p_sum, t_sum = _counts(preds, targets, 3)
    return _ratio(2 * inter, p_sum + t_sum)


def per_image_jaccard(preds: ArrayLike, targets: ArrayLike) -> np.ndarray:
    """Jaccard |A∩B|/|A∪B| of each (H, W) pair in (N, H, W) stacks, as a float64 (N,) array."""
    inter, p_sum, t_sum = _counts(preds, targets, 3)
    return _ratio(inter, p_sum + t_sum - inter)


def dice(pred: ArrayLike, target: ArrayLike) -> float:
    """Dice of two (H, W) binary masks; 1 when both are empty."""
    inter, p_sum, t_sum = _counts(pred, target, 2)
    return float(_ratio(2 * inter, p_sum + t_sum))


def jaccard(pred: ArrayLike, target: ArrayLike) -> float:
    """Jaccard (IoU) of two (H, W) binary masks; 1 when both are empty."""
    inter, p_sum, t_sum = _counts(pred, target, 2)
    return float(_ratio(inter, p_sum + t_sum - inter))


def mean_std(values: ArrayLike) -> tuple[float, float]:
    """Mean and population standard deviation of per-image scores (std 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("mean_std got no values; evaluate at least one image")
    return float(array.mean()), float(array.std())
