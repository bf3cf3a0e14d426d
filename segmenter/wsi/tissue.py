"""Background skipping: a low-resolution mask of everything that is not empty glass.

Cytology slides are mostly glass; tiles with no tissue are not segmented. Skipping must never
drop cells (target: < 1 % of the true foreground in skipped tiles), so every choice here errs on
the side of keeping: thresholds are pulled towards the glass, any stained *or* dark pixel counts,
a mask pixel is the darkest of the finer pixels it covers (an isolated cell is not averaged into
the glass), and the mask is dilated so faint cell borders beside detected tissue stay in.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.filters import threshold_otsu

from segmenter.errors import CysegError
from segmenter.scope import image_modality
from segmenter.wsi.slide import SlideReader

log = logging.getLogger(__name__)

METHODS = ("auto", "brightfield", "fluorescence")
OD_MARGIN = 0.04  # optical density above the glass's that counts as tissue (about 8 grey levels)
OD_BAND = 0.10  # Otsu may raise the OD threshold by at most this much above the floor
SAT_MARGIN = 20  # HSV saturation (0-255) above the glass's that counts as stained
SAT_BAND = 30
FLUO_MARGIN = 10  # brightness above the dark background that counts as signal (fluorescence)
FLUO_BAND = 30


@dataclass
class TissueMask:
    """Tissue (True) at thumbnail resolution; `downsample` level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float

    def _window(self, x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
        """Mask-pixel bounds (x0, y0, x1, y1) of a level-0 box, not clipped."""
        d = self.downsample
        return math.floor(x / d), math.floor(y / d), math.ceil((x + w) / d), math.ceil((y + h) / d)

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Fraction of the level-0 box (x, y, w, h) covered by tissue; parts outside the slide
        count as background."""
        x0, y0, x1, y1 = self._window(x, y, w, h)
        area = max(0, x1 - x0) * max(0, y1 - y0)
        if area == 0:
            return 0.0
        mh, mw = self.mask.shape
        inside = self.mask[max(y0, 0):min(y1, mh), max(x0, 0):min(x1, mw)]
        return float(np.count_nonzero(inside)) / area

    def any_in(self, x: float, y: float, w: float, h: float, margin: int = 0) -> bool:
        """True if any tissue lies within the level-0 box grown by `margin` pixels on each side
        (the box may reach outside the slide). A tile is skipped only when this is False."""
        x0, y0, x1, y1 = self._window(x - margin, y - margin, w + 2 * margin, h + 2 * margin)
        mh, mw = self.mask.shape
        return bool(self.mask[max(y0, 0):min(y1, mh), max(x0, 0):min(x1, mw)].any())


def tissue_mask(thumbnail: np.ndarray, downsample: float, method: str = "auto", min_area_px: int = 4,
                dilate_px: int = 1) -> TissueMask:
    """Tissue mask of an RGB uint8 thumbnail whose pixels are `downsample` level-0 pixels.

    brightfield: a pixel is tissue when its optical density (max over channels) or its HSV
    saturation exceeds the glass's by a margin; Otsu can raise each threshold only within a
    narrow band, so a blank slide yields no tissue and faint cells are not thresholded away; pixels
    above half the margin join the tissue they touch (a cell's pale rim).
    fluorescence: bright signal on a dark background, same rule on the brightest channel.
    auto: fluorescence when the median brightness is low. Components smaller than `min_area_px`
    mask pixels are dropped unless clearly above the background (an isolated cell is kept),
    one-pixel gaps are closed, and the mask is dilated by `dilate_px`.
    """
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise CysegError(f"tissue detection needs an RGB uint8 thumbnail, got {thumbnail.dtype} {thumbnail.shape}")
    if not downsample > 0:
        raise CysegError(f"thumbnail downsample {downsample} must be > 0")
    method = _method(method, thumbnail)
    if method == "fluorescence":
        brightness = thumbnail.max(axis=2).astype(np.float32)
        signal, strong, faint = _above(brightness, float(np.percentile(brightness, 2)), FLUO_MARGIN, FLUO_BAND,
                                       "brightness")
    else:
        od = -np.log((thumbnail.min(axis=2).astype(np.float32) + 1) / 256)  # densest channel
        signal, strong, faint = _above(od, float(np.percentile(od, 2)), OD_MARGIN, OD_BAND, "optical density")
        saturation = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)
        glass = saturation[~signal]
        sat_ref = float(np.median(glass)) if glass.size else float(np.percentile(saturation, 2))
        stained, vivid, pale = _above(saturation, sat_ref, SAT_MARGIN, SAT_BAND, "saturation")
        signal, strong, faint = signal | stained, strong | vivid, faint | pale
    mask = _clean(_grown_into(signal, faint), strong, min_area_px, dilate_px)
    log.debug("tissue (%s): %.1f %% of a %dx%d mask at downsample %.1f", method, 100 * mask.mean(),
              mask.shape[1], mask.shape[0], downsample)
    return TissueMask(mask, float(downsample))


def slide_tissue_mask(slide: SlideReader, max_side: int = 2048, detail: float = 8.0, method: str = "auto",
                      **kwargs) -> TissueMask:
    """Tissue mask of a whole slide, at most `max_side` pixels long (keyword arguments go to
    `tissue_mask`).

    Each mask pixel is the darkest (brightfield) or brightest (fluorescence) of the pixels of a
    finer thumbnail sampled every `detail` level-0 pixels, so a cell much smaller than a mask
    pixel is not averaged into the glass, as plain averaging would average an isolated nucleus away
    (bench/wsi.py counts the ground-truth foreground that skipping loses: docs/benchmarks.md,
    "Whole slides").
    """
    if not detail > 0:
        raise CysegError(f"tissue detail {detail} must be > 0 level-0 pixels")
    method = _method(method, slide.preview)
    pool = max(1, round(max(slide.width, slide.height) / max_side / detail))
    thumbnail, downsample = slide.thumbnail(max_side, pool, "max" if method == "fluorescence" else "min")
    return tissue_mask(thumbnail, downsample, method=method, **kwargs)


def _method(method: str, thumbnail: np.ndarray) -> str:
    """The detection method: "auto" becomes fluorescence for dark thumbnails, else brightfield."""
    if method not in METHODS:
        raise CysegError(f"tissue method {method!r} is not known; use one of {', '.join(METHODS)}")
    if method == "auto":
        return image_modality(thumbnail)
    return method


def _above(values: np.ndarray, reference: float, margin: float, band: float,
           name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values > threshold, values > floor + band, values > glass + margin / 2), where floor =
    reference + margin and the threshold is Otsu's clipped to [floor, floor + band]: never inside the
    background's noise, never far into faint tissue. The second mask marks pixels clearly above the
    background, the third faint ones (tissue only where they touch the first: `_grown_into`), measured
    from the glass's median (the values up to the floor): on noisy glass, half the margin above a low
    percentile would mark half the glass faint, and the faint pixels would join into one slide-wide region."""
    floor = reference + margin
    threshold = float(np.clip(threshold_otsu(values) if np.ptp(values) > 0 else floor, floor, floor + band))
    glass = values[values <= floor]
    faint = max(reference, float(np.median(glass)) if glass.size else reference) + margin / 2
    log.debug("%s: background %.3f, threshold %.3f, faint above %.3f", name, reference, threshold, faint)
    return values > threshold, values > floor + band, values > faint


def _grown_into(signal: np.ndarray, faint: np.ndarray) -> np.ndarray:
    """`signal` with every faint region that touches it (hysteresis thresholding): the pale rim of
    a cell (soft edges, thin cytoplasm) joins the cell it surrounds, so the cell's box holds all of
    it, while faint specks on their own stay glass."""
    _, labels = cv2.connectedComponents((signal | faint).astype(np.uint8), connectivity=8)
    keep = np.zeros(labels.max() + 1, bool)
    return _keep_seeded(keep, labels, signal)[labels]


def _keep_seeded(keep: np.ndarray, labels: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """`keep` (one flag per component label) with every component holding a seed pixel set, and the
    background (label 0) cleared."""
    keep[np.unique(labels[seeds])] = True
    keep[0] = False
    return keep


def _clean(signal: np.ndarray, strong: np.ndarray, min_area_px: int, dilate_px: int) -> np.ndarray:
    """Close one-pixel gaps, drop components below min_area_px that hold no `strong` pixel
    (noise specks; an isolated dark cell is kept), dilate by dilate_px."""
    mask = cv2.morphologyEx(signal.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    if min_area_px > 1:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        keep = _keep_seeded(stats[:, cv2.CC_STAT_AREA] >= min_area_px, labels, strong & (mask > 0))
        mask = keep[labels].astype(np.uint8)
    if dilate_px > 0:
        size = 2 * dilate_px + 1
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    return mask.astype(bool)
