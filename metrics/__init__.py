"""Segmentation scores: Dice and Jaccard in torch (soft for training, hard for evaluation) and numpy."""
from metrics.numpy_metrics import dice, jaccard, mean_std, per_image_dice, per_image_jaccard
from metrics.torch_metrics import (
    ClassWeights,
    dice_loss,
    dice_score,
    jaccard_score,
    per_image_soft_dice,
    per_image_soft_jaccard,
    soft_dice,
    soft_jaccard,
)

__all__ = [
    "ClassWeights",
    "dice",
    "dice_loss",
    "dice_score",
    "jaccard",
    "jaccard_score",
    "mean_std",
    "per_image_dice",
    "per_image_jaccard",
    "per_image_soft_dice",
    "per_image_soft_jaccard",
    "soft_dice",
    "soft_jaccard",
]
