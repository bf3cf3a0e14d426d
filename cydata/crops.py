"""Where crops go on a slide and how annotation polygons become their masks.

Shared by the commands that build datasets from annotations (`cydata download` from Cytomine,
`cydata import` from QuPath GeoJSON), so that a region of interest or an annotation gives the same
crops and the same mask pixels whichever tool the annotations came from. Coordinates are level-0
slide pixels, top-left origin, y down.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
from rasterio import features
from shapely import affinity, make_valid
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry import box as shapely_box
from shapely.geometry.base import BaseGeometry


class Sized(Protocol):
    """Anything with a size in level-0 pixels: a Cytomine image, a slide reader."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


def span(lo: float, hi: float, side: int, limit: int) -> list[tuple[int, int]]:
    """1-D placement of crops of `side` pixels covering [lo, hi] on an axis of `limit` pixels:
    one crop centred on the middle when the interval fits, else the fewest crops spread evenly from
    lo to hi (overlapping as little as possible); each shifted inside [0, limit], clipped when the
    axis is shorter than a crop. Returns (start, length) pairs."""
    lo_i, hi_i = math.floor(lo), math.ceil(hi)
    extent = hi_i - lo_i
    if extent <= side:
        starts = [math.floor((lo + hi) / 2 - side / 2 + 0.5)]
    else:
        n = math.ceil(extent / side)
        starts = [lo_i + round(i * (extent - side) / (n - 1)) for i in range(n)]
    out = []
    for start in starts:
        if side >= limit:
            out.append((0, limit))
        else:
            out.append((min(max(start, 0), limit - side), side))
    return out


def centred_box(cx: float, cy: float, side: int, image: Sized) -> list[int]:
    """The crop box (x, y, w, h) of `side` pixels centred on (cx, cy), shifted inside the image."""
    (x, w), = span(cx, cx, side, image.width)
    (y, h), = span(cy, cy, side, image.height)
    return [x, y, w, h]


def centre(geometry: BaseGeometry, image: Sized) -> tuple[float, float] | None:
    """Centroid of the part of an annotation inside the image, or None when nothing is inside."""
    inside = geometry.intersection(shapely_box(0, 0, image.width, image.height)) if not geometry.is_empty \
        else geometry
    if inside.is_empty:
        return None
    c = inside.centroid if inside.area > 0 or inside.length > 0 else inside.representative_point()
    return c.x, c.y


def polygonal(geometry: BaseGeometry | None) -> BaseGeometry | None:
    """The polygonal part of a geometry (made valid); points and lines draw nothing in a mask."""
    if geometry is None or geometry.is_empty:
        return None
    if not geometry.is_valid:
        geometry = make_valid(geometry)
    if isinstance(geometry, (Polygon, MultiPolygon)):
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    return MultiPolygon(polys) if polys else None


def rasterise(geometries: Iterable[BaseGeometry], box: list[int], shape: tuple[int, int]) -> np.ndarray:
    """0/255 uint8 mask (shape) of slide-pixel geometries seen through the crop `box` (x, y, w, h)
    scaled to `shape` (rows, columns). A pixel is set when its centre is inside a polygon."""
    x, y, w, h = box
    rows, cols = shape
    sx, sy = cols / w, rows / h
    shapes = []
    for geometry in geometries:
        polygon = polygonal(geometry)
        if polygon is not None:
            shapes.append((affinity.affine_transform(polygon, [sx, 0, 0, sy, -x * sx, -y * sy]), 255))
    if not shapes:
        return np.zeros((rows, cols), dtype=np.uint8)
    return features.rasterize(shapes, out_shape=(rows, cols), fill=0, dtype="uint8")


SKIPPED_SHOWN = 20  # skipped entries listed one per line in the end report


def report_skipped(skipped: list[dict[str, Any]], noun: str, log: logging.Logger) -> None:
    """One warning line per skipped entry (the first few; `noun` names what was skipped) and their count."""
    if not skipped:
        return
    log.warning("skipped %d %s(s):", len(skipped), noun)
    for entry in skipped[:SKIPPED_SHOWN]:
        log.warning("  %s: %s", entry["what"], entry["reason"])
    if len(skipped) > SKIPPED_SHOWN:
        log.warning("  ... and %d more (all listed under \"skipped\" in dataset.json)", len(skipped) - SKIPPED_SHOWN)
