"""Binary mask -> polygons (rasterio shapes, shapely validity fix, optional simplification) and
polygons -> GeoJSON FeatureCollection that QuPath imports (pixel coordinates, top-left origin)."""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Polygon

from segmenter.classes import COLOURS
from segmenter.io.atomic import atomic_path


def _polygons_of(geometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [geometry] if not geometry.is_empty else []
    if isinstance(geometry, MultiPolygon):
        return [g for g in geometry.geoms if not g.is_empty]
    return [g for part in getattr(geometry, "geoms", []) for g in _polygons_of(part)]


def clean(geometry, simplify: float = 0.0) -> list[Polygon]:
    """Valid, non-empty polygons from any geometry, simplified when asked (see `clean_many`)."""
    return clean_many([geometry], simplify)[0]


def clean_many(geometries: Sequence[Any], simplify: float = 0.0) -> list[list[Polygon]]:
    """`clean` for many geometries at once: simplification and validity checks run vectorised in
    GEOS (shapely 2), only invalid geometries are repaired one by one.

    Simplification runs Douglas-Peucker first (cheaper than GEOS's topology-preserving simplifier,
    which checks every vertex against the rest of the polygon) and redoes with topology preserved
    only the geometries it emptied, made invalid or whose holes it lost or opened (rare among
    traced cell outlines)."""
    array = np.asarray(geometries, dtype=object)
    if not len(array):
        return []
    if simplify > 0:
        fast = shapely.simplify(array, simplify, preserve_topology=False)
        broken = (shapely.is_empty(fast) | ~shapely.is_valid(fast)
                  | (shapely.get_num_interior_rings(fast) != shapely.get_num_interior_rings(array)))
        if broken.any():
            fast[broken] = shapely.simplify(array[broken], simplify, preserve_topology=True)
        array = fast
    invalid = np.flatnonzero(~shapely.is_valid(array))
    if len(invalid):
        array[invalid] = shapely.make_valid(array[invalid])
    simple = shapely.get_type_id(array) == shapely.GeometryType.POLYGON
    keep = simple & (shapely.area(array) > 0)
    return [[g] if k else ([] if s else [p for p in _polygons_of(g) if p.area > 0])
            for g, s, k in zip(array, simple, keep, strict=True)]


def polygons_from_rings(polygons: Sequence[Sequence[Sequence[tuple[float, float]]]]) -> list[Polygon]:
    """Shapely polygons from GeoJSON-style ring lists, built in one vectorised call (no Python-level
    `shape()` per polygon)."""
    if not polygons:
        return []
    rings = [ring for rings in polygons for ring in rings]
    ring_ends = np.cumsum([len(ring) for ring in rings])
    polygon_ends = np.cumsum([len(rings) for rings in polygons])
    coords = np.concatenate([np.asarray(ring, dtype=np.float64) for ring in rings])
    offsets = (np.concatenate([[0], ring_ends]), np.concatenate([[0], polygon_ends]))
    return list(shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, offsets))


def geojson_geometries(polygons: Sequence[Polygon]) -> list[dict[str, Any]]:
    """GeoJSON geometry dicts of polygons, from one vectorised coordinate export (no Python-level
    `mapping()` per polygon, which dominates on slides with many cells)."""
    if not polygons:
        return []
    _, coords, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(np.asarray(polygons, dtype=object))
    points = coords.tolist()
    rings = [points[start:end] for start, end in itertools.pairwise(ring_offsets)]
    return [{"type": "Polygon", "coordinates": rings[start:end]}
            for start, end in itertools.pairwise(polygon_offsets)]


def mask_to_polygons(mask: np.ndarray, probs: np.ndarray | None = None, offset: tuple[float, float] = (0, 0),
                     simplify: float = 0.0, min_area: float = 0.0) -> list[tuple[Polygon, dict[str, Any]]]:
    """One polygon per connected foreground component (8-connectivity; a part joined only at a
    pixel corner comes out as its own valid polygon), with its area and, when `probs` is given, the
    component's mean foreground probability. Coordinates: pixel edges, shifted by `offset`."""
    binary = (mask > 0).astype(np.uint8)
    n, labels = cv2.connectedComponents(binary, connectivity=8, ltype=cv2.CV_32S)
    if n <= 1:
        return []
    mean_prob = None
    if probs is not None:  # over the foreground pixels only: a window is mostly background
        fg = np.flatnonzero(binary)
        fg_labels = labels.ravel()[fg]
        counts = np.bincount(fg_labels, minlength=n)
        sums = np.bincount(fg_labels, weights=probs.ravel()[fg].astype(np.float64), minlength=n)
        mean_prob = sums / np.maximum(counts, 1)
    transform = Affine(1, 0, offset[0], 0, 1, offset[1])
    traced = list(rasterio.features.shapes(labels, mask=binary.view(bool), connectivity=8, transform=transform))
    out = []
    cleaned = clean_many(polygons_from_rings([geom["coordinates"] for geom, _ in traced]), simplify)
    for (_, value), polygons in zip(traced, cleaned, strict=True):
        for polygon in polygons:
            area = float(polygon.area)
            if area < min_area:
                continue
            props: dict[str, Any] = {"area": area}
            if mean_prob is not None:
                props["mean_probability"] = round(float(mean_prob[int(value)]), 4)
            out.append((polygon, props))
    return out


def classified_collection(by_class: Mapping[str, Iterable[tuple[Polygon, dict[str, Any]]]],
                          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One FeatureCollection of the polygons of several classes, each feature classified by its
    class (QuPath reads `properties.classification.name`) in the class's colour."""
    features = []
    for label, listed in by_class.items():
        polygons = list(listed)
        colour = list(COLOURS.get(label, COLOURS["cell"]))
        geometries = geojson_geometries([polygon for polygon, _ in polygons])
        features += [{
            "type": "Feature",
            "geometry": geometry,
            "properties": {"objectType": "annotation", "classification": {"name": label, "color": colour}, **props},
        } for geometry, (_, props) in zip(geometries, polygons, strict=True)]
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if extra:
        collection["properties"] = extra
    return collection


def write_geojson(path: str | os.PathLike, collection: dict[str, Any]) -> Path:
    """Write GeoJSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection))
    return path
