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
from segmenter.planning import object_areas

MODES = ("objects", "or")


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
    """The median area (px) of the expert's objects (`planning.object_areas`); 0 for none."""
    areas = object_areas(masks)
    return float(np.median(areas)) if areas.size else 0.0


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
