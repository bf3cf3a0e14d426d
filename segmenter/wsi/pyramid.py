"""Write tiled pyramidal TIFFs that OpenSlide reads as "generic-tiff" with every level.

Levels are successive TIFF pages (OpenSlide 4 ignores SubIFD levels), each half the size of the
previous one, until a level fits in one tile. Level 0 is written tile by tile from a callback, so a
slide far larger than memory can be built; each coarser level is accumulated while the finer one
is written (in memory when small, else in a temporary file beside the output).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_path

log = logging.getLogger(__name__)

COMPRESSIONS = ("jpeg", "zlib", None)
DEFAULT_DESCRIPTION = "cyseg pyramidal TIFF"
IN_MEMORY_BYTES = 256 * 2**20  # coarser levels larger than this are buffered on disk

RegionFn = Callable[[int, int, int, int], np.ndarray]


def pyramid_sizes(width: int, height: int, tile: int = 256, levels: int | None = None) -> list[tuple[int, int]]:
    """(width, height) of each level: halved (rounding up) until a level fits in one tile, or
    exactly `levels` levels."""
    if levels is not None and levels < 1:
        raise CysegError(f"pyramid level count {levels} must be >= 1")
    sizes = [(width, height)]
    while (len(sizes) < levels) if levels else max(sizes[-1]) > tile:
        w, h = sizes[-1]
        if w == 1 and h == 1:
            raise CysegError(f"{levels} pyramid levels are too many for a {width}x{height} image; "
                             f"use at most {len(sizes)}")
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def halve(image: np.ndarray) -> np.ndarray:
    """Half-size image: each output pixel is the mean of a 2x2 block (odd sizes repeat the last
    row/column). Tiles of even size halve to exactly the pixels the whole image would."""
    h, w = image.shape[:2]
    if h % 2 or w % 2:
        image = cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    return cv2.resize(image, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)


def write_pyramid(path: str | os.PathLike, image: np.ndarray, tile: int = 256, levels: int | None = None,
                  compression: str | None = "jpeg", mpp: float | None = None,
                  description: str = DEFAULT_DESCRIPTION, quality: int = 90) -> Path:
    """Write an RGB uint8 image (h, w, 3) as a tiled pyramidal TIFF; see write_pyramid_streaming."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CysegError(f"a pyramid needs an RGB uint8 image (h, w, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    return write_pyramid_streaming(path, width, height, lambda x, y, w, h: image[y:y + h, x:x + w], tile=tile,
                                   levels=levels, compression=compression, mpp=mpp, description=description,
                                   quality=quality)


def write_pyramid_streaming(path: str | os.PathLike, width: int, height: int, read_region: RegionFn,
                            tile: int = 256, levels: int | None = None, compression: str | None = "jpeg",
                            mpp: float | None = None, description: str = DEFAULT_DESCRIPTION,
                            quality: int = 90) -> Path:
    """Write a width x height RGB slide as a tiled pyramidal TIFF without holding level 0.

    `read_region(x, y, w, h)` returns the RGB uint8 (h, w, 3) level-0 pixels of one tile; it is
    called once per tile, row by row. `compression` is "jpeg" (lossy, `quality`), "zlib"
    (lossless) or None; `mpp` (µm per level-0 pixel) goes into the resolution tags, where
    OpenSlide reads it; `description` into level 0's ImageDescription (OpenSlide's
    `openslide.comment`). The file is written under a temporary name and renamed when complete.
    """
    path = Path(path)
    _check_options(width, height, tile, compression, mpp, quality)
    sizes = pyramid_sizes(width, height, tile, levels)
    raw = sum(3 * w * h for w, h in sizes)
    codec: dict = {}
    if compression == "jpeg":
        codec = {"compression": "jpeg", "compressionargs": {"level": quality}}
    elif compression == "zlib":
        codec = {"compression": "zlib", "predictor": True}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=raw > 2**32 - 2**28) as writer:
        source: RegionFn = _checked(read_region)
        for level, (w, h) in enumerate(sizes):
            ds = width / w
            target = _LevelBuffer(*sizes[level + 1], path.parent) if level + 1 < len(sizes) else None
            extra = {"description": description} if level == 0 else {"subfiletype": 1}
            if mpp:
                extra |= {"resolution": (1e4 / (mpp * ds), 1e4 / (mpp * ds)), "resolutionunit": "CENTIMETER"}
            writer.write(_tiles(source, w, h, tile, target), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                         photometric="rgb", metadata=None, software="cyseg", **codec, **extra)
            log.debug("%s: level %d written (%dx%d)", path, level, w, h)
            if target is not None:
                source = target.read
    log.info("wrote %s: %dx%d, %d levels, %s", path, width, height, len(sizes), compression or "uncompressed")
    return path


def _check_options(width: int, height: int, tile: int, compression: str | None, mpp: float | None,
                   quality: int) -> None:
    """CysegError for options OpenSlide or TIFF cannot honour."""
    if width < 1 or height < 1:
        raise CysegError(f"pyramid size {width}x{height} must be at least 1x1")
    if tile < 16 or tile % 16:
        raise CysegError(f"tile size {tile} must be a positive multiple of 16 (TIFF rule); use 256 or 512")
    if compression not in COMPRESSIONS:
        raise CysegError(f"compression {compression!r} is not supported; use 'jpeg', 'zlib' or None")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise CysegError(f"mpp {mpp} must be a positive number of µm per pixel")
    if not 1 <= quality <= 100:
        raise CysegError(f"JPEG quality {quality} must be between 1 and 100")


def _checked(read_region: RegionFn) -> RegionFn:
    """Wrap a level-0 callback so a wrong tile shape or type fails with the tile named."""
    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        tile = np.asarray(read_region(x, y, w, h))
        if tile.shape != (h, w, 3) or tile.dtype != np.uint8:
            raise ValueError(f"read_region({x}, {y}, {w}, {h}) returned {tile.dtype} {tile.shape}; "
                             f"expected uint8 {(h, w, 3)}")
        return tile
    return read


def _tiles(source: RegionFn, width: int, height: int, tile: int, target: _LevelBuffer | None) -> Iterator[np.ndarray]:
    """The level's tiles in TIFF order, padded to full size by repeating the edge (so JPEG does
    not ring at the border); each is also halved into `target`, the next level."""
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            w, h = min(tile, width - x), min(tile, height - y)
            pixels = source(x, y, w, h)
            if target is not None:
                target.put(x // 2, y // 2, halve(pixels))
            if (w, h) != (tile, tile):
                pixels = cv2.copyMakeBorder(pixels, 0, tile - h, 0, tile - w, cv2.BORDER_REPLICATE)
            yield np.ascontiguousarray(pixels)


class _LevelBuffer:
    """The next-coarser level, filled tile by tile: an array in memory, or a memory-mapped
    temporary file beside the output when large."""

    def __init__(self, width: int, height: int, folder: Path) -> None:
        if 3 * width * height <= IN_MEMORY_BYTES:
            self.pixels = np.empty((height, width, 3), np.uint8)
        else:
            with tempfile.TemporaryFile(dir=folder, prefix=".pyramid-level-") as fh:  # unlinked when closed
                self.pixels = np.memmap(fh, np.uint8, mode="w+", shape=(height, width, 3))

    def put(self, x: int, y: int, pixels: np.ndarray) -> None:
        """Store a halved tile at (x, y) of this level."""
        self.pixels[y:y + pixels.shape[0], x:x + pixels.shape[1]] = pixels

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The (h, w, 3) box at (x, y), for writing this level's tiles."""
        return np.asarray(self.pixels[y:y + h, x:x + w])
