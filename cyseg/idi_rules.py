"""How an IDI iteration merges the model's prediction into the expert masks (`cyseg improve --mode`).

- `or`, the method's rule: mask = expert mask OR prediction. Every predicted pixel is added, so the
  model's false positives (object borders grown past the expert outline, specks, stained debris)
  enter the labels and the next model learns them.
- `objects`: only predicted objects that could be annotations the expert missed are added: whole
  connected objects that stay `margin` pixels away from every expert annotation (a prediction
  touching an expert object would only move its drawn outline), whose mean probability is at least
  `confidence`, and whose area lies within [1/`size_range`, `size_range`] times the median area of
  the expert's objects (not a speck, not a merged sheet). Expert pixels are never removed.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segmenter.errors import CysegError

MODES = ("objects", "or")
MIN_OBJECT_AREA = 16  # expert objects smaller than this (px) do not set the typical size


@dataclass(frozen=True)
class GrowthRule:
    """The merge rule of `cyseg improve` (see the module docstring)."""

    mode: str = "objects"
    confidence: float = 0.7
    margin: int = 2
    size_range: float = 4.0

    def check(self) -> GrowthRule:
        """Itself, or a CysegError naming the option out of range."""
        if self.mode not in MODES:
            raise CysegError(f"--mode {self.mode!r} is not known; use one of {', '.join(MODES)}")
        if not 0.0 <= self.confidence <= 1.0:
            raise CysegError(f"--confidence {self.confidence} is outside [0, 1]; choose e.g. 0.7")
        if self.size_range < 1:
            raise CysegError(f"--size-range {self.size_range} must be >= 1 (objects within 1/R..R times the "
                             "expert's median object area)")
        return self


def typical_area(masks: list[np.ndarray]) -> float:
    """The median area (px) of the expert's objects (8-connected, at least MIN_OBJECT_AREA px); 0 for none."""
    areas = []
    for mask in masks:
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        found = stats[1:, cv2.CC_STAT_AREA]
        areas.append(found[found >= MIN_OBJECT_AREA])
    joined = np.concatenate(areas) if areas else np.zeros(0)
    return float(np.median(joined)) if joined.size else 0.0


def grow(gt: np.ndarray, predicted: np.ndarray, probs: np.ndarray, rule: GrowthRule, area: float) -> np.ndarray:
    """The new (H, W) bool mask from the expert mask `gt`, the post-processed prediction and its
    probabilities (H, W), by `rule`; `area` is the expert's typical object area (`typical_area`)."""
    gt, predicted = gt.astype(bool), predicted.astype(bool)
    if rule.mode == "or":
        return gt | predicted
    n, labels, stats, _ = cv2.connectedComponentsWithStats(predicted.astype(np.uint8), connectivity=8)
    if n <= 1 or area <= 0:
        return gt.copy()
    size = 2 * rule.margin + 1
    near = cv2.dilate(gt.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))) > 0
    touching = np.zeros(n, bool)
    touching[np.unique(labels[near & predicted])] = True
    confidence = np.bincount(labels.ravel(), weights=probs.ravel(), minlength=n) / np.maximum(stats[:, 4], 1)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = (~touching & (confidence >= rule.confidence)
            & (areas >= area / rule.size_range) & (areas <= area * rule.size_range))
    keep[0] = False
    return gt | keep[labels]
