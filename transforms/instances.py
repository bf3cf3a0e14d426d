"""Instances from class masks (CPU, numpy/OpenCV/scikit-image): the normalised distance to the
instance boundary a model learns to predict (Naylor et al. 2018), the seeded watershed that splits
touching objects with it, connected components for models without it, and the assignment of each
nucleus to the cell that holds it."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

# markers: h-maxima of the predicted distance, at least this far apart (0: any distance)
DEFAULT_H = 0.1
DEFAULT_MIN_DISTANCE = 3


@dataclass(frozen=True)
class Separation:
    """The watershed's parameters: `h` the least height (in normalised distance) by which a peak stands
    out to seed its own object, `min_distance` the radius (px) within which two peaks merge into one
    seed, and `nucleus_seeds` whether the predicted nuclei seed the cells."""

    h: float = DEFAULT_H
    min_distance: int = DEFAULT_MIN_DISTANCE
    nucleus_seeds: bool = False

    def check(self) -> Separation:
        """Itself, when its values can separate anything; else a ValueError naming the parameter."""
        if not 0 < self.h < 1:
            raise ValueError(f"instance separation h {self.h} must be in (0, 1); e.g. {DEFAULT_H}")
        if not isinstance(self.min_distance, int) or self.min_distance < 0:
            raise ValueError(f"instance separation min_distance {self.min_distance!r} must be an integer >= 0 (px)")
        return self


def distance_target(labels: np.ndarray) -> np.ndarray:
    """Instance labels (H, W) -> float32 (H, W): each pixel's distance to the nearest pixel outside
    its instance, divided by the largest such distance in its instance (1 at its centre, small at
    its edge, 0 on the background)."""
    labels = np.asarray(labels)
    inside = labels > 0
    if not inside.any():
        return np.zeros(labels.shape, np.float32)
    # a pixel is on an edge when a 4-neighbour belongs to another instance or the background
    padded = np.pad(labels, 1, mode="edge")
    edge = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != labels
    interior = (inside & ~edge).astype(np.uint8)
    distance = cv2.distanceTransform(interior, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) + inside
    ids = np.unique(labels[inside])
    peak = np.zeros(int(ids.max()) + 1, np.float32)
    peak[ids] = ndimage.maximum(distance, labels, ids)
    return np.where(inside, distance / np.maximum(peak[labels], 1e-6), 0).astype(np.float32)


def connected_instances(mask: np.ndarray) -> np.ndarray:
    """A 0/1 mask -> int32 labels, one per 8-connected component (a model without a distance channel)."""
    _, labels = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels


def _markers(distance: np.ndarray, foreground: np.ndarray, separation: Separation) -> np.ndarray:
    """int32 seeds: the h-maxima of the distance inside the foreground, merged within `min_distance`."""
    peaks = h_maxima(np.where(foreground, distance, 0).astype(np.float32), separation.h) > 0
    if separation.min_distance > 0:
        side = 2 * separation.min_distance + 1
        peaks = cv2.dilate(peaks.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))) > 0
    return connected_instances(peaks & foreground)


def separate(foreground: np.ndarray, distance: np.ndarray, separation: Separation,
             seeds: np.ndarray | None = None) -> np.ndarray:
    """A 0/1 mask and its predicted distance map -> int32 labels: a seeded watershed on the negated
    distance restricted to the foreground. Seeds are the distance's h-maxima, or the labels `seeds`
    (nuclei, for cells) where given, with h-maxima only in the components no seed reaches; a
    component without any seed stays one object. Each connected component is separated on its own
    bounding box (the same labels as on the whole image), so the work follows the foreground."""
    foreground = np.asarray(foreground) > 0
    n, components, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    labels = np.zeros(foreground.shape, np.int32)
    count = 0
    for k in range(1, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        box = (slice(y, y + h), slice(x, x + w))
        inside = components[box] == k
        part = _separate_component(inside, distance[box], separation, None if seeds is None else seeds[box])
        labels[box][inside] = part[inside] + count
        count += int(part.max())
    return relabel(labels)


def _separate_component(inside: np.ndarray, distance: np.ndarray, separation: Separation,
                        seeds: np.ndarray | None) -> np.ndarray:
    """One connected component's objects (labels 1..k): flooded from the seeds that reach it, else
    from the distance's h-maxima; one object when neither gives a marker."""
    markers = relabel(np.where(inside, seeds, 0)) if seeds is not None and (seeds[inside] > 0).any() \
        else _markers(distance, inside, separation)
    if not markers.any():
        return inside.astype(np.int32)
    labels = watershed(-distance.astype(np.float32), markers, mask=inside).astype(np.int32)
    unseeded = inside & (labels == 0)
    if unseeded.any():
        rest = connected_instances(unseeded)
        labels = np.where(rest > 0, rest + int(labels.max()), labels)
    return labels


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in order of first appearance (row-major), 0 kept for the background."""
    ids, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(np.where(ids == 0, -1, first)))
    if ids.size and ids[0] != 0:
        order = order + 1
    return order[inverse].reshape(labels.shape).astype(np.int32)


def assign_nuclei(cells: np.ndarray, nuclei: np.ndarray) -> dict[int, int]:
    """{nucleus id: cell id} for each nucleus overlapping a cell: the cell it shares most pixels with
    (ties to the smallest cell id); nuclei outside every cell are left out."""
    both = (cells > 0) & (nuclei > 0)
    if not both.any():
        return {}
    pairs, counts = np.unique(np.stack([nuclei[both], cells[both]]).astype(np.int64), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    chosen: dict[int, int] = {}
    for nucleus, cell in pairs[:, order].T.tolist():
        chosen.setdefault(nucleus, cell)
    return chosen
