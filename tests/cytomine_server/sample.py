"""Small real images for tests that must run without ../shared/data: a pyramidal tiled TIFF
(OpenSlide "generic tiled TIFF") and a PNG, both cut from scikit-image's bundled
immunohistochemistry image (no download)."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np


def ihc_rgb(width: int = 1000, height: int = 700) -> np.ndarray:
    """An RGB uint8 (height, width, 3) image built from ``skimage.data.immunohistochemistry()``
    (512 x 512): the image and its mirror side by side, cropped; not a multiple of the tile size."""
    from skimage import data

    ihc = np.ascontiguousarray(data.immunohistochemistry())
    row = np.concatenate([ihc, ihc[:, ::-1]], axis=1)
    big = np.concatenate([row, row[::-1]], axis=0)  # 1024 x 1024
    if height > big.shape[0] or width > big.shape[1]:
        big = cv2.resize(big, (max(width, 1024), max(height, 1024)), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(big[:height, :width])


def write_pyramidal_tiff(path: str | os.PathLike, image: np.ndarray | None = None, tile: int = 256,
                         mpp: float | None = None) -> Path:
    """Write ``image`` (default :func:`ihc_rgb`) as a tiled, deflate-compressed TIFF with one
    directory per pyramid level (each half the size of the previous one) - the layout OpenSlide
    reads as "generic tiled TIFF". ``mpp`` (microns per pixel) is stored as the X/Y resolution."""
    import tifffile

    image = ihc_rgb() if image is None else image
    path = Path(path)
    levels = [image]
    while max(levels[-1].shape[:2]) > tile:
        prev = levels[-1]
        levels.append(cv2.resize(prev, ((prev.shape[1] + 1) // 2, (prev.shape[0] + 1) // 2),
                                 interpolation=cv2.INTER_AREA))
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            kwargs: dict = {"subfiletype": 1} if i else {}  # OpenSlide wants reduced-resolution flags
            if mpp:
                factor = 2 ** i
                kwargs.update(resolution=(1e4 / (mpp * factor), 1e4 / (mpp * factor)), resolutionunit="CENTIMETER")
            tif.write(level, tile=(tile, tile), photometric="rgb", compression="zlib", metadata=None, **kwargs)
    return path


def write_png(path: str | os.PathLike, image: np.ndarray | None = None) -> Path:
    """Write ``image`` (default a 600 x 400 crop of :func:`ihc_rgb`) as an RGB PNG."""
    image = ihc_rgb(600, 400) if image is None else image
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return path
