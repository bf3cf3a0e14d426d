"""Active learning: which images, or which tissue tiles of a slide, an expert should
annotate next. Each candidate is scored by the model's uncertainty there: how much its predictions
under the symmetries of the square disagree (`tta`, the spread MONAI Label's TTA strategy measures)
or the entropy of their mean (`entropy`). The K suggestions then cover the pool's uncertainty best:
greedily, each pick is the candidate whose likeness to the candidates still uncovered, weighted by
their uncertainty, is largest (a facility-location choice, as in representative sampling for
low-budget active learning: k-medoids-like picks beat random and pure uncertainty when few images
are labelled), and what is annotated already covers its look-alikes from the start. Likeness
compares what the model's encoder sees (its deepest feature map, averaged over the image and the
symmetries, so it does not depend on where things lie) and the image's colour statistics.
Uncertainty alone favours the pool's oddest images, which teach the model little about the rest;
coverage keeps the K suggestions typical of the pool, unlike each other and unlike what the
experts have already drawn. A density weight also counts each candidate by its typicality (its mean likeness
to every image, annotated or not), so that the picks favour the pool's crowded regions over its sparse fringe,
as typicality-based picks do for low budgets (TypiClust)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
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
MAX_UNCERTAINTY_WEIGHT = 4.0
MAX_DENSITY_WEIGHT = 4.0


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
    """A chosen candidate, its rank (1 first), its score (how much of the pool's uncertainty it newly
    covers, in units of the mean candidate's) and its distance to the nearest suggestion ranked
    before it or annotated image (in standardised description units; 1 for a first pick with
    nothing annotated)."""

    candidate: Candidate
    rank: int
    score: float
    distance: float


@contextmanager
def deepest_features(seg: Segmenter) -> Iterator[list[np.ndarray]]:
    """While open, each forward pass of the segmenter's inference network appends the channel means
    of its smallest feature map (the encoder's deepest level, most channels on a tie): what the
    network sees in the input, wherever it lies in it."""
    net = seg.inference_model()
    found: list[np.ndarray] = []
    deepest: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}

    def inner(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            key = (output.shape[2] * output.shape[3], -output.shape[1])
            if "best" not in deepest or key < deepest["best"][0]:
                deepest["best"] = (key, output.float().mean(dim=(0, 2, 3)))

    def outer(_module: torch.nn.Module, _inputs: object, _output: object) -> None:
        if "best" in deepest:
            found.append(deepest.pop("best")[1].cpu().numpy())

    handles = [m.register_forward_hook(inner) for m in net.modules() if m is not net]
    handles.append(net.register_forward_hook(outer))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


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


def description(image: np.ndarray, features: list[np.ndarray]) -> np.ndarray:
    """What a candidate looks like, for likeness: the mean of its deepest feature maps' channel means
    (`deepest_features`, one per forward pass) and the mean and spread of its Lab colour."""
    lab = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    colour = np.concatenate([lab.mean(axis=0), lab.std(axis=0)]) / 255
    deep = np.mean(features, axis=0) if features else np.zeros(0, np.float32)
    return np.concatenate([deep, colour]).astype(np.float32)


def score_candidate(seg: Segmenter, candidate: Candidate, image: np.ndarray, views: int, measure: str) -> Candidate:
    """The candidate with its uncertainty and description measured on its pixels `image`."""
    with deepest_features(seg) as features:
        predicted = symmetry_views(seg, image, views)
    candidate.uncertainty = uncertainty(predicted, measure)
    candidate.description = description(image, features)
    return candidate


def check_count(count: int, candidates: int) -> None:
    """A CysegError unless 1 <= `count` <= the number of candidates."""
    if count < 1:
        raise CysegError(f"--count {count} must be at least 1")
    if count > candidates:
        raise CysegError(f"--count {count} is more than the {candidates} candidate(s) left to suggest; "
                         "lower --count (or give more images / a smaller --size)")


def check_weights(uncertainty_weight: float, density_weight: float) -> None:
    """A CysegError naming the first of the two weights outside [0, its maximum], with what its ends mean."""
    for option, weight, maximum, meaning in (
            ("--uncertainty-weight", uncertainty_weight, MAX_UNCERTAINTY_WEIGHT,
             "0 covers the pool alone, 1 its uncertainty"),
            ("--density-weight", density_weight, MAX_DENSITY_WEIGHT,
             "0 counts every candidate alike however typical, higher favours the pool's crowded regions")):
        if not 0 <= weight <= maximum:
            raise CysegError(f"{option} {weight} is outside [0, {maximum:g}]; {meaning}")


def select(candidates: Sequence[Candidate], count: int, annotated: Sequence[Candidate] = (),
           uncertainty_weight: float = 1.0, density_weight: float = 0.0) -> list[Suggestion]:
    """`count` suggestions, greedily the candidate that adds most to the coverage of the pool: the
    sum over candidates of their weight (uncertainty to the power `uncertainty_weight`, times typicality
    to the power `density_weight`; 0 and 0 count every candidate alike) times their likeness to the
    nearest pick or `annotated` image (likeness exp(-d²/2s²) of the standardised descriptions' distance d,
    s the median distance between them, so that every pool has a scale of its own)."""
    check_count(count, len(candidates))
    check_weights(uncertainty_weight, density_weight)
    distances = _distances([*candidates, *annotated])
    n = len(candidates)
    scale = np.median(distances[np.triu_indices(len(distances), 1)]) if len(distances) > 1 else 1.0
    like = np.exp(-0.5 * (distances / (scale if scale > 0 else 1.0)) ** 2)
    weight = _weights(np.array([c.uncertainty for c in candidates], np.float64), like[:n].mean(axis=1),
                      uncertainty_weight, density_weight)
    covered = like[:n, n:].max(axis=1, initial=0.0)
    nearest = distances[:n, n:].min(axis=1, initial=np.inf)
    free = np.ones(n, bool)
    chosen: list[Suggestion] = []
    for rank in range(1, count + 1):
        gain = np.where(free, (np.maximum(like[:n, :n] - covered[None, :], 0) * weight[None, :]).sum(axis=1),
                        -np.inf)
        j = int(np.argmax(gain))
        chosen.append(Suggestion(candidates[j], rank, float(gain[j]),
                                 float(nearest[j]) if np.isfinite(nearest[j]) else 1.0))
        free[j] = False
        covered = np.maximum(covered, like[j, :n])
        nearest = np.minimum(nearest, distances[j, :n])
    return chosen


def _weights(uncertainties: np.ndarray, typicality: np.ndarray, uncertainty_weight: float,
             density_weight: float) -> np.ndarray:
    """Each candidate's weight in the coverage, uncertainty**uncertainty_weight * typicality**density_weight,
    scaled to mean 1 (all 1 when every weight is 0)."""
    weight = uncertainties ** uncertainty_weight * (typicality / typicality.mean()) ** density_weight
    return weight / weight.mean() if weight.mean() > 0 else np.ones(len(weight))


def _distances(items: Sequence[Candidate]) -> np.ndarray:
    """The distances between every pair of items, between standardised descriptions, in units of a
    typical one-per-feature spread."""
    from scipy.spatial.distance import cdist

    features = np.stack([c.description for c in items]).astype(np.float64)
    spread = features.std(axis=0)
    features = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1)
    return (cdist(features, features) / np.sqrt(max(features.shape[1], 1))).astype(np.float32)


def score_all(candidates: Sequence[Candidate], pixels: Callable[[Candidate], np.ndarray], seg: Segmenter,
              views: int, measure: str, progress: Callable[[Iterable[Candidate]], Iterable[Candidate]] = iter
              ) -> list[Candidate]:
    """Every candidate scored on its pixels (`pixels(candidate)`: RGB uint8 at the processing resolution)."""
    return [score_candidate(seg, c, pixels(c), views, measure) for c in progress(candidates)]
