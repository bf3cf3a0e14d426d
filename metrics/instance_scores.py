"""Instance segmentation scores on label images: object F1 and panoptic quality (Kirillov et al. 2019) from
the one-to-one matching at IoU > 0.5, and the aggregated Jaccard index AJI (Kumar et al. 2017) and AJI+
(Graham et al. 2019), both as in the HoVer-Net reference code. Two images without objects score 1."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

from metrics.instances import Matching, Overlaps, best_pairs, match_instances, overlaps


@dataclass(frozen=True)
class DetectionScores:
    """Object detection counts and scores at one IoU threshold."""

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class PanopticQuality:
    """Detection quality DQ (the F1), segmentation quality SQ (mean IoU of the matches) and PQ = DQ·SQ."""

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int


def object_f1(pred: ArrayLike, target: ArrayLike, iou_threshold: float = 0.5) -> DetectionScores:
    """Precision, recall and F1 of predicted objects matched one-to-one at IoU > `iou_threshold`; precision is 1
    without predictions, recall 1 without targets, and F1 1 when both are empty."""
    return detection_scores(match_instances(pred, target, iou_threshold))


def detection_scores(match: Matching) -> DetectionScores:
    """`object_f1` of a matching already made (one overlap table for several scores)."""
    tp, fp, fn = match.tp, match.fp, match.fn
    precision = tp / match.n_pred if match.n_pred else 1.0
    recall = tp / match.n_target if match.n_target else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if fp + fn else 1.0
    return DetectionScores(tp, fp, fn, precision, recall, f1)


def panoptic_quality(pred: ArrayLike, target: ArrayLike, iou_threshold: float = 0.5) -> PanopticQuality:
    """DQ, SQ and PQ of one class at IoU > `iou_threshold` (HoVer-Net's get_fast_pq); all 1 when both images are
    empty, and SQ 0 when nothing matches otherwise."""
    return panoptic_scores(match_instances(pred, target, iou_threshold))


def panoptic_scores(match: Matching) -> PanopticQuality:
    """`panoptic_quality` of a matching already made."""
    tp, fp, fn = match.tp, match.fp, match.fn
    if tp + fp + fn == 0:
        return PanopticQuality(1.0, 1.0, 1.0, 0, 0, 0)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(match.iou.mean()) if tp else 0.0
    return PanopticQuality(dq, sq, dq * sq, tp, fp, fn)


def _aggregate(table: Overlaps, pairs: np.ndarray) -> float:
    """Σ|T∩P| / (Σ|T∪P| + area of the targets and predictions in no pair) over the chosen overlap pairs."""
    inter = int(table.intersection[pairs].sum())
    union = int(table.union[pairs].sum())
    paired_targets = np.zeros(table.target_ids.size, dtype=bool)
    paired_targets[table.target_index[pairs]] = True
    paired_preds = np.zeros(table.pred_ids.size, dtype=bool)
    paired_preds[table.pred_index[pairs]] = True
    union += int(table.target_areas[~paired_targets].sum()) + int(table.pred_areas[~paired_preds].sum())
    return inter / union if union else 1.0


def aggregated_jaccard(pred: ArrayLike, target: ArrayLike) -> float:
    """AJI: each target object joined to the prediction of highest IoU (a prediction may serve several targets;
    ties go to the smallest id), unused predictions added to the union (HoVer-Net's get_fast_aji)."""
    table = overlaps(pred, target)
    best = best_pairs(table.target_index, table.pred_index, table.iou, table.target_ids.size)
    return _aggregate(table, best[best >= 0])


def aggregated_jaccard_plus(pred: ArrayLike, target: ArrayLike) -> float:
    """AJI+: like AJI but target and predicted objects paired one-to-one by maximum total IoU (Hungarian
    assignment, HoVer-Net's get_fast_aji_plus), so no prediction is counted twice."""
    table = overlaps(pred, target)
    rows, cols = linear_sum_assignment(table.iou_matrix(), maximize=True)
    assigned = np.zeros((table.target_ids.size, table.pred_ids.size), dtype=bool)
    assigned[rows, cols] = True
    return _aggregate(table, np.flatnonzero(assigned[table.target_index, table.pred_index]))
