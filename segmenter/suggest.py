"""Active learning: which images, or which tissue tiles of a slide, an expert should
annotate next. Each candidate is scored by the model's uncertainty there: how much its predictions
under the symmetries of the square disagree (`tta`, the spread MONAI Label's TTA strategy measures)
or the entropy of their mean (`entropy`). Suggestions then follow suggestive annotation (Yang et al.,
MICCAI 2017, on GlaS): among the 2K most uncertain candidates, K are picked greedily to cover the
whole pool best (each candidate counts by its similarity to the nearest pick, over a small description
of each candidate: colours and predicted classes on a coarse grid). Uncertainty alone favours the
pool's oddest images, which teach the model little about the rest; coverage keeps the K suggestions
typical of the pool and unlike each other."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from segmenter.errors import CysegError

if TYPE_CHECKING:
    from segmenter.base import Segmenter

MEASURES = ("tta", "entropy")
MAX_VIEWS = 8
GRID = 4  # the description's coarse grid: GRID x GRID cells of colour and of each class's probability


@dataclass
class Candidate:
    """An image or slide tile that could be annotated: where it is (`box`: x, y, w, h in the image's
    or slide's level-0 pixels), how uncertain the model is there, and its description."""

    source: str
    box: tuple[int, int, int, int]
    uncertainty: float = 0.0
    description: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


@dataclass
class Suggestion:
    """A chosen candidate, its rank (1 first), its score (how much of the pool it newly covers: the
    gain in summed similarity, in candidates) and its distance to the suggestions ranked before it
    (in standardised description units; 1 for the first)."""

    candidate: Candidate
    rank: int
    score: float
    distance: float


def symmetry_views(seg: Segmenter, image: np.ndarray, views: int) -> np.ndarray:
    """(views, C, H, W) float32: the model's class probabilities of `image` under the first `views`
    symmetries of the square (rotations by 90°, then the same mirrored), each mapped back."""
    if not 2 <= views <= MAX_VIEWS:
        raise CysegError(f"--views {views} must be between 2 and {MAX_VIEWS} (symmetries of the square)")
    out = []
    for v in range(views):
        k, mirror = v % 4, v >= 4
        shown = np.rot90(image[:, ::-1] if mirror else image, k)
        probs = seg.predict(np.ascontiguousarray(shown))[: seg.n_classes]
        with torch.inference_mode():
            back = torch.rot90(probs, -k, (1, 2))
            back = back.flip(2) if mirror else back
        out.append(back.float().cpu().numpy())
    return np.stack(out)


def uncertainty(views: np.ndarray, measure: str) -> float:
    """A candidate's uncertainty from its (V, C, H, W) views: the mean over pixels and classes of the
    views' standard deviation (`tta`) or of the binary entropy of their mean, in bits (`entropy`)."""
    if measure == "tta":
        return float(views.std(axis=0).mean())
    if measure == "entropy":
        p = views.mean(axis=0).clip(1e-6, 1 - 1e-6)
        return float((-(p * np.log2(p) + (1 - p) * np.log2(1 - p))).mean())
    raise CysegError(f"--measure {measure!r} is not known; use one of {', '.join(MEASURES)}")


def description(image: np.ndarray, views: np.ndarray) -> np.ndarray:
    """What a candidate looks like, for diversity: its mean Lab colour and each class's mean
    probability on a GRID x GRID grid."""
    lab = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2LAB).astype(np.float32) / 255
    colour = cv2.resize(lab, (GRID, GRID), interpolation=cv2.INTER_AREA).ravel()
    mean = views.mean(axis=0)
    classes = [cv2.resize(c, (GRID, GRID), interpolation=cv2.INTER_AREA).ravel() for c in mean]
    return np.concatenate([colour, *classes]).astype(np.float32)


def score_candidate(seg: Segmenter, candidate: Candidate, image: np.ndarray, views: int, measure: str) -> Candidate:
    """The candidate with its uncertainty and description measured on its pixels `image`."""
    predicted = symmetry_views(seg, image, views)
    candidate.uncertainty = uncertainty(predicted, measure)
    candidate.description = description(image, predicted)
    return candidate


def check_count(count: int, candidates: int) -> None:
    """A CysegError unless 1 <= `count` <= the number of candidates."""
    if count < 1:
        raise CysegError(f"--count {count} must be at least 1")
    if count > candidates:
        raise CysegError(f"--count {count} is more than the {candidates} candidate(s) left to suggest; "
                         "lower --count (or give more images / a smaller --size)")


def select(candidates: Sequence[Candidate], count: int, shortlist: float = 2.0) -> list[Suggestion]:
    """`count` suggestions: of the `shortlist` x `count` most uncertain candidates, greedily the one
    that adds most to the pool's coverage each time. Coverage sums, over every candidate, its
    similarity 1 / (1 + distance) to the nearest suggestion (standardised descriptions)."""
    check_count(count, len(candidates))
    certainty = np.array([c.uncertainty for c in candidates])
    short = np.argsort(-certainty, kind="stable")[:max(count, round(shortlist * count))]
    distances = _distances(candidates, short)  # (shortlist, all candidates)
    similar = 1.0 / (1.0 + distances)
    free = np.ones(len(short), bool)
    covered = np.zeros(len(candidates))
    nearest = np.full(len(short), np.inf)
    chosen: list[Suggestion] = []
    for rank in range(1, count + 1):
        gain = np.where(free, np.maximum(similar - covered, 0).sum(axis=1), -np.inf)
        j = int(np.argmax(gain))
        i = int(short[j])
        chosen.append(Suggestion(candidates[i], rank, float(gain[j]),
                                 float(nearest[j]) if np.isfinite(nearest[j]) else 1.0))
        free[j] = False
        covered = np.maximum(covered, similar[j])
        nearest = np.minimum(nearest, distances[:, i])
    return chosen


def _distances(candidates: Sequence[Candidate], rows: np.ndarray) -> np.ndarray:
    """The distances from the candidates `rows` to every candidate, between standardised
    descriptions, in units of a typical one-per-feature spread."""
    from scipy.spatial.distance import cdist

    features = np.stack([c.description for c in candidates]).astype(np.float64)
    spread = features.std(axis=0)
    features = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1)
    return cdist(features[rows], features) / math.sqrt(features.shape[1])


def score_all(candidates: Sequence[Candidate], pixels: Callable[[Candidate], np.ndarray], seg: Segmenter,
              views: int, measure: str, progress: Callable[[Iterable[Candidate]], Iterable[Candidate]] = iter
              ) -> list[Candidate]:
    """Every candidate scored on its pixels (`pixels(candidate)`: RGB uint8 at the processing resolution)."""
    return [score_candidate(seg, c, pixels(c), views, measure) for c in progress(candidates)]
