"""Why objects fail to match: each unmatched target object (a false negative at IoU > 0.5) and each
unmatched prediction (a false positive) put in exactly one kind, so that a low object F1 says
whether the separation merges, splits, misses or invents objects. "Covers" means holds more than
half of an object's pixels, so at most one object covers another."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from metrics.instances import Matching, Overlaps, match_overlaps, overlaps


@dataclass(frozen=True)
class ObjectErrors:
    """The false negatives by kind: `fn_missed` (predictions cover less than half of it in total),
    `fn_merged` (the prediction covering it covers another target too), `fn_split` (predictions cover
    more than half of it together, none alone), `fn_misshapen` (one prediction covers it alone, at IoU
    ≤ the threshold); and the false positives by kind: `fp_spurious` (half of it or more on
    background), `fp_merging` (it covers two targets or more), `fp_fragment` (mostly on targets,
    covering none), `fp_misshapen` (mostly on targets, covering exactly one, at IoU ≤ the threshold)."""

    fn_missed: int
    fn_merged: int
    fn_split: int
    fn_misshapen: int
    fp_spurious: int
    fp_merging: int
    fp_fragment: int
    fp_misshapen: int

    @property
    def fn(self) -> int:
        """All false negatives."""
        return self.fn_missed + self.fn_merged + self.fn_split + self.fn_misshapen

    @property
    def fp(self) -> int:
        """All false positives."""
        return self.fp_spurious + self.fp_merging + self.fp_fragment + self.fp_misshapen


def object_errors(pred: ArrayLike, target: ArrayLike, iou_threshold: float = 0.5) -> ObjectErrors:
    """The kinds of the objects left unmatched at IoU > `iou_threshold` (`ObjectErrors`); their sums
    are `object_f1`'s fn and fp."""
    table = overlaps(pred, target)
    return errors_of(table, match_overlaps(table, iou_threshold))


def errors_of(table: Overlaps, match: Matching) -> ObjectErrors:
    """`object_errors` of an overlap table and its matching, already made (one table for several scores)."""
    n_target, n_pred = table.target_ids.size, table.pred_ids.size
    inter = table.intersection
    covers = 2 * inter > table.target_areas[table.target_index]  # pair k's prediction covers its target
    targets_covered = np.bincount(table.pred_index[covers], minlength=n_pred)  # per prediction
    coverer = np.full(n_target, -1, np.int64)
    coverer[table.target_index[covers]] = table.pred_index[covers]
    on_targets = np.bincount(table.pred_index, weights=inter, minlength=n_pred)
    covered_in_all = np.bincount(table.target_index, weights=inter, minlength=n_target)

    unmatched_t = ~np.isin(table.target_ids, match.target_ids)
    missed = unmatched_t & (2 * covered_in_all <= table.target_areas)
    by_one = unmatched_t & ~missed & (coverer >= 0)
    coverer_covers = np.zeros(n_target, np.int64)  # how many targets each target's coverer covers
    coverer_covers[coverer >= 0] = targets_covered[coverer[coverer >= 0]]
    merged = by_one & (coverer_covers >= 2)
    unmatched_p = ~np.isin(table.pred_ids, match.pred_ids)
    spurious = unmatched_p & (2 * on_targets <= table.pred_areas)
    mostly_on = unmatched_p & ~spurious
    return ObjectErrors(
        fn_missed=int(missed.sum()), fn_merged=int(merged.sum()),
        fn_split=int((unmatched_t & ~missed & (coverer < 0)).sum()), fn_misshapen=int((by_one & ~merged).sum()),
        fp_spurious=int(spurious.sum()), fp_merging=int((mostly_on & (targets_covered >= 2)).sum()),
        fp_fragment=int((mostly_on & (targets_covered == 0)).sum()),
        fp_misshapen=int((mostly_on & (targets_covered == 1)).sum()))
