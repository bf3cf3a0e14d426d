"""Figures for a person to look at: a mask drawn over its image, and the five-panel comparison
crop | crop + truth | crop + prediction | truth | prediction (false positives red, false negatives blue)."""
from __future__ import annotations

import numpy as np

GREEN = np.array([0, 200, 0], dtype=np.float32)


def overlay(image: np.ndarray, mask: np.ndarray, colour: np.ndarray = GREEN, alpha: float = 0.45,
            outline: bool = True) -> np.ndarray:
    """RGB image with the mask's foreground tinted and, optionally, its outline drawn."""
    import cv2

    out = image.astype(np.float32).copy()
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colour
    out = out.clip(0, 255).astype(np.uint8)
    if outline:
        contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 1)
    return out


def overlay_objects(image: np.ndarray, labels: np.ndarray, colour: np.ndarray, alpha: float = 0.3) -> np.ndarray:
    """RGB image with the objects of a label image tinted and each object's own outline drawn, so
    that touching objects show as separate ones."""
    from skimage.segmentation import find_boundaries

    out = overlay(image, labels > 0, colour, alpha, outline=False)
    out[find_boundaries(labels, mode="inner")] = colour.astype(np.uint8)
    return out


def error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """RGB map: true positives white, false positives red, false negatives blue, true negatives black."""
    t, p = truth > 0, pred > 0
    out = np.zeros((*truth.shape, 3), dtype=np.uint8)
    out[t & p] = (255, 255, 255)
    out[~t & p] = (255, 0, 0)
    out[t & ~p] = (0, 80, 255)
    return out


def _grey(mask: np.ndarray) -> np.ndarray:
    return np.repeat(((mask > 0) * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def comparison_panel(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, gap: int = 10) -> np.ndarray:
    """The five panels side by side with white gaps."""
    panels = [image, overlay(image, truth), overlay(image, pred, np.array([255, 0, 255], np.float32)),
              _grey(truth), error_map(truth, pred)]
    sep = np.full((image.shape[0], gap, 3), 255, dtype=np.uint8)
    parts = []
    for i, p in enumerate(panels):
        parts += [p] if i == 0 else [sep, p]
    return np.concatenate(parts, axis=1)
