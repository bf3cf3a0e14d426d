"""The GlaS challenge's detection counts (its F1), object-level Dice and Hausdorff distance (Sirinukunwattana
et al. 2017), as the official evaluation code defines them: every predicted object is compared with the target object it
overlaps most and every target object with the prediction it overlaps most, each weighted by its share
of its image's object area, and the two sums averaged. An object that overlaps nothing scores Dice 0;
for the Hausdorff distance it is compared with the object of the other image nearest to it in Hausdorff
distance. Ties in overlap go to the smallest id, as MATLAB's mode does."""
from __future__ import annotations

from functools import cache

import cv2
import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import find_objects

from metrics.instances import best_pairs, label_pair, overlaps


def _weighted(areas: np.ndarray, values: np.ndarray) -> float:
    """Σ area_i·value_i / Σ area_i: the area-weighted mean over one image's objects."""
    return float(np.dot(areas, values) / areas.sum())


def object_dice(pred: ArrayLike, target: ArrayLike) -> float:
    """GlaS object-level Dice in [0, 1]: symmetric, 1 when both images have no objects, 0 when only one has."""
    table = overlaps(pred, target)
    if not table.target_ids.size or not table.pred_ids.size:
        return float(table.target_ids.size == table.pred_ids.size)
    dice = 2 * table.intersection / (table.target_areas[table.target_index] + table.pred_areas[table.pred_index])
    dice_or_zero = np.append(dice, 0.0)  # index -1: an object that overlaps nothing
    pred_best = best_pairs(table.pred_index, table.target_index, table.intersection, table.pred_ids.size)
    target_best = best_pairs(table.target_index, table.pred_index, table.intersection, table.target_ids.size)
    return 0.5 * (_weighted(table.pred_areas, dice_or_zero[pred_best])
                  + _weighted(table.target_areas, dice_or_zero[target_best]))


def glas_detection(pred: ArrayLike, target: ArrayLike) -> tuple[int, int, int]:
    """(TP, FP, FN) as the GlaS F1 counts them: a predicted object is a true positive when it covers more
    than half of the target object it overlaps most, else a false positive; target objects no
    prediction covers so are false negatives. Pool the counts over a test set for its F1."""
    table = overlaps(pred, target)
    n_pred, n_target = table.pred_ids.size, table.target_ids.size
    if not n_pred or not n_target:
        return 0, n_pred, n_target
    best = best_pairs(table.pred_index, table.target_index, table.intersection, n_pred)
    found = best >= 0
    covered = table.intersection[best[found]] > 0.5 * table.target_areas[table.target_index[best[found]]]
    tp = int(np.count_nonzero(covered))
    return tp, n_pred - tp, n_target - tp


class _Shapes:
    """One label image's objects (ascending ids) as compact indices 1..n and bounding boxes, for cropped
    distance transforms."""

    def __init__(self, labels: np.ndarray, ids: np.ndarray) -> None:
        self.compact = np.searchsorted(np.concatenate(([0], ids)).astype(labels.dtype), labels)
        self.slices = find_objects(self.compact)
        self.boxes = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in self.slices]).reshape(-1, 4)


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest pixel of `mask` (exact up to float32 rounding)."""
    return cv2.distanceTransform((~mask).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _hausdorff(a: _Shapes, i: int, b: _Shapes, j: int) -> float:
    """Hausdorff distance between object i of `a` and object j of `b` (all their pixels, Euclidean), computed
    in the crop that holds both: the distance to an object needs only that object's pixels."""
    rows = slice(min(a.boxes[i, 0], b.boxes[j, 0]), max(a.boxes[i, 1], b.boxes[j, 1]))
    cols = slice(min(a.boxes[i, 2], b.boxes[j, 2]), max(a.boxes[i, 3], b.boxes[j, 3]))
    in_a, in_b = a.compact[rows, cols] == i + 1, b.compact[rows, cols] == j + 1
    return float(max(_distance_to(in_b)[in_a].max(), _distance_to(in_a)[in_b].max()))


def _nearest(a: _Shapes, i: int, b: _Shapes) -> float:
    """The smallest Hausdorff distance between object i of `a` and any object of `b`.

    Candidates are tried in order of a lower bound, the largest gap between the two bounding boxes' matching
    sides (a side of one box is that far from every pixel of the other object), until the bound exceeds the
    best distance found.
    """
    bound = np.abs(b.boxes - a.boxes[i]).max(axis=1)
    best = np.inf
    for j in np.argsort(bound, kind="stable"):
        if bound[j] >= best:
            break
        best = min(best, _hausdorff(a, i, b, int(j)))
    return float(best)


def object_hausdorff(pred: ArrayLike, target: ArrayLike) -> float:
    """GlaS object-level Hausdorff distance in pixels: symmetric, 0 when both images have no objects, infinite
    when only one has (the Hausdorff distance to an empty set)."""
    pred_labels, target_labels = label_pair(pred, target)
    table = overlaps(pred_labels, target_labels)
    n_pred, n_target = table.pred_ids.size, table.target_ids.size
    if not n_pred or not n_target:
        return 0.0 if n_pred == n_target else float("inf")
    preds, targets = _Shapes(pred_labels, table.pred_ids), _Shapes(target_labels, table.target_ids)

    @cache
    def paired(p: int, t: int) -> float:
        """Hausdorff distance of prediction p and target t, computed once when both sides pick the pair."""
        return _hausdorff(preds, p, targets, t)

    pred_best = best_pairs(table.pred_index, table.target_index, table.intersection, n_pred)
    pred_distances = [paired(p, int(table.target_index[k])) if k >= 0 else _nearest(preds, p, targets)
                      for p, k in enumerate(pred_best)]
    target_best = best_pairs(table.target_index, table.pred_index, table.intersection, n_target)
    target_distances = [paired(int(table.pred_index[k]), t) if k >= 0 else _nearest(targets, t, preds)
                        for t, k in enumerate(target_best)]
    return 0.5 * (_weighted(table.pred_areas, np.array(pred_distances))
                  + _weighted(table.target_areas, np.array(target_distances)))
