"""TIFFs OpenSlide does not read (plain stripped TIFF, OME-TIFF, tifffile pyramids with SubIFDs),
read tile by tile with tifffile."""
from __future__ import annotations

import logging
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from segmenter.errors import CysegError, one_line
from segmenter.io.images import composite_on_white, rgba_on_white
from segmenter.wsi.slide import ArrayReader, positive_float

log = logging.getLogger(__name__)


class TiffReader(ArrayReader):
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
            raise CysegError(f"slide {self.path} is not a readable TIFF ({one_line(exc, 200)}); "
                             "the file may be truncated or corrupt: copy it again") from exc
        try:
            series = tif.series[0]
            self._planes = [self._level_pages(series.axes, level) for level in series.levels]
        except (tifffile.TiffFileError, ValueError, OSError, EOFError, KeyError, IndexError) as exc:
            tif.close()
            raise CysegError(f"slide {self.path} holds no readable image ({one_line(exc, 200)}); "
                             "the file may be truncated or corrupt: copy it again") from exc
        except CysegError:
            tif.close()
            raise
        return tif

    def _level_pages(self, axes: str, level: Any) -> list[Any]:
        """The pages (one per channel plane) that make up one pyramid level."""
        extra = {a: n for a, n in zip(level.axes, level.shape, strict=True) if a not in "YXS" and n > 1}
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
                             f"decoded ({one_line(exc, 200)}); the file may be corrupt") from exc
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
                size = positive_float(pixels.get("PhysicalSizeX"))
                mpp = size * factor if size and factor else None
            mag = positive_float(objective.get("NominalMagnification")) if objective is not None else None
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
