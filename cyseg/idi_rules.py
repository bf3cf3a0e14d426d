"""How an IDI iteration merges the model's prediction into the expert masks (`cyseg improve --mode`).

- `or`, the method's rule: mask = expert mask OR prediction. Every predicted pixel is added, so the
  model's false positives (object borders grown past the expert outline, specks, stained debris)
  enter the labels and the next model learns them.
- `objects`: only predicted objects that could be annotations the expert missed are added. The
  prediction is cut `margin` pixels away from every expert annotation (what touches an expert object
  would only move its drawn outline) and opened with a disc of `opening` times the expert objects'
  typical radius, which drops the rims left around expert objects and the thin bridges that join a
  missed object to an annotated one (it also rounds off sharp corners, which the training masks'
  agreement with complete annotations favoured over giving them back); each remaining connected
  object is a candidate. A candidate is
  added when its area lies within [1/`size_range`, `size_range`] times the median area of the
  expert's objects (not a speck, not a sheet over the image; the range is wide because missed
  objects that touch come out of the prediction as one, glands and nucleus clusters among them) and
  its mean probability reaches the
  confidence level. The level is `confidence` when given; by default it is the model's own
  confidence on what the expert did annotate: the `quantile` of the expert objects' mean
  probabilities. A model trained on incomplete masks learns to doubt the whole class, so its
  probabilities on real objects sit well below any fixed level; measured against the expert's
  objects, a missed object looks like them and a false positive looks less sure. Expert pixels
  are never removed.

What the rule leaves out is background by default (`unsure="background"`). With `unsure="unknown"`
the pixels the model predicted away from the expert annotations that were not added (objects below
the confidence level or outside the size range, the rims and bridges the opening dropped), grown by
the opening's radius (the extent of an object the model doubts is uncertain on the scale of the
objects), are written as unknown (the dataset's `unknown/` maps): the next model is taught neither
that they are background nor that they are objects, so a missed object the model was unsure of no
longer teaches it to doubt the class, and its doubtful finds are not learnt either.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from segmenter.errors import CysegError
from segmenter.planning import object_areas

MODES = ("objects", "or")
UNSURE = ("background", "unknown")


@dataclass(frozen=True)
class GrowthRule:
    """The merge rule of `cyseg improve` (see the module docstring)."""

    mode: str = "objects"
    confidence: float | None = None
    quantile: float = 0.25
    margin: int = 2
    size_range: float = 32.0
    opening: float = 0.4
    unsure: str = "background"

    def check(self) -> GrowthRule:
        """Itself, or a CysegError naming the option out of range."""
        if self.mode not in MODES:
            raise CysegError(f"--mode {self.mode!r} is not known; use one of {', '.join(MODES)}")
        if self.unsure not in UNSURE:
            raise CysegError(f"--unsure {self.unsure!r} is not known; use one of {', '.join(UNSURE)}")
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise CysegError(f"--confidence {self.confidence} is outside [0, 1]; choose e.g. 0.7, or auto")
        if not 0.0 <= self.quantile <= 1.0:
            raise CysegError(f"quantile {self.quantile} is outside [0, 1]")
        if self.size_range < 1:
            raise CysegError(f"--size-range {self.size_range} must be >= 1 (objects within 1/R..R times the "
                             "expert's median object area)")
        return self

    def level(self, expert_means: list[float] | np.ndarray) -> float:
        """The least mean probability of an added object: `confidence`, else the `quantile` of the
        expert objects' mean probabilities (1.0, adding nothing, when there are none); 0 for `or`,
        which adds every predicted pixel."""
        if self.mode == "or":
            return 0.0
        if self.confidence is not None:
            return float(self.confidence)
        return float(np.quantile(expert_means, self.quantile)) if len(expert_means) else 1.0


@dataclass
class Candidates:
    """The objects a prediction could add to one mask: their flat pixel indices and mean probabilities;
    for a rule that marks the unsure pixels unknown, also the predicted pixels away from the expert
    annotations (`away`) and the pixels near them (`near`), (H, W) bool, and how far (px) the unsure
    pixels are grown (`grow`)."""

    pixels: list[np.ndarray]
    means: np.ndarray
    away: np.ndarray | None = field(default=None, repr=False)
    near: np.ndarray | None = field(default=None, repr=False)
    grow: int = 0

    def added(self, shape: tuple[int, int], level: float) -> np.ndarray:
        """(H, W) bool: the candidates whose mean probability reaches `level`."""
        out = np.zeros(shape, bool).ravel()
        for pixels, mean in zip(self.pixels, self.means, strict=True):
            if mean >= level:
                out[pixels] = True
        return out.reshape(shape)

    def unsure(self, added: np.ndarray) -> np.ndarray:
        """(H, W) bool: the predicted pixels away from the expert annotations that the `added` mask
        (`added(shape, level)`) leaves out, grown by `grow` px, but neither on an added object nor near
        an expert one (the expert's outline and what was added stay labelled); none when `away` was
        not kept."""
        if self.away is None or self.near is None:
            return np.zeros(added.shape, bool)
        left = self.away & ~added
        if not left.any():
            return left
        return (cv2.dilate(left.astype(np.uint8), _disc(self.grow)) > 0) & ~self.near & ~added


def typical_area(masks: list[np.ndarray]) -> float:
    """The median area (px) of the expert's objects (`planning.object_areas`); 0 for none."""
    areas = object_areas(masks)
    return float(np.median(areas)) if areas.size else 0.0


def expert_means(gt: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The mean probability on each expert object (8-connected) of one mask."""
    n, labels = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(0)
    sums = np.bincount(labels.ravel(), weights=probs.ravel(), minlength=n)
    return sums[1:] / np.bincount(labels.ravel(), minlength=n)[1:]


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def candidates(gt: np.ndarray, predicted: np.ndarray, probs: np.ndarray, rule: GrowthRule,
               area: float) -> Candidates:
    """The predicted objects away from the expert mask `gt`, opened and of the expert's size (see the
    module docstring); `area` is the expert's typical object area (`typical_area`)."""
    if area <= 0:
        return Candidates([], np.zeros(0))
    near = cv2.dilate(gt.astype(np.uint8), _disc(rule.margin)) > 0
    away = (predicted.astype(bool) & ~near).astype(np.uint8)
    radius = max(1, round(rule.opening * np.sqrt(area / np.pi)))
    kept = (away > 0, near, radius) if rule.unsure == "unknown" else (None, None, 0)
    away = cv2.morphologyEx(away, cv2.MORPH_OPEN, _disc(radius))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(away, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    sized = np.flatnonzero((areas >= area / rule.size_range) & (areas <= area * rule.size_range))
    sized = sized[sized > 0]
    if sized.size == 0:
        return Candidates([], np.zeros(0), *kept)
    means = np.bincount(labels.ravel(), weights=probs.ravel(), minlength=n) / np.maximum(areas, 1)
    flat = labels.ravel()
    wanted = np.zeros(n, bool)
    wanted[sized] = True
    pixels = np.flatnonzero(wanted[flat])
    pixels = pixels[np.argsort(flat[pixels], kind="stable")]
    bounds = np.cumsum(areas[sized])[:-1]
    return Candidates(np.split(pixels, bounds), means[sized], *kept)


def addable(gt: np.ndarray, predicted: np.ndarray, probs: np.ndarray, rule: GrowthRule, area: float) -> Candidates:
    """What `rule` could add to the expert mask `gt` from the post-processed prediction and its
    probabilities (H, W): the whole prediction for `or` (the method), else `candidates`; the mask
    becomes `gt | addable(...).added(shape, rule.level(...))`."""
    if rule.mode == "or":
        return Candidates([np.flatnonzero(predicted)], np.ones(1))
    return candidates(gt, predicted, probs, rule, area)
