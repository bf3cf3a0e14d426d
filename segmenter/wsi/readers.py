"""Whole-slide readers behind one interface: OpenSlide formats, other TIFFs, and plain images.

Every reader returns RGB uint8 regions addressed like OpenSlide (x, y in level-0 pixels, w, h in
pixels of the level read), fills the parts outside the slide with white and composites alpha on
white, so the tiling, tissue detection and segmentation code never depends on the file format.
Readers hold no open handle when pickled: a Dask worker reopens the file on its first read.
"""
from __future__ import annotations

import abc
import logging
import math
import os
import threading
import warnings
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import openslide
import tifffile
from PIL import Image

from segmenter.errors import CysegError

log = logging.getLogger(__name__)

SUPPORTED = "SVS, NDPI, MRXS, SCN, DICOM, CZI, tiled/pyramidal TIFF, PNG, JPEG"
TIFF_SUFFIXES = {".tif", ".tiff"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
# Suffixes that only OpenSlide reads: a file with one of them that OpenSlide rejects is damaged.
OPENSLIDE_SUFFIXES = {".svs", ".svslide", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".dcm", ".czi"}

LEVEL_TOLERANCE = 0.01  # relative slack when matching downsamples (DICOM levels are 2.0003x, 4.002x...)
THUMBNAIL_BLOCK = 4096  # level pixels read at once when building a thumbnail (bounded memory)
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
                hint = "; ask for a magnification instead" if self.magnification else "; give a downsample or level instead"
                raise CysegError(f"slide {self.path} has no µm-per-pixel metadata{hint}")
            downsample, asked, native = mpp / self.mpp, f"{mpp:g} µm/px", f"{self.mpp:g} µm/px"
        else:
            if not magnification > 0:
                raise CysegError(f"magnification {magnification} must be > 0")
            if self.magnification is None:
                hint = "; ask for a resolution in µm per pixel (mpp) instead" if self.mpp else "; give a downsample or level instead"
                raise CysegError(f"slide {self.path} has no objective-power metadata{hint}")
            downsample, asked, native = self.magnification / magnification, f"{magnification:g}x", f"{self.magnification:g}x"
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
                       for (w, h), ds in zip(self.level_dimensions, self.level_downsamples)],
            "mpp": self.mpp,
            "magnification": self.magnification,
            "description": (self.description or "")[:500] or None,
        }

    def close(self) -> None:
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

    def _reset(self) -> None:
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


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """RGB uint8 of `rgb` (h, w, 3) drawn over white with `alpha` (h, w) uint8."""
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    return _blend_on_white(rgb, alpha, premultiplied)


def rgba_on_white(rgba: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """`composite_on_white` of an RGBA (h, w, 4) uint8 image: an opaque one only loses its alpha
    channel, in one OpenCV pass (10x faster than numpy's strided copy on a 4096² region)."""
    if rgba[..., 3].min() == 255:
        return cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2RGB)
    return _blend_on_white(rgba[..., :3], rgba[..., 3], premultiplied)


def _blend_on_white(rgb: np.ndarray, alpha: np.ndarray, premultiplied: bool) -> np.ndarray:
    a = alpha[..., None].astype(np.uint16)
    if premultiplied:
        return (rgb.astype(np.uint16) + (255 - a)).clip(0, 255).astype(np.uint8)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class OpenSlideReader(SlideReader):
    """Slides OpenSlide detects: SVS, NDPI, MRXS, SCN, DICOM, Zeiss CZI, generic tiled TIFF, ..."""

    _TRANSIENT = ("_slide",)

    def __init__(self, path: str | os.PathLike, fmt: str | None = None) -> None:
        """Open `path` with OpenSlide and read its geometry and metadata."""
        self.path = Path(path)
        self._slide: openslide.OpenSlide | None = None
        slide = self._open()
        self.format = fmt or openslide.OpenSlide.detect_format(str(self.path)) or "openslide"
        props = slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.description = props.get(openslide.PROPERTY_NAME_COMMENT)
        self.level_dimensions = [tuple(map(int, d)) for d in slide.level_dimensions]
        self.level_downsamples = [float(d) for d in slide.level_downsamples]
        self.width, self.height = self.level_dimensions[0]
        self.mpp = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
        self.magnification = _positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))

    def _reset(self) -> None:
        self._slide = None

    def _open(self) -> openslide.OpenSlide:
        if self._slide is None:
            try:
                self._slide = openslide.OpenSlide(str(self.path))
            except (openslide.OpenSlideError, OSError) as exc:
                raise CysegError(f"slide {self.path} cannot be read by OpenSlide ({_one_line(exc)}); "
                                 "the file may be truncated or corrupt: copy it again") from exc
        return self._slide

    def _read(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        try:
            rgba = np.asarray(self._open().read_region((x, y), level, (w, h)))
        except openslide.OpenSlideError as exc:
            self.close()  # OpenSlide errors are sticky: the next read reopens the file
            raise CysegError(f"slide {self.path}: region x={x}, y={y}, {w}x{h} at level {level} cannot be "
                             f"decoded ({_one_line(exc)}); the file may be corrupt") from exc
        return rgba_on_white(rgba)

    def close(self) -> None:
        """Close the OpenSlide handle."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None


class _ArrayReader(SlideReader):
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


class TiffReader(_ArrayReader):
    """TIFFs OpenSlide does not read (plain stripped TIFF, OME-TIFF pyramids, tifffile pyramids
    with SubIFDs): reads only the tiles or strips a region touches, or memory-maps uncompressed
    images, so a small read never loads a whole plane."""

    _TRANSIENT = ("_tif", "_planes", "_lock", "_cache", "_maps")
    CACHE_BYTES = 64 * 2**20  # decoded tiles kept for overlapping reads

    def __init__(self, path: str | os.PathLike) -> None:
        """Open `path` with tifffile and check that its first series is a 2-D grey/RGB(A) image."""
        self.path = Path(path)
        self._reset()
        tif = self._open()
        key = self._planes[0][0].keyframe
        self._check_pixels(key, sum(int(p.keyframe.samplesperpixel) for p in self._planes[0]))
        self.format = "ome-tiff" if tif.is_ome else "tiff"
        self.vendor = "tifffile"
        self.description = key.description or None
        self.level_dimensions = [(p[0].keyframe.imagewidth, p[0].keyframe.imagelength) for p in self._planes]
        self.width, self.height = self.level_dimensions[0]
        self.level_downsamples = [(self.width / w + self.height / h) / 2 for w, h in self.level_dimensions]
        self.mpp, self.magnification = _tiff_resolution(tif, key)

    def _reset(self) -> None:
        self._tif: tifffile.TiffFile | None = None
        self._planes: list[list[Any]] = []  # per level, the pages (one per channel plane)
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[int, int, int], tuple[np.ndarray, tuple[int, ...]]] = OrderedDict()
        self._maps: dict[tuple[int, int], np.ndarray] = {}

    def _open(self) -> tifffile.TiffFile:
        """The open TiffFile, opening it and listing the level pages on first use."""
        with self._lock:
            if self._tif is None:
                self._tif = self._open_file()
            return self._tif

    def _open_file(self) -> tifffile.TiffFile:
        """Open the file and list each level's pages; CysegError if it is not a usable TIFF."""
        try:
            tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, ValueError, OSError, EOFError, KeyError, IndexError) as exc:
            raise CysegError(f"slide {self.path} is not a readable TIFF ({_one_line(exc)}); "
                             "the file may be truncated or corrupt: copy it again") from exc
        try:
            series = tif.series[0]
            self._planes = [self._level_pages(series.axes, level) for level in series.levels]
        except (tifffile.TiffFileError, ValueError, OSError, EOFError, KeyError, IndexError) as exc:
            tif.close()
            raise CysegError(f"slide {self.path} holds no readable image ({_one_line(exc)}); "
                             "the file may be truncated or corrupt: copy it again") from exc
        except CysegError:
            tif.close()
            raise
        return tif

    def _level_pages(self, axes: str, level: Any) -> list[Any]:
        """The pages (one per channel plane) that make up one pyramid level."""
        extra = {a: n for a, n in zip(level.axes, level.shape) if a not in "YXS" and n > 1}
        if set(extra) - {"C"} or len(level.pages) != extra.get("C", 1) or None in level.pages:
            raise CysegError(f"slide {self.path} holds a {axes} image of shape {tuple(level.shape)}; only 2-D "
                             "grey or RGB images are supported: save a single plane (e.g. with tifffile)")
        return list(level.pages)

    def _check_pixels(self, key: Any, samples: int) -> None:
        """Refuse sample types and colour spaces that cannot become RGB; note alpha and scaling."""
        if key.dtype not in (np.uint8, np.uint16):
            raise CysegError(f"slide {self.path} has {key.dtype} samples; supported: uint8, uint16: convert it")
        if samples not in (1, 2, 3, 4):
            raise CysegError(f"slide {self.path} has {samples} channels; supported: 1 (grey), 3 (RGB), "
                             "2 or 4 (with alpha): save it as RGB")
        photometric = int(key.photometric)
        if photometric not in (0, 1, 2, 6) or (photometric == 6 and key.compression not in (6, 7)):
            raise CysegError(f"slide {self.path} uses photometric interpretation {key.photometric.name}; "
                             "supported: grey, RGB, JPEG YCbCr: save it as RGB")
        self._invert = photometric == 0  # MINISWHITE
        alpha = samples in (2, 4) and bool(key.extrasamples) and key.extrasamples[0] in (1, 2)
        self._alpha = alpha
        self._premultiplied = alpha and key.extrasamples[0] == 1
        max_value = key.tags.valueof(281)  # MaxSampleValue
        if isinstance(max_value, tuple):
            max_value = max(max_value)
        full = float(np.iinfo(key.dtype).max)
        self._scale = 255.0 / (float(max_value) if max_value and 0 < max_value < full else full)

    def close(self) -> None:
        """Close the TIFF file and drop the cached tiles and memory maps; a later read reopens it."""
        with self._lock:
            if self._tif is not None:
                self._tif.close()
            self._reset()

    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        self._open()
        try:
            planes = [self._page_region(level, i, page, x, y, w, h) for i, page in enumerate(self._planes[level])]
        except (tifffile.TiffFileError, ValueError, NotImplementedError, OSError, RuntimeError) as exc:
            raise CysegError(f"slide {self.path}: region x={x}, y={y}, {w}x{h} at level {level} cannot be "
                             f"decoded ({_one_line(exc)}); the file may be corrupt") from exc
        data = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)
        return self._to_rgb(data)

    def _page_region(self, level: int, plane: int, page: Any, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Samples (h, w, n) of one page's box: memory-mapped when stored raw, else from the
        tiles or strips the box touches."""
        key = page.keyframe
        if page.is_contiguous:
            arr = self._maps.get((level, plane))
            if arr is None:
                arr = np.memmap(self.path, dtype=key.dtype.newbyteorder(self._tif.byteorder), mode="r",
                                offset=page.dataoffsets[0], shape=key.shaped)
                self._maps[(level, plane)] = arr
            box = arr[:, 0, y:y + h, x:x + w, :]  # (separate samples, h, w, contiguous samples)
            return np.moveaxis(box, 0, 2).reshape(h, w, -1).astype(key.dtype.newbyteorder("="))
        if key.is_tiled:
            seg_h, seg_w = key.tilelength, key.tilewidth
        else:
            seg_h, seg_w = min(key.rowsperstrip or key.imagelength, key.imagelength), key.imagewidth
        rows = math.ceil(key.imagelength / seg_h)
        cols = math.ceil(key.imagewidth / seg_w)
        separate = key.samplesperpixel if key.planarconfig == 2 else 1
        contiguous = key.samplesperpixel // separate
        wanted = [s * rows * cols + r * cols + c
                  for s in range(separate)
                  for r in range(y // seg_h, (y + h - 1) // seg_h + 1)
                  for c in range(x // seg_w, (x + w - 1) // seg_w + 1)]
        out = np.full((separate, h, w, contiguous), np.iinfo(key.dtype).max, key.dtype)
        for segment, origin in self._segments(level, plane, page, wanted):
            if segment is None:
                continue  # sparse TIFF: a missing tile is background, like OpenSlide's transparency
            s, _, sy, sx, _ = origin
            sh, sw = segment.shape[1:3]
            ya, yb = max(y, sy), min(y + h, sy + sh)
            xa, xb = max(x, sx), min(x + w, sx + sw)
            if ya < yb and xa < xb:
                out[s, ya - y:yb - y, xa - x:xb - x] = segment[0, ya - sy:yb - sy, xa - sx:xb - sx]
        return np.moveaxis(out, 0, 2).reshape(h, w, -1)

    def _segments(self, level: int, plane: int, page: Any, wanted: list[int]):
        """Yield (decoded segment or None, origin) for each wanted tile/strip; origin is the
        segment's (separate sample, depth, y, x, sample) position. Recent segments are cached."""
        key = page.keyframe
        with self._lock:  # tifffile builds these lazily, seeking the shared file handle (JPEG: is_jfif)
            decode = key.decode
            kwargs = {}
            if key.compression in (6, 7, 34892, 33007):  # JPEG needs the shared tables
                kwargs = {"jpegtables": page.jpegtables, "jpegheader": key.jpegheader}
        missing = []
        for index in wanted:
            with self._lock:
                hit = self._cache.get((level, plane, index))
                if hit is not None:
                    self._cache.move_to_end((level, plane, index))
            if hit is None:
                missing.append(index)
            else:
                yield hit
        if not missing:
            return
        offsets = [page.dataoffsets[i] for i in missing]
        counts = [page.databytecounts[i] for i in missing]
        for data, index in self._tif.filehandle.read_segments(offsets, counts, indices=missing, lock=self._lock):
            segment, origin, _ = decode(data, index, **kwargs)
            if segment is not None:
                self._remember((level, plane, index), (segment, origin))
            yield segment, origin

    def _remember(self, key: tuple[int, int, int], entry: tuple[np.ndarray, tuple[int, ...]]) -> None:
        """Cache a decoded segment, evicting the least recently used beyond CACHE_BYTES."""
        if entry[0].nbytes > self.CACHE_BYTES // 4:
            return
        with self._lock:
            self._cache[key] = entry
            total = sum(e[0].nbytes for e in self._cache.values())
            while total > self.CACHE_BYTES and self._cache:
                total -= self._cache.popitem(last=False)[1][0].nbytes

    def _to_rgb(self, data: np.ndarray) -> np.ndarray:
        """(h, w, n) samples -> RGB uint8 composited on white."""
        if data.dtype != np.uint8:
            data = np.clip(data.astype(np.float32) * self._scale + 0.5, 0, 255).astype(np.uint8)
        if self._invert:
            data = 255 - data
        n = data.shape[2]
        colour = data[..., :1].repeat(3, axis=2) if n in (1, 2) else data[..., :3]
        if n == 4 and self._alpha:
            return rgba_on_white(data, self._premultiplied)
        if n == 2 and self._alpha:
            return composite_on_white(colour, data[..., -1], self._premultiplied)
        return np.ascontiguousarray(colour)


class ImageReader(_ArrayReader):
    """Plain PNG/JPEG/BMP images: one level, decoded whole by OpenCV on the first read."""

    _TRANSIENT = ("_image",)

    def __init__(self, path: str | os.PathLike) -> None:
        """Read the image header (size) now; decode the pixels lazily."""
        self.path = Path(path)
        self._image: np.ndarray | None = None
        self.format = self.path.suffix.lower().lstrip(".").replace("jpg", "jpeg")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(self.path) as img:  # reads the header only
                    self.width, self.height = img.size
        except Image.DecompressionBombError:  # too many pixels for PIL's guard: OpenCV tells the size
            self.height, self.width = self._pixels().shape[:2]
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CysegError(f"slide {self.path} is not a readable {self.format.upper()} image "
                             f"({_one_line(exc)}); the file may be truncated or corrupt") from exc
        self.level_dimensions = [(self.width, self.height)]
        self.level_downsamples = [1.0]

    def _reset(self) -> None:
        self._image = None

    def _pixels(self) -> np.ndarray:
        if self._image is None:
            data = cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED)
            if data is None:
                raise CysegError(f"slide {self.path} cannot be decoded as {self.format.upper()}; "
                                 "the file may be truncated or corrupt")
            if data.dtype == np.uint16:
                data = ((data.astype(np.uint32) + 128) // 257).astype(np.uint8)
            elif data.dtype != np.uint8:
                raise CysegError(f"slide {self.path} has {data.dtype} pixels; supported: 8 or 16 bit")
            if data.ndim == 2:
                data = cv2.cvtColor(data, cv2.COLOR_GRAY2RGB)
            elif data.shape[2] == 4:
                data = rgba_on_white(cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA))
            else:
                data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
            self._image = data
        return self._image

    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._pixels()[y:y + h, x:x + w].copy()

    def close(self) -> None:
        """Drop the decoded pixels."""
        self._image = None


def open_slide(path: str | os.PathLike) -> SlideReader:
    """Open a slide file with the reader that handles it: OpenSlide for the formats it detects
    (unless tifffile sees more pyramid levels in a generic TIFF), tifffile for other TIFFs,
    OpenCV for PNG/JPEG/BMP. Raises CysegError naming the file for missing, unsupported or
    damaged files."""
    path = Path(path)
    if not path.exists():
        raise CysegError(f"slide {path} does not exist; check the path")
    if path.is_dir():
        raise CysegError(f"slide {path} is a folder; give the slide file (for DICOM, any .dcm file in it)")
    suffix = path.suffix.lower()
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        fmt = None
    if fmt is not None:
        reader = OpenSlideReader(path, fmt)
        if fmt != "generic-tiff" or not _tifffile_prefers(path, reader.level_count):
            return reader
        reader.close()
    if suffix in TIFF_SUFFIXES:
        return TiffReader(path)
    if suffix in IMAGE_SUFFIXES:
        return ImageReader(path)
    if suffix in OPENSLIDE_SUFFIXES:
        raise CysegError(f"slide {path} is not a readable {suffix[1:].upper()} file (OpenSlide does not "
                         "recognise it); the file may be truncated or corrupt: copy it again")
    raise CysegError(f"slide {path} has an unsupported format ({suffix or 'no extension'}); supported: {SUPPORTED}")


def _tifffile_prefers(path: Path, openslide_levels: int) -> bool:
    """True when tifffile sees an OME-TIFF or more pyramid levels (SubIFDs) than OpenSlide."""
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.is_ome or len(tif.series[0].levels) > openslide_levels
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError):
        return False


def _tiff_resolution(tif: tifffile.TiffFile, page: Any) -> tuple[float | None, float | None]:
    """(µm per pixel, objective power) from OME metadata, else mpp from the resolution tags."""
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            root = None
        if root is not None:
            pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
            objective = next((e for e in root.iter() if e.tag.endswith("}Objective")), None)
            mpp = None
            if pixels is not None:
                factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(pixels.get("PhysicalSizeXUnit", "µm"))
                size = _positive_float(pixels.get("PhysicalSizeX"))
                mpp = size * factor if size and factor else None
            mag = _positive_float(objective.get("NominalMagnification")) if objective is not None else None
            return mpp, mag
    unit = int(page.resolutionunit)
    xres = page.resolution[0] if page.resolution else 0
    if unit not in (2, 3) or not xres or xres <= 0:
        return None, None
    mpp = (25400.0 if unit == 2 else 10000.0) / xres
    if not 0.01 <= mpp <= 100:  # e.g. the 72 dpi default of image editors: not a microscope scale
        log.debug("%s: ignoring resolution tags (%g µm/px)", tif.filename, mpp)
        return None, None
    return mpp, None


def _positive_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
