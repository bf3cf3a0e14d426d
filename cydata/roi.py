"""`cydata roi`: add square regions of interest to a Cytomine image, as the method did to build its
validation and test sets (an expert then annotates every cell inside each ROI, and
`cydata download --json` turns the ROIs into crops).

Positions are slide pixels with the origin at the top-left (y down), like every other position the
tools take; the squares are converted once to Cytomine's frame (y up) when saved. A ROI always lies
inside the image and gets the ROI term (--term, else the project's term named 'roi'), which is how
`cydata download --json` finds it.
Random ROIs do not overlap each other nor the image's existing ROIs of the same term.
"""
from __future__ import annotations

import logging
import os
import random

from shapely.geometry import box as shapely_box

from segmenter.cytomine.api import CytomineData, ImageInfo
from segmenter.cytomine.errors import NotFound
from segmenter.errors import CysegError

log = logging.getLogger(__name__)
ATTEMPTS = 2000  # random draws per ROI before giving up on a free spot


def parse_at(text: str | None) -> tuple[int, int] | None:
    """'x,y' -> (x, y) integers, or None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise CysegError(f"--at '{text}' is not two integers 'x,y' (top-left corner in slide pixels, y down)")
    return int(parts[0]), int(parts[1])


def _overlaps(a: tuple[int, int, int, int], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in slide pixels (top-left origin)


def add_rois(project: int, image: int, *, size: int = 2048, count: int = 1, at: tuple[int, int] | None = None,
             term: int | None = None, seed: int | None = None, config: str | os.PathLike | None = None,
             insecure: bool = False, timeout: float = 60.0, retries: int = 4, api: str | None = None) -> list[int]:
    """Create `count` square ROIs of `size` pixels on `image` (at `at`, or at seeded random places)
    on a server of generation `api` (default: found when connecting); returns the new annotation ids."""
    if size < 1:
        raise CysegError(f"--size {size} must be at least 1 pixel")
    if count < 1:
        raise CysegError(f"--count {count} must be at least 1")
    if at is not None and count != 1:
        raise CysegError(f"--at places one ROI but --count is {count}; drop --at for random places or use --count 1")
    with CytomineData.connect(config, insecure=insecure, timeout=timeout, retries=retries, api=api) as cytomine:
        info = _target_image(cytomine, project, image)
        term = _roi_term(cytomine, project, term)
        if size > info.width or size > info.height:
            raise CysegError(f"--size {size} does not fit in image {image} ({info.width}x{info.height}); "
                             "give a smaller --size")
        if at is not None:
            boxes = [_box_at(info, at, size)]
        else:
            boxes = _random_boxes(cytomine, info, project, term, size, count, seed)
        return _create(cytomine, info, boxes, term)


def _target_image(cytomine: CytomineData, project: int, image: int) -> ImageInfo:
    """The image, checked to exist and to belong to the project."""
    try:
        cytomine.project(project)
    except NotFound:
        raise CysegError(f"--project {project}: no such project on {cytomine.host}; check the project id") from None
    try:
        info = cytomine.image(image)
    except NotFound:
        raise CysegError(f"--image {image}: no such image on {cytomine.host}; check the image id") from None
    if info.project is not None and info.project != project:
        raise CysegError(f"--image {image} belongs to project {info.project}, not to project {project}; "
                         "check the ids")
    return info


def _roi_term(cytomine: CytomineData, project: int, term: int | None) -> int | None:
    """The given term, checked to be the project's; else the project's term named 'roi', if any."""
    terms = cytomine.project_terms(project)
    if term is None:
        named = [t for t, name in terms.items() if name.strip().lower() == "roi"]
        if len(named) == 1:
            log.info("using the project's term 'roi' (%d)", named[0])
            return named[0]
        log.warning("the ROI(s) get no term (give --term): 'cydata download --json' finds ROIs by term")
        return None
    if term not in terms:
        shown = ", ".join(f"{t} ({n})" for t, n in sorted(terms.items())) or "none"
        raise CysegError(f"--term {term} is not a term of project {project} (its terms: {shown})")
    return term


def _box_at(info: ImageInfo, at: tuple[int, int], size: int) -> Box:
    """The square whose top-left corner is `at`, checked to lie inside the image."""
    x, y = at
    if x < 0 or y < 0 or x + size > info.width or y + size > info.height:
        raise CysegError(f"--at {x},{y} with --size {size} leaves image {info.id} ({info.width}x{info.height}); "
                         f"x must be in 0..{info.width - size} and y in 0..{info.height - size} "
                         "(top-left corner, y down)")
    return (x, y, x + size, y + size)


def _random_boxes(cytomine: CytomineData, info: ImageInfo, project: int, term: int | None, size: int, count: int,
                  seed: int | None) -> list[Box]:
    """`count` seeded random squares inside the image, apart from each other and from the
    image's existing ROIs of `term`."""
    taken = []
    if term is not None:
        taken = [a.geometry.bounds for a in cytomine.annotations(info, project=project, terms=[term])
                 if a.geometry is not None and not a.geometry.is_empty]
    if seed is None:
        seed = random.SystemRandom().randrange(2 ** 31)
    log.info("random ROI positions with --seed %d", seed)
    rng = random.Random(seed)
    boxes: list[Box] = []
    for _ in range(count):
        for _attempt in range(ATTEMPTS):
            x = rng.randint(0, info.width - size)
            y = rng.randint(0, info.height - size)
            candidate = (x, y, x + size, y + size)
            if not any(_overlaps(candidate, other) for other in taken + boxes):
                boxes.append(candidate)
                break
        else:
            raise CysegError(f"no room for {count} non-overlapping ROI(s) of {size} px in image {info.id} "
                             f"({info.width}x{info.height}, {len(taken)} ROI(s) already there); lower "
                             "--count or --size")
    return boxes


def _create(cytomine: CytomineData, info: ImageInfo, boxes: list[Box], term: int | None) -> list[int]:
    """Save the squares as annotations (with `term`); an error names those already created."""
    created: list[int] = []
    for x0, y0, x1, y1 in boxes:
        try:
            created.append(cytomine.add_annotation(info, shapely_box(x0, y0, x1, y1), [term] if term else []))
        except CysegError as exc:
            done = f" (created so far: {', '.join(map(str, created))})" if created else ""
            raise CysegError(f"cannot create the ROI at {x0},{y0}: {exc}{done}") from None
        log.info("ROI %d: %d,%d %dx%d (slide pixels, top-left origin)", created[-1], x0, y0, x1 - x0, y1 - y0)
    return created
