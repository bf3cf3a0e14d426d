"""The kinds of unmatched objects (`metrics.object_errors`): one worked example per kind, the property
that the kinds add up to object F1's false negatives and positives (`cyseg evaluate`'s counts and
line: tests/test_instances.py)."""
from __future__ import annotations

import numpy as np
from hypothesis import given
from test_instance_metrics import FAST, label_pair, row

from metrics import ObjectErrors, object_errors, object_f1

NONE = dict.fromkeys(("fn_missed", "fn_merged", "fn_split", "fn_misshapen",
                      "fp_spurious", "fp_merging", "fp_fragment", "fp_misshapen"), 0)


def kinds(pred: np.ndarray, target: np.ndarray) -> ObjectErrors:
    return object_errors(pred, target)


def test_a_perfect_prediction_has_no_errors() -> None:
    target = row((1, 0, 4), (2, 6, 9), width=10)
    assert kinds(target, target) == ObjectErrors(**NONE)


def test_a_target_nothing_covers_is_missed_and_a_prediction_on_background_is_spurious() -> None:
    target = row((1, 0, 4), width=12)
    pred = row((5, 1, 2), (6, 7, 11), width=12)  # 1 of its 4 pixels found; another object on background
    assert kinds(pred, target) == ObjectErrors(**{**NONE, "fn_missed": 1, "fp_spurious": 1, "fp_fragment": 1})


def test_two_targets_under_one_prediction_are_merged_and_it_is_merging() -> None:
    target = row((1, 0, 4), (2, 4, 8), width=8)
    pred = row((3, 0, 8), width=8)  # IoU 0.5 with each: no match
    assert kinds(pred, target) == ObjectErrors(**{**NONE, "fn_merged": 2, "fp_merging": 1})


def test_a_merge_that_matches_one_target_leaves_the_other_merged() -> None:
    target = row((1, 0, 8), (2, 8, 10), width=10)
    pred = row((3, 0, 10), width=10)  # IoU 0.8 with target 1, covers all of target 2
    assert kinds(pred, target) == ObjectErrors(**{**NONE, "fn_merged": 1})


def test_a_target_cut_in_pieces_is_split_and_its_pieces_are_fragments() -> None:
    target = row((1, 0, 9), width=9)
    pred = row((4, 0, 3), (5, 3, 6), (6, 6, 9), width=9)  # three thirds, none covering half
    assert kinds(pred, target) == ObjectErrors(**{**NONE, "fn_split": 1, "fp_fragment": 3})


def test_a_prediction_covering_one_target_at_low_iou_is_misshapen_on_both_sides() -> None:
    target = row((1, 2, 6), width=12)
    pred = row((2, 2, 11), width=12)  # covers all 4 target pixels, 9 pixels: IoU 4/9
    assert kinds(pred, target) == ObjectErrors(**{**NONE, "fn_misshapen": 1, "fp_spurious": 1})
    pred = row((2, 0, 7), width=12)  # 4 of its 7 pixels on the target: IoU 4/7 > 0.5, a match
    assert kinds(pred, target) == ObjectErrors(**NONE)
    pred = row((2, 2, 5), (3, 5, 6), width=12)  # 3 of 4 target pixels and nothing else: IoU 0.75
    assert kinds(pred, target) == ObjectErrors(**{**NONE, "fp_fragment": 1})
    target = row((1, 0, 8), width=12)
    pred = row((2, 3, 11), width=12)  # 5 of 8 target pixels, 3 outside: IoU 5/11
    assert kinds(pred, target) == ObjectErrors(**{**NONE, "fn_misshapen": 1, "fp_misshapen": 1})


@FAST
@given(label_pair())
def test_the_kinds_add_up_to_the_false_negatives_and_positives(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, target = pair
    errors, detection = object_errors(pred, target), object_f1(pred, target)
    assert errors.fn == detection.fn and errors.fp == detection.fp
    assert all(getattr(errors, name) >= 0 for name in NONE)
