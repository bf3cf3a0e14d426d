"""Training plans the defaults leave to the data (`--resolution auto`, `--epochs auto`): the working
resolution from the size of the annotated objects, as nnU-Net plans its spacing from the dataset,
and the training length from a fixed budget of pixels, so every default run costs about the same."""
from __future__ import annotations

import math

import cv2
import numpy as np

DEFAULT_CROP = 256
DEFAULT_EPOCHS = 30
MIN_OBJECT_AREA = 16


def object_areas(masks: list[np.ndarray]) -> np.ndarray:
    """The areas (px) of the 8-connected objects of the masks, components under MIN_OBJECT_AREA ignored."""
    areas = [np.zeros(0, np.int64)]
    for mask in masks:
        _, _, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
        found = stats[1:, cv2.CC_STAT_AREA]
        areas.append(found[found >= MIN_OBJECT_AREA])
    return np.concatenate(areas)


def object_size(masks: list[np.ndarray]) -> float:
    """Equivalent diameter (px) of the object holding the median foreground pixel (0: no foreground).

    Weighting by area makes the answer the size of the objects most of the foreground belongs to,
    not of the specks; components under 16 px are ignored.
    """
    areas = object_areas(masks)
    if not areas.size:
        return 0.0
    ordered = np.sort(areas).astype(np.float64)
    median = ordered[np.searchsorted(np.cumsum(ordered), ordered.sum() / 2)]
    return float(2 * math.sqrt(median / math.pi))


def plan_resolution(size: float, receptive_field: int) -> float:
    """Working resolution that brings a `size`-px object within half the network's receptive field.

    Half the theoretical field is about what a network really uses (its effective field); objects
    larger than that are segmented from their texture alone and lose their outline. Rounded down to
    a tenth so that datasets of similar objects share a resolution; never above the images' own.
    """
    if size <= 0 or size <= receptive_field / 2:
        return 1.0
    return max(0.1, math.floor(10 * receptive_field / 2 / size) / 10)


def plan_epochs(crop: int) -> int:
    """Epochs that show the network as many pixels as 30 epochs of 256-px crops (same CPU time)."""
    return max(1, round(DEFAULT_EPOCHS * (DEFAULT_CROP / crop) ** 2))
