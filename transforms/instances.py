"""Instances from class masks (CPU, numpy/OpenCV/scikit-image): the normalised distance to the
instance boundary a model learns to predict (Naylor et al. 2018) and the contour band it may learn
beside it (DCAN, Chen et al. 2016), the split of touching objects around the distance's peaks
(h-maxima on quantised levels, in linear passes so that whole slides can afford them) or around the
cores the predicted contours cut, grown by a watershed or to the nearest marker, connected components
for models without them, and the assignment of each nucleus to the cell that holds it."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage
from skimage import measure
from skimage.segmentation import watershed

LEVEL_STEP = 0.1  # the distance levels the markers are found at: 0.9, 0.8, ... 0.1
DEFAULT_H = 0.2
GROWTHS = ("watershed", "nearest")
MARKS = ("peaks", "contour")
DEFAULT_CONTOUR = 0.5
MAX_JOIN = 10.0  # nucleus seeds are joined across gaps of at most this many diameters
GAP_SIGMA = 5.0  # px: how far from two objects the gap weight reaches (Ronneberger et al. 2015's sigma)


@dataclass(frozen=True)
class Separation:
    """How touching objects are split: `h` the least height (in normalised distance, on levels
    LEVEL_STEP apart) by which a peak of the predicted distance stands out to mark its own object;
    `grow` how the markers fill their component (`watershed` on the distance, or each pixel to the
    `nearest` marker); `nucleus_seeds` whether the predicted nuclei mark the cells instead, nuclei
    whose gap is at most `join` times the smaller one's diameter marking one cell (a lobed or fragmented
    nucleus, a binucleate cell; 0: each nucleus its own cell); `marks` where the markers come from: the
    distance's `peaks`, or the `contour` cores (the foreground where the predicted contour probability
    is under `contour`; models trained with contours)."""

    h: float = DEFAULT_H
    grow: str = "watershed"
    nucleus_seeds: bool = False
    marks: str = "peaks"
    contour: float = DEFAULT_CONTOUR
    join: float = 0.0

    def check(self) -> Separation:
        """Itself, when its values can separate anything; else a ValueError naming the parameter."""
        if not 0 < self.h < 1:
            raise ValueError(f"instance separation h {self.h} must be in (0, 1); e.g. {DEFAULT_H}")
        if self.grow not in GROWTHS:
            raise ValueError(f"instance separation grow {self.grow!r} must be one of {', '.join(GROWTHS)}")
        if self.marks not in MARKS:
            raise ValueError(f"instance separation marks {self.marks!r} must be one of {', '.join(MARKS)}")
        if not 0 < self.contour < 1:
            raise ValueError(f"instance separation contour {self.contour} must be in (0, 1); e.g. {DEFAULT_CONTOUR}")
        if not 0 <= self.join <= MAX_JOIN:
            raise ValueError(f"instance separation join {self.join} must be in [0, {MAX_JOIN:g}] (nucleus diameters); "
                             "e.g. 2")
        return self

    def describe(self) -> str:
        """One line for logs: where the markers come from, the growth, the seeds."""
        marks = f"contour cores under {self.contour:g}" if self.marks == "contour" else f"h {self.h:g}"
        joined = f" joined across {self.join:g} diameters" if self.join else ""
        return f"{marks}, {self.grow}" + (f", nuclei{joined} as seeds" if self.nucleus_seeds else "")


def _edges(labels: np.ndarray) -> np.ndarray:
    """bool (H, W): the pixels with a 4-neighbour of another label (instance or background); the
    image border is no edge."""
    padded = np.pad(labels, 1, mode="edge")
    edge = np.zeros(labels.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy:dy + labels.shape[0], dx:dx + labels.shape[1]] != labels
    return edge


def distance_target(labels: np.ndarray, cap: float = 0.0) -> np.ndarray:
    """Instance labels (H, W) -> float32 (H, W): each pixel's distance to the nearest pixel outside
    its instance, divided by the largest such distance in its instance (1 at its centre, small at
    its edge, 0 on the background). With a `cap` (px) above 0 it is divided by the smaller of that
    largest distance and the cap, and saturates at 1: an object wider than the network sees gets one
    plateau it can recognise locally, instead of a centre it cannot locate (objects within the cap
    are unchanged)."""
    labels = np.asarray(labels)
    inside = labels > 0
    if not inside.any():
        return np.zeros(labels.shape, np.float32)
    interior = (inside & ~_edges(labels)).astype(np.uint8)
    distance = cv2.distanceTransform(interior, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) + inside
    ids = distinct(labels[inside])
    peak = np.zeros(int(ids.max()) + 1, np.float32)
    peak[ids] = ndimage.maximum(distance, labels, ids)
    if cap > 0:
        peak = np.minimum(peak, cap)
    return np.where(inside, np.minimum(distance / np.maximum(peak[labels], 1e-6), 1), 0).astype(np.float32)


def contour_target(labels: np.ndarray) -> np.ndarray:
    """Instance labels (H, W) -> float32 (H, W) 0/1: the contour band, 1 within one pixel of an
    object's edge pixels (on both sides; between touching objects the band covers both edges), 0
    elsewhere. What remains of an object without its band is its core, apart from its neighbours'."""
    labels = np.asarray(labels)
    edge = _edges(labels) & (labels > 0)
    return cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)


def gap_weight(labels: np.ndarray, w0: float, sigma: float = GAP_SIGMA) -> np.ndarray:
    """Instance labels (H, W) -> float32 (H, W) loss weights: 1 + w0 exp(-(d1 + d2)² / 2 sigma²) on the
    background, d1 and d2 its distances to the nearest and second-nearest object (U-Net's weight map,
    Ronneberger et al. 2015), 1 inside the objects: the narrow gaps that keep touching objects apart
    weigh up to 1 + w0, where an unweighted loss hardly sees them."""
    labels = np.asarray(labels)
    weight = np.ones(labels.shape, np.float32)
    ids = distinct(labels[labels > 0])
    if w0 <= 0 or ids.size < 2:
        return weight
    nearest = np.full(labels.shape, np.inf, np.float32)
    second = np.full(labels.shape, np.inf, np.float32)
    for i in ids:
        d = cv2.distanceTransform((labels != i).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        second = np.minimum(second, np.maximum(nearest, d))
        nearest = np.minimum(nearest, d)
    background = labels == 0
    weight[background] += w0 * np.exp(-((nearest[background] + second[background]) ** 2) / (2 * sigma ** 2))
    return weight


def connected_instances(mask: np.ndarray) -> np.ndarray:
    """A 0/1 mask -> int32 labels, one per 8-connected component (a model without a distance channel)."""
    _, labels = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels


def separate(foreground: np.ndarray, distance: np.ndarray, separation: Separation,
             seeds: np.ndarray | None = None, contour: np.ndarray | None = None) -> np.ndarray:
    """A 0/1 mask and its predicted distance map (and contour probability, for `contour` marks) ->
    int32 labels. Each connected component is split around its markers (`markers`: the peaks of the
    distance that stand out by `separation.h`, or `contour_markers`), or around the labels `seeds`
    (nuclei, for cells) that reach it where given, grown as `separation.grow` says. A component with
    one marker or none is one object (its component id); only the others are grown, each on its
    bounding box, so the work follows the touching objects. Objects are numbered 1..N."""
    foreground = np.asarray(foreground) > 0
    distance = np.asarray(distance, np.float32)
    n, components, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=8)
    if separation.marks == "contour":
        if contour is None:
            raise ValueError("contour marks need the predicted contour; the model has no contour channel")
        marks = contour_markers(foreground, contour, separation.contour)
    else:
        marks = markers(foreground, distance, separation.h)
    if seeds is not None:  # the nuclei mark the components they reach, the peaks the others
        seeds = joined_seeds(np.where(foreground, seeds, 0), separation.join, foreground)
        seeded = np.zeros(n, bool)
        seeded[components[seeds > 0]] = True
        seeded[0] = False
        marks = np.where(seeded[components], np.where(seeds > 0, seeds.astype(np.int32) + marks.max(), 0), marks)
    labels = components.copy()  # a component with one mark or none is one object
    count = n - 1
    for k in _marked_twice(components, marks, n):
        x, y, w, h = (int(v) for v in stats[k, :4])
        box = (slice(y, y + h), slice(x, x + w))
        inside = components[box] == k
        part = _grow(inside, np.where(inside, marks[box], 0), distance[box], separation.grow)
        labels[box][inside] = np.where(part[inside] == 1, k, part[inside] - 1 + count)
        count += int(part.max()) - 1
    return labels


def joined_seeds(nuclei: np.ndarray, join: float, inside: np.ndarray | None = None) -> np.ndarray:
    """Nucleus labels -> seed labels where nuclei share one seed when the gap between them is at most
    `join` times the smaller one's diameter (each reaches `join` times its equivalent radius, up to
    the line halfway to the other): the lobes of one nucleus, its fragments, two nuclei of one cell, so
    that one cell is not split between them; nuclei farther apart stay seeds of their own, and chains of
    close nuclei one seed. Scale-free: each nucleus reaches by its own size. With `inside` (the cells'
    foreground) the reach joins only through it, so the nuclei of other components never link two of a
    component's (and a window sees the same seeds for an object it holds whole). 0: the nuclei unchanged."""
    nuclei = np.asarray(nuclei)
    if join <= 0 or not nuclei.any():
        return nuclei
    reach = join * np.sqrt(np.bincount(nuclei.ravel()) / np.pi)
    gap, (rows, cols) = ndimage.distance_transform_edt(nuclei == 0, return_indices=True)
    within = gap <= reach[nuclei[rows, cols]]
    groups, _ = ndimage.label(within if inside is None else within & (inside > 0), structure=np.ones((3, 3), bool))
    return np.where(nuclei > 0, groups, 0).astype(np.int32)


def _marked_twice(components: np.ndarray, marks: np.ndarray, n: int) -> np.ndarray:
    """The components (ids 1..n-1) holding two distinct marks or more: the only ones to grow."""
    where = marks > 0
    keys = components[where].astype(np.int64) * (int(marks.max()) + 1) + marks[where]
    pairs = distinct(keys) // (int(marks.max()) + 1)
    return np.flatnonzero(np.bincount(pairs, minlength=n) >= 2)


def markers(foreground: np.ndarray, distance: np.ndarray, h: float) -> np.ndarray:
    """int32 markers: the h-maxima of the distance inside the foreground, found on its levels 0.9,
    0.8, ... (LEVEL_STEP apart) from the top down with connected components. A region appearing at
    a level is a peak; where regions meet at a lower level, all but the highest of them are dropped
    unless they stand at least `h` above it. Each kept peak is marked by its region at its own level.
    Linear passes, unlike the exact h-maxima's sorting reconstruction, each on the box of the pixels
    at its level or above (the high levels hold the small cores only)."""
    steps = round(1 / LEVEL_STEP)
    quantised = np.where(foreground, np.clip(np.floor(distance * steps + 1e-6), 0, steps - 1), 0).astype(np.uint8)
    row_top, column_top = quantised.max(axis=1, initial=0), quantised.max(axis=0, initial=0)
    painted = np.zeros(quantised.size, np.int32)
    peak, pixel, kept = [np.inf], [0], [False]  # per peak (index 0: none): its level, one pixel, kept or not
    for k in range(min(int(row_top.max(initial=0)), steps - 1), 0, -1):
        box = _level_box(row_top, column_top, k)
        level = quantised[box]
        n, regions = cv2.connectedComponents((level >= k).view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        reached = np.zeros(n, bool)
        reached[_regions_at(regions, box, np.asarray(pixel, np.int64)[np.flatnonzero(kept)], quantised.shape)] = True
        reached[0] = True
        band = np.flatnonzero(level.ravel() == k)  # a new peak's region lies wholly at this level
        band_regions = regions.ravel()[band]
        fresh = ~reached[band_regions]
        band, band_regions = band[fresh], band_regions[fresh]
        if band.size:
            first = np.full(n, band.size, np.int64)
            np.minimum.at(first, band_regions, np.arange(band.size))
            new = np.flatnonzero(first < band.size)
            number = np.zeros(n, np.int32)
            number[new] = np.arange(len(peak), len(peak) + new.size)
            ys, xs = np.divmod(band, level.shape[1])
            band = np.ravel_multi_index((ys + box[0].start, xs + box[1].start), quantised.shape)
            painted[band] = number[band_regions]
            peak += [k / steps] * new.size
            pixel += band[first[new]].tolist()
            kept += [True] * new.size
        alive = np.flatnonzero(kept)
        _drop_low_peaks(_regions_at(regions, box, np.asarray(pixel, np.int64)[alive], quantised.shape), alive,
                        k / steps, h, np.asarray(peak), kept)
    survivors = np.asarray(kept)
    number = np.zeros(survivors.size, np.int32)
    number[survivors] = np.arange(1, int(survivors.sum()) + 1)
    return number[painted].reshape(foreground.shape)


def contour_markers(foreground: np.ndarray, contour: np.ndarray, level: float) -> np.ndarray:
    """int32 markers: the cores, the 4-connected regions of the foreground where the predicted contour
    probability is under `level`, opened by a 3x3 square first so that one- and two-pixel bridges
    through a faint contour and specks do not mark (DCAN's fusion of object and contour maps)."""
    core = (np.asarray(foreground) > 0) & (np.asarray(contour) < level)
    core = cv2.morphologyEx(core.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    _, marks = cv2.connectedComponents(core, connectivity=4, ltype=cv2.CV_32S)
    return marks


def _level_box(row_top: np.ndarray, column_top: np.ndarray, k: int) -> tuple[slice, slice]:
    """The box of the pixels at level `k` or above (from each row's and column's top level), its
    corner moved to even coordinates: connected components then number the regions as on the
    whole array (OpenCV labels 2x2 blocks in scan order), and the peaks keep their numbers."""
    rows, columns = np.flatnonzero(row_top >= k), np.flatnonzero(column_top >= k)
    return slice(int(rows[0]) // 2 * 2, int(rows[-1]) + 1), slice(int(columns[0]) // 2 * 2, int(columns[-1]) + 1)


def _regions_at(regions: np.ndarray, box: tuple[slice, slice], flat: np.ndarray,
                shape: tuple[int, ...]) -> np.ndarray:
    """The regions (labels of the box `box`) holding the whole array's pixels `flat` (indices into
    an array of `shape`, inside the box)."""
    ys, xs = np.unravel_index(flat, shape)
    return regions[ys - box[0].start, xs - box[1].start]


def _drop_low_peaks(region_of: np.ndarray, alive: np.ndarray, level: float, h: float, peak: np.ndarray,
                    kept: list[bool]) -> None:
    """Where the kept peaks `alive` (in regions `region_of` at `level`) share a region, drop all but
    the highest unless they stand `h` above it."""
    heights = peak[alive]
    order = np.lexsort((-heights, region_of))
    highest = np.r_[True, region_of[order][1:] != region_of[order][:-1]]
    for i in alive[order][~highest & (heights[order] - level < h - 1e-6)]:
        kept[i] = False


def _grow(inside: np.ndarray, marks: np.ndarray, distance: np.ndarray, grow: str) -> np.ndarray:
    """One component's objects (labels 1..k) grown from its two marks or more: by a watershed on the
    negated distance, or each pixel to the nearest mark (Euclidean; `_in_one_piece`)."""
    ids = distinct(marks[marks > 0])
    number = np.zeros(int(ids[-1]) + 1, np.int32)
    number[ids] = np.arange(1, ids.size + 1)
    marks = number[marks]
    if grow == "watershed":
        grown = watershed(-distance, marks, mask=inside).astype(np.int32)
    else:
        _, nearest = cv2.distanceTransformWithLabels(np.where(marks > 0, 0, 255).astype(np.uint8), cv2.DIST_L2, 5,
                                                     labelType=cv2.DIST_LABEL_PIXEL)
        mark_of = np.zeros(int(nearest.max()) + 1, np.int32)
        mark_of[nearest[marks > 0]] = marks[marks > 0]
        grown = _in_one_piece(np.where(inside, mark_of[nearest], 0), marks, inside)
    unreached = inside & (grown == 0)
    if unreached.any():
        grown = np.where(unreached, connected_instances(unreached) + ids.size, grown)
    return grown


def _in_one_piece(grown: np.ndarray, marks: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Objects grown to their nearest mark (Euclidean) with the pieces cut off from their mark (across a
    bend of a curved object, the nearest mark can lie beyond another object) given to the objects they
    touch, by flooding from the marked pieces inside the component: every object one connected region."""
    pieces = measure.label(grown, background=0, connectivity=2)
    marked = np.zeros(int(pieces.max()) + 1, bool)
    marked[pieces[marks > 0]] = True
    if marked[1:].all():
        return grown
    kept = np.where(marked[pieces], grown, 0)
    return watershed(np.zeros(grown.shape, np.uint8), kept, mask=inside, connectivity=2).astype(np.int32)


def drop_small(labels: np.ndarray, min_area: float) -> np.ndarray:
    """int32 labels without the objects of fewer than `min_area` pixels (specks: what the polygons
    drop too), the others renumbered 1..N in their order."""
    labels = np.asarray(labels)
    if min_area <= 0 or not labels.any():
        return labels.astype(np.int32, copy=False)
    areas = np.bincount(labels.ravel())
    kept = areas >= min_area
    kept[0] = False
    number = np.zeros(areas.size, np.int32)
    number[kept] = np.arange(1, int(kept.sum()) + 1)
    return number[labels]


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an array, by one sort (NumPy 2's `np.unique` hashes, which is
    many times slower on millions of distinct values)."""
    ordered = np.sort(values, axis=None)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if ordered.size else ordered


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
