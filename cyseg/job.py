"""Command-line glue of the Cytomine commands: `cyseg segment --cytomine-image` and `cyseg job`,
the entry point of the legacy Cytomine software (descriptor.json).

Every request goes through `segmenter.cytomine` (the connection, the slide reader, the uploader
and the job protocol in `segmenter.cytomine.jobs`); this module turns the settings into runs of
the whole-slide engine, one image (or ROI window) at a time, and composes the outcome: progress
updates as windows and images finish, SUCCESS with a summary, or FAILED with the one-line error
(keys removed) and exit status 2. A job's own log (INFO and above; keys, host string and
server address removed) is written to its work folder and attached to the job at the end,
success or failure.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from segmenter.cytomine.connection import Connection
from segmenter.cytomine.credentials import Credentials, credentials, safe_host
from segmenter.cytomine.jobs import (
    FAILED,
    RUNNING,
    SUCCESS,
    JobReporter,
    attach_log,
    find_or_create_job,
    project_images,
    redact,
    roi_windows,
    save_job_parameters,
)
from segmenter.cytomine.reader import CytomineSlideReader
from segmenter.cytomine.upload import UploadResult, check_term
from segmenter.errors import CysegError, one_line

if TYPE_CHECKING:
    from segmenter.base import Segmenter
    from segmenter.wsi.windows import WsiOptions

log = logging.getLogger(__name__)

SEGMENT_SHARE = 0.9  # of an image's progress slot; the upload gets the rest
# words of the descriptor's command-line that reach `cyseg job` as positionals and are ignored:
# the entry point itself and placeholders the server left (optional inputs without a value)
IGNORED_WORDS = {"cyseg", "job", "python", "python3", "run.py", "/app/run.py", ""}
PLACEHOLDER = re.compile(r"^\[?[A-Z][A-Z0-9_]*\]?$")


# ---------------------------------------------------------------------------- helpers ----------
def ignored_positionals(words: tuple[str, ...]) -> list[str]:
    """Check the stray positional words of `cyseg job`; CysegError for anything unexpected."""
    unexpected = [w for w in words if w not in IGNORED_WORDS and not PLACEHOLDER.match(w)]
    if unexpected:
        raise CysegError(f"unexpected argument {unexpected[0]!r}: cyseg job takes only --flags (see cyseg job --help)")
    return [w for w in words if w]


def parse_ids(text: str | None, what: str) -> list[int]:
    """'12,34' (a ListDomain value) -> [12, 34]; empty, 'all' or None -> []."""
    if text is None or not str(text).strip() or str(text).strip().lower() in ("all", "null", "none"):
        return []
    out = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        try:
            out.append(int(float(part)))
        except ValueError:
            raise CysegError(f"{what} {text!r} must be comma-separated ids, e.g. 12,34") from None
    return out


def resolve_job_model(value: str | None) -> Path:
    """'default' (or nothing): $CYSEG_MODEL if set, else the model shipped with cyseg; else a path."""
    from cyseg.models import resolve_model

    if not value or value == "default":
        value = os.environ.get("CYSEG_MODEL") or "default"
    path = resolve_model(value)
    if not Path(path).is_file():
        raise CysegError(f"model {path} does not exist; give --model_path FILE (a cyseg .pt model)")
    return Path(path)


class ProgressRunner:
    """Wraps a window runner to report each finished window (the engine stays unaware)."""

    def __init__(self, inner: Any, on_window: Callable[[int, int], None]):
        self.inner = inner
        self.on_window = on_window

    def run(self, tasks: list[Any], *args: Any) -> Iterator[Any]:
        total = len(tasks)
        for done, result in enumerate(self.inner.run(tasks, *args), 1):
            self.on_window(done, total)
            yield result

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------- one image ---------
def read_class_polygons(path: Path) -> dict[str, list[Any]]:
    """{class: polygons} of a GeoJSON output: each feature under its classification, and the nucleus
    of each cell object (`nucleusGeometry`) under `nucleus`."""
    from shapely.geometry import shape

    by_class: dict[str, list[Any]] = {}
    for feature in json.loads(path.read_text())["features"]:
        name = ((feature.get("properties") or {}).get("classification") or {}).get("name", "cell")
        by_class.setdefault(name, []).append(shape(feature["geometry"]))
        if feature.get("nucleusGeometry"):
            by_class.setdefault("nucleus", []).append(shape(feature["nucleusGeometry"]))
    return by_class


def parse_terms(values: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    """--term values -> {class: term id}: a bare ID for a model of one class, CLASS=ID per class
    otherwise; a CysegError naming the fix for anything else."""
    example = " ".join(f"--term {name}=ID" for name in labels)
    terms: dict[str, int] = {}
    for value in values:
        name, _, ident = value.rpartition("=")
        if not name:
            if len(labels) != 1:
                raise CysegError(f"--term {value}: the model finds {', '.join(labels)}; give one term per class: "
                                 f"{example}")
            name = labels[0]
        if name not in labels:
            raise CysegError(f"--term {value}: the model finds no class {name!r}; its classes are {', '.join(labels)}")
        if not ident.isdigit():
            raise CysegError(f"--term {value}: the term must be a Cytomine term id (an integer), e.g. {example}")
        if name in terms:
            raise CysegError(f"--term gives class {name!r} twice; give one term per class")
        terms[name] = int(ident)
    return terms


def segment_image(seg: Segmenter, model_path: Path, reader: CytomineSlideReader, out: Path, opts: WsiOptions,
                  runner: Any, windows: list[tuple[str, str | None]], cache_root: Path | None,
                  mask_out: Path | None = None, on_progress: Callable[[float, str], None] | None = None,
                  progress_bar: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """Segment the image, or each (name, 'x,y,w,h') window of it, with the whole-slide engine;
    returns the GeoJSON holding all polygons (windows combined, a polygon kept once: by the first
    window that contains its centroid) and the engine's summaries."""
    from segmenter.polygons import write_geojson
    from segmenter.wsi.segment import segment_slide

    summaries = []
    outputs = []
    for k, (name, region) in enumerate(windows):
        target = out if len(windows) == 1 else out.with_name(f"{out.stem}-{name}.geojson")

        def on_window(done: int, total: int, k: int = k, name: str = name) -> None:
            if on_progress is not None:
                where = f", {name}" if len(windows) > 1 else ""
                on_progress((k + done / max(total, 1)) / len(windows), f"window {done}/{total}{where}")

        wrapped = ProgressRunner(runner, on_window)
        summaries.append(segment_slide(seg, model_path, reader, target, opts, wrapped, region, cache_root,
                                       mask_out if len(windows) == 1 else None, progress=progress_bar))
        outputs.append(target)
        if on_progress is not None:
            on_progress((k + 1) / len(windows), f"{name} done" if len(windows) > 1 else "segmented")
    if len(windows) == 1:
        return out, summaries
    # several ROI windows: one combined GeoJSON, overlaps counted once
    from shapely.geometry import box, shape

    features, seen = [], []
    for (name, region), path in zip(windows, outputs, strict=True):
        x, y, w, h = (int(v) for v in region.split(","))
        collection = json.loads(path.read_text())
        for feature in collection["features"]:
            centre = shape(feature["geometry"]).representative_point()
            if any(b.contains(centre) for b in seen):
                continue
            feature["properties"]["window"] = name
            features.append(feature)
        seen.append(box(x, y, x + w, y + h))
    combined = {"type": "FeatureCollection", "features": features,
                "properties": {"slide": reader.describe(), "windows": [{"name": n, "region": r} for n, r in windows],
                               "summaries": summaries, "coordinates": "level-0 pixels, top-left origin"}}
    write_geojson(out, combined)
    return out, summaries


def upload_output(connection: Connection, reader: CytomineSlideReader, geojson: Path, terms: Mapping[str, int],
                  batch_size: int, on_progress: Callable[[int, int], None] | None = None) -> list[UploadResult]:
    """Upload the polygons of `geojson` as annotations of the reader's image, each class with its
    term (`terms`; none for a class without one), journalled beside the output (one journal per
    class when it holds several)."""
    from segmenter.cytomine.upload import Uploader, journal_path

    by_class = read_class_polygons(geojson) or {next(iter(terms), "cell"): []}
    results = []
    for name, polygons in by_class.items():
        journal = journal_path(geojson if len(by_class) == 1 else geojson.with_name(f"{geojson.stem}-{name}.geojson"))
        uploader = Uploader(connection, reader.image_id, reader.project, reader.height, term=terms.get(name),
                            batch_size=batch_size, journal=journal, progress=on_progress)
        results.append(uploader.upload(polygons, reader.width))
        log.info("%s%s", f"{name}: " if len(by_class) > 1 else "", results[-1].summary())
    return results


def run_segment_cytomine(seg: Segmenter, model_path: Path, image_id: int, out: Path | None, window: str | None,
                         opts: dict[str, Any], mpp: float | None, magnification: float | None, workers: int,
                         scheduler: str | None, device: str, cache: Path | None, mask_out: Path | None,
                         upload: bool, terms: Sequence[str], config: Path | None, insecure: bool, timeout: float,
                         upload_batch: int, progress: bool = True, api: str | None = None,
                         allow_mismatch: bool = False) -> tuple[dict[str, Any], list[UploadResult]]:
    """`cyseg segment MODEL --cytomine-image ID [--upload --term T]`: one image, in-process or on
    Dask, from a server of generation `api` (default: found when connecting); `terms`: the --term
    values (`parse_terms`)."""
    from cyseg.slide_cmd import check_slide, resolution
    from segmenter.wsi.scaleout import make_runner
    from segmenter.wsi.windows import WsiOptions
    from unet import load_segmenter

    term_ids = parse_terms(terms, seg.labels)
    connection = Connection(credentials(config=config, verify=not insecure, timeout=timeout, api=api))
    reader = CytomineSlideReader(image_id, connection)
    if upload:
        for term in term_ids.values():
            check_term(connection, term, reader.project)
    target = out or Path(f"cytomine-{image_id}.geojson")
    if target.is_dir():
        target = target / f"cytomine-{image_id}.geojson"
    options = WsiOptions(downsample=resolution(reader, mpp, magnification), **opts)
    check_slide(seg, reader, options.downsample, allow_mismatch)
    cache_root = cache if cache is not None else target.parent / ".cyseg-cache"
    runner = make_runner(seg, load_segmenter, workers, scheduler, None if device == "auto" else device)
    try:
        geojson, summaries = segment_image(seg, model_path, reader, target, options, runner, [("image", window)],
                                           cache_root, mask_out, progress_bar=progress)
    finally:
        runner.close()
    results = upload_output(connection, reader, geojson, term_ids, upload_batch) if upload else []
    return summaries[0], results


# ---------------------------------------------------------------------------- the job ----------
@dataclass
class JobSettings:
    host: str | None = field(repr=False)
    public_key: str | None = field(repr=False)
    private_key: str | None = field(repr=False)
    project: int
    software: int | None
    images: list[int]
    roi_term: int | None
    predicted_term: int | None
    model: str | None
    threshold: float | None
    tile: int
    overlap: int
    batch: int
    min_area: float | None
    window_size: int
    config: Path | None = None
    insecure: bool = False
    work_dir: Path | None = None
    device: str = "auto"
    timeout: float = 60.0
    upload_batch: int = 100
    tta: bool = False
    api: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def run_job(settings: JobSettings, progress_bar: bool = False) -> str:
    """Run the Cytomine job end to end; returns the final status comment. Raises CysegError
    (already reported to the job as FAILED when a job exists) on failure; the job needs the
    legacy core's job API, so another generation stops here with one line naming it."""
    creds = credentials(settings.host, settings.public_key, settings.private_key, settings.config,
                        verify=not settings.insecure, timeout=settings.timeout, api=settings.api)
    secrets = _secrets(creds)
    connection = Connection(creds)
    try:
        job, job_keys = find_or_create_job(connection, settings.project, settings.software)
    except CysegError as exc:
        raise CysegError(redact(one_line(exc), secrets)) from None
    secrets += job_keys
    reporter = JobReporter(connection, job, secrets)
    work = settings.work_dir or Path(os.environ.get("CYSEG_WORK_DIR") or Path.home() / f"cyseg-job-{reporter.id}")
    work.mkdir(parents=True, exist_ok=True)
    with job_log(work / f"cyseg-job-{reporter.id}.log", [*secrets, _address(creds)]) as handler:
        try:
            return _reported_run(connection, settings, reporter, work, bool(job_keys), handler, progress_bar)
        finally:
            attach_log(connection, reporter.id, Path(handler.baseFilename))


def _secrets(creds: Credentials) -> list[str | None]:
    """What no message, log or file may hold: the keys, and the host string when it differs from
    its shown form (it may hold a user name and password)."""
    host = creds.host if creds.host.rstrip("/") != safe_host(creds.host) else None
    return [creds.public_key, creds.private_key, host]


def _address(creds: Credentials) -> str:
    """The server's name and port, which the job's log file leaves out like every output file."""
    return urlsplit(safe_host(creds.host)).netloc


def _reported_run(connection: Connection, settings: JobSettings, reporter: JobReporter, work: Path, created: bool,
                  handler: logging.Handler, progress_bar: bool) -> str:
    """The job's work with its status reported: RUNNING, then SUCCESS with the summary, or FAILED
    with the one-line error (also written to the job's log)."""
    try:
        reporter.update(RUNNING, 0, "Initialization...", force=True)
        if created and settings.software is not None:
            save_job_parameters(connection, reporter.job, settings.software, settings.raw)
        comment = _run(connection, settings, reporter, work, progress_bar)
        reporter.update(SUCCESS, 100, comment, force=True)
        log.info("job %d: %s", reporter.id, comment)
        return comment
    except (Exception, KeyboardInterrupt) as exc:
        message = redact(one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted", reporter.secrets)
        if not isinstance(exc, CysegError):
            message = f"{type(exc).__name__}: {message}" if message != type(exc).__name__ else message
            log.debug("job failure", exc_info=True)
        handler.handle(logging.makeLogRecord({"name": log.name, "levelno": logging.ERROR, "levelname": "ERROR",
                                              "msg": "job %d failed: %s", "args": (reporter.id, message)}))
        reporter.update(FAILED, None, message, force=True)
        raise CysegError(message) from None


@contextlib.contextmanager
def job_log(path: Path, secrets: list[str | None]) -> Iterator[logging.FileHandler]:
    """Write every log record of INFO and above to `path` while the job runs (whatever the
    console's verbosity), with the secrets (keys, host string, server address) removed."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(_Redacting(secrets))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


class _Redacting(logging.Formatter):
    """`time level name: message`, with every secret replaced by ***."""

    def __init__(self, secrets: list[str | None]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def job_wsi_options(s: JobSettings) -> WsiOptions:
    """The slide engine's options for a job: its tiling, threshold and TTA, windows overlapping by
    a quarter (at most 256 px), polygons simplified by half a pixel."""
    from segmenter.wsi.windows import WsiOptions

    return WsiOptions(tile=s.tile, overlap=s.overlap, batch=s.batch, tta=s.tta, window_size=s.window_size,
                      window_overlap=min(256, s.window_size // 4), threshold=s.threshold, simplify=0.5,
                      min_area=s.min_area)


@dataclass
class JobRun:
    """What every image of a job is segmented with, and where the outputs go."""

    connection: Connection
    settings: JobSettings
    reporter: JobReporter
    seg: Segmenter
    model_path: Path
    opts: WsiOptions
    work: Path
    runner: Any
    progress_bar: bool


def _run(connection: Connection, s: JobSettings, reporter: JobReporter, work: Path, progress_bar: bool) -> str:
    """Check the job's inputs, segment and upload every image, and return the final comment."""
    images = project_images(connection, s.project, s.images)
    for term in (s.predicted_term, s.roi_term):
        if term is not None:
            check_term(connection, term, s.project)
    run = _prepare(connection, s, reporter, work, progress_bar)
    if not images:
        return f"Finished: project {s.project} has no images; 0 annotations uploaded."
    uploads: list[UploadResult] = []
    skipped_rois = 0
    for index, info in enumerate(images):
        result = _run_image(run, int(info["id"]), index, len(images))
        if result is None:
            skipped_rois += 1
        else:
            uploads.append(result)
    return _final_comment(uploads, skipped_rois)


def _prepare(connection: Connection, s: JobSettings, reporter: JobReporter, work: Path, progress_bar: bool) -> JobRun:
    """Load the model once; the work folder holds outputs, window cache and upload journals."""
    from segmenter.allocator import freeze_loaded_objects
    from segmenter.wsi.scaleout import InProcess
    from unet import load_segmenter

    model_path = resolve_job_model(s.model)
    seg = load_segmenter(model_path, device=None if s.device == "auto" else s.device)
    seg.require_one_class(f"the Cytomine job (model {model_path})")
    freeze_loaded_objects()
    log.info("job %d: model %s, work folder %s", reporter.id, model_path.name, work)
    return JobRun(connection, s, reporter, seg, model_path, job_wsi_options(s), work, InProcess(seg), progress_bar)


def _run_image(run: JobRun, image_id: int, index: int, n: int) -> UploadResult | None:
    """Segment one image (or its ROI windows) and upload the cells; None when it has no ROI."""
    from cyseg.slide_cmd import check_slide

    s, reporter = run.settings, run.reporter
    reader = CytomineSlideReader(image_id, run.connection)
    check_slide(run.seg, reader, run.opts.downsample, allow_mismatch=False)
    label = f"image {image_id} ({index + 1}/{n})"
    windows: list[tuple[str, str | None]] = [("image", None)]
    if s.roi_term is not None:
        rois = roi_windows(run.connection, image_id, reader.width, reader.height, s.project, s.roi_term)
        if not rois:
            reporter.update(RUNNING, 100 * (index + 1) / n, f"{label}: no ROI of term {s.roi_term}; skipped")
            return None
        windows = [(f"roi{ident}", region) for ident, region in rois]

    def seg_progress(fraction: float, what: str) -> None:
        reporter.update(RUNNING, 100 * (index + SEGMENT_SHARE * fraction) / n, f"Segmenting {label}: {what}")

    def up_progress(done: int, total: int) -> None:
        share = SEGMENT_SHARE + (1 - SEGMENT_SHARE) * done / max(total, 1)
        reporter.update(RUNNING, 100 * (index + share) / n, f"Uploading {label}: {done}/{total} annotations")

    reporter.update(RUNNING, 100 * index / n, f"Segmenting {label}", force=True)
    geojson, _ = segment_image(run.seg, run.model_path, reader, run.work / f"image-{image_id}.geojson", run.opts,
                               run.runner, windows, run.work / ".cyseg-cache", on_progress=seg_progress,
                               progress_bar=run.progress_bar)
    terms = {} if s.predicted_term is None else {run.seg.labels[0]: s.predicted_term}
    result, = upload_output(run.connection, reader, geojson, terms, s.upload_batch, up_progress)
    if not result.complete:
        raise CysegError(f"{result.summary()}; rerun the job with the same work folder to resume")
    return result


def _final_comment(uploads: list[UploadResult], skipped_rois: int) -> str:
    """The job's closing status comment: annotations on the server, images done, ROIs skipped."""
    done = len(uploads)
    uploaded = sum(u.uploaded for u in uploads)
    on_server = sum(u.on_server for u in uploads)
    note = f" ({skipped_rois} without ROI skipped)" if skipped_rois else ""
    if on_server == 0:
        return f"Finished: 0 annotations (no cells found) on {done} image{'s' if done != 1 else ''}{note}."
    return (f"Finished: {on_server} annotations uploaded on {done} image{'s' if done != 1 else ''}{note}"
            + (f" ({on_server - uploaded} from an earlier run)." if on_server != uploaded else "."))
