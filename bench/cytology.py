"""A slide shaped like cytology: real cells cut out by their expert masks (wbc/dataset1 white cells,
urothelial cells, isbi2014_synthetic Pap-smear cells) scattered on glass, single and in small
clusters, until a given fraction of the area is cells; with its ground truth (the cells' masks).
Cells are blended into the glass over a one-pixel feathered edge, so no box of foreign background
comes with them. Without ../shared/data, scikit-image's IHC nuclei stand in for the cells."""
from __future__ import annotations

import cv2
import numpy as np

from bench.common import SHARED_DATA
from bench.mosaic import GLASS, Placement
from segmenter.io.dataset import read_mask
from segmenter.io.images import read_image

CLUSTER_P = 0.4  # chance that a placed cell starts a small cluster
CLUSTER_SIZE = (2, 5)  # cells in a cluster
GRID = 16  # occupancy grid (px): cells never overlap


def _cutouts_of(image: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(RGB patch on glass, bool mask) of each labelled object, cropped to its box."""
    out = []
    for label in np.unique(labels[labels > 0]):
        inside = labels == label
        ys, xs = np.nonzero(inside)
        if ys.size < 64:
            continue
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        mask = inside[box]
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0)[:, :, None]
        patch = (alpha * image[box] + (1 - alpha) * GLASS).round().astype(np.uint8)
        out.append((patch, mask))
    return out


def cell_cutouts(limit_per_source: int = 120) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """source -> (patch, mask) of real cells: one per wbc image (its white cell), the connected
    cells of each urothelial crop, each ISBI cell instance; IHC nuclei without ../shared/data."""
    sources = {"wbc": (SHARED_DATA / "wbc" / "dataset1", "masks", False),
               "urothelial": (SHARED_DATA / "urothelial", "masks", False),
               "isbi2014": (SHARED_DATA / "isbi2014_synthetic", "cells_instance", True)}
    found: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, (root, masks, instances) in sources.items():
        if not (root / "images").is_dir():
            continue
        cells: list[tuple[np.ndarray, np.ndarray]] = []
        for path in sorted((root / "images").glob("*.png")):
            if len(cells) >= limit_per_source:
                break
            image = read_image(path)
            if instances:
                labels = cv2.imread(str(root / masks / path.name), cv2.IMREAD_UNCHANGED).astype(np.int32)
            else:
                labels = cv2.connectedComponents(read_mask(root / masks / path.name, image.shape[:2]).astype(np.uint8),
                                                 connectivity=8)[1]
            cells += _cutouts_of(image, labels)
        found[name] = cells[:limit_per_source]
    return found or {"ihc": _ihc_cutouts()}


def _ihc_cutouts() -> list[tuple[np.ndarray, np.ndarray]]:
    from skimage import color, data, filters

    ihc = np.ascontiguousarray(data.immunohistochemistry())
    hema = color.rgb2hed(ihc)[:, :, 0]
    mask = (hema > filters.threshold_otsu(hema)).astype(np.uint8)
    return _cutouts_of(ihc, cv2.connectedComponents(mask, connectivity=8)[1])


def cytology_layout(width: int, height: int, fill: float, seed: int = 0) -> list[Placement]:
    """Cells (all sources mixed) scattered without overlap, a share of them in small clusters of
    touching neighbours, until about `fill` of the area is cell pixels."""
    rng = np.random.default_rng(seed)
    cells = [c for group in cell_cutouts().values() for c in group]
    occupied = np.zeros((height // GRID + 2, width // GRID + 2), bool)
    placements: list[Placement] = []
    covered, attempts, placed_side = 0, 0, 0
    while covered < fill * width * height and attempts < 200000:
        attempts += 1
        size = int(rng.integers(*CLUSTER_SIZE, endpoint=True)) if rng.random() < CLUSTER_P else 1
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        for n in range(size):
            patch, mask = cells[int(rng.integers(len(cells)))]
            k = int(rng.integers(4))
            patch, mask = np.ascontiguousarray(np.rot90(patch, k)), np.ascontiguousarray(np.rot90(mask, k))
            for _ in range(1 if n == 0 else 8):  # a cluster's next cell: beside the previous one, any side
                angle, reach = rng.uniform(0, 2 * np.pi), 0 if n == 0 else 0.5 * (placed_side + max(mask.shape))
                x = int(centre[0] + np.cos(angle) * reach - mask.shape[1] / 2)
                y = int(centre[1] + np.sin(angle) * reach - mask.shape[0] / 2)
                placed = _place(occupied, placements, patch, mask, x, y, width, height)
                if placed is not None:
                    break
            if placed is None:
                break
            covered += int(mask.sum())
            centre, placed_side = (x + mask.shape[1] // 2, y + mask.shape[0] // 2), max(mask.shape)
    return placements


def _place(occupied: np.ndarray, placements: list[Placement], patch: np.ndarray, mask: np.ndarray, x: int, y: int,
           width: int, height: int) -> Placement | None:
    """The cell placed with its top-left corner at (x, y) if it fits on the slide and on free grid cells."""
    h, w = mask.shape
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return None
    cells = occupied[y // GRID:(y + h) // GRID + 1, x // GRID:(x + w) // GRID + 1]
    small = cv2.resize(mask.astype(np.uint8), (cells.shape[1], cells.shape[0]), interpolation=cv2.INTER_AREA) > 0
    if (cells & small).any():
        return None
    cells |= small
    paint = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # the cell and its feathered rim
    placement = Placement(x, y, patch, mask.astype(np.uint8), paint)
    placements.append(placement)
    return placement


def describe_cytology(width: int, height: int, placements: list[Placement], fill: float) -> str:
    """The slide's ImageDescription: says it was built, from what."""
    return (f"BUILT by cyseg bench/cytology.py: {width}x{height} slide of {len(placements)} real cells (wbc, "
            f"urothelial, ISBI 2014) cut out by their masks and scattered on glass, {fill:.0%} of the area; not a "
            "scanned slide")
