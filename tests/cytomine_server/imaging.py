"""Pixels: slides opened with OpenSlide (plain images through OpenSlide's ImageSlide), regions at a
zoom or a maximum size, PNG/JPEG/TIFF encoding, and rasterisation of Cytomine geometries
(bottom-left origin, y up) into top-left pixel frames."""
from __future__ import annotations

import math
import os
import threading

import cv2
import numpy as np
import openslide
from rasterio import features
from shapely.affinity import affine_transform
from shapely.geometry.base import BaseGeometry

TILE_SIZE = 256
_FORMATS = {"jpg": ".jpg", "jpeg": ".jpg", "png": ".png", "tif": ".tiff", "tiff": ".tiff", "webp": ".webp"}
CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "tif": "image/tiff",
                 "tiff": "image/tiff", "webp": "image/webp"}


class SlideFile:
    """One slide or plain image file, opened once and read under a lock."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._slide = openslide.open_slide(self.path)  # ImageSlide for PNG/JPEG/plain TIFF
        self._lock = threading.Lock()
        self.width, self.height = self._slide.dimensions
        props = self._slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = float(mpp) if mpp else None
        objective = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.magnification = round(float(objective)) if objective else None
        self.is_plain_image = isinstance(self._slide, openslide.ImageSlide)

    @property
    def mime(self) -> str:
        if self.vendor:
            return f"openslide/{self.vendor}"
        ext = os.path.splitext(self.path)[1].lower().lstrip(".")
        return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(ext, "image/tiff")

    @property
    def max_zoom(self) -> int:
        """Cytomine's ``zoom``: number of halvings until the image fits in one 256-px tile."""
        longest = max(self.width, self.height)
        return max(0, math.ceil(math.log2(longest / TILE_SIZE))) if longest > TILE_SIZE else 0

    def read(self, x: int, y: int, w: int, h: int, out_w: int | None = None, out_h: int | None = None) -> np.ndarray:
        """RGB uint8 array of the level-0 region (x, y, w, h) (top-left origin), resized to (out_w, out_h).
        The region must lie inside the image (callers clip)."""
        out_w = out_w or w
        out_h = out_h or h
        downsample = max(w / out_w, h / out_h)
        with self._lock:
            level = self._slide.get_best_level_for_downsample(downsample) if downsample > 1 else 0
            level_ds = self._slide.level_downsamples[level]
            lw = max(1, math.ceil(w / level_ds))
            lh = max(1, math.ceil(h / level_ds))
            region = self._slide.read_region((int(x), int(y)), level, (lw, lh))
        rgb = np.asarray(region)[:, :, :3]
        if rgb.shape[0] != out_h or rgb.shape[1] != out_w:
            shrink = out_w < rgb.shape[1] or out_h < rgb.shape[0]
            rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        return np.ascontiguousarray(rgb)

    def close(self) -> None:
        with self._lock:
            self._slide.close()


def scaled_size(w: int, h: int, zoom: int | None = None, max_size: int | None = None) -> tuple[int, int]:
    """Output size of a (w, h) region: ``max_size`` makes the longest side exactly that long (PIMS
    ``length``: it may enlarge); otherwise ``zoom`` divides by 2**zoom (PIMS ``level``)."""
    if max_size:
        scale = max_size / max(w, h)
        return max(1, int(w * scale + 0.5)), max(1, int(h * scale + 0.5))
    if zoom:
        d = 2 ** int(zoom)
        return max(1, int(w / d + 0.5)), max(1, int(h / d + 0.5))
    return w, h


def clip_region(x: int, y: int, w: int, h: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Clip a top-left region to the image (as the Grails core did); None when nothing is left."""
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def encode(array: np.ndarray, fmt: str) -> bytes:
    """Encode a grey, RGB or RGBA uint8 array (RGB order) as png/jpg/tif/webp bytes."""
    ext = _FORMATS[fmt]
    arr = array
    if arr.ndim == 3 and arr.shape[2] == 4 and ext == ".jpg":
        arr = arr[:, :, :3]
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr), params)
    if not ok:
        raise RuntimeError(f"cannot encode {arr.shape} as {fmt}")
    return buf.tobytes()


def rasterize(geometries: list[BaseGeometry], image_height: int, x0: float, y0: float, sx: float, sy: float,
              out_w: int, out_h: int) -> np.ndarray:
    """0/255 uint8 mask (out_h, out_w) of Cytomine-frame geometries seen through a window whose
    top-left corner is (x0, y0) in top-left level-0 pixels and which is scaled by (sx, sy).
    Cytomine (X, Y) -> window pixel (px, py) = ((X - x0)·sx, (image_height - Y - y0)·sy);
    a pixel is set when its centre is inside (rasterio's rule)."""
    matrix = [sx, 0.0, 0.0, -sy, -x0 * sx, (image_height - y0) * sy]
    shapes = [(affine_transform(g, matrix), 255) for g in geometries if g is not None and not g.is_empty]
    if not shapes:
        return np.zeros((out_h, out_w), dtype=np.uint8)
    return features.rasterize(shapes, out_shape=(out_h, out_w), fill=0, dtype="uint8")
