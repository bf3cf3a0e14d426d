"""A Cytomine image instance as a `SlideReader`: geometry and resolution from the image's JSON,
pixels from the server's window endpoint, the whole-slide overview from its thumbnail endpoint.

* Windows: `GET /api/imageinstance/<id>/window-<x>-<y>-<w>-<h>.png[?zoom=<level>]` (level-0,
  top-left coordinates; PNG, so pixels are exactly those of the slide). Large regions are split
  into chunks of at most `max_window` pixels a side, and every answer's size is checked: a server
  that silently shrinks windows beyond its own limit (thesis bug B12) makes us halve the chunk
  size and ask again, never accept a resized window.
* Retries: 5xx/429 answers, timeouts, dropped connections, truncated or undecodable bodies are
  retried with exponential back-off, then reported as one line naming the window.
* Levels: Cytomine pyramids halve at each zoom step: `zoom` (or, on old cores, `depth`) levels of
  downsample 1, 2, 4, ...
* Pickling keeps the host, the image id and where the credentials come from (a config file path
  or the environment), never the keys: another process (a Dask worker) reconnects on first use.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests
import urllib3

from segmenter.cytomine.connection import (
    TRANSPORT_RETRIED,
    connect,
    credentials,
    transport_retried,
)
from segmenter.errors import CysegError
from segmenter.io.images import decode_rgb
from segmenter.wsi.slide import REDUCERS, ArrayReader

log = logging.getLogger(__name__)

MAX_WINDOW = 2048  # chunk side (output pixels) below the usual server limit on windows
MIN_WINDOW = 128  # never halve the chunk below this
THUMB_MAX = 2048  # larger overviews are assembled from windows at a zoom level
RETRIABLE = (requests.RequestException, urllib3.exceptions.HTTPError)


class HttpStatusError(CysegError):
    """A definitive (non-retriable) HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class CytomineSource:
    """How to reach the server again: host, an optional config file, TLS verification and the
    request timeout. No keys: a reconnecting process reads them from the config file or from
    CYTOMINE_PUBLIC_KEY / CYTOMINE_PRIVATE_KEY."""

    host: str
    config: str | None = None
    verify: bool = True
    timeout: float = 60.0


def server_message(response: requests.Response) -> str:
    """The short error text of a Cytomine answer (JSON `errors`/`message`), else the status."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    text = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, dict):
            text = errors.get("message")
        elif isinstance(errors, str):
            text = errors
        text = text or body.get("message")
    text = " ".join(str(text).split())[:160] if text else ""
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


def get(client: Any, uri: str, params: dict[str, Any] | None, what: str, attempts: int = 4,
        backoff: float = 0.5) -> requests.Response:
    """GET `uri` (relative to /api/) with retries on 5xx, timeouts, dropped and truncated answers;
    HttpStatusError for other refusals, CysegError naming `what` when retries run out. What the
    session's adapter already retries (429/502/503/504, connection errors) is not retried again."""
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            response = client._get(uri, params)
            if response.status_code in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                # image requests may be redirected to the image server: follow without our signature
                response = client._session.get(requests.compat.urljoin(response.url, response.headers["Location"]))
            response.content  # noqa: B018  (read the body now: a truncated body raises here)
        except RETRIABLE as exc:
            if transport_retried(exc):
                raise CysegError(f"{what}: Cytomine unreachable ({type(exc).__name__}) after the connection's "
                                 "retries; check the server and rerun (finished windows are cached)") from None
            last = type(exc).__name__
            log.debug("%s: %s, retrying", what, last)
            continue
        if response.status_code == 200:
            return response
        if response.status_code in TRANSPORT_RETRIED:
            raise CysegError(f"{what}: Cytomine answered HTTP {response.status_code} after the connection's "
                             "retries; check the server and rerun (finished windows are cached)")
        if response.status_code >= 500:
            last = f"HTTP {response.status_code}"
            log.debug("%s: %s, retrying", what, last)
            continue
        raise HttpStatusError(response.status_code, f"{what}: Cytomine answered {server_message(response)}")
    raise CysegError(f"{what}: no valid answer from Cytomine after {attempts} attempts (last: {last}); "
                     "check the server and rerun (finished windows are cached)")


def get_json(client: Any, uri: str, params: dict[str, Any] | None, what: str, **kwargs: Any) -> Any:
    """`get` and decode JSON (a body that is not JSON counts as a server error)."""
    response = get(client, uri, params, what, **kwargs)
    try:
        return response.json()
    except ValueError as exc:
        raise CysegError(f"{what}: Cytomine answered something that is not JSON; check the host address") from exc


class CytomineSlideReader(ArrayReader):
    """An ImageInstance read over HTTP. Use `open_cytomine_image`; a pickled
    reader (a Dask worker's) reconnects on first use, with the keys of its config file or environment."""

    _TRANSIENT = ("_client", "_lock")

    def __init__(self, image_id: int, source: CytomineSource, client: Any = None, *,
                 max_window: int = MAX_WINDOW, attempts: int = 4, backoff: float = 0.5) -> None:
        """Fetch the image's metadata with `client` (connected); reconnect from `source` when None."""
        self.image_id = int(image_id)
        self.source = source
        self.max_window = int(max_window)
        self.attempts = attempts
        self.backoff = backoff
        self._reset()
        self._client = client
        info = self._image_json()
        self._init_from(info)

    # ------------------------------------------------------------------ metadata ---------------
    def _image_json(self) -> dict[str, Any]:
        what = f"Cytomine image {self.image_id}"
        try:
            info = get_json(self.client, f"imageinstance/{self.image_id}.json", None, what, attempts=self.attempts,
                            backoff=self.backoff)
        except HttpStatusError as exc:
            if exc.status == 404:
                raise CysegError(f"Cytomine image {self.image_id} does not exist on {self.source.host} (HTTP 404); "
                                 "check the image id (an ImageInstance id, as in the image's URL)") from None
            if exc.status in (401, 403):
                raise CysegError(f"Cytomine at {self.source.host} refused access to image {self.image_id} "
                                 f"(HTTP {exc.status}); check the keys and the project's permissions") from None
            raise
        if not isinstance(info, dict) or not info.get("width") or not info.get("height"):
            raise CysegError(f"Cytomine image {self.image_id}: the server's answer has no width/height; "
                             "is it an ImageInstance id?")
        return info

    def _init_from(self, info: dict[str, Any]) -> None:
        self.width, self.height = int(info["width"]), int(info["height"])
        self.project = info.get("project")
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

    # ------------------------------------------------------------------ connection -------------
    def _reset(self) -> None:
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The connected client; after unpickling, a new connection (keys from config/env)."""
        with self._lock:
            if self._client is None:
                creds = credentials(host=self.source.host, config=self.source.config)
                self._client = connect(creds, timeout=self.source.timeout, verify=self.source.verify)
            return self._client

    def identity(self) -> str:
        """What the window cache keys on: server, image, size and last update."""
        return f"cytomine:{self.source.host}:image:{self.image_id}:{self.width}x{self.height}:{self.updated}"

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["path"] = f"{self.source.host.rstrip('/')}/api/imageinstance/{self.image_id}"
        out["cytomine"] = {"host": self.source.host, "image": self.image_id, "project": self.project,
                           "filename": self.filename}
        return out

    def __repr__(self) -> str:
        return (f"CytomineSlideReader(host={self.source.host!r}, image={self.image_id}, "
                f"{self.width}x{self.height}, {self.level_count} levels)")

    def close(self) -> None:
        """Nothing to release (the HTTP session belongs to the client)."""

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
        params = {"zoom": level} if level else None
        uri = f"imageinstance/{self.image_id}/window-{X}-{Y}-{W}-{H}.png"
        for attempt in range(self.attempts):
            response = get(self.client, uri, params, what, attempts=self.attempts, backoff=self.backoff)
            pixels = decode_rgb(response.content)
            if pixels is not None:
                break
            log.debug("%s: undecodable image (%d bytes), retrying", what, len(response.content))
            time.sleep(self.backoff * 2 ** attempt)
        else:
            raise CysegError(f"{what}: the server's answer is not a decodable image after {self.attempts} attempts")
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
        response = get(self.client, f"imageinstance/{self.image_id}/thumb.png", {"maxSize": max(fine_w, fine_h)},
                       what, attempts=self.attempts, backoff=self.backoff)
        fine = decode_rgb(response.content)
        if fine is None or abs(fine.shape[1] - fine_w) > 2 or abs(fine.shape[0] - fine_h) > 2:
            got = "an undecodable image" if fine is None else f"{fine.shape[1]}x{fine.shape[0]}"
            log.info("%s: the server answered %s instead of %dx%d; building it from windows", what, got, fine_w, fine_h)
            return super().thumbnail(max_side, pool, reduce)
        if fine.shape[:2] != (fine_h, fine_w):
            fine = cv2.resize(fine, (fine_w, fine_h), interpolation=cv2.INTER_AREA)
        if pool > 1:
            fine = REDUCERS[reduce](fine.reshape(out_h, pool, out_w, pool, 3), axis=(1, 3))
        return np.ascontiguousarray(fine), downsample


def open_cytomine_image(image_id: int, *, host: str | None = None, public_key: str | None = None,
                        private_key: str | None = None, config: str | Path | None = None, verify: bool = True,
                        timeout: float = 60.0, client: Any = None) -> CytomineSlideReader:
    """Connect (unless `client` is given) and open image `image_id` as a SlideReader.

    Keys come from the arguments, the config file or the environment (`credentials`); only the
    host and the config path are kept for reconnecting elsewhere."""
    creds = credentials(host=host, public_key=public_key, private_key=private_key, config=config)
    if client is None:
        client = connect(creds, timeout=timeout, verify=verify)
    source = CytomineSource(creds.host, None if config is None else str(Path(config).resolve()), verify, timeout)
    return CytomineSlideReader(image_id, source, client)
