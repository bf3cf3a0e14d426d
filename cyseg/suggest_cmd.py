"""`cyseg suggest MODEL INPUT --count K`: the images of a folder, or the tissue tiles of a slide (local
or on Cytomine), an expert should annotate next (`segmenter.suggest`), written as a CSV and a GeoJSON
of boxes with their scores; on Cytomine optionally uploaded as ROI annotations, journalled, for the
annotators (`cydata download` then fetches what they drew in them)."""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cyseg.segment_cmd import check_crop_sample, is_slide, list_images
from cyseg.slide_cmd import check_slide, resolution
from segmenter.base import Segmenter
from segmenter.classes import channel_map
from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_path
from segmenter.io.dataset import declared_classes, folder_read_scale, read_manifest
from segmenter.io.digest import file_digest
from segmenter.io.images import read_image
from segmenter.resolution import resample_image
from segmenter.subsets import sample
from segmenter.suggest import (
    MAX_VIEWS,
    MEASURES,
    Candidate,
    Suggestion,
    check_count,
    check_weights,
    score_all,
    select,
)
from segmenter.wsi.candidates import slide_tiles
from segmenter.wsi.engine import read_box
from segmenter.wsi.slide import SlideReader
from segmenter.wsi.tissue import slide_tissue_mask
from segmenter.wsi.windows import Region

log = logging.getLogger(__name__)
CSV_FIELDS = ("rank", "source", "x", "y", "width", "height", "score", "uncertainty", "distance")


@dataclass
class SuggestOptions:
    """How candidates are made, scored and chosen: `count` suggestions, slide tiles of `size` level-0
    pixels (at most `limit` of them scored, a `seed`ed sample), `views` symmetries, uncertainty
    `measure`, and how much uncertainty weighs in the choice (`segmenter.suggest.select`)."""

    count: int
    size: int = 1024
    limit: int = 300
    views: int = 4
    measure: str = "tta"
    seed: int = 0
    mpp: float | None = None
    magnification: float | None = None
    allow_mismatch: bool = False
    uncertainty_weight: float = 1.0
    density_weight: float = 0.0

    def check(self) -> SuggestOptions:
        """Itself, or a CysegError naming the option out of range (before any work)."""
        if self.count < 1:
            raise CysegError(f"--count {self.count} must be at least 1")
        if not 2 <= self.views <= MAX_VIEWS:
            raise CysegError(f"--views {self.views} must be between 2 and {MAX_VIEWS} (symmetries of the square)")
        if self.measure not in MEASURES:
            raise CysegError(f"--measure {self.measure!r} is not known; use one of {', '.join(MEASURES)}")
        check_weights(self.uncertainty_weight, self.density_weight)
        if self.size < 16 or self.limit < 1:
            raise CysegError(f"--size {self.size} must be at least 16 pixels and --max-candidates {self.limit} "
                             "at least 1")
        return self


def output_paths(out: Path) -> tuple[Path, Path]:
    """(CSV, GeoJSON) paths of an --out prefix (a .csv or .geojson suffix is dropped)."""
    stem = out.with_suffix("") if out.suffix.lower() in (".csv", ".geojson", ".json") else out
    if stem.is_dir():
        stem = stem / "suggestions"
    return stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".geojson")


def crop_candidates(seg: Segmenter, source: Path, opts: SuggestOptions) -> tuple[list[Candidate], list[Candidate]]:
    """The images of a folder not annotated yet (in a dataset folder: those without a mask) and those
    annotated already (a seeded sample of `opts.limit` of them), each a candidate box over the whole
    image; a CysegError when the classes its masks or dataset.json declare do not match the model's
    (a folder of images alone, nothing annotated yet, declares none and is not checked)."""
    files = list_images(source)
    masks = source / "masks"
    annotated = {p.stem for p in masks.iterdir() if p.is_file()} if masks.is_dir() else set()
    if (source / "images").is_dir() and (annotated or (source / "dataset.json").is_file()):
        manifest = read_manifest(source)
        channel_map(declared_classes(manifest, source), seg.classes, source)
    todo = [p for p in files if p.stem not in annotated]
    if not todo:
        raise CysegError(f"every image of {source} has a mask already: nothing left to suggest; give a folder "
                         "with images not annotated yet")
    check_crop_sample(seg, todo, opts.allow_mismatch)
    done = sample([path for path in files if path.stem in annotated], opts.limit, opts.seed)
    return [_whole_image(path) for path in todo], [_whole_image(path) for path in done]


def _whole_image(path: Path) -> Candidate:
    """An image as one candidate box over all of it."""
    return Candidate(path.name, (0, 0, *_size(path)))


def _size(path: Path) -> tuple[int, int]:
    """An image file's (width, height), from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as exc:
        raise CysegError(f"image {path} cannot be read ({exc}); re-export it as PNG or remove it") from None


def annotated_regions(path: Path | None) -> list[Any]:
    """The geometries of a GeoJSON file (regions annotated already, level-0 pixels); none without one."""
    if path is None:
        return []
    from shapely.geometry import shape

    try:
        features = json.loads(Path(path).read_text())["features"]
        return [shape(f["geometry"]) for f in features if f.get("geometry")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CysegError(f"--annotated {path} is not a readable GeoJSON FeatureCollection ({exc}); export the "
                         "annotations as GeoJSON (QuPath: File > Export objects as GeoJSON)") from None


def slide_candidates(seg: Segmenter, reader: SlideReader, annotated: Iterable[Any], opts: SuggestOptions
                     ) -> tuple[list[Candidate], list[Candidate], Callable[[Candidate], np.ndarray]]:
    """The slide's candidate tissue tiles, its tiles touching the `annotated` regions, and how to read
    one at the processing resolution."""
    downsample = resolution(reader, opts.mpp, opts.magnification)
    check_slide(seg, reader, downsample, opts.allow_mismatch)
    tiles, done = slide_tiles(reader, slide_tissue_mask(reader), opts.size, annotated, opts.limit, opts.seed)
    whole = Region(0, 0, reader.width, reader.height)

    def pixels(c: Candidate) -> np.ndarray:
        x, y, w, h = c.box
        return read_box(reader, whole, round(x / downsample), round(y / downsample), max(1, round(w / downsample)),
                        max(1, round(h / downsample)), downsample)

    return tiles, done, pixels


def suggest(seg: Segmenter, candidates: list[Candidate], pixels: Callable[[Candidate], np.ndarray],
            opts: SuggestOptions, progress: bool, annotated: Sequence[Candidate] = ()) -> list[Suggestion]:
    """Score every candidate (and describe the `annotated` images, whose look-alikes they cover), then
    pick `opts.count` of the candidates."""
    check_count(opts.count, len(candidates))  # before the scoring's minutes
    log.info("scoring %d candidate(s) and %d annotated image(s) under %d symmetries (%s)", len(candidates),
             len(annotated), opts.views, opts.measure)

    def bar(items: Iterable[Candidate]) -> Iterable[Candidate]:
        return tqdm(items, total=len(candidates) + len(annotated), desc="scoring", unit="image",
                    disable=not progress)

    scored = score_all([*candidates, *annotated], pixels, seg, opts.views, opts.measure, bar)
    return select(scored[:len(candidates)], opts.count, scored[len(candidates):], opts.uncertainty_weight,
                  opts.density_weight)


def suggestions_geojson(suggestions: list[Suggestion], extra: dict[str, Any]) -> dict[str, Any]:
    """The suggested boxes as a FeatureCollection (level-0 pixels, top-left origin), with their scores."""
    features = []
    for s in suggestions:
        x, y, w, h = s.candidate.box
        ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"rank": s.rank, "source": s.candidate.source, "score": s.score,
                                        "uncertainty": s.candidate.uncertainty, "distance": s.distance,
                                        "objectType": "annotation",
                                        "classification": {"name": "suggested", "color": [255, 128, 0]}}})
    return {"type": "FeatureCollection", "features": features, "properties": extra}


def write_outputs(suggestions: list[Suggestion], out: Path, extra: dict[str, Any]) -> tuple[Path, Path]:
    """The CSV and the GeoJSON, both renamed into place only once both are written."""
    csv_path, geojson_path = output_paths(out)
    with ExitStack() as stack:
        tmp_csv = stack.enter_context(atomic_path(csv_path))
        tmp_geojson = stack.enter_context(atomic_path(geojson_path))
        with open(tmp_csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_FIELDS)
            for s in suggestions:
                writer.writerow([s.rank, s.candidate.source, *s.candidate.box, f"{s.score:.6g}",
                                 f"{s.candidate.uncertainty:.6g}", f"{s.distance:.6g}"])
        tmp_geojson.write_text(json.dumps(suggestions_geojson(suggestions, extra)))
    return csv_path, geojson_path


def run_suggest_local(seg: Segmenter, source: Path, out: Path, opts: SuggestOptions, annotated: Path | None,
                      progress: bool = True) -> tuple[list[Suggestion], Path, Path]:
    """`cyseg suggest MODEL (FOLDER | SLIDE)`: the suggestions, written; returns them and the two files."""
    from segmenter.wsi.readers import open_slide

    if not source.exists():
        raise CysegError(f"input {source} does not exist; give a folder of images or a slide file")
    if is_slide(source):
        with open_slide(source) as reader:
            candidates, done, pixels = slide_candidates(seg, reader, annotated_regions(annotated), opts)
            chosen = suggest(seg, candidates, pixels, opts, progress, done)
            extra = {"slide": source.name, "width": reader.width, "height": reader.height}
    else:
        if annotated is not None:
            raise CysegError("--annotated is for slides; in a dataset folder the images with a mask are the "
                             "annotated ones")
        folder = source.parent if source.is_file() else source
        candidates, done = crop_candidates(seg, source, opts)
        scale = folder_read_scale(source)

        def pixels(c: Candidate) -> np.ndarray:
            return resample_image(read_image(_image_path(folder, c.source)), scale)

        chosen = suggest(seg, candidates, pixels, opts, progress, done)
        extra = {"folder": source.name}
    return (chosen, *write_outputs(chosen, out, {**extra, **_settings(opts)}))


def _image_path(folder: Path, name: str) -> Path:
    return folder / "images" / name if (folder / "images" / name).exists() else folder / name


def _settings(opts: SuggestOptions) -> dict[str, Any]:
    return {"measure": opts.measure, "views": opts.views, "count": opts.count, "size": opts.size,
            "uncertainty_weight": opts.uncertainty_weight, "density_weight": opts.density_weight,
            "coordinates": "level-0 pixels, top-left origin"}


def run_suggest_cytomine(seg: Segmenter, model_path: Path, image_id: int, out: Path, opts: SuggestOptions, upload: bool,
                         term: int | None, config: Path | None, insecure: bool, timeout: float, upload_batch: int,
                         api: str | None, progress: bool = True) -> tuple[list[Suggestion], Path, Path, Any]:
    """`cyseg suggest MODEL --cytomine-image ID [--upload --term T]`: tiles touching none of the image's
    annotations; with --upload the boxes become ROI annotations with term T, recorded first in
    <out>.plan.json and journalled, so that a rerun of the same command uploads the same boxes, once.
    The CSV and GeoJSON are written once the upload is complete."""
    from segmenter.cytomine.api import CytomineData
    from segmenter.cytomine.reader import CytomineSlideReader
    from segmenter.cytomine.upload import Uploader, check_term, journal_path

    if upload and term is None:
        raise CysegError("--upload needs --term ID: the ROI term the annotators and `cydata download` find the "
                         "suggestions by")
    with CytomineData.connect(config, insecure=insecure, timeout=timeout, api=api) as cytomine:
        info = cytomine.image(image_id)
        if upload:
            check_term(cytomine.connection, term, info.project)
        reader = CytomineSlideReader(image_id, cytomine.connection)
        settings = {"cytomine_image": image_id, "term": term, "width": reader.width, "height": reader.height,
                    **_settings(opts), "seed": opts.seed, "max_candidates": opts.limit,
                    "model_sha256": file_digest(model_path)}
        plan = output_paths(out)[1].with_suffix(".plan.json")
        chosen = _planned(plan, settings) if upload else None
        if chosen is None:
            annotated = [a.geometry for a in cytomine.annotations(info, project=info.project)]
            candidates, done, pixels = slide_candidates(seg, reader, annotated, opts)
            chosen = suggest(seg, candidates, pixels, opts, progress, done)
        result = None
        if upload:
            from shapely.geometry import box

            _write_plan(plan, settings, chosen)
            uploader = Uploader(cytomine.connection, image_id, info.project, reader.height, term=term,
                                batch_size=upload_batch, journal=journal_path(output_paths(out)[1]))
            result = uploader.upload([box(x, y, x + w, y + h) for x, y, w, h in (s.candidate.box for s in chosen)],
                                     reader.width)
            if not result.complete:
                raise CysegError(f"the suggestions' upload is incomplete ({result.summary()}); rerun the same "
                                 "command to resume it (no duplicates are made)")
        return (chosen, *write_outputs(chosen, out, settings), result)


def _write_plan(plan: Path, settings: dict[str, Any], chosen: list[Suggestion]) -> None:
    """Record the suggestions before they are uploaded: a rerun with the same --out and settings
    uploads these (resuming through the journal) instead of scoring afresh, where the ROIs already
    uploaded would now count as annotated and move the choice."""
    rows = [{"rank": s.rank, "source": s.candidate.source, "box": list(s.candidate.box), "score": s.score,
             "uncertainty": s.candidate.uncertainty, "distance": s.distance} for s in chosen]
    with atomic_path(plan) as tmp:
        tmp.write_text(json.dumps({"settings": settings, "suggestions": rows}))


def _planned(plan: Path, settings: dict[str, Any]) -> list[Suggestion] | None:
    """The suggestions a previous run with these settings recorded, or None."""
    try:
        recorded = json.loads(plan.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("settings") != settings:
        log.info("%s was made with other settings: scoring afresh", plan)
        return None
    log.info("uploading the suggestions recorded in %s (same --out and settings)", plan)
    return [Suggestion(Candidate(r["source"], tuple(r["box"]), r["uncertainty"]), r["rank"], r["score"],
                       r["distance"]) for r in recorded["suggestions"]]
