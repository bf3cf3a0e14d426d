"""Mask -> polygons: one polygon per 8-connected component with its area and mean probability,
and the vectorised clean-up (simplify, repair, drop empty) that the whole-slide merge uses."""
from __future__ import annotations

import numpy as np
from shapely.geometry import (
    GeometryCollection,
    LineString,
    MultiPolygon,
    Point,
    Polygon,
    box,
)

from segmenter.polygons import clean, clean_many, mask_to_polygons


def test_each_component_becomes_one_polygon_with_its_area_and_mean_probability() -> None:
    mask = np.zeros((40, 50), np.uint8)
    mask[2:6, 3:10] = 1        # 28 px
    mask[20:30, 20:25] = 1     # 50 px
    mask[30, 25] = 1           # touches the block above diagonally: same 8-connected component
    probs = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    found = mask_to_polygons(mask, probs, offset=(100, 200))
    # the corner-joined pixel is part of the block's component, but a polygon cannot be valid with a
    # single-point pinch: it comes out as its own valid part, with the component's mean probability
    assert [props["area"] for _, props in found] == [28.0, 50.0, 1.0]
    (small, small_props), (block, block_props), (pixel, pixel_props) = found
    assert small.bounds == (103, 202, 110, 206) and block.bounds == (120, 220, 125, 230)
    assert pixel.bounds == (125, 230, 126, 231)
    assert small_props["mean_probability"] == round(float(probs[2:6, 3:10].mean()), 4)
    component = np.zeros_like(mask, bool)
    component[20:30, 20:25] = True
    component[30, 25] = True
    assert block_props["mean_probability"] == pixel_props["mean_probability"] == round(float(probs[component].mean()),
                                                                                       4)
    assert all(p.is_valid for p, _ in found)


def test_empty_mask_and_min_area() -> None:
    assert mask_to_polygons(np.zeros((8, 8), np.uint8)) == []
    mask = np.zeros((8, 8), np.uint8)
    mask[1, 1] = 1
    mask[4:7, 4:7] = 1
    assert [props["area"] for _, props in mask_to_polygons(mask, min_area=2)] == [9.0]


def test_clean_many_repairs_splits_and_drops_like_clean() -> None:
    bowtie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])  # self-intersecting
    geometries = [box(0, 0, 3, 3), bowtie, Polygon(), MultiPolygon([box(0, 0, 1, 1), box(5, 5, 6, 7)]),
                  GeometryCollection([box(0, 0, 1, 1), LineString([(0, 0), (1, 1)]), Point(3, 3)]),
                  Polygon([(0, 0), (1, 0), (2, 0)])]
    cleaned = clean_many(geometries)
    assert [len(parts) for parts in cleaned] == [1, 2, 0, 2, 1, 0]
    assert all(p.is_valid and p.area > 0 for parts in cleaned for p in parts)
    assert sum(p.area for p in cleaned[1]) == 2.0
    for geometry, parts in zip(geometries, cleaned, strict=True):
        assert [p.wkt for p in parts] == [p.wkt for p in clean(geometry)]
    assert clean_many([]) == []


def test_clean_many_simplifies_keeping_topology() -> None:
    ring = [(x, 0.01 * (x % 2)) for x in range(11)] + [(10, 5), (0, 5)]
    (simplified,), = clean_many([Polygon(ring)], simplify=0.5)
    assert len(simplified.exterior.coords) < len(ring) and simplified.is_valid
    assert abs(simplified.area - Polygon(ring).area) < 0.5


def test_simplification_keeps_tiny_cells_and_holes_that_douglas_peucker_would_lose() -> None:
    import shapely

    tiny = box(0, 0, 1, 1)
    near_border = Polygon([(0, 0), (5, -0.9), (10, 0), (10, 10), (0, 10)], [[(5, -0.5), (6, 1), (4, 1)]])
    plain = Polygon([(x, 0.3 * (x % 2)) for x in range(21)] + [(20, 8), (0, 8)])
    assert shapely.simplify(tiny, 1.0, preserve_topology=False).is_empty
    assert len(shapely.simplify(near_border, 1.0, preserve_topology=False).interiors) == 0  # the hole opened
    (t,), (h,), (p,) = clean_many([tiny, near_border, plain], simplify=1.0)
    assert t.equals(tiny)
    assert len(h.interiors) == 1 and h.equals(shapely.simplify(near_border, 1.0, preserve_topology=True))
    assert p.equals(shapely.simplify(plain, 1.0, preserve_topology=False)) and len(p.exterior.coords) == 5


def test_rings_with_holes_are_traced_and_written_as_shapely_writes_them() -> None:
    import json

    from shapely.geometry import mapping

    from segmenter.polygons import classified_collection

    mask = np.zeros((60, 80), np.uint8)
    mask[5:45, 5:45] = 1
    mask[15:25, 15:25] = 0     # one hole
    mask[30:35, 30:40] = 0     # a second hole
    mask[50:55, 60:75] = 1     # a plain block
    found = mask_to_polygons(mask, offset=(0.5, 1.5))
    donut, block = (p for p, _ in found)
    assert len(donut.interiors) == 2 and donut.is_valid and len(block.interiors) == 0
    assert donut.area == mask[:46, :46].sum() and block.area == 75
    assert donut.bounds == (5.5, 6.5, 45.5, 46.5)
    collection = classified_collection({"cell": found})
    assert [f["geometry"] for f in json.loads(json.dumps(collection))["features"]] == \
        [json.loads(json.dumps(mapping(p))) for p, _ in found]
    assert classified_collection({"cell": []})["features"] == [] and mask_to_polygons(np.zeros((4, 4), np.uint8)) == []
