"""The Cytomine objects `cydata` works with: projects, terms, users, images, annotations, image
windows and new annotations, read and written through one `Connection`.

Frames: Cytomine geometries have their origin at the bottom-left (y up). Everything this module
hands out or takes in (annotation geometries, crop boxes, bounding boxes, new ROIs) is in slide
pixels with the origin at the top-left (y down); the conversion is `flip_y`, applied exactly once,
here, on the way in and on the way out. Pixels come through `CytomineSlideReader`, the same
window code (chunks, size checks, retries) as `cyseg segment --cytomine-image`.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from shapely import wkt as shapely_wkt
from shapely.geometry import box as shapely_box
from shapely.geometry.base import BaseGeometry

from segmenter.cytomine.connection import Connection
from segmenter.cytomine.credentials import credentials
from segmenter.cytomine.errors import ServerFailure
from segmenter.cytomine.geometry import flip_y
from segmenter.cytomine.reader import CytomineSlideReader
from segmenter.cytomine.retry import RetryPolicy


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


class CytomineData:
    """The objects of one Cytomine server that `cydata` reads and writes; see the module docstring."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.host = connection.host  # for messages: scheme://name:port
        self.server_id = connection.server_id  # for files: a digest of the address
        self._readers: dict[int, CytomineSlideReader] = {}
        self._readers_lock = threading.Lock()

    @classmethod
    def connect(cls, config: str | os.PathLike | None = None, *, insecure: bool = False, timeout: float = 60.0,
                retries: int = 4, api: str | None = None) -> CytomineData:
        """Connect with the keys of the config file or the environment to a server of generation
        `api` (default: found when connecting); `retries` more tries of a failed request at both
        retry layers."""
        creds = credentials(config=config, verify=not insecure, timeout=timeout, api=api)
        return cls(Connection(creds, RetryPolicy.with_retries(retries)))

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> CytomineData:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
    def _object(self, uri: str, what: str) -> dict[str, Any]:
        data = self.connection.get_json(uri, what=what)
        if not isinstance(data, dict) or "id" not in data:
            raise ServerFailure(f"{what}: the server's answer is not an object with an id; check the host address")
        return data

    def _collection(self, uri: str, params: dict[str, Any], what: str) -> list[dict[str, Any]]:
        return self.connection.get_collection(uri, params, what=what)

    def project(self, project: int) -> dict[str, Any]:
        """{id, name, ontology} of a project."""
        p = self._object(f"project/{int(project)}.json", f"project {project}")
        return {"id": p["id"], "name": p.get("name"), "ontology": p.get("ontology")}

    def project_terms(self, project: int) -> dict[int, str]:
        """Term id -> name for the terms of a project's ontology."""
        terms = self._collection(f"project/{int(project)}/term.json", {}, f"terms of project {project}")
        return {int(t["id"]): str(t.get("name", t["id"])) for t in terms}

    def term(self, term: int) -> dict[str, Any]:
        """{id, name, ontology} of a term."""
        t = self._object(f"term/{int(term)}.json", f"term {term}")
        return {"id": t["id"], "name": t.get("name"), "ontology": term_ontology(t)}

    def user(self, user: int) -> dict[str, Any]:
        """{id, username} of a user (never its keys)."""
        u = self._object(f"user/{int(user)}.json", f"user {user}")
        return {"id": u["id"], "username": u.get("username")}

    def image(self, image: int) -> ImageInfo:
        return _image_info(self._object(f"imageinstance/{int(image)}.json", f"image {image}"))

    def project_images(self, project: int) -> dict[int, ImageInfo]:
        """The image instances of a project (one request, the whole collection)."""
        images = self._collection(f"project/{int(project)}/imageinstance.json", {}, f"images of project {project}")
        return {int(i["id"]): _image_info(i) for i in images}

    def annotation(self, annotation: int, image: ImageInfo | None = None) -> AnnotationInfo:
        """One annotation (its geometry in slide pixels when `image` is given)."""
        return self._annotation_info(self._object(f"annotation/{int(annotation)}.json", f"annotation {annotation}"),
                                     image)

    def annotations(self, image: ImageInfo, *, project: int | None = None, terms: Iterable[int] = (),
                    user: int | None = None, bbox: tuple[float, float, float, float] | None = None,
                    geometry: bool = True) -> list[AnnotationInfo]:
        """The (human) annotations of `image`, filtered by terms (any of), user and a bounding box
        (x, y, w, h in slide pixels, top-left origin) they must intersect; one request, no paging."""
        terms = [int(t) for t in terms]
        params: dict[str, Any] = {"showBasic": True, "showMeta": True, "showTerm": True, "image": image.id,
                                  "included": False}
        if project is not None:
            params["project"] = int(project)
        if len(terms) == 1:
            params["term"] = terms[0]
        elif terms:
            params["terms"] = ",".join(map(str, terms))
        if user is not None:
            params["user"] = int(user)
        if geometry:
            params["showWKT"] = True
        if bbox is not None:
            x, y, w, h = bbox
            minx, miny, maxx, maxy = self.to_cytomine(shapely_box(x, y, x + w, y + h), image).bounds
            params["bbox"] = f"{minx:g},{miny:g},{maxx:g},{maxy:g}"
        rows = self._collection("annotation.json", params, f"annotations of image {image.id}")
        out = [self._annotation_info(row, image if geometry else None) for row in rows]
        if terms:  # the server's 'term' filter may be looser; keep only what was asked for
            out = [a for a in out if set(a.terms) & set(terms)]
        return out

    def _annotation_info(self, row: dict[str, Any], image: ImageInfo | None) -> AnnotationInfo:
        geom = None
        location = row.get("location")
        if image is not None and location:
            try:
                geom = self.to_slide(shapely_wkt.loads(location), image)
            except Exception as exc:
                raise ServerFailure(f"annotation {row['id']}: the server sent a location that is not WKT "
                                    f"({exc})") from None
        terms = row.get("term") or []
        if isinstance(terms, int):
            terms = [terms]
        return AnnotationInfo(int(row["id"]), _int(row.get("image")), _int(row.get("project")), _int(row.get("user")),
                              tuple(int(t) for t in terms), geom)

    def window(self, image: ImageInfo, box: tuple[int, int, int, int], zoom: int = 0) -> np.ndarray:
        """RGB uint8 pixels of the slide region box = (x, y, w, h) (level-0 pixels, top-left origin)
        downsampled by 2**zoom, read as `cyseg` reads slides (PNG windows: lossless)."""
        x, y, w, h = (int(v) for v in box)
        scale = 2 ** zoom
        return self._reader(image.id).read(x, y, max(1, round(w / scale)), max(1, round(h / scale)), zoom)

    def _reader(self, image: int) -> CytomineSlideReader:
        with self._readers_lock:
            if image not in self._readers:
                self._readers[image] = CytomineSlideReader(image, self.connection)
            return self._readers[image]

    # ------------------------------------------------------------------ writing --------------------
    def add_annotation(self, image: ImageInfo, geometry: BaseGeometry, terms: Iterable[int] = ()) -> int:
        """Create an annotation from a slide-pixel geometry; returns its id. Sent once: a POST that
        reached the server but whose answer was lost would create a duplicate if sent again."""
        body: dict[str, Any] = {"location": self.to_cytomine(geometry, image).wkt, "image": image.id}
        if image.project is not None:
            body["project"] = image.project
        terms = [int(t) for t in terms]
        if terms:
            body["term"] = terms
        what = f"new annotation on image {image.id}"
        answer = self.connection.post_json("annotation.json", body, what=what)
        saved = (answer.get("annotation") or answer.get("data")) if isinstance(answer, dict) else None
        if not isinstance(saved, dict) or _int(saved.get("id")) is None:
            raise ServerFailure(f"{what}: the server's answer has no annotation id")
        return int(saved["id"])


def term_ontology(term: dict[str, Any]) -> Any:
    """The ontology of a term's JSON: `ontology` on the older cores, `ontologyId` on the current one."""
    return term.get("ontology", term.get("ontologyId"))


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _image_info(i: dict[str, Any]) -> ImageInfo:
    name = i.get("instanceFilename") or i.get("originalFilename")
    return ImageInfo(int(i["id"]), int(i["width"]), int(i["height"]), _int(i.get("project")), name)
