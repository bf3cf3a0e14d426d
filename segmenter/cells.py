"""Instance label images -> QuPath objects (DESIGN §5): each cell a GeoJSON feature of objectType
`cell` with its geometry, its nucleus as `nucleusGeometry` (the feature member QuPath reads and
writes beside `geometry`), its classification and its measurements; nuclei that lie in no cell (or
in a cell that already has a larger one), and the objects of a nucleus-only model, are `detection`s."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import rasterio.features
from affine import Affine
from shapely.geometry import Polygon
from shapely.strtree import STRtree

from segmenter.classes import COLOURS
from segmenter.polygons import clean_many, geojson_geometries, polygons_from_rings
from transforms.instances import assign_nuclei

Objects = dict[int, tuple[Polygon, dict[str, float]]]


def label_polygons(labels: np.ndarray, probs: np.ndarray | None = None, simplify: float = 0.0,
                   min_area: float = 0.0) -> Objects:
    """{id: (polygon, {"area", "mean_probability"})}: each object's outline (its largest part when
    an id covers several regions), in pixel-edge coordinates; objects smaller than `min_area` px² are
    left out. The mean probability is over the object's pixels."""
    labels = np.asarray(labels, np.int32)
    inside = labels > 0
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if not rows.size:
        return {}
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # traced on the objects' box only
    traced = list(rasterio.features.shapes(np.ascontiguousarray(labels[box]), mask=np.ascontiguousarray(inside[box]),
                                           connectivity=8, transform=Affine.translation(cols[0], rows[0])))
    cleaned = clean_many(polygons_from_rings([geom["coordinates"] for geom, _ in traced]), simplify)
    mean = None
    if probs is not None:
        counts = np.bincount(labels[inside], minlength=int(labels.max()) + 1)
        sums = np.bincount(labels[inside], weights=probs[inside].astype(np.float64), minlength=counts.size)
        mean = sums / np.maximum(counts, 1)
    out: Objects = {}
    for (_, value), polygons in zip(traced, cleaned, strict=True):
        for polygon in polygons:
            i = int(value)
            if polygon.area >= min_area and (i not in out or polygon.area > out[i][0].area):
                props = {"area": float(polygon.area)}
                if mean is not None:
                    props["mean_probability"] = round(float(mean[i]), 4)
                out[i] = (polygon, props)
    return out


def _measurements(prefix: str, props: Mapping[str, float]) -> dict[str, float]:
    """QuPath-style measurement names of one compartment's area and mean probability."""
    out = {f"{prefix}: Area px^2": props["area"]}
    if "mean_probability" in props:
        out[f"{prefix}: Mean probability"] = props["mean_probability"]
    return out


def _feature(geometry: dict[str, Any], kind: str, label: str, props: dict[str, Any],
             measurements: dict[str, float], nucleus: dict[str, Any] | None = None) -> dict[str, Any]:
    """One QuPath feature; `props` (area, mean probability) also stay top-level in its properties."""
    feature: dict[str, Any] = {"type": "Feature", "geometry": geometry}
    if nucleus is not None:
        feature["nucleusGeometry"] = nucleus
    feature["properties"] = {"objectType": kind,
                             "classification": {"name": label, "color": list(COLOURS.get(label, COLOURS["cell"]))},
                             "measurements": measurements, **props}
    return feature


def cell_features(cells: np.ndarray | None, nuclei: np.ndarray | None, cell_probs: np.ndarray | None = None,
                  nucleus_probs: np.ndarray | None = None, simplify: float = 0.0,
                  min_areas: tuple[float, float] = (0.0, 0.0), label: str = "cell") -> list[dict[str, Any]]:
    """The features of one image's cell and nucleus label images (either may be None): a `cell` per
    cell object, holding the largest nucleus assigned to it (`transforms.instances.assign_nuclei`),
    and a `detection` classified `nucleus` per other nucleus; objects under `min_areas` (cells,
    nuclei; px²) left out."""
    cell_objects = label_polygons(cells, cell_probs, simplify, min_areas[0]) if cells is not None else {}
    nucleus_objects = label_polygons(nuclei, nucleus_probs, simplify, min_areas[1]) if nuclei is not None else {}
    owner = assign_nuclei(cells, nuclei) if cells is not None and nuclei is not None else {}
    return object_features(cell_objects, nucleus_objects, owner, label)


def assign_nucleus_polygons(cells: Sequence[Polygon], nuclei: Sequence[Polygon]) -> dict[int, int]:
    """{nucleus index: cell index} for each nucleus polygon overlapping a cell polygon: the cell it
    shares most area with (the polygon counterpart of `assign_nuclei`, for whole slides)."""
    if not cells or not nuclei:
        return {}
    owner: dict[int, int] = {}
    tree = STRtree(list(cells))
    for n, c in sorted(tree.query(list(nuclei), predicate="intersects").T.tolist()):
        shared = nuclei[n].intersection(cells[c]).area
        if shared > 0 and (n not in owner or shared > nuclei[n].intersection(cells[owner[n]]).area):
            owner[n] = c
    return owner


def object_features(cell_objects: Objects, nucleus_objects: Objects, owner: Mapping[int, int],
                    label: str = "cell") -> list[dict[str, Any]]:
    """QuPath features of cell and nucleus objects and which cell each nucleus lies in: a `cell`
    per cell holding its largest nucleus, a `detection` classified `nucleus` per other nucleus."""
    held: dict[int, int] = {}
    for nucleus, cell in owner.items():
        if cell in cell_objects and nucleus in nucleus_objects and (
                cell not in held or nucleus_objects[nucleus][1]["area"] > nucleus_objects[held[cell]][1]["area"]):
            held[cell] = nucleus
    cell_ids, nucleus_ids = sorted(cell_objects), sorted(nucleus_objects)
    cell_geometries = dict(zip(cell_ids, geojson_geometries([cell_objects[i][0] for i in cell_ids]), strict=True))
    nucleus_geometries = dict(zip(nucleus_ids, geojson_geometries([nucleus_objects[i][0] for i in nucleus_ids]),
                                  strict=True))
    features = []
    for i in cell_ids:
        props = cell_objects[i][1]
        measurements = _measurements("Cell", props)
        nucleus = held.get(i)
        if nucleus is not None:
            measurements.update(_measurements("Nucleus", nucleus_objects[nucleus][1]))
        features.append(_feature(cell_geometries[i], "cell", label, dict(props), measurements,
                                 None if nucleus is None else nucleus_geometries[nucleus]))
    for i in sorted(set(nucleus_ids) - set(held.values())):
        props = nucleus_objects[i][1]
        features.append(_feature(nucleus_geometries[i], "detection", "nucleus", dict(props),
                                 _measurements("Nucleus", props)))
    return features
