"""A Cytomine image instance as a `SlideReader`: geometry and resolution from the image's JSON,
pixels from the server's window endpoint, the whole-slide overview from its thumbnail endpoint,
all through one `Connection` (its retry policy, the shared image decoder).

* Windows: `GET /api/imageinstance/<id>/window-<x>-<y>-<w>-<h>.png` (level-0, top-left
  coordinates; PNG, so pixels are exactly those of the slide). Large regions are split into
  chunks of at most `max_window` pixels a side, and every answer's size is checked: a server that
  silently shrinks windows beyond its own limit makes us halve the chunk size and ask again,
  never accept a resized window. `cydata download` reads its crops through this same path.
* Downscaled regions (levels > 0): the legacy core's windows honour `zoom`; the Spring and current
  cores ignore it (and `maxSize`) and answer full-resolution pixels, so there the region comes
  from `imageinstance/<id>/crop.png?location=<rectangle>&maxSize=<longest side>`, which they scale.
* Overview: the legacy core serves thumbnails under the abstract image; Spring 5.2+ and current
  cores want a browser token on the image-instance thumbnail, so there the reference slice's
  thumbnail is read, which an API-key client may read on every Spring and current core.
* Levels: Cytomine pyramids halve at each zoom step: `zoom` (or, on old cores, `depth`) levels of
  downsample 1, 2, 4, ...
* Pickling keeps the host, the image id and where the keys come from (a config file path or the
  environment), never the keys: another process (a Dask worker) reconnects on first use.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from shapely.geometry import box

from segmenter.cytomine import generations
from segmenter.cytomine.connection import Connection
from segmenter.cytomine.credentials import credentials
from segmenter.cytomine.errors import AccessRefused, NotFound
from segmenter.cytomine.geometry import flip_y
from segmenter.errors import CysegError
from segmenter.io.images import decode_rgb
from segmenter.wsi.slide import REDUCERS, ArrayReader

log = logging.getLogger(__name__)

MAX_WINDOW = 2048  # chunk side (output pixels) below the usual server limit on windows
MIN_WINDOW = 128  # never halve the chunk below this
THUMB_MAX = 2048  # larger overviews are assembled from windows at a zoom level


class CytomineSlideReader(ArrayReader):
    """An ImageInstance read over HTTP through `connection`; see the module docstring."""

    def __init__(self, image_id: int, connection: Connection, *, max_window: int = MAX_WINDOW) -> None:
        """Fetch the image's metadata (CysegError naming the image when it cannot be read)."""
        self.image_id = int(image_id)
        self.connection = connection
        self.max_window = int(max_window)
        self._init_from(self._image_json())

    # ------------------------------------------------------------------ metadata ---------------
    def _image_json(self) -> dict[str, Any]:
        host = self.connection.host
        try:
            info = self.connection.get_json(f"imageinstance/{self.image_id}.json",
                                            what=f"Cytomine image {self.image_id}")
        except NotFound:
            raise CysegError(f"Cytomine image {self.image_id} does not exist on {host} (HTTP 404); "
                             "check the image id (an ImageInstance id, as in the image's URL)") from None
        except AccessRefused as exc:
            raise CysegError(f"Cytomine at {host} refused access to image {self.image_id} "
                             f"(HTTP {exc.status}); check the keys and the project's permissions") from None
        if not isinstance(info, dict) or not info.get("width") or not info.get("height"):
            raise CysegError(f"Cytomine image {self.image_id}: the server's answer has no width/height; "
                             "is it an ImageInstance id?")
        return info

    def _init_from(self, info: dict[str, Any]) -> None:
        self.width, self.height = int(info["width"]), int(info["height"])
        self.project = info.get("project")
        self.base_image = info.get("baseImage")
        self._thumb_uri: str | None = None
        self.filename = info.get("instanceFilename") or info.get("originalFilename")
        self.updated = info.get("updated") or info.get("created")
        zoom = info.get("zoom")
        levels = zoom if isinstance(zoom, int) and zoom >= 0 else info.get("depth")
        levels = int(levels) + 1 if isinstance(levels, int) and levels > 0 else 1
        self.level_downsamples = [float(2 ** k) for k in range(levels)]
        self.level_dimensions = [(max(1, math.ceil(self.width / d)), max(1, math.ceil(self.height / d)))
                                 for d in self.level_downsamples]
        mpp = info.get("physicalSizeX") or info.get("resolution")
        self.mpp = float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None
        mag = info.get("magnification")
        self.magnification = float(mag) if isinstance(mag, (int, float)) and mag > 0 else None
        self.format = "cytomine"
        self.vendor = "cytomine"
        self.description = info.get("contentType") or info.get("mime")
        self.path = Path(f"cytomine-image-{self.image_id}")

    # ------------------------------------------------------------------ description ------------
    def identity(self) -> str:
        """What the window cache keys on: server (its fingerprint), image, size and last update."""
        return f"{self.connection.server_id}:image:{self.image_id}:{self.width}x{self.height}:{self.updated}"

    def describe(self) -> dict[str, Any]:
        """The base summary; the server appears as its fingerprint, never as its address."""
        out = super().describe()
        out["path"] = f"cytomine-image-{self.image_id}"
        out["cytomine"] = {"server": self.connection.server_id, "image": self.image_id, "project": self.project,
                           "filename": self.filename}
        return out

    def __repr__(self) -> str:
        return (f"CytomineSlideReader(host={self.connection.host!r}, image={self.image_id}, "
                f"{self.width}x{self.height}, {self.level_count} levels)")

    def close(self) -> None:
        """Nothing to release (the HTTP session belongs to the connection)."""

    # ------------------------------------------------------------------ pixels -----------------
    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        self._fill(out, level, x, y, w, h)
        return out

    def _fill(self, out: np.ndarray, level: int, x: int, y: int, w: int, h: int) -> None:
        """Fill `out` (h, w, 3) with the level box, chunk by chunk."""
        step = self.max_window
        for cy in range(y, y + h, step):
            for cx in range(x, x + w, step):
                cw, ch = min(step, x + w - cx), min(step, y + h - cy)
                if max(cw, ch) > self.max_window:  # the chunk size was lowered meanwhile
                    self._fill(out[cy - y:cy - y + ch, cx - x:cx - x + cw], level, cx, cy, cw, ch)
                    continue
                chunk = self._window(level, cx, cy, cw, ch)
                if chunk is None:  # the server shrank it: max_window is now smaller, split
                    self._fill(out[cy - y:cy - y + ch, cx - x:cx - x + cw], level, cx, cy, cw, ch)
                else:
                    out[cy - y:cy - y + ch, cx - x:cx - x + cw] = chunk

    def _window(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        """One window of level pixels (inside the level), or None after lowering max_window
        because the server answered a smaller (resized) image."""
        d = int(self.level_downsamples[level])
        X, Y = x * d, y * d
        W, H = min(w * d, self.width - X), min(h * d, self.height - Y)
        what = f"Cytomine image {self.image_id}: window x={X}, y={Y}, {W}x{H}" + (f" at zoom {level}" if level else "")
        pixels = self.connection.get_image(*self._region_request(level, X, Y, W, H, max(w, h)), what=what)
        got_h, got_w = pixels.shape[:2]
        if (got_w, got_h) == (w, h):
            return pixels
        if level and abs(got_w - w) <= 1 and abs(got_h - h) <= 1:  # rounding of the server's zoom
            return cv2.resize(pixels, (w, h), interpolation=cv2.INTER_LINEAR)
        if got_w <= w and got_h <= h and max(w, h) > MIN_WINDOW:  # shrunk to the server's limit
            longest = max(got_w, got_h)
            smaller = max(MIN_WINDOW, longest if longest < max(w, h) else max(w, h) // 2)
            log.warning("%s: the server answered %dx%d instead of %dx%d (its maximum window size is smaller); "
                        "reading in chunks of %d px", what, got_w, got_h, w, h, smaller)
            self.max_window = min(self.max_window, smaller)
            return None
        raise CysegError(f"{what}: the server answered a {got_w}x{got_h} image instead of {w}x{h}; refusing "
                         "resized pixels (they would mis-scale the polygons)")

    def _region_request(self, level: int, x: int, y: int, w: int, h: int,
                        longest: int) -> tuple[str, dict[str, Any] | None]:
        """(uri, query) of the level-0 region (x, y, w, h) scaled to `level`: a full-resolution
        window at level 0; downscaled, a window at `zoom` on the legacy core, else a crop of the
        rectangle (in Cytomine's frame) scaled to its `longest` side."""
        if level == 0:
            return f"imageinstance/{self.image_id}/window-{x}-{y}-{w}-{h}.png", None
        if self.connection.api == generations.LEGACY:
            return f"imageinstance/{self.image_id}/window-{x}-{y}-{w}-{h}.png", {"zoom": level}
        rectangle = flip_y(box(x, y, x + w, y + h), self.height)
        return f"imageinstance/{self.image_id}/crop.png", {"location": rectangle.wkt, "maxSize": longest}

    def thumbnail(self, max_side: int, pool: int = 1, reduce: str = "mean") -> tuple[np.ndarray, float]:
        """The overview through the thumb endpoint (`thumb.png?maxSize=`) when it is at most
        THUMB_MAX pixels long, else assembled from windows at a zoom level (base class)."""
        if max_side < 1 or pool < 1 or reduce not in REDUCERS:
            return super().thumbnail(max_side, pool, reduce)  # the base class reports the error
        downsample = max(1.0, max(self.width, self.height) / max_side)
        out_w = max(1, min(max_side, round(self.width / downsample)))
        out_h = max(1, min(max_side, round(self.height / downsample)))
        if reduce == "mean":
            pool = 1
        fine_w, fine_h = out_w * pool, out_h * pool
        if max(fine_w, fine_h) > THUMB_MAX:
            return super().thumbnail(max_side, pool, reduce)
        what = f"Cytomine image {self.image_id}: thumbnail of {max(fine_w, fine_h)} px"
        data = self.connection.get_bytes(self._thumbnail_uri(), {"maxSize": max(fine_w, fine_h)}, what=what)
        fine = decode_rgb(data)
        if fine is None or abs(fine.shape[1] - fine_w) > 2 or abs(fine.shape[0] - fine_h) > 2:
            got = "an undecodable image" if fine is None else f"{fine.shape[1]}x{fine.shape[0]}"
            log.info("%s: the server answered %s instead of %dx%d; building it from windows", what, got, fine_w, fine_h)
            return super().thumbnail(max_side, pool, reduce)
        if fine.shape[:2] != (fine_h, fine_w):
            fine = cv2.resize(fine, (fine_w, fine_h), interpolation=cv2.INTER_AREA)
        if pool > 1:
            fine = REDUCERS[reduce](fine.reshape(out_h, pool, out_w, pool, 3), axis=(1, 3))
        return np.ascontiguousarray(fine), downsample

    def _thumbnail_uri(self) -> str:
        """The thumbnail an API-key client may read on this core: the abstract image's on the
        legacy core, the reference slice's on the others (found once)."""
        if self._thumb_uri is None:
            if self.connection.api == generations.LEGACY:
                self._thumb_uri = f"abstractimage/{self.base_image}/thumb.png"
            else:
                ref = self.connection.get_json(f"imageinstance/{self.image_id}/sliceinstance/reference.json",
                                               what=f"the reference slice of Cytomine image {self.image_id}")
                if not isinstance(ref, dict) or "id" not in ref:
                    raise CysegError(f"Cytomine image {self.image_id}: the server named no reference slice")
                self._thumb_uri = f"sliceinstance/{int(ref['id'])}/thumb.png"
        return self._thumb_uri


def open_cytomine_image(image_id: int, connection: Connection | None = None, *,
                        config: str | Path | None = None, verify: bool = True,
                        timeout: float = 60.0, api: str | None = None) -> CytomineSlideReader:
    """Open image `image_id` as a SlideReader through `connection`, else through a new one whose
    keys come from the config file or the environment (`credentials`), talking to the `api`
    generation (default: found when connecting)."""
    if connection is None:
        connection = Connection(credentials(config=config, verify=verify, timeout=timeout, api=api))
    return CytomineSlideReader(image_id, connection)
