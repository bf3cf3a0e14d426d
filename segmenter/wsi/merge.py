"""Polygons of the windows joined into the slide's, class by class: SLDC's `SemanticMerger` merges the
regions that meet across window borders (instances: `segmenter.wsi.objects`), then they are
simplified (only after merging) and put in level-0 slide pixels."""
from __future__ import annotations

from typing import Any

import sldc
from shapely import affinity
from shapely.geometry import Polygon
from shapely.strtree import STRtree

from segmenter.polygons import clean_many
from segmenter.wsi.cache import WindowResult
from segmenter.wsi.objects import area_weighted_mean, join_objects
from segmenter.wsi.windows import Region, WsiOptions, near_cuts


def merge_classes(results: list[WindowResult], topology: sldc.TileTopology, opts: WsiOptions, labels: tuple[str, ...],
                  separated: bool) -> list[tuple[Polygon, dict[str, Any]]]:
    """The windows' polygons of each class (`labels`) joined across window borders and simplified,
    with their class and mean probability: instances (`separated`) by `join_objects`, regions by
    `merge_windows`."""
    results = sorted(results, key=lambda r: r.index)
    out: list[tuple[Polygon, dict[str, Any]]] = []
    for label in labels:
        mine = [WindowResult(r.index, *_of_class(r, label), r.tiles, r.skipped, r.seconds,
                             r.inference_seconds) for r in results]
        if separated:
            joined = join_objects([(r.index, list(zip(r.polygons, r.props, strict=True))) for r in mine], topology,
                                  opts.merge_tolerance)
            cleaned = clean_many([geometry for geometry, _ in joined], opts.simplify)
            out += [(polygon, {"class": label, "mean_probability": props.get("mean_probability")})
                    for (_, props), polygons in zip(joined, cleaned, strict=True) for polygon in polygons]
        else:
            out += [(polygon, {"class": label, "mean_probability": mean})
                    for polygon, mean in merge_windows(mine, topology, opts)]
    return out


def _of_class(result: WindowResult, label: str) -> tuple[list[Polygon], list[dict[str, Any]]]:
    """A window's polygons of one class."""
    chosen = [(p, props) for p, props in zip(result.polygons, result.props, strict=True) if props.get("class") == label]
    return [p for p, _ in chosen], [props for _, props in chosen]


def merge_windows(results: list[WindowResult], topology: sldc.TileTopology,
                  opts: WsiOptions) -> list[tuple[Polygon, float | None]]:
    """Join polygons that meet across window borders (SLDC), then simplify them.

    Only polygons near a shared window side go through SLDC's merger, which compares every pair
    of them across each side; the others cannot meet another window's and pass unchanged. Each
    merged polygon comes with the area-weighted mean of its parts' mean probabilities (parts found
    with a spatial index, so this stays linear in the number of polygons)."""
    results = sorted(results, key=lambda r: r.index)
    candidates: list[list[Polygon]] = []  # per window, its polygons near a shared side
    parts, part_probs = [], []  # the same polygons, all windows together, and their mean probabilities
    inside, means = [], []  # the other polygons, and their mean probabilities
    for r in results:
        mine = []
        near = near_cuts(r.polygons, topology, r.index, opts.merge_tolerance)
        for polygon, props, is_near in zip(r.polygons, r.props, near, strict=True):
            if is_near:
                mine.append(polygon)
                parts.append(polygon)
                part_probs.append(props.get("mean_probability"))
            else:
                inside.append(polygon)
                means.append(props.get("mean_probability"))
        candidates.append(mine)
    merged = list(sldc.SemanticMerger(tolerance=opts.merge_tolerance).merge([r.index for r in results], candidates,
                                                                            topology))
    # parts of each merged polygon, all found in one vectorised spatial query
    found: list[list[int]] = [[] for _ in merged]
    if parts and merged:
        for g, p in STRtree(parts).query(merged, predicate="intersects").T:
            found[g].append(int(p))
    # an unmerged polygon is its only part: no intersection to compute
    means += [part_probs[mine[0]] if len(mine) == 1 else
              area_weighted_mean(geometry, [(parts[i], {"mean_probability": part_probs[i]}) for i in mine])
              for geometry, mine in zip(merged, found, strict=True)]
    return [(polygon, mean) for polygons, mean in zip(clean_many(inside + merged, opts.simplify), means, strict=True)
            for polygon in polygons]


def to_slide_coordinates(polygon: Polygon, region: Region, downsample: float) -> Polygon:
    """Processing pixels relative to the region -> level-0 slide pixels (top-left origin)."""
    scaled = affinity.scale(polygon, xfact=downsample, yfact=downsample, origin=(0, 0)) if downsample != 1 else polygon
    return affinity.translate(scaled, xoff=region.x, yoff=region.y)
