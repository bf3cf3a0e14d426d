"""`cydata download`: a dataset of crops and masks from expert annotations on a Cytomine server.

Three ways to choose the crops:
  * a CSV annotation report exported from Cytomine (`;`-separated, header row): columns found by
    NAME (`Id`, `X`, `Y`, `Image Id`; any order, extra columns ignored); one crop centred on each
    annotation's centroid (X, Y are in Cytomine's frame, y up);
  * a JSON descriptor {"images", "user", "project", "roi", "foreground"}: every annotation of the
    `roi` term is a region of interest; its real bounding box is covered by crops (a ROI larger than
    the crop is tiled, a smaller one is padded around its centre);
  * filters (--project, --image, --term, --user): one crop centred on every matching annotation.

A crop is placed inside the image when it can be (shifted, never resized); an image smaller than
the crop gives a smaller crop. Pixels are read as cyseg reads slides: windows, and at `--zoom` > 0
windows at that zoom on the legacy core or crops scaled by the server on the Spring and current
cores (their windows ignore `zoom`); masks are rasterised here from the polygons of the foreground
term(s) that intersect the crop (those cores ignore `mask=true` too), and stored as PNG 0/255.

Resumable: everything is written under `<out>.partial/` (each item's image and mask atomically,
then its `items/<stem>.json`, the item's commit mark); the same command run again continues from
there, fetching only the missing items. `<out>` appears, with `dataset.json`, only when every item
is done; if an item still fails after the retries the command exits 2 and leaves `<out>.partial/`.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shapely.geometry import Point
from tqdm import tqdm

from cydata.crops import SKIPPED_SHOWN, centre, centred_box, rasterise, report_skipped, span
from segmenter.cytomine.api import CytomineData, ImageInfo
from segmenter.cytomine.errors import NotFound
from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_path
from segmenter.io.dataset import FORMAT
from segmenter.io.digest import file_digest
from segmenter.io.images import write_png

log = logging.getLogger(__name__)

PLAN_VERSION = 1
MARK = "download.json"        # parameters of the command that owns a .partial folder
PLAN = "plan.json"            # the crops to fetch and the items skipped, fixed at the first run
ITEMS = "items"               # items/<stem>.json: one per finished item


# ---------------------------------------------------------------------------- plan ------------
@dataclass
class Crop:
    """One item to fetch: a box of the slide (level-0 pixels, top-left origin) and its provenance."""

    stem: str
    image: int
    project: int | None
    box: list[int]                       # x, y, w, h
    annotations: list[int]               # the annotation(s) the crop was made for
    terms: list[int]                     # their term(s)
    foreground: list[int]                # term(s) drawn in the mask
    kind: str | None
    roi: list[float] | None = None       # ROI bounds (x0, y0, x1, y1) for descriptor crops
    tile: list[int] | None = None        # (row, column) of the crop among the ROI's tiles


@dataclass
class Plan:
    crops: list[Crop] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    images: dict[int, ImageInfo] = field(default_factory=dict)
    term_names: dict[int, str] = field(default_factory=dict)

    def skip(self, what: str, reason: str, **ids: Any) -> None:
        self.skipped.append({"what": what, "reason": reason, **{k: v for k, v in ids.items() if v is not None}})

    def to_json(self) -> dict[str, Any]:
        return {"crops": [asdict(c) for c in self.crops], "skipped": self.skipped,
                "images": {str(i): asdict(info) for i, info in self.images.items()},
                "term_names": {str(t): n for t, n in self.term_names.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls([Crop(**c) for c in data["crops"]], list(data["skipped"]),
                   {int(i): ImageInfo(**v) for i, v in data["images"].items()},
                   {int(t): n for t, n in data.get("term_names", {}).items()})


@dataclass
class Spec:
    """What to download (one of csv / descriptor / project) and how."""

    csv: str | None = None
    descriptor: str | None = None
    project: int | None = None
    terms: tuple[int, ...] = ()
    user: int | None = None
    images: tuple[int, ...] = ()
    size: int = 512
    zoom: int = 0
    foreground: tuple[int, ...] = ()

    @property
    def mode(self) -> str:
        return "csv" if self.csv else "json" if self.descriptor else "filters"

    @property
    def footprint(self) -> int:
        """Side of a crop in level-0 slide pixels."""
        return self.size * 2 ** self.zoom


KIND_WORDS = (("roi", re.compile(r"\broi\b|region of interest")),
              ("cell", re.compile(r"cell|nucle")),
              ("pattern", re.compile(r"pattern|cluster|group|architect|papill|follic")))


def kind_of(names: Iterable[str]) -> str | None:
    """`roi`, `cell` or `pattern` when the term names say so unambiguously, else None."""
    kinds = set()
    for name in names:
        lowered = " ".join(str(name).lower().replace("_", " ").split())
        found = [kind for kind, rx in KIND_WORDS if rx.search(lowered)]
        kinds.update(found[:1])
    return kinds.pop() if len(kinds) == 1 else None


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CysegError(f"cannot read {path}: {exc.strerror or exc}; check the path") from None
    for encoding in ("utf-8-sig", "cp1252", "latin-1"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise CysegError(f"{path} is not text; give the CSV annotation report exported from Cytomine")


CSV_COLUMNS = {  # our name -> (label in messages, accepted header names, normalised)
    "id": ("Id", ("id", "annotation id", "annotation", "annotationid", "annotation_id", "annotation ident")),
    "x": ("X", ("x", "centroid x", "x (pixels)")),
    "y": ("Y", ("y", "centroid y", "y (pixels)")),
    "image": ("Image Id", ("image id", "image", "imageid", "image_id", "image instance", "image instance id")),
}


def _norm(name: str) -> str:
    return " ".join(name.replace("\ufeff", "").strip().strip('"').lower().split())


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a Cytomine annotation report: dicts with `row` (line number), `id`, `x`, `y`,
    `image` (strings, validated later). Columns are matched by name, case-insensitively."""
    path = Path(path)
    text = _read_text(path)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise CysegError(f"{path} is empty; give the CSV annotation report exported from Cytomine (header row first)")
    header_line = lines[0]
    delimiter = ";" if ";" in header_line else "\t" if "\t" in header_line else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader)
    names = [_norm(h) for h in header]
    index: dict[str, int] = {}
    for key, (label, aliases) in CSV_COLUMNS.items():
        found = [names.index(alias) for alias in aliases if alias in names]  # in order of preference
        if not found:
            shown = ", ".join(repr(h.strip().replace("\ufeff", "")) for h in header) or "none"
            raise CysegError(f"{path} has no '{label}' column (columns found: {shown}); export the Cytomine "
                             f"annotation report with the Id, X, Y and Image Id columns")
        index[key] = found[0]
    rows = []
    for number, fields in enumerate(reader, start=2):
        if not any(f.strip() for f in fields):
            continue
        row: dict[str, Any] = {"row": number}
        for key, i in index.items():
            row[key] = fields[i].strip() if i < len(fields) else ""
        rows.append(row)
    if not rows:
        raise CysegError(f"{path} has a header but no rows; export the annotation report with annotations in it")
    return rows


def _number(text: str, integer: bool) -> float | int | None:
    value = text.strip().replace(" ", "")
    if "," in value and "." not in value:
        value = value.replace(",", ".")  # decimal comma of some locales
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if integer:
        return int(number) if number.is_integer() else None
    return number


class Planner:
    """Turns a Spec into crops, with the server's help (listing only, no pixels)."""

    def __init__(self, cytomine: CytomineData, request: Spec) -> None:
        self.cytomine = cytomine
        self.request = request
        self.plan = Plan()
        self._project_terms: dict[int, dict[int, str]] = {}
        self.rows: list[dict[str, Any]] | None = None          # the CSV, read before connecting
        self.descriptor: dict[str, Any] | None = None          # the descriptor, read before connecting

    # -- helpers -------------------------------------------------------------------------------
    def project_terms(self, project: int | None) -> dict[int, str]:
        if project is None:
            return {}
        if project not in self._project_terms:
            self._project_terms[project] = self.cytomine.project_terms(project)
            self.plan.term_names.update(self._project_terms[project])
        return self._project_terms[project]

    def names(self, terms: Iterable[int], project: int | None) -> list[str]:
        known = self.project_terms(project)
        return [known.get(t, self.plan.term_names.get(t, "")) for t in terms]

    def check_terms(self, terms: Iterable[int], project: int | None, option: str) -> None:
        """Every term must exist (and belong to the project's ontology when there is a project)."""
        known = self.project_terms(project) if project is not None else {}
        for term in terms:
            if project is not None and term in known:
                continue
            try:
                info = self.cytomine.term(term)
            except NotFound:
                raise CysegError(f"{option} {term}: no such term on {self.cytomine.host}; give a term id of the "
                                 "project's ontology") from None
            if project is not None:
                raise CysegError(f"{option} {term} ('{info['name']}') is not in the ontology of project {project}; "
                                 f"its terms are {_term_list(known)}")
            self.plan.term_names[int(term)] = str(info["name"])

    def check_project(self, project: int, option: str = "--project") -> dict[str, Any]:
        try:
            return self.cytomine.project(project)
        except NotFound:
            raise CysegError(f"{option} {project}: no such project on {self.cytomine.host} (or not visible to these "
                             "keys); check the project id") from None

    def check_user(self, user: int, option: str) -> None:
        try:
            self.cytomine.user(user)
        except NotFound:
            raise CysegError(f"{option} {user}: no such user on {self.cytomine.host}; check the user id") from None

    def project_images(self, project: int, wanted: Iterable[int], option: str) -> list[ImageInfo]:
        images = self.cytomine.project_images(project)
        wanted = list(dict.fromkeys(int(i) for i in wanted))
        missing = [i for i in wanted if i not in images]
        if missing:
            raise CysegError(f"{option} {missing[0]}: no such image in project {project} (it has {len(images)} "
                             f"image(s): {', '.join(str(i) for i in sorted(images)[:10])}"
                             f"{' ...' if len(images) > 10 else ''}); check the image id")
        chosen = [images[i] for i in wanted] if wanted else [images[i] for i in sorted(images)]
        self.plan.images.update({i.id: i for i in chosen})
        return chosen

    def add_centred(self, image: ImageInfo, annotation: int, terms: list[int], cx: float, cy: float) -> None:
        req = self.request
        foreground = list(req.foreground) or list(req.terms) or list(terms)
        if not foreground:
            self.plan.skip(f"annotation {annotation}", "it has no term to draw the mask from; give --foreground-term",
                           image=image.id, annotation=annotation)
            return
        box = centred_box(cx, cy, req.footprint, image)
        self.plan.crops.append(Crop(f"i{image.id}_a{annotation}", image.id, image.project, box, [annotation],
                                    list(terms), foreground, kind_of(self.names(terms, image.project))))

    # -- the three modes -----------------------------------------------------------------------
    def from_csv(self) -> Plan:
        req = self.request
        rows = self.rows if self.rows is not None else read_csv_rows(req.csv)
        if req.foreground:
            self.check_terms(req.foreground, None, "--foreground-term")
        images: dict[int, ImageInfo | None] = {}
        owned: dict[int, dict[int, tuple[int, ...]]] = {}   # image -> annotation -> terms
        seen: set[int] = set()
        for row in rows:
            where = f"CSV row {row['row']}"
            ident, image_id = _number(row["id"], True), _number(row["image"], True)
            x, y = _number(row["x"], False), _number(row["y"], False)
            bad = [(label, row[key]) for key, label, value in (("id", "Id", ident), ("image", "Image Id", image_id),
                                                                ("x", "X", x), ("y", "Y", y)) if value is None]
            if bad:
                self.plan.skip(where, f"{bad[0][0]} '{bad[0][1]}' is not a number")
                continue
            if ident in seen:
                self.plan.skip(where, f"annotation {ident} is listed twice (kept the first row)", annotation=ident)
                continue
            seen.add(ident)
            if image_id not in images:
                try:
                    images[image_id] = self.cytomine.image(image_id)
                except NotFound:
                    images[image_id] = None
            image = images[image_id]
            if image is None:
                self.plan.skip(f"annotation {ident}", f"image {image_id} not found on the server",
                               image=image_id, annotation=ident, row=row["row"])
                continue
            self.plan.images[image.id] = image
            cx, cy = self.cytomine.to_slide(Point(x, y), image).coords[0]
            if not (0 <= cx <= image.width and 0 <= cy <= image.height):
                self.plan.skip(f"annotation {ident}", f"its centroid ({x:g}, {y:g}) is outside the "
                               f"{image.width}x{image.height} image {image.id}", image=image.id, annotation=ident,
                               row=row["row"])
                continue
            if image.id not in owned:
                owned[image.id] = {a.id: a.terms for a in self.cytomine.annotations(image, geometry=False)}
            terms = owned[image.id].get(ident)
            if terms is None:  # not a human annotation of that image: ask for it directly
                try:
                    info = self.cytomine.annotation(ident)
                except NotFound:
                    self.plan.skip(f"annotation {ident}", "annotation not found on the server",
                                   image=image.id, annotation=ident, row=row["row"])
                    continue
                if info.image != image.id:
                    self.plan.skip(f"annotation {ident}", f"it is on image {info.image}, not on image {image.id}",
                                   image=image.id, annotation=ident, row=row["row"])
                    continue
                terms = info.terms
            self.add_centred(image, ident, list(terms), cx, cy)
        return self.plan

    def from_filters(self) -> Plan:
        req = self.request
        self.check_project(req.project)
        self.check_terms(req.terms, req.project, "--term")
        self.check_terms(req.foreground, req.project, "--foreground-term")
        if req.user is not None:
            self.check_user(req.user, "--user")
        for image in self.project_images(req.project, req.images, "--image"):
            for a in sorted(self.cytomine.annotations(image, project=req.project, terms=req.terms, user=req.user),
                            key=lambda a: a.id):
                point = None if a.geometry is None else centre(a.geometry, image)
                if point is None:
                    self.plan.skip(f"annotation {a.id}", f"it lies outside the {image.width}x{image.height} "
                                   f"image {image.id}", image=image.id, annotation=a.id)
                    continue
                self.add_centred(image, a.id, list(a.terms), *point)
        return self.plan

    def from_descriptor(self) -> Plan:
        req = self.request
        desc = self.descriptor if self.descriptor is not None else read_descriptor(req.descriptor)
        project, roi_term = desc["project"], desc["roi"]
        self.check_project(project, f"{req.descriptor}: \"project\"")
        self.check_terms([roi_term], project, f"{req.descriptor}: \"roi\"")
        foreground = list(req.foreground) or desc["foreground"]
        if not foreground:
            raise CysegError(f"{req.descriptor} has no \"foreground\" term(s) and no --foreground-term was given; "
                             "name the term(s) drawn in the masks")
        option = "--foreground-term" if req.foreground else f"{req.descriptor}: \"foreground\""
        self.check_terms(foreground, project, option)
        if desc["user"] is not None:
            self.check_user(desc["user"], f"{req.descriptor}: \"user\"")
        side = req.footprint
        for image in self.project_images(project, desc["images"], f"{req.descriptor}: \"images\""):
            rois = self.cytomine.annotations(image, project=project, terms=[roi_term], user=desc["user"])
            for roi in sorted(rois, key=lambda a: a.id):
                inside = None if roi.geometry is None else roi.geometry.intersection(image.slide_box())
                if inside is None or inside.is_empty or inside.area <= 0:
                    self.plan.skip(f"ROI {roi.id}", f"it lies outside the {image.width}x{image.height} image "
                                   f"{image.id}", image=image.id, annotation=roi.id)
                    continue
                x0, y0, x1, y1 = inside.bounds
                columns = span(x0, x1, side, image.width)
                rows = span(y0, y1, side, image.height)
                for r, (y, h) in enumerate(rows):
                    for c, (x, w) in enumerate(columns):
                        self.plan.crops.append(Crop(
                            f"i{image.id}_roi{roi.id}_r{r}c{c}", image.id, image.project, [x, y, w, h], [roi.id],
                            list(roi.terms), list(foreground), "roi", [x0, y0, x1, y1], [r, c]))
        return self.plan


def _term_list(terms: dict[int, str]) -> str:
    if not terms:
        return "none"
    return ", ".join(f"{t} ({n})" for t, n in sorted(terms.items())[:12]) + (" ..." if len(terms) > 12 else "")


def read_descriptor(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON descriptor, checked: project and roi (ids) required; images (list), user, foreground
    (id or list) optional."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise CysegError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the descriptor") from None
    if not isinstance(data, dict):
        raise CysegError(f"{path} must hold a JSON object with images, user, project, roi and foreground")

    def ident(key: str, required: bool) -> int | None:
        value = data.get(key)
        if value is None:
            if required:
                raise CysegError(f"{path} has no \"{key}\" (expected keys: images, user, project, roi, foreground)")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise CysegError(f"{path}: \"{key}\" must be an id (integer), got {value!r}")
        return int(value)

    def ids(key: str) -> list[int]:
        value = data.get(key)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        out = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip().isdigit():
                raise CysegError(f"{path}: \"{key}\" must be an id or a list of ids, got {value!r}")
            out.append(int(v))
        return out

    return {"project": ident("project", True), "roi": ident("roi", True), "user": ident("user", False),
            "images": ids("images"), "foreground": ids("foreground")}


# ---------------------------------------------------------------------------- the command -----
def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _parameters(request: Spec, server: str) -> dict[str, Any]:
    """What identifies a download: the same parameters continue the same .partial folder."""
    params: dict[str, Any] = {"version": PLAN_VERSION, "server": server, "mode": request.mode, "size": request.size,
                              "zoom": request.zoom, "foreground_terms": sorted(request.foreground)}
    if request.csv:
        params.update(input=Path(request.csv).name, input_sha256=file_digest(request.csv))
    elif request.descriptor:
        params.update(input=Path(request.descriptor).name, input_sha256=file_digest(request.descriptor))
    else:
        params.update(project=request.project, terms=sorted(request.terms), user=request.user,
                      images=sorted(request.images))
    return params


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def _check_partial(partial: Path, params: dict[str, Any]) -> bool:
    """True when `partial` holds an unfinished run of this very command (to continue); an error
    when it holds something else; False when there is none."""
    if not partial.exists():
        return False
    try:
        previous = json.loads((partial / MARK).read_text())
    except (OSError, json.JSONDecodeError):
        raise CysegError(f"{partial} exists but was not made by 'cydata download'; remove it or choose "
                         "another --out") from None
    if previous != params:
        changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
        raise CysegError(f"{partial} holds an unfinished download with other parameters ({', '.join(changed)} "
                         "differ); rerun that command to finish it, or remove the folder to start again")
    return True


def _create_partial(partial: Path, params: dict[str, Any], plan: Plan) -> None:
    try:
        (partial / "images").mkdir(parents=True)
        (partial / "masks").mkdir()
        (partial / ITEMS).mkdir()
    except OSError as exc:
        raise CysegError(f"cannot create {partial}: {exc.strerror or exc}; choose another --out") from None
    _write_json(partial / MARK, params)
    _write_json(partial / PLAN, plan.to_json())


def _done(partial: Path, stem: str) -> dict[str, Any] | None:
    """The finished item's metadata, or None when it must be (re)fetched."""
    meta_path = partial / ITEMS / f"{stem}.json"
    if not meta_path.is_file():
        return None
    if not (partial / "images" / f"{stem}.png").is_file() or not (partial / "masks" / f"{stem}.png").is_file():
        return None
    try:
        return json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fetch(cytomine: CytomineData, crop: Crop, image: ImageInfo, request: Spec, partial: Path,
           term_names: dict[int, str]) -> dict[str, Any]:
    """Download one crop and its mask's polygons, write the pair and then its item JSON."""
    rgb = cytomine.window(image, crop.box, request.zoom)
    polygons = cytomine.annotations(image, project=crop.project, terms=crop.foreground, bbox=crop.box)
    mask = rasterise([a.geometry for a in polygons], crop.box, rgb.shape[:2])
    for folder, array in (("images", rgb), ("masks", mask)):
        with atomic_path(partial / folder / f"{crop.stem}.png") as tmp:
            write_png(tmp, array)
    meta = {
        "kind": crop.kind, "slide": crop.image, "image_id": crop.image, "project": crop.project,
        "server": cytomine.server_id, "annotations": crop.annotations, "terms": crop.terms,
        "term_names": [term_names.get(t) for t in crop.terms],
        "foreground_terms": crop.foreground, "mask_annotations": sorted(a.id for a in polygons),
        "zoom": request.zoom, "crop": crop.box, "size": [int(rgb.shape[1]), int(rgb.shape[0])],
    }
    if crop.roi is not None:
        meta.update(roi=[round(v, 3) for v in crop.roi], tile=crop.tile)
    _write_json(partial / ITEMS / f"{crop.stem}.json", meta)
    return meta


def download(request: Spec, out: str | os.PathLike, *, workers: int = 4, retries: int = 4,
             config: str | os.PathLike | None = None, insecure: bool = False, timeout: float = 60.0,
             progress: bool | None = None, api: str | None = None) -> Path:
    """Build the dataset `out` from Cytomine; returns its path. See the module docstring."""
    out = Path(out)
    _check_request(request, out, workers)
    partial = partial_path(out)
    # what can be checked without the server is checked first
    rows = read_csv_rows(request.csv) if request.csv else None
    descriptor = read_descriptor(request.descriptor) if request.descriptor else None
    with CytomineData.connect(config, insecure=insecure, timeout=timeout, retries=retries, api=api) as cytomine:
        params = _parameters(request, cytomine.server_id)
        plan = _continued_plan(partial, params)
        if plan is None:
            plan = _new_plan(cytomine, request, rows, descriptor, partial, params)
        finished, failures = _fetch_all(cytomine, plan, request, partial, workers, progress)
    report_skipped(plan.skipped, "item", log)
    if failures:
        _report_failures(failures, plan, finished, partial)
    _publish(partial, out, params, plan, finished)
    log.info("downloaded %d crop(s) into %s%s", len(plan.crops), out,
             f" ({len(plan.skipped)} skipped, listed in dataset.json)" if plan.skipped else "")
    return out


def _check_request(request: Spec, out: Path, workers: int) -> None:
    """The options that need no server: size, zoom, workers and a new output folder."""
    if request.size < 1:
        raise CysegError(f"--size {request.size} must be at least 1 pixel")
    if not 0 <= request.zoom <= 16:
        raise CysegError(f"--zoom {request.zoom} must be between 0 (full resolution) and 16")
    if workers < 1:
        raise CysegError(f"--workers {workers} must be at least 1")
    if out.exists():
        raise CysegError(f"output folder {out} already exists; choose a new --out or remove it")


def _continued_plan(partial: Path, params: dict[str, Any]) -> Plan | None:
    """The plan of an unfinished run of this very command, or None when there is none to continue."""
    plan_path = partial / PLAN
    if not (_check_partial(partial, params) and plan_path.is_file()):
        return None
    try:
        plan = Plan.from_json(json.loads(plan_path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CysegError(f"{plan_path} is damaged ({type(exc).__name__}); remove {partial} and "
                         "start again") from None
    log.info("continuing %s: %d crop(s) planned", partial, len(plan.crops))
    return plan


def _new_plan(cytomine: CytomineData, request: Spec, rows: list[dict[str, Any]] | None,
              descriptor: dict[str, Any] | None, partial: Path, params: dict[str, Any]) -> Plan:
    """Plan the crops with the server, then save the plan in `partial`. Nothing is written before
    the plan is made: a wrong id leaves no folder behind."""
    planner = Planner(cytomine, request)
    planner.rows, planner.descriptor = rows, descriptor
    plan = {"csv": planner.from_csv, "json": planner.from_descriptor, "filters": planner.from_filters}[request.mode]()
    if not plan.crops:
        report_skipped(plan.skipped, "item", log)
        first = f" (first: {plan.skipped[0]['what']}: {plan.skipped[0]['reason']})" if plan.skipped else ""
        raise CysegError(f"nothing to download: no annotation matched, or all {len(plan.skipped)} were "
                         f"skipped{first}; check the ids and terms")
    if partial.exists():  # ours, interrupted before its plan was saved
        _write_json(partial / PLAN, plan.to_json())
    else:
        _create_partial(partial, params, plan)
    return plan


def _fetch_all(cytomine: CytomineData, plan: Plan, request: Spec, partial: Path, workers: int,
               progress: bool | None) -> tuple[dict[str, dict[str, Any]], list[tuple[Crop, str]]]:
    """Fetch the crops not done yet, in parallel threads; returns every finished item's metadata
    and the crops that failed after the retries, with why."""
    finished: dict[str, dict[str, Any]] = {}
    todo: list[Crop] = []
    for crop in plan.crops:
        meta = _done(partial, crop.stem)
        if meta is not None:
            finished[crop.stem] = meta
        else:
            todo.append(crop)
    if finished:
        log.info("%d item(s) already downloaded in %s; fetching the %d left", len(finished), partial, len(todo))
    failures: list[tuple[Crop, str]] = []
    with tqdm(total=len(todo), desc="download", unit="crop", disable=None if progress is None else not progress) \
            as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_fetch, cytomine, crop, plan.images[crop.image], request, partial, plan.term_names):
                   crop for crop in todo}
        try:
            for future in as_completed(futures):
                crop = futures[future]
                try:
                    finished[crop.stem] = future.result()
                except CysegError as exc:
                    failures.append((crop, str(exc)))
                bar.update()
        except BaseException:  # Ctrl-C: stop queued crops; finished ones stay for the next run
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return finished, failures


def _report_failures(failures: list[tuple[Crop, str]], plan: Plan, finished: dict[str, Any], partial: Path) -> None:
    """Log each failed crop and raise the one-line error that says how to finish."""
    failures.sort(key=lambda f: f[0].stem)
    for crop, reason in failures[:SKIPPED_SHOWN]:
        log.error("  failed: %s (image %s, annotation %s): %s", crop.stem, crop.image,
                  ",".join(map(str, crop.annotations)), reason)
    raise CysegError(f"{len(failures)} of {len(plan.crops)} crop(s) failed after the retries (first: "
                     f"{failures[0][0].stem}: {failures[0][1]}); the {len(finished)} done are kept in {partial}: "
                     "rerun the same command to fetch the rest")


def _publish(partial: Path, out: Path, params: dict[str, Any], plan: Plan, finished: dict[str, Any]) -> None:
    """Write dataset.json and rename `partial` to `out`; the bookkeeping goes only after the
    rename, so that an interruption before it can still resume."""
    manifest = {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"cytomine": {k: v for k, v in params.items() if k != "version"}},
        "parent": None,
        "iteration": None,
        "items": {crop.stem: finished[crop.stem] for crop in plan.crops},
        "skipped": plan.skipped,
    }
    _write_json(partial / "dataset.json", manifest)
    try:
        os.replace(partial, out)
    except OSError as exc:
        raise CysegError(f"cannot rename {partial} to {out}: {exc.strerror or exc}; rename it by hand") from None
    shutil.rmtree(out / ITEMS, ignore_errors=True)
    for name in (PLAN, MARK):
        (out / name).unlink(missing_ok=True)
