"""The objects QuPath exports as GeoJSON (File > Export objects as GeoJSON), read as annotations.

One file holds the objects of one image: a FeatureCollection (or, from older QuPath versions, a
plain list of Features, or one Feature). Geometries are in full-resolution pixels, top-left
origin, y down, so they need no conversion. A feature's class is `properties.classification.name`
(QuPath 0.2 to 0.5; `names` joined by ': ' for derived classes when there is no `name`); objects
without one are QuPath's "Unclassified". Cell objects keep their whole-cell outline as `geometry`
(their `nucleusGeometry` lies inside it and is not read).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shapely.errors import GEOSException
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from cydata.crops import polygonal
from segmenter.errors import CysegError, one_line

UNCLASSIFIED = "Unclassified"
EXPORT_HINT = "give the GeoJSON that QuPath exports (File > Export objects as GeoJSON)"


@dataclass(frozen=True)
class Annotation:
    """One exported object: its position in the file, QuPath's id and object type when present, its
    class, its geometry type and its polygonal part (None for points and lines: they draw nothing)."""

    index: int
    ident: str | None
    object_type: str | None
    class_name: str
    geometry_type: str | None
    geometry: BaseGeometry | None


def class_name(properties: dict[str, Any]) -> str:
    """The QuPath class of a feature's properties, or "Unclassified"."""
    classification = properties.get("classification")
    if not isinstance(classification, dict):
        return UNCLASSIFIED
    name = classification.get("name")
    if isinstance(name, str) and name:
        return name
    names = classification.get("names")
    if isinstance(names, list) and names:
        return ": ".join(str(n) for n in names)
    return UNCLASSIFIED


def read_geojson(path: Path) -> list[Annotation]:
    """Every feature of a QuPath GeoJSON export, in file order; CysegError naming the file when it
    cannot be read, is not JSON, is not GeoJSON or holds a geometry shapely cannot build."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise CysegError(f"cannot read {path}: {exc.strerror or exc}; check --annotations") from None
    except UnicodeDecodeError:
        raise CysegError(f"{path} is not text; {EXPORT_HINT}") from None
    except json.JSONDecodeError as exc:
        raise CysegError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {EXPORT_HINT}") from None
    return [_annotation(feature, index, path) for index, feature in enumerate(_features(data, path))]


def _features(data: Any, path: Path) -> list[dict[str, Any]]:
    """The features of a FeatureCollection, a list of Features or a single Feature."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection" and isinstance(data.get("features"), list):
        features = data["features"]
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        found = data.get("type", "an object without a type") if isinstance(data, dict) else type(data).__name__
        raise CysegError(f"{path} is not GeoJSON (a FeatureCollection of Features expected, found {found}); "
                         f"{EXPORT_HINT}")
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise CysegError(f"{path}: item {index} of the features is not a GeoJSON Feature; {EXPORT_HINT}")
    return features


def _annotation(feature: dict[str, Any], index: int, path: Path) -> Annotation:
    """One feature as an Annotation; its geometry is made valid and reduced to its polygons."""
    properties = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
    geometry = feature.get("geometry")
    geometry_type = geometry.get("type") if isinstance(geometry, dict) else None
    built = None
    if geometry is not None:
        try:
            built = shape(geometry)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, GEOSException) as exc:
            raise CysegError(f"{path}: feature {index} has a geometry that cannot be read ({one_line(exc, 120)}); "
                             "fix or re-export it") from None
    ident = feature.get("id", properties.get("id"))
    object_type = properties.get("objectType")
    return Annotation(index, None if ident is None else str(ident), None if object_type is None else str(object_type),
                      class_name(properties), geometry_type, polygonal(built))
