"""Instance label images (0 background, each positive id one object): validation, the sparse overlap
table between target and predicted objects that every instance metric derives from, the one-to-one
matching at IoU above 0.5, and the split of ids that cover several disconnected regions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from skimage.measure import label as connected_regions

MAX_LABEL = 2**32 - 1


def label_image(labels: ArrayLike, name: str) -> np.ndarray:
    """`labels` as a validated (H, W) non-negative integer array, so every metric rejects bad input alike."""
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} labels must be an integer array (0 background, one id per object), got "
                         f"{array.dtype}; label a binary or probability mask into objects first")
    if array.ndim != 2:
        raise ValueError(f"{name} labels must be an (H, W) image, got shape {array.shape}; pass one image at a time")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} labels contain the negative id {array.min()}; use 0 for background and "
                         "positive ids for objects")
    if array.size and array.max() > MAX_LABEL:
        raise ValueError(f"{name} labels contain the id {array.max()}, above 2**32 - 1; renumber the objects")
    return array


def label_pair(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated prediction and target label images of the same shape."""
    pred_labels, target_labels = label_image(pred, "prediction"), label_image(target, "target")
    if pred_labels.shape != target_labels.shape:
        raise ValueError(f"prediction {pred_labels.shape} and target {target_labels.shape} label images differ in "
                         "shape; compare images of equal size")
    return pred_labels, target_labels


@dataclass(frozen=True)
class Overlaps:
    """The objects of a target and a predicted label image and every pair of them that shares pixels.

    Ids are ascending and areas follow them; pair k joins target_ids[target_index[k]] and
    pred_ids[pred_index[k]], which share intersection[k] > 0 pixels. Pairs are sorted by
    (target_index, pred_index); pairs that do not touch are absent (the table is sparse).
    """

    target_ids: np.ndarray
    target_areas: np.ndarray
    pred_ids: np.ndarray
    pred_areas: np.ndarray
    target_index: np.ndarray
    pred_index: np.ndarray
    intersection: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """|T∪P| in pixels of each overlapping pair."""
        return self.target_areas[self.target_index] + self.pred_areas[self.pred_index] - self.intersection

    @property
    def iou(self) -> np.ndarray:
        """|T∩P|/|T∪P| of each overlapping pair (all > 0)."""
        return self.intersection / self.union

    def iou_matrix(self) -> np.ndarray:
        """Dense (n_target, n_pred) IoU matrix, 0 where two objects do not overlap."""
        matrix = np.zeros((self.target_ids.size, self.pred_ids.size))
        matrix[self.target_index, self.pred_index] = self.iou
        return matrix


def _objects(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct positive ids among `ids`, their summed `counts`, and each entry's index into them (-1: background)."""
    distinct, inverse = np.unique(ids, return_inverse=True)
    areas = np.bincount(inverse, weights=counts, minlength=distinct.size).astype(np.int64)
    if distinct.size and distinct[0] == 0:
        return distinct[1:], areas[1:], inverse - 1
    return distinct, areas, inverse


def overlaps(pred: ArrayLike, target: ArrayLike) -> Overlaps:
    """The sparse overlap table of two label images, from one count of distinct (target, prediction) id pairs."""
    pred_labels, target_labels = label_pair(pred, target)
    keys = (target_labels.astype(np.uint64) << np.uint64(32)) | pred_labels.astype(np.uint64)
    keys, counts = np.unique(keys, return_counts=True)
    target_ids, target_areas, target_index = _objects((keys >> np.uint64(32)).astype(np.int64), counts)
    pred_ids, pred_areas, pred_index = _objects((keys & np.uint64(MAX_LABEL)).astype(np.int64), counts)
    both = (target_index >= 0) & (pred_index >= 0)
    return Overlaps(target_ids, target_areas, pred_ids, pred_areas, target_index[both], pred_index[both],
                    counts[both].astype(np.int64))


def best_pairs(owner: np.ndarray, partner: np.ndarray, score: np.ndarray, n_owners: int) -> np.ndarray:
    """For each owner object, the index of its overlapping pair with the highest score, or -1 when it overlaps
    nothing; ties go to the partner with the smallest id, so the choice does not depend on pair order."""
    order = np.lexsort((partner, -score, owner))
    sorted_owner = owner[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = sorted_owner[1:] != sorted_owner[:-1]
    best = np.full(n_owners, -1, dtype=np.int64)
    best[sorted_owner[first]] = order[first]
    return best


@dataclass(frozen=True)
class Matching:
    """One-to-one pairs of target and predicted objects whose IoU exceeds a threshold, with the object counts."""

    target_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray
    n_target: int
    n_pred: int

    @property
    def tp(self) -> int:
        """Matched pairs (true positives)."""
        return int(self.iou.size)

    @property
    def fp(self) -> int:
        """Predicted objects left unmatched (false positives)."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Target objects left unmatched (false negatives)."""
        return self.n_target - self.tp


def check_iou_threshold(iou_threshold: float) -> float:
    """`iou_threshold` when it lies in [0.5, 1), where IoU > threshold pairs each object with at most one other."""
    if not 0.5 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold {iou_threshold} must be in [0.5, 1): below 0.5 one object can match "
                         "several others")
    return float(iou_threshold)


def match_overlaps(table: Overlaps, iou_threshold: float = 0.5) -> Matching:
    """The pairs of an overlap table with IoU > `iou_threshold` (one-to-one by construction for thresholds ≥ 0.5)."""
    iou = table.iou
    keep = iou > check_iou_threshold(iou_threshold)
    return Matching(table.target_ids[table.target_index[keep]], table.pred_ids[table.pred_index[keep]], iou[keep],
                    int(table.target_ids.size), int(table.pred_ids.size))


def match_instances(pred: ArrayLike, target: ArrayLike, iou_threshold: float = 0.5) -> Matching:
    """Target and predicted objects paired one-to-one where their IoU exceeds `iou_threshold` (default 0.5)."""
    return match_overlaps(overlaps(pred, target), iou_threshold)


def split_disconnected(labels: ArrayLike, connectivity: int = 8) -> tuple[np.ndarray, int]:
    """Each connected region of one id given its own id (1..N, int64), and how many input ids covered several
    regions; the metrics score ids as given, so a caller uses the count to warn about merged objects."""
    array = label_image(labels, "instance")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity {connectivity} must be 4 or 8 (edge or edge-and-corner neighbours)")
    regions = connected_regions(array, background=0, connectivity=1 if connectivity == 4 else 2).astype(np.int64)
    region_ids, first_pixel = np.unique(regions.ravel(), return_index=True)
    owners = array.ravel()[first_pixel[region_ids > 0]]
    _, regions_per_id = np.unique(owners, return_counts=True)
    return regions, int(np.count_nonzero(regions_per_id > 1))
