"""Segmentation scores: Dice and Jaccard in torch (soft for training, hard for evaluation) and numpy; instance
scores on label images (object F1, panoptic quality, AJI, GlaS detection counts, object Dice and Hausdorff) and
the kinds of the objects they leave unmatched (missed, merged, split, ...)."""
from metrics.glas import glas_detection, object_dice, object_hausdorff
from metrics.instance_scores import (
    DetectionScores,
    PanopticQuality,
    aggregated_jaccard,
    aggregated_jaccard_plus,
    object_f1,
    panoptic_quality,
)
from metrics.instances import Matching, Overlaps, match_instances, overlaps, split_disconnected
from metrics.numpy_metrics import dice, jaccard, mean_std, per_image_dice, per_image_jaccard
from metrics.object_errors import ObjectErrors, object_errors
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
    "DetectionScores",
    "Matching",
    "ObjectErrors",
    "Overlaps",
    "PanopticQuality",
    "aggregated_jaccard",
    "aggregated_jaccard_plus",
    "dice",
    "dice_loss",
    "dice_score",
    "glas_detection",
    "jaccard",
    "jaccard_score",
    "match_instances",
    "mean_std",
    "object_dice",
    "object_errors",
    "object_f1",
    "object_hausdorff",
    "overlaps",
    "panoptic_quality",
    "per_image_dice",
    "per_image_jaccard",
    "per_image_soft_dice",
    "per_image_soft_jaccard",
    "soft_dice",
    "soft_jaccard",
    "split_disconnected",
]
