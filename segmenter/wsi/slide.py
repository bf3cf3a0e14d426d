"""The interface every slide reader implements (`SlideReader`): level geometry, resolution
metadata and RGB region reads addressed like OpenSlide, white outside the slide, alpha composited on
white; readers hold no open handle when pickled, so a Dask worker reopens the file on its first read."""
from __future__ import annotations

import abc
import functools
import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segmenter.errors import CysegError

log = logging.getLogger(__name__)

LEVEL_TOLERANCE = 0.01  # relative slack when matching downsamples (DICOM levels are 2.0003x, 4.002x...)
THUMBNAIL_BLOCK = 4096  # level pixels read at once when building a thumbnail (bounded memory)
PREVIEW_SIDE = 1024  # the overview that decides a slide's modality
NO_RESOLUTION_HINT = "; give a downsample or level instead"
REDUCERS = {"mean": None, "min": np.min, "max": np.max}  # thumbnail pooling ("mean": plain resize)


class SlideReader(abc.ABC):
    """A whole-slide image: level geometry, resolution metadata and RGB region reads.

    Subclasses fill the attributes in their constructor and implement `_read` (regions that
    intersect the slide) and `_open`/`close` for their file handle.
    """

    path: Path
    format: str
    vendor: str | None = None
    description: str | None = None
    width: int
    height: int
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None = None
    magnification: float | None = None

    # attributes rebuilt after unpickling instead of being sent to another process
    _TRANSIENT: tuple[str, ...] = ()

    @property
    def level_count(self) -> int:
        """Number of pyramid levels (1 for a flat image)."""
        return len(self.level_dimensions)

    def read(self, x: int, y: int, w: int, h: int, level: int = 0) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of the region whose top-left corner is (x, y) in level-0
        pixels, w x h pixels of `level`; parts outside the slide are white.

        Keep x, y multiples of the level's downsample: OpenSlide resamples other offsets at
        sub-pixel precision, the other readers round them down. Raises CysegError for an invalid
        level or size and for a region that misses the slide.
        """
        self._check_region(x, y, w, h, level)
        return self._read(int(x), int(y), int(w), int(h), int(level))

    def read_at(self, x: int, y: int, w: int, h: int, downsample: float) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of w x h pixels at `downsample` level-0 pixels per pixel, whose
        top-left corner is (x, y) in level-0 pixels: read from the best level (`level_for_downsample`)
        and resized to the asked size (INTER_AREA) where that level is finer."""
        level = self.level_for_downsample(downsample)
        level_ds = self.level_downsamples[level]
        lw, lh = max(1, math.ceil(w * downsample / level_ds)), max(1, math.ceil(h * downsample / level_ds))
        pixels = self.read(x, y, lw, lh, level)
        return pixels if (lw, lh) == (w, h) else cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA)

    @functools.cached_property
    def preview(self) -> np.ndarray:
        """The whole slide at most PREVIEW_SIDE pixels long, read once: the scope check and tissue
        detection both judge the slide's modality on it."""
        return self.thumbnail(PREVIEW_SIDE)[0]

    def thumbnail(self, max_side: int, pool: int = 1, reduce: str = "mean") -> tuple[np.ndarray, float]:
        """The whole slide as an RGB image whose longer side is <= max_side, and its downsample
        (level-0 pixels per thumbnail pixel).

        With pool > 1 and reduce "min" or "max", each pixel is instead the per-channel darkest or
        brightest of pool x pool pixels of a thumbnail `pool` times larger, so that objects much
        smaller than a thumbnail pixel keep their contrast (tissue detection). Reads the smallest
        level at least as large as needed, block by block, so memory stays bounded.
        """
        if max_side < 1 or pool < 1:
            raise CysegError(f"thumbnail size {max_side} and pool {pool} must be >= 1")
        if reduce not in REDUCERS:
            raise CysegError(f"thumbnail reduction {reduce!r} is not known; use one of {', '.join(REDUCERS)}")
        downsample = max(1.0, max(self.width, self.height) / max_side)
        out_w = max(1, min(max_side, round(self.width / downsample)))
        out_h = max(1, min(max_side, round(self.height / downsample)))
        if reduce == "mean":
            pool = 1
        level = self.level_for_downsample(downsample / pool)
        lw, lh = self.level_dimensions[level]
        if lw * lh > 16 * THUMBNAIL_BLOCK**2:
            log.warning("%s: no level closer to %d px; reading level %d (%dx%d) for the thumbnail",
                        self.path, max_side * pool, level, lw, lh)
        thumb = np.empty((out_h, out_w, 3), np.uint8)
        sx, sy = lw / (out_w * pool), lh / (out_h * pool)  # level pixels per fine pixel
        step_x = max(1, int(THUMBNAIL_BLOCK / (sx * pool)))
        step_y = max(1, int(THUMBNAIL_BLOCK / (sy * pool)))
        ds = self.level_downsamples[level]
        for ty in range(0, out_h, step_y):
            ty1 = min(out_h, ty + step_y)
            y0 = math.floor(ty * pool * sy)
            y1 = min(lh, max(y0 + 1, math.ceil(ty1 * pool * sy)))
            for tx in range(0, out_w, step_x):
                tx1 = min(out_w, tx + step_x)
                x0 = math.floor(tx * pool * sx)
                x1 = min(lw, max(x0 + 1, math.ceil(tx1 * pool * sx)))
                block = self.read(round(x0 * ds), round(y0 * ds), x1 - x0, y1 - y0, level)
                fine = cv2.resize(block, ((tx1 - tx) * pool, (ty1 - ty) * pool), interpolation=cv2.INTER_AREA)
                if pool > 1:
                    fine = REDUCERS[reduce](fine.reshape(ty1 - ty, pool, tx1 - tx, pool, 3), axis=(1, 3))
                thumb[ty:ty1, tx:tx1] = fine
        return thumb, downsample

    def level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed `downsample` (1 % tolerance)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + LEVEL_TOLERANCE):
                best = i
        return best

    def downsample_for(self, mpp: float | None = None, magnification: float | None = None) -> float:
        """Downsample from level 0 that gives the requested resolution (µm per pixel, or
        objective power); CysegError when the slide lacks that metadata or the request is finer
        than level 0."""
        if (mpp is None) == (magnification is None):
            raise CysegError("give exactly one of mpp (µm per pixel) or magnification (objective power)")
        if mpp is not None:
            if not mpp > 0:
                raise CysegError(f"resolution {mpp} µm/px must be > 0")
            if self.mpp is None:
                hint = "; ask for a magnification instead" if self.magnification else NO_RESOLUTION_HINT
                raise CysegError(f"slide {self.path} has no µm-per-pixel metadata{hint}")
            downsample, asked, native = mpp / self.mpp, f"{mpp:g} µm/px", f"{self.mpp:g} µm/px"
        else:
            if not magnification > 0:
                raise CysegError(f"magnification {magnification} must be > 0")
            if self.magnification is None:
                hint = "; ask for a resolution in µm per pixel (mpp) instead" if self.mpp else NO_RESOLUTION_HINT
                raise CysegError(f"slide {self.path} has no objective-power metadata{hint}")
            downsample = self.magnification / magnification
            asked, native = f"{magnification:g}x", f"{self.magnification:g}x"
        if downsample < 1 - LEVEL_TOLERANCE:
            raise CysegError(f"requested {asked} is finer than level 0 of slide {self.path} ({native}); "
                             f"ask for {native} or coarser")
        return max(1.0, downsample)

    def identity(self) -> str:
        """What the window cache keys on: path, size and modification time of the file."""
        path = Path(self.path)
        stat = path.stat() if path.exists() else None
        return f"{path.resolve() if stat else path}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (format, size, levels, resolution, vendor) for logs and outputs."""
        return {
            "path": str(self.path),
            "reader": type(self).__name__,
            "format": self.format,
            "vendor": self.vendor,
            "width": self.width,
            "height": self.height,
            "levels": [{"width": w, "height": h, "downsample": ds}
                       for (w, h), ds in zip(self.level_dimensions, self.level_downsamples, strict=True)],
            "mpp": self.mpp,
            "magnification": self.magnification,
            "description": (self.description or "")[:500] or None,
        }

    def close(self) -> None:  # noqa: B027  (readers without a handle have nothing to release)
        """Release the file handle; a later read reopens the file."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._TRANSIENT:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.width}x{self.height}, {self.level_count} levels)"

    def _reset(self) -> None:  # noqa: B027  (readers without transient state have nothing to reset)
        """Set the transient attributes to their closed state (no handle, empty caches)."""

    def _check_region(self, x: int, y: int, w: int, h: int, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise CysegError(f"level {level} does not exist in slide {self.path} (levels 0..{self.level_count - 1})")
        if w < 1 or h < 1:
            raise CysegError(f"region size {w}x{h} of slide {self.path} must be at least 1x1 pixel")
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        xl, yl = math.floor(x / ds), math.floor(y / ds)
        if xl >= lw or yl >= lh or xl + w <= 0 or yl + h <= 0:
            raise CysegError(f"region x={x}, y={y}, {w}x{h} at level {level} lies outside slide {self.path} "
                             f"({self.width}x{self.height} at level 0); choose a window inside the slide")

    @abc.abstractmethod
    def _read(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        """Region read for a valid request that intersects the slide."""


class ArrayReader(SlideReader):
    """Base of readers that decode in-bounds level arrays themselves: clips requests to the
    level and pads the rest with white."""

    def _read(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        xl, yl = math.floor(x / ds), math.floor(y / ds)
        x0, y0, x1, y1 = max(xl, 0), max(yl, 0), min(xl + w, lw), min(yl + h, lh)
        inside = self._read_inside(level, x0, y0, x1 - x0, y1 - y0)
        if (x0, y0, x1, y1) == (xl, yl, xl + w, yl + h):
            return inside
        out = np.full((h, w, 3), 255, np.uint8)
        out[y0 - yl:y1 - yl, x0 - xl:x1 - xl] = inside
        return out

    @abc.abstractmethod
    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of a box inside the level, in that level's pixels."""


def positive_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
