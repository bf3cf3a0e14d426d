"""Background skipping: a mask of everything that is not empty glass, learned on the slide's
low-resolution overview and read window by window at a fixed resolution (`SlideTissue`).

Cytology slides are mostly glass; only boxes around the tissue are segmented. Skipping must never
drop cells (target: < 1 % of the true foreground in skipped tiles), so every choice here errs on
the side of keeping: thresholds are pulled towards the glass, any stained *or* dark pixel counts,
a mask pixel is the darkest of the finer pixels it covers (an isolated cell is not averaged into
the glass), and faint pixels that touch detected tissue join it, so a cell's pale rim stays in.
The mask is not dilated by default: tissue boxes add the context cells need around the mask, and
each pixel of dilation would add to every box (bench/wsi.py).
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
# the masks skipping fits boxes on have pixels of this many level-0 pixels whatever the slide's size
# (bench/wsi.py measures the boxes on a slide this size and as a 100,000 x 170,000 slide's overview would see it)
FINE_RESOLUTION = 8.0
HALO = 32  # mask pixels read around a window's mask, so rims and specks at its edges are judged in context


@dataclass
class TissueMask:
    """Tissue (True) at thumbnail resolution; `downsample` level-0 pixels per mask pixel, its top-left
    corner at level-0 `origin` (x, y)."""

    mask: np.ndarray
    downsample: float
    origin: tuple[float, float] = (0.0, 0.0)

    def _window(self, x: float, y: float, w: float, h: float) -> tuple[int, int, int, int]:
        """Mask-pixel bounds (x0, y0, x1, y1) of a level-0 box, not clipped."""
        d, (ox, oy) = self.downsample, self.origin
        return (math.floor((x - ox) / d), math.floor((y - oy) / d), math.ceil((x + w - ox) / d),
                math.ceil((y + h - oy) / d))

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

    def window_mask(self, x: float, y: float, w: float, h: float) -> TissueMask:
        """The mask any level-0 box is judged on: this one (`SlideTissue.window_mask` reads finer ones)."""
        return self


@dataclass(frozen=True)
class Threshold:
    """One measure's thresholds: tissue above `cut`, clearly tissue above `strong`, faint above `faint`."""

    cut: float
    strong: float
    faint: float


@dataclass(frozen=True)
class TissueRule:
    """What counts as tissue on one slide, learned on its thumbnail (`tissue_rule`) so that it can be
    applied to any of its pixels: the method and each measure's thresholds (`_measures`)."""

    method: str
    thresholds: tuple[Threshold, ...]

    def mask(self, pixels: np.ndarray, min_area_px: int = 4, dilate_px: int = 0) -> np.ndarray:
        """Tissue (bool) of RGB uint8 pixels: any measure above its cut, grown into the faint pixels
        it touches, cleaned (`_clean`)."""
        signal = strong = faint = np.zeros(pixels.shape[:2], bool)
        for values, t in zip(_measures(pixels, self.method), self.thresholds, strict=True):
            signal, strong, faint = signal | (values > t.cut), strong | (values > t.strong), faint | (values > t.faint)
        return _clean(_grown_into(signal, faint), strong, min_area_px, dilate_px)


@dataclass
class SlideTissue:
    """A slide's tissue (`slide_tissue`): its overview mask, and masks of any part of it at a
    resolution set in level-0 pixels, not by the slide's size, so the boxes skipping infers fit the
    cells as closely on a 100,000-pixel slide as on a small one."""

    reader: SlideReader
    rule: TissueRule
    overview: TissueMask
    resolution: float = FINE_RESOLUTION
    min_area_px: int = 4
    dilate_px: int = 0

    def window_mask(self, x: float, y: float, w: float, h: float) -> TissueMask:
        """Tissue of the level-0 box (x, y, w, h) at `resolution` (the overview when it is as fine),
        read with HALO mask pixels around it so that rims and specks at its edges are judged as in
        the whole slide."""
        res = self.resolution
        if self.overview.downsample <= res:
            return self.overview
        cols, rows = math.ceil(self.reader.width / res), math.ceil(self.reader.height / res)
        x0, y0 = max(0, math.floor(x / res)), max(0, math.floor(y / res))
        x1, y1 = min(cols, math.ceil((x + w) / res)), min(rows, math.ceil((y + h) / res))
        if x1 <= x0 or y1 <= y0:
            return TissueMask(np.zeros((0, 0), bool), res)
        hx0, hy0, hx1, hy1 = max(0, x0 - HALO), max(0, y0 - HALO), min(cols, x1 + HALO), min(rows, y1 + HALO)
        pixels = self.reader.read_at(round(hx0 * res), round(hy0 * res), hx1 - hx0, hy1 - hy0, res)
        mask = self.rule.mask(pixels, self.min_area_px, self.dilate_px)
        return TissueMask(mask[y0 - hy0:y1 - hy0, x0 - hx0:x1 - hx0], res, (x0 * res, y0 * res))


def tissue_mask(thumbnail: np.ndarray, downsample: float, method: str = "auto", min_area_px: int = 4,
                dilate_px: int = 0) -> TissueMask:
    """Tissue mask of an RGB uint8 thumbnail whose pixels are `downsample` level-0 pixels.

    brightfield: a pixel is tissue when its optical density (max over channels) or its HSV
    saturation exceeds the glass's by a margin; Otsu can raise each threshold only within a
    narrow band, so a blank slide yields no tissue and faint cells are not thresholded away; pixels
    above half the margin join the tissue they touch (a cell's pale rim).
    fluorescence: bright signal on a dark background, same rule on the brightest channel.
    auto: fluorescence when the median brightness is low. Components smaller than `min_area_px`
    mask pixels are dropped unless clearly above the background (an isolated cell is kept),
    one-pixel gaps are closed, and the mask is dilated by `dilate_px` (none by default).
    """
    if not downsample > 0:
        raise CysegError(f"thumbnail downsample {downsample} must be > 0")
    mask = tissue_rule(thumbnail, method).mask(thumbnail, min_area_px, dilate_px)
    log.debug("tissue: %.1f %% of a %dx%d mask at downsample %.1f", 100 * mask.mean(), mask.shape[1],
              mask.shape[0], downsample)
    return TissueMask(mask, float(downsample))


def tissue_rule(thumbnail: np.ndarray, method: str = "auto") -> TissueRule:
    """The rule `tissue_mask` applies, learned on a thumbnail (see there): the method and each
    measure's thresholds, relative to the glass the thumbnail shows."""
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise CysegError(f"tissue detection needs an RGB uint8 thumbnail, got {thumbnail.dtype} {thumbnail.shape}")
    method = _method(method, thumbnail)
    if method == "fluorescence":
        (brightness,) = _measures(thumbnail, method)
        return TissueRule(method, (_threshold(brightness, float(np.percentile(brightness, 2)), FLUO_MARGIN,
                                              FLUO_BAND, "brightness"),))
    od, saturation = _measures(thumbnail, method)
    density = _threshold(od, float(np.percentile(od, 2)), OD_MARGIN, OD_BAND, "optical density")
    glass = saturation[od <= density.cut]
    sat_ref = float(np.median(glass)) if glass.size else float(np.percentile(saturation, 2))
    return TissueRule(method, (density, _threshold(saturation, sat_ref, SAT_MARGIN, SAT_BAND, "saturation")))


def _measures(pixels: np.ndarray, method: str) -> list[np.ndarray]:
    """The float32 measures a method thresholds: the brightest channel (fluorescence), or the
    optical density of the densest channel and the HSV saturation (brightfield)."""
    if method == "fluorescence":
        return [pixels.max(axis=2).astype(np.float32)]
    od = -np.log((pixels.min(axis=2).astype(np.float32) + 1) / 256)
    return [od, cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)[..., 1].astype(np.float32)]


def slide_tissue(slide: SlideReader, max_side: int = 2048, detail: float = 8.0, method: str = "auto",
                 resolution: float = FINE_RESOLUTION, min_area_px: int = 4, dilate_px: int = 0) -> SlideTissue:
    """A slide's tissue: the rule learned on its thumbnail (at most `max_side` pixels long), the
    overview mask of the whole slide, and masks of any part of it at `resolution` level-0 pixels
    per mask pixel (`SlideTissue.window_mask`).

    Each thumbnail pixel is the darkest (brightfield) or brightest (fluorescence) of the pixels of a
    finer thumbnail sampled every `detail` level-0 pixels, so a cell much smaller than a thumbnail
    pixel is not averaged into the glass, as plain averaging would average an isolated nucleus away
    (bench/wsi.py counts the ground-truth foreground that skipping loses: docs/benchmarks.md,
    "Whole slides").
    """
    if not detail > 0:
        raise CysegError(f"tissue detail {detail} must be > 0 level-0 pixels")
    if not resolution > 0:
        raise CysegError(f"tissue resolution {resolution} must be > 0 level-0 pixels")
    method = _method(method, slide.preview)
    pool = max(1, round(max(slide.width, slide.height) / max_side / detail))
    thumbnail, downsample = slide.thumbnail(max_side, pool, "max" if method == "fluorescence" else "min")
    rule = tissue_rule(thumbnail, method)
    overview = TissueMask(rule.mask(thumbnail, min_area_px, dilate_px), float(downsample))
    log.debug("tissue (%s): %.1f %% of the slide's %dx%d overview at downsample %.1f", method,
              100 * overview.mask.mean(), overview.mask.shape[1], overview.mask.shape[0], downsample)
    return SlideTissue(slide, rule, overview, resolution, min_area_px, dilate_px)


def slide_tissue_mask(slide: SlideReader, max_side: int = 2048, detail: float = 8.0, method: str = "auto",
                      **kwargs) -> TissueMask:
    """The overview tissue mask of a whole slide, at most `max_side` pixels long (`slide_tissue`;
    keyword arguments go there)."""
    return slide_tissue(slide, max_side, detail, method, **kwargs).overview


def _method(method: str, thumbnail: np.ndarray) -> str:
    """The detection method: "auto" becomes fluorescence for dark thumbnails, else brightfield."""
    if method not in METHODS:
        raise CysegError(f"tissue method {method!r} is not known; use one of {', '.join(METHODS)}")
    if method == "auto":
        return image_modality(thumbnail)
    return method


def _threshold(values: np.ndarray, reference: float, margin: float, band: float, name: str) -> Threshold:
    """Thresholds of one measure: tissue above Otsu's threshold clipped to [floor, floor + band],
    where floor = reference + margin (never inside the background's noise, never far into faint
    tissue); clearly tissue above floor + band; faint (tissue only where it touches tissue:
    `_grown_into`) above half the margin over the glass's median (the values up to the floor): on
    noisy glass, half the margin above a low percentile would mark half the glass faint, and the
    faint pixels would join into one slide-wide region."""
    floor = reference + margin
    cut = float(np.clip(threshold_otsu(values) if np.ptp(values) > 0 else floor, floor, floor + band))
    glass = values[values <= floor]
    faint = max(reference, float(np.median(glass)) if glass.size else reference) + margin / 2
    log.debug("%s: background %.3f, threshold %.3f, faint above %.3f", name, reference, cut, faint)
    return Threshold(cut, floor + band, faint)


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
