"""Every Cytomine access of `cydata`: projects, terms, users, images, annotations, image windows and
new annotations, through the real cytomine-python-client, connected with
`segmenter.cytomine.connection.connect` (keys never printed or logged).

Frames: Cytomine geometries have their origin at the bottom-left (y up). Everything this module
hands out or takes in (annotation geometries, crop boxes, bounding boxes, new ROIs) is in slide
pixels with the origin at the top-left (y down); the conversion is `flip_y`, applied exactly once,
here, on the way in and on the way out.

Retries. Two layers, so that no failure is retried twice over:
  * the transport (`cytomine_connect`'s HTTP adapter) retries GETs on connection errors, read
    timeouts and HTTP 429/502/503/504, with exponential back-off;
  * `CytomineSource._call` retries, `retries` times with exponential back-off, what the transport
    does not: HTTP 500 and other 5xx/408 answers (the client returns False), bodies cut short
    (`ChunkedEncodingError`, urllib3 `ProtocolError`), timeouts while reading a body, and image
    bytes that do not decode. A 404 is `NotFound` at once; 401/403 and other 4xx are not retried.
The client reports a failed call by returning False (no exception), so the HTTP status of the
last response of the calling thread is recorded with a `requests` response hook.
"""
from __future__ import annotations

import http.client
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import requests
import urllib3
from shapely import wkt as shapely_wkt
from shapely.geometry import box as shapely_box
from shapely.geometry.base import BaseGeometry

from segmenter.cytomine.connection import (
    TRANSPORT_RETRIED,
    Credentials,
    connect,
    transport_retried,
)
from segmenter.cytomine.geometry import flip_y
from segmenter.errors import CysegError
from segmenter.io.images import decode_rgb

log = logging.getLogger(__name__)
T = TypeVar("T")

#: First back-off delay of our own retries (seconds); doubled at each retry, capped at BACKOFF_MAX.
BACKOFF = 0.5
BACKOFF_MAX = 16.0


class NotFound(CysegError):
    """The server answered 404 for a project, image, term, user or annotation."""


class ServerFailure(CysegError):
    """A request still failed after the retries (server error, timeout, dropped connection)."""


def safe_host(host: str) -> str:
    """The host as it may be recorded: scheme, name and port only (no user info, path or query)."""
    parts = urlsplit(host if "://" in host else f"http://{host}")
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, "", "", ""))


@dataclass(frozen=True)
class ImageInfo:
    """An image instance: id, size in level-0 pixels, project and file name."""

    id: int
    width: int
    height: int
    project: int | None
    name: str | None = None

    def slide_box(self) -> BaseGeometry:
        return shapely_box(0, 0, self.width, self.height)


@dataclass(frozen=True)
class AnnotationInfo:
    """An annotation. `geometry` is in slide pixels (top-left origin, y down), or None when not asked."""

    id: int
    image: int | None
    project: int | None
    user: int | None
    terms: tuple[int, ...] = ()
    geometry: BaseGeometry | None = field(default=None, compare=False)


class CytomineSource:
    """A connection to one Cytomine server and the calls `cydata` makes on it."""

    def __init__(self, creds: Credentials, *, timeout: float = 60.0, verify: bool = True, retries: int = 4,
                 backoff: float | None = None) -> None:
        if retries < 0:
            raise CysegError(f"--retries {retries} is negative; give 0 or more")
        if timeout <= 0:
            raise CysegError(f"--timeout {timeout} must be positive (seconds)")
        self.host = safe_host(creds.host)
        self.retries = retries
        self.backoff = BACKOFF if backoff is None else backoff
        self._local = threading.local()
        _quiet_client_logs()
        if not verify:  # said once here, not once per request by urllib3
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
            log.warning("not verifying the HTTPS certificate of %s (--insecure)", self.host)
        self.client = connect(creds, timeout=timeout, verify=verify, retries=retries)
        # The client returns False on any non-200: remember each thread's last status to tell 404 from 500.
        self.client._session.hooks.setdefault("response", []).append(self._record_status)

    # ------------------------------------------------------------------ plumbing -------------------
    def _record_status(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._local.status = response.status_code
        self._local.reason = response.reason

    def close(self) -> None:
        """Close the HTTP session and forget the client's process-wide singleton."""
        from cytomine import Cytomine

        try:
            self.client._session.close()
        finally:
            if Cytomine._Cytomine__instance is self.client:  # name-mangled singleton slot
                Cytomine._Cytomine__instance = None

    def __enter__(self) -> CytomineSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run one client call; False/None results and transport exceptions are retried (see the
        module docstring); a 404 raises NotFound, anything left ServerFailure. `what` names the
        object for the messages (never a URL with parameters, never a key)."""
        attempt = 0
        while True:
            self._local.status = None
            self._local.reason = None
            error: BaseException | None = None
            try:
                result = fn()
            except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                    _BadImage) as exc:
                result, error = None, exc
            if result is not None and result is not False:
                return result
            status = self._local.status
            if status == 404:
                raise NotFound(f"{what} not found on {self.host} (HTTP 404)")
            if status in (401, 403):
                raise ServerFailure(f"{what}: {self.host} refused access (HTTP {status}); check the keys' rights "
                                    "on the project")
            if error is not None:
                reason = _describe(error)
            elif status is not None:
                reason = f"HTTP {status}" + (f" {self._local.reason}" if self._local.reason else "")
            else:
                reason = "no answer"
            permanent = status is not None and 400 <= status < 500 and status not in (408, 429)
            # the transport already retried these `retries` times with back-off
            exhausted = status in TRANSPORT_RETRIED or transport_retried(error)
            if not retry or permanent or exhausted or attempt >= self.retries:
                tries = "" if permanent or not retry else (
                    f" after {self.retries} retries" if self.retries else " (no retries)")
                raise ServerFailure(f"{what}: {reason}{tries}")
            delay = min(BACKOFF_MAX, self.backoff * 2 ** attempt)
            attempt += 1
            log.debug("%s: %s; retry %d/%d in %.1f s", what, reason, attempt, self.retries, delay)
            time.sleep(delay)

    # ------------------------------------------------------------------ frames ---------------------
    @staticmethod
    def to_slide(geometry: BaseGeometry, image: ImageInfo) -> BaseGeometry:
        """A Cytomine-frame geometry (y up) of `image` in slide pixels (y down)."""
        return flip_y(geometry, image.height)

    @staticmethod
    def to_cytomine(geometry: BaseGeometry, image: ImageInfo) -> BaseGeometry:
        """A slide-pixel geometry (y down) of `image` in Cytomine's frame (y up)."""
        return flip_y(geometry, image.height)

    # ------------------------------------------------------------------ reading --------------------
    def project(self, project: int) -> dict[str, Any]:
        """{id, name, ontology} of a project."""
        from cytomine.models import Project

        p = self._call(f"project {project}", lambda: Project().fetch(int(project)))
        return {"id": p.id, "name": getattr(p, "name", None), "ontology": getattr(p, "ontology", None)}

    def project_terms(self, project: int) -> dict[int, str]:
        """Term id -> name for the terms of a project's ontology."""
        from cytomine.models import TermCollection

        terms = self._call(f"terms of project {project}",
                           lambda: TermCollection().fetch_with_filter("project", int(project)))
        return {int(t.id): str(getattr(t, "name", t.id)) for t in terms}

    def term(self, term: int) -> dict[str, Any]:
        """{id, name, ontology} of a term."""
        from cytomine.models import Term

        t = self._call(f"term {term}", lambda: Term().fetch(int(term)))
        return {"id": t.id, "name": getattr(t, "name", None), "ontology": getattr(t, "ontology", None)}

    def user(self, user: int) -> dict[str, Any]:
        """{id, username} of a user (never its keys)."""
        from cytomine.models import User

        u = self._call(f"user {user}", lambda: User().fetch(int(user)))
        return {"id": u.id, "username": getattr(u, "username", None)}

    def image(self, image: int) -> ImageInfo:
        from cytomine.models import ImageInstance

        i = self._call(f"image {image}", lambda: ImageInstance().fetch(int(image)))
        return _image_info(i)

    def project_images(self, project: int) -> dict[int, ImageInfo]:
        """The image instances of a project (one request; no paging: `fetch(max=N)` is broken)."""
        from cytomine.models import ImageInstanceCollection

        images = self._call(f"images of project {project}",
                            lambda: ImageInstanceCollection().fetch_with_filter("project", int(project)))
        return {int(i.id): _image_info(i) for i in images}

    def annotation(self, annotation: int, image: ImageInfo | None = None) -> AnnotationInfo:
        """One annotation (its geometry in slide pixels when `image` is given)."""
        from cytomine.models import Annotation

        a = self._call(f"annotation {annotation}", lambda: Annotation().fetch(int(annotation)))
        return self._annotation_info(a, image)

    def annotations(self, image: ImageInfo, *, project: int | None = None, terms: Iterable[int] = (),
                    user: int | None = None, bbox: tuple[float, float, float, float] | None = None,
                    geometry: bool = True) -> list[AnnotationInfo]:
        """The (human) annotations of `image`, filtered by terms (any of), user and a bounding box
        (x, y, w, h in slide pixels, top-left origin) they must intersect; one request, no paging."""
        from cytomine.models import AnnotationCollection

        terms = [int(t) for t in terms]
        params: dict[str, Any] = {"image": image.id, "showTerm": True}
        if project is not None:
            params["project"] = int(project)
        if len(terms) == 1:
            params["term"] = terms[0]
        elif terms:
            params["terms"] = terms
        if user is not None:
            params["user"] = int(user)
        if geometry:
            params["showWKT"] = True
        if bbox is not None:
            x, y, w, h = bbox
            minx, miny, maxx, maxy = self.to_cytomine(shapely_box(x, y, x + w, y + h), image).bounds
            params["bbox"] = f"{minx:g},{miny:g},{maxx:g},{maxy:g}"
        what = f"annotations of image {image.id}"
        collection = self._call(what, lambda: AnnotationCollection(**params).fetch())
        out = [self._annotation_info(a, image if geometry else None) for a in collection]
        if terms:  # the client's 'term' filter is the server's; keep only what was asked for
            out = [a for a in out if set(a.terms) & set(terms)]
        return out

    def _annotation_info(self, a: Any, image: ImageInfo | None) -> AnnotationInfo:
        geom = None
        location = getattr(a, "location", None)
        if image is not None and location:
            try:
                geom = self.to_slide(shapely_wkt.loads(location), image)
            except Exception as exc:  # noqa: BLE001 - shapely raises several types on bad WKT
                raise ServerFailure(f"annotation {a.id}: the server sent a location that is not WKT ({exc})") from None
        terms = getattr(a, "term", None) or []
        if isinstance(terms, int):
            terms = [terms]
        return AnnotationInfo(int(a.id), _int(getattr(a, "image", None)), _int(getattr(a, "project", None)),
                              _int(getattr(a, "user", None)), tuple(int(t) for t in terms), geom)

    def window(self, image: ImageInfo, box: tuple[int, int, int, int], zoom: int = 0,
               workdir: str | os.PathLike | None = None) -> np.ndarray:
        """RGB uint8 pixels of the slide region box = (x, y, w, h) (level-0 pixels, top-left origin)
        downsampled by 2**zoom, from the image window endpoint (PNG: lossless)."""
        from cytomine.models import ImageInstance

        x, y, w, h = (int(v) for v in box)
        instance = ImageInstance()
        instance.id = image.id
        directory = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)

        def fetch() -> np.ndarray | bool:
            fd, name = tempfile.mkstemp(prefix=f"window-{image.id}-", suffix=".png", dir=directory)
            os.close(fd)
            try:
                ok = instance.window(x, y, w, h, dest_pattern=name, override=True, zoom=zoom or None)
                if not ok:
                    return False
                data = Path(name).read_bytes()
            finally:
                Path(name).unlink(missing_ok=True)
            pixels = decode_rgb(data)
            if pixels is None:
                raise _BadImage("window bytes are not a whole image")
            return pixels

        return self._call(f"window {x},{y},{w},{h} of image {image.id}", fetch)

    # ------------------------------------------------------------------ writing --------------------
    def add_annotation(self, image: ImageInfo, geometry: BaseGeometry, terms: Iterable[int] = ()) -> int:
        """Create an annotation from a slide-pixel geometry; returns its id. Not retried: a POST
        that reached the server but whose answer was lost would create a duplicate."""
        from cytomine.models import Annotation

        location = self.to_cytomine(geometry, image).wkt
        terms = [int(t) for t in terms] or None
        annotation = Annotation(location=location, id_image=image.id, id_project=image.project, id_terms=terms)
        saved = self._call(f"new annotation on image {image.id}", annotation.save, retry=False)
        return int(saved.id)


class _BadImage(Exception):
    """Window bytes that are not a whole image (retried)."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, (requests.ConnectionError, urllib3.exceptions.ProtocolError, http.client.HTTPException)):
        return f"connection dropped ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"answer cut short ({type(exc).__name__})"
    if isinstance(exc, _BadImage):
        return str(exc)
    return type(exc).__name__


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _image_info(i: Any) -> ImageInfo:
    name = getattr(i, "instanceFilename", None) or getattr(i, "originalFilename", None)
    return ImageInfo(int(i.id), int(i.width), int(i.height), _int(getattr(i, "project", None)), name)


class _UnlessDebug(logging.Filter):
    """Drops the client's and urllib3's records unless cydata runs with -v (DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return log.isEnabledFor(logging.DEBUG)


_FILTER = _UnlessDebug()


def _quiet_client_logs() -> None:
    """The client logs every call (a 404 as an ERROR) and urllib3 every retry; we report failures
    ourselves, once, in our words. A filter, because the client resets its logger's level."""
    for name in ("cytomine.client", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
