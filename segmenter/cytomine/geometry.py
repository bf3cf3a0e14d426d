"""Cytomine's geometry frame has its origin at the bottom-left (y up); slides, windows, masks and
our GeoJSON use the top-left (y down). This is the one place where the two are converted."""
from __future__ import annotations

from shapely import affinity
from shapely.geometry.base import BaseGeometry


def flip_y(geometry: BaseGeometry, image_height: int) -> BaseGeometry:
    """Convert between the frames (the map is its own inverse): (x, y) -> (x, image_height - y)."""
    return affinity.affine_transform(geometry, [1, 0, 0, -1, 0, image_height])
