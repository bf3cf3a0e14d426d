"""Instances across windows (DESIGN §6): each object is kept by exactly one window, whole, and an
object too large for the window overlap is rebuilt from the parts its windows own.

A window labels its objects on its whole extent, overlap included. An object that does not touch a
side the window shares with a neighbour is complete there; the window keeps it when the centre of
its bounding box lies in the part the window owns (up to the middle of each overlap). An object
narrower than the overlap is complete in the window that owns its centre, so each is kept once.
Windows may separate touching objects differently: one that merged two cells drops the pair when its
centre falls in the neighbour's part, while the neighbour split them and keeps only its own. So a
window also hands over the complete objects it does not own (`seen`); one that no kept object covers
is kept from there, the largest first, and no object is lost at a window border.
An object that touches a shared side is cut there: the window keeps only the part of it inside its
owned box, as a fragment; fragments that another window kept whole are dropped, and the rest are
joined across window borders with SLDC's merger; an object that lies mostly inside a larger one
(another window's split of part of it) is dropped."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import sldc
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon, box
from shapely.strtree import STRtree

from segmenter.cells import label_polygons
from segmenter.polygons import clean, clean_many
from segmenter.wsi.windows import WindowTask

COVERED = 0.5  # a fragment this much inside another window's whole object of its class is that object
UNCLAIMED = 0.1  # a seen object with less than this share of its area under kept objects is kept
JOINED = -1  # the window of an object joined from several windows' fragments

Located = tuple[Polygon, dict[str, Any]]


def owned_objects(labels: np.ndarray, probs: np.ndarray, area: tuple[int, int, int, int], task: WindowTask,
                  label: str) -> list[Located]:
    """The objects of an area's int32 `labels` (relative to the window, offset `area`) that the window
    keeps: whole when complete and centred in its owned box, clipped to that box (`cut`) when they
    touch a shared side; the complete ones centred elsewhere are handed over as `seen` (kept by
    `join_objects` only where no other window kept them). Coordinates: processing pixels relative to
    the region."""
    ax, ay, _, _ = area
    slices = ndimage.find_objects(labels)
    objects = label_polygons(labels, probs)
    ox, oy, ow, oh = task.own
    owned = box(ox, oy, ox + ow, oy + oh)
    left, top, right, bottom = task.sides
    out: list[Located] = []
    for i, (polygon, props) in objects.items():
        rows, cols = slices[i - 1]
        x0, x1, y0, y1 = ax + cols.start, ax + cols.stop, ay + rows.start, ay + rows.stop
        cut = (left and x0 == 0) or (top and y0 == 0) or (right and x1 == task.w) or (bottom and y1 == task.h)
        polygon = affinity.translate(polygon, xoff=ax, yoff=ay)
        if not cut:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            mine = ox <= cx < ox + ow and oy <= cy < oy + oh
            out.append((_to_region(polygon, task), {**props, "class": label, **({} if mine else {"seen": True})}))
            continue
        for part in clean(polygon.intersection(owned)):
            out.append((_to_region(part, task), {**props, "area": float(part.area), "class": label, "cut": True}))
    return out


def _to_region(polygon: Polygon, task: WindowTask) -> Polygon:
    return affinity.translate(polygon, xoff=task.x, yoff=task.y)


def join_objects(windows: Sequence[tuple[int, list[Located]]], topology: sldc.TileTopology,
                 tolerance: float) -> list[Located]:
    """Every window's objects of one class as the slide's: fragments that lie mostly in another
    window's whole object dropped, the others merged across window borders (their mean probability
    weighted by area); then any object lying mostly inside a larger one of another window dropped (a
    window that saw only part of a large object may have split it differently); last the seen
    objects no kept object covers (`_unclaimed`)."""
    seen = [(p, props) for _, located in windows for p, props in located if props.get("seen")]
    windows = [(wid, [item for item in located if not item[1].get("seen")]) for wid, located in windows]
    whole = [(wid, p, props) for wid, located in windows for p, props in located if not props.get("cut")]
    whole_polygons = [p for _, p, _ in whole]
    tree = STRtree(whole_polygons) if whole else None
    fragments: list[list[Polygon]] = []
    kept: list[Located] = []
    for _, located in windows:
        mine = []
        for polygon, props in located:
            if props.get("cut") and not _inside(polygon, tree, whole_polygons):
                mine.append(polygon)
                kept.append((polygon, props))
        fragments.append(mine)
    joined: list[tuple[int, Polygon, dict[str, Any]]] = []
    if kept:
        merged = list(sldc.SemanticMerger(tolerance=tolerance).merge([wid for wid, _ in windows], fragments,
                                                                     topology))
        parts = STRtree([p for p, _ in kept])
        for geometry, polygons in zip(merged, clean_many(merged), strict=True):
            found = parts.query(geometry, predicate="intersects")
            props = {k: v for k, v in kept[int(found[0])][1].items() if k not in ("cut", "mean_probability")} \
                if len(found) else {}
            mean = area_weighted_mean(geometry, [kept[int(i)] for i in found])
            joined += [(JOINED, polygon, {**props, "area": float(polygon.area),
                                          **({} if mean is None else {"mean_probability": mean})})
                       for polygon in polygons]
    return _unclaimed(_without_nested(joined + whole), seen)


def _unclaimed(kept: list[Located], seen: list[Located]) -> list[Located]:
    """`kept` plus the seen objects that less than UNCLAIMED of lies under kept objects (largest first,
    each then counting as kept): the objects every window that owns them split or merged otherwise."""
    if not seen:
        return kept
    polygons = [p for p, _ in kept]
    tree = STRtree(polygons) if polygons else None
    added: list[Located] = []
    for polygon, props in sorted(seen, key=lambda item: -item[0].area):
        near = [] if tree is None else [polygons[int(i)] for i in tree.query(polygon, predicate="intersects")]
        near += [p for p, _ in added if p.intersects(polygon)]
        if sum(other.intersection(polygon).area for other in near) < UNCLAIMED * polygon.area:
            added.append((polygon, {k: v for k, v in props.items() if k != "seen"}))
    return kept + added


def _without_nested(objects: list[tuple[int, Polygon, dict[str, Any]]]) -> list[Located]:
    """(window, polygon, props) -> the objects less those lying mostly (COVERED) inside a larger one
    of another window: where two windows split the same large object differently, the one that saw
    more of it wins (objects of one window never overlap, so their pairs are not compared)."""
    if not objects:
        return []
    sources = [w for w, _, _ in objects]
    polygons = [p for _, p, _ in objects]
    order = sorted(range(len(polygons)), key=lambda i: -polygons[i].area)
    rank = {i: r for r, i in enumerate(order)}
    tree = STRtree(polygons)
    dropped: set[int] = set()
    for i in order:
        if i in dropped:
            continue
        for j in tree.query(polygons[i], predicate="intersects").tolist():
            if rank[j] > rank[i] and j not in dropped and (sources[i] != sources[j] or sources[i] == JOINED) and \
                    polygons[i].intersection(polygons[j]).area >= COVERED * polygons[j].area:
                dropped.add(j)
    return [(polygons[i], objects[i][2]) for i in range(len(objects)) if i not in dropped]


def _inside(polygon: Polygon, tree: STRtree | None, others: list[Polygon]) -> bool:
    """Whether at least COVERED of the polygon's area lies in one of `others` (indexed by `tree`)."""
    if tree is None or polygon.area <= 0:
        return False
    return any(others[int(i)].intersection(polygon).area >= COVERED * polygon.area
               for i in tree.query(polygon, predicate="intersects"))


def area_weighted_mean(geometry: Polygon, parts: list[Located]) -> float | None:
    """Mean probability of a joined polygon: its parts' means weighted by the area they share with it."""
    total, weighted = 0.0, 0.0
    for polygon, props in parts:
        if props.get("mean_probability") is not None:
            area = polygon.intersection(geometry).area
            total, weighted = total + area, weighted + area * props["mean_probability"]
    return round(weighted / total, 4) if total > 0 else None
