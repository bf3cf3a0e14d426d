"""Dice and Jaccard on torch tensors: soft scores (differentiable, for the training loss) and hard
scores on binary masks (for evaluation on the device). Two empty masks score 1, never NaN."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

ClassWeights = Sequence[float] | torch.Tensor | None


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, and 1 where den is 0 (both masks empty), with no NaN in the value or the gradient."""
    empty = den == 0
    safe_den = torch.where(empty, torch.ones_like(den), den)
    return torch.where(empty, torch.ones_like(num), num / safe_den)


def _check_smooth(smooth: float) -> float:
    """Return `smooth` as a float, or raise ValueError unless it is a finite number >= 0."""
    if isinstance(smooth, bool) or not isinstance(smooth, numbers.Real) or not math.isfinite(smooth) or smooth < 0:
        raise ValueError(f"smooth {smooth!r} must be a finite number >= 0; use e.g. smooth=1.0")
    return float(smooth)


def _class_weights(weights: ClassWeights, n_classes: int, like: torch.Tensor) -> torch.Tensor:
    """The C class weights normalised to sum 1, on `like`'s device and dtype (uniform when None)."""
    if weights is None:
        return torch.full((n_classes,), 1.0 / n_classes, dtype=like.dtype, device=like.device)
    try:
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"class weights {weights!r} are not numbers; give one number >= 0 per class") from exc
    if w.ndim != 1 or w.numel() != n_classes:
        raise ValueError(f"class weights {w.tolist()} do not match the {n_classes} classes; give one weight per class")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"class weights {w.tolist()} contain a negative or non-finite value; use finite weights >= 0")
    if w.sum() == 0:
        raise ValueError(f"class weights {w.tolist()} are all zero; give at least one positive weight")
    return (w / w.sum()).to(dtype=like.dtype, device=like.device)


def _soft_sums(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image and class (N, C): Σ p·t, Σ p and Σ t over the pixels."""
    if probs.ndim != 4 or probs.shape != target.shape:
        raise ValueError(f"probabilities {tuple(probs.shape)} and target {tuple(target.shape)} must both be "
                         "(N, C, H, W) of the same shape; pass batched maps with matching sizes")
    target = target.to(probs.dtype)
    return (probs * target).sum(dim=(2, 3)), probs.sum(dim=(2, 3)), target.sum(dim=(2, 3))


def per_item_class_soft_dice(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice (2Σpt + s)/(Σp + Σt + s) per image and class (N, C), classes not combined."""
    smooth = _check_smooth(smooth)
    inter, p_sum, t_sum = _soft_sums(probs, target)
    return _ratio(2 * inter + smooth, p_sum + t_sum + smooth)


def per_image_soft_dice(probs: torch.Tensor, target: torch.Tensor, weights: ClassWeights = None,
                        smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice (2Σpt + s)/(Σp + Σt + s) per image (N,), classes combined with normalised `weights`."""
    smooth = _check_smooth(smooth)
    inter, p_sum, t_sum = _soft_sums(probs, target)
    scores = _ratio(2 * inter + smooth, p_sum + t_sum + smooth)
    return scores @ _class_weights(weights, probs.shape[1], scores)


def per_image_soft_jaccard(probs: torch.Tensor, target: torch.Tensor, weights: ClassWeights = None,
                           smooth: float = 1.0) -> torch.Tensor:
    """Soft Jaccard (Σpt + s)/(Σp + Σt − Σpt + s) per image (N,), classes combined with normalised `weights`."""
    smooth = _check_smooth(smooth)
    inter, p_sum, t_sum = _soft_sums(probs, target)
    scores = _ratio(inter + smooth, p_sum + t_sum - inter + smooth)
    return scores @ _class_weights(weights, probs.shape[1], scores)


def soft_dice(probs: torch.Tensor, target: torch.Tensor, weights: ClassWeights = None,
              smooth: float = 1.0) -> torch.Tensor:
    """Batch mean of the per-image soft Dice; differentiable in `probs`."""
    return per_image_soft_dice(probs, target, weights, smooth).mean()


def soft_jaccard(probs: torch.Tensor, target: torch.Tensor, weights: ClassWeights = None,
                 smooth: float = 1.0) -> torch.Tensor:
    """Batch mean of the per-image soft Jaccard (IoU); differentiable in `probs`."""
    return per_image_soft_jaccard(probs, target, weights, smooth).mean()


def dice_loss(probs: torch.Tensor, target: torch.Tensor, weights: ClassWeights = None,
              smooth: float = 1.0) -> torch.Tensor:
    """Training loss 1 − soft Dice, computed on unrounded probabilities so that its gradient is non-zero."""
    return 1 - soft_dice(probs, target, weights, smooth)


def _hard_counts(pred_mask: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image (N,) float64 counts |A∩B|, |A| and |B| of (N, H, W) or (H, W) masks (nonzero = foreground)."""
    if pred_mask.shape != target_mask.shape or pred_mask.ndim not in (2, 3):
        raise ValueError(f"prediction {tuple(pred_mask.shape)} and target {tuple(target_mask.shape)} must both be "
                         "(N, H, W) or (H, W) masks of the same shape; compare masks of equal size")
    pred = (pred_mask != 0).reshape(-1, *pred_mask.shape[-2:])
    target = (target_mask != 0).reshape(-1, *target_mask.shape[-2:])
    counts = [m.sum(dim=(1, 2)).to(torch.float64) for m in (pred & target, pred, target)]
    return counts[0], counts[1], counts[2]


def dice_score(pred_mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Dice 2|A∩B|/(|A|+|B|) per image as a float64 (N,) tensor ((1,) for one (H, W) mask); both empty = 1."""
    inter, p_sum, t_sum = _hard_counts(pred_mask, target_mask)
    return _ratio(2 * inter, p_sum + t_sum)


def jaccard_score(pred_mask: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Jaccard |A∩B|/|A∪B| per image as a float64 (N,) tensor ((1,) for one (H, W) mask); both empty = 1."""
    inter, p_sum, t_sum = _hard_counts(pred_mask, target_mask)
    return _ratio(inter, p_sum + t_sum - inter)
