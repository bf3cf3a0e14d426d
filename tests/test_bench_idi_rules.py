"""bench/idi_rules.py's arithmetic: the pooled agreement of the masks a growth-rule variant grows
with the complete annotation."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.idi_rules import VARIANTS, grown_quality


def image_with_a_missed_object() -> tuple[np.ndarray, ...]:
    """(incomplete mask, complete mask, probabilities, prediction): the expert drew one of two
    objects; the model finds both, and a false positive the size of a speck."""
    full = np.zeros((64, 64), np.uint8)
    cv2.circle(full, (16, 16), 8, 1, -1)
    cv2.circle(full, (46, 46), 8, 1, -1)
    gt = np.zeros_like(full)
    cv2.circle(gt, (16, 16), 8, 1, -1)
    pred = full.astype(bool).copy()
    pred[60:62, 2:4] = True
    probs = np.where(pred, 0.7, 0.05).astype(np.float32)
    return gt.astype(bool), full.astype(bool), probs, pred


def test_the_default_rule_adds_the_missed_object_and_or_adds_the_speck_too():
    image = image_with_a_missed_object()
    default = grown_quality([image], VARIANTS["default"])
    assert default["precision"] == 1.0 and default["recall"] > 0.95 and default["level"] == pytest.approx(0.7)
    method = grown_quality([image], VARIANTS["or (the method)"])
    assert method["recall"] == 1.0 and method["precision"] == pytest.approx(full_px(image) / (full_px(image) + 4))
    assert method["level"] == 0.0


def test_nothing_added_scores_the_incomplete_mask():
    gt, full, probs, pred = image_with_a_missed_object()
    none = grown_quality([(gt, full, probs, np.zeros_like(pred))], VARIANTS["default"])
    assert none["precision"] == 1.0 and none["recall"] == pytest.approx(gt.sum() / full.sum())
    assert none["iou"] == pytest.approx(none["recall"])


def full_px(image: tuple[np.ndarray, ...]) -> int:
    return int(image[1].sum())
