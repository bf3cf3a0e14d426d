"""Cytomine side of whole-slide segmentation: `cyseg segment --cytomine-image` and `cyseg job`,
the entry point of the Cytomine software (descriptor.json).

cytomine-python-client 4.x has no CytomineJob, so the job protocol is ours, over plain REST
(reference/cytomine-apps.md §4): find the job (algo user launched from the UI: `current_user.job`)
or create one (human user: `POST /api/job.json`, then work with the job user's keys so the
annotations land in the job's layer, and save the job parameters); then `PUT /api/job/<id>.json`
with status RUNNING (2) and progress 0, progress updates every 5 % as windows and images finish,
SUCCESS (3) with progress 100 at the end, or FAILED (4) with the one-line error (<= 255 chars,
keys removed) and exit status 2.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segmenter.cytomine.geometry import flip_y
from segmenter.cytomine.reader import (
    CytomineSlideReader,
    HttpStatusError,
    get_json,
    server_message,
)
from segmenter.errors import CysegError, one_line

if TYPE_CHECKING:
    from segmenter.base import Segmenter
    from segmenter.wsi.windows import WsiOptions

log = logging.getLogger(__name__)

STATUS = {"NOT_LAUNCH": 0, "INQUEUE": 1, "RUNNING": 2, "SUCCESS": 3, "FAILED": 4, "INDETERMINATE": 5, "WAIT": 6,
          "PREVIEW_DONE": 7, "KILLED": 8}
RUNNING, SUCCESS, FAILED = STATUS["RUNNING"], STATUS["SUCCESS"], STATUS["FAILED"]
COMMENT_MAX = 255
PROGRESS_STEP = 5  # percent between progress updates
SEGMENT_SHARE = 0.9  # of an image's progress slot; the upload gets the rest
# words of the descriptor's command-line that reach `cyseg job` as positionals and are ignored:
# the entry point itself and placeholders the server left (optional inputs without a value)
IGNORED_WORDS = {"cyseg", "job", "python", "python3", "run.py", "/app/run.py", ""}
PLACEHOLDER = re.compile(r"^\[?[A-Z][A-Z0-9_]*\]?$")


# ---------------------------------------------------------------------------- helpers ----------
def redact(text: str, secrets: list[str | None]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


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


def parse_id(text: str | None, what: str) -> int | None:
    ids = parse_ids(text, what)
    if len(ids) > 1:
        raise CysegError(f"{what} {text!r} must be a single id")
    return ids[0] if ids else None


def warn_insecure() -> None:
    """One warning for --insecure (instead of urllib3's warning on every request)."""
    import urllib3

    log.warning("HTTPS certificate verification is OFF (--insecure): the connection can be intercepted")
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


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
@dataclass
class ImageOutcome:
    image: int
    polygons: int
    windows: int
    upload: Any = None  # UploadResult
    outputs: list[str] = field(default_factory=list)


def read_polygons(path: Path) -> list[Any]:
    from shapely.geometry import shape

    return [shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]


def roi_windows(client: Any, reader: CytomineSlideReader, project: int | None, term: int) -> list[tuple[int, str]]:
    """(annotation id, 'x,y,w,h') of each ROI annotation of `term` on the image: its bounding box
    in level-0 pixels (top-left), clipped to the image; ROIs outside the image are skipped."""
    from shapely import wkt as shapely_wkt
    from shapely.geometry import box

    params: dict[str, Any] = {"image": reader.image_id, "term": term, "showWKT": "true", "showTerm": "true",
                              "showBasic": "true", "max": 0, "offset": 0}
    if project is not None:
        params["project"] = project
    listing = get_json(client, "annotation.json", params, f"listing the ROI annotations of image {reader.image_id}")
    out = []
    frame = box(0, 0, reader.width, reader.height)
    for row in sorted(listing.get("collection", []), key=lambda r: r.get("id", 0)):
        try:
            geometry = flip_y(shapely_wkt.loads(row["location"]), reader.height)
        except Exception:  # noqa: BLE001
            log.warning("image %d: ROI annotation %s has no readable geometry; skipped", reader.image_id, row.get("id"))
            continue
        clipped = geometry.envelope.intersection(frame)
        if clipped.is_empty or clipped.area == 0:
            log.warning("image %d: ROI annotation %s lies outside the image; skipped", reader.image_id, row.get("id"))
            continue
        x0, y0, x1, y1 = clipped.bounds
        x0, y0, x1, y1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        out.append((int(row.get("id", 0)), f"{x0},{y0},{x1 - x0},{y1 - y0}"))
    return out


def segment_image(seg: "Segmenter", model_path: Path, reader: CytomineSlideReader, out: Path, opts: "WsiOptions",
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


def upload_output(client: Any, reader: CytomineSlideReader, geojson: Path, term: int | None, batch_size: int,
                  on_progress: Callable[[int, int], None] | None = None) -> Any:
    """Upload the polygons of `geojson` as annotations of the reader's image (journal beside it)."""
    from segmenter.cytomine.upload import Uploader, journal_path

    uploader = Uploader(client, reader.image_id, reader.project, reader.height, term=term, batch_size=batch_size,
                        journal=journal_path(geojson), host=reader.source.host, progress=on_progress)
    result = uploader.upload(read_polygons(geojson), reader.width)
    log.info("%s", result.summary())
    return result


def run_segment_cytomine(seg: "Segmenter", model_path: Path, image_id: int, out: Path | None, window: str | None,
                         opts: dict[str, Any], mpp: float | None, magnification: float | None, workers: int,
                         scheduler: str | None, device: str, cache: Path | None, mask_out: Path | None,
                         upload: bool, term: int | None, config: Path | None, insecure: bool, timeout: float,
                         upload_batch: int, progress: bool = True) -> tuple[dict[str, Any], Any]:
    """`cyseg segment MODEL --cytomine-image ID [--upload --term T]`: one image, in-process or on Dask."""
    from cyseg.slide_cmd import resolution
    from segmenter.cytomine.connection import connect, credentials
    from segmenter.cytomine.reader import open_cytomine_image
    from segmenter.cytomine.upload import check_term
    from segmenter.wsi.scaleout import make_runner
    from segmenter.wsi.windows import WsiOptions
    from unet import load_segmenter

    if insecure:
        warn_insecure()
    creds = credentials(config=config)
    client = connect(creds, timeout=timeout, verify=not insecure)
    reader = open_cytomine_image(image_id, config=config, verify=not insecure, timeout=timeout, client=client,
                                 host=creds.host, public_key=creds.public_key, private_key=creds.private_key)
    if upload and term is not None:
        check_term(client, term, reader.project)
    target = out or Path(f"cytomine-{image_id}.geojson")
    if target.is_dir():
        target = target / f"cytomine-{image_id}.geojson"
    options = WsiOptions(downsample=resolution(reader, mpp, magnification), **opts)
    cache_root = cache if cache is not None else target.parent / ".cyseg-cache"
    runner = make_runner(seg, load_segmenter, workers, scheduler, None if device == "auto" else device)
    try:
        geojson, summaries = segment_image(seg, model_path, reader, target, options, runner, [("image", window)],
                                           cache_root, mask_out, progress_bar=progress)
    finally:
        runner.close()
    result = upload_output(client, reader, geojson, term, upload_batch) if upload else None
    return summaries[0], result


# ---------------------------------------------------------------------------- the job ----------
class JobReporter:
    """Status, progress and comment of one Cytomine job (`PUT /api/job/<id>.json` with the job's
    JSON), progress throttled to PROGRESS_STEP %; a failed update is logged, never fatal."""

    def __init__(self, client: Any, job: dict[str, Any], secrets: list[str | None]):
        self.client = client
        self.job = dict(job)
        self.secrets = secrets
        self.last_progress = -100
        self.last_status: int | None = None

    @property
    def id(self) -> int:
        return int(self.job["id"])

    def update(self, status: int | None = None, progress: float | None = None, comment: str | None = None,
               force: bool = False) -> None:
        status = RUNNING if status is None else status
        pct = None if progress is None else max(0, min(100, int(progress)))
        if not force and status == self.last_status and (pct is None or pct - self.last_progress < PROGRESS_STEP):
            return
        body = {k: v for k, v in self.job.items() if k != "jobParameters"}
        body["status"] = status
        if pct is not None:
            body["progress"] = pct
        if comment is not None:
            body["statusComment"] = redact(comment, self.secrets)[:COMMENT_MAX]
        for attempt in range(3):
            try:
                response = self.client._put(f"job/{self.id}.json", json.dumps(body))
                response.content  # noqa: B018
            except Exception as exc:  # noqa: BLE001  (status reporting must not kill the job)
                problem = type(exc).__name__
            else:
                if response.status_code == 200:
                    try:
                        self.job.update(response.json().get("job") or {})
                    except (ValueError, AttributeError):
                        pass
                    self.last_status = status
                    if pct is not None:
                        self.last_progress = pct
                    return
                problem = server_message(response)
                if response.status_code < 500:
                    break
            time.sleep(0.5 * 2 ** attempt)
        log.warning("job %d: status update not recorded by Cytomine (%s)", self.id, problem)


def find_or_create_job(client: Any, project: int, software: int | None) -> tuple[dict[str, Any], list[str]]:
    """The job to report to: the current algo user's job, else a new job of `software` in
    `project` whose user's keys the client switches to. Returns the job JSON and the job user's
    keys (to keep out of messages)."""
    user = client.current_user
    job_id = getattr(user, "job", None)
    if job_id:
        job = get_json(client, f"job/{int(job_id)}.json", None, f"Cytomine job {job_id}")
        return job, []
    if software is None:
        raise CysegError("--cytomine_id_software is required to create a job (the keys are a human user's)")
    response = client._post("job.json", json.dumps({"project": project, "software": software}))
    if response.status_code != 200:
        raise CysegError(f"Cytomine refused to create a job of software {software} in project {project} "
                         f"({server_message(response)}); check both ids")
    body = response.json()
    job = body.get("job") or body.get("data") or {}
    user_job = job.get("userJob")
    if not job.get("id") or not user_job:
        raise CysegError("Cytomine created a job without a job user; cannot run as that job")
    keys = get_json(client, f"user/{int(user_job)}.json", None, f"the user of job {job['id']}")
    public, private = keys.get("publicKey"), keys.get("privateKey")
    if not public or not private:
        raise CysegError(f"Cytomine did not give the keys of job {job['id']}'s user; cannot run as that job")
    client.set_credentials(public, private)
    if not client.current_user:
        raise CysegError(f"Cytomine refused the keys of job {job['id']}'s user")
    log.info("created job %s (software %s, project %s)", job["id"], software, project)
    return job, [public, private]


def save_job_parameters(client: Any, job: dict[str, Any], software: int, values: dict[str, Any]) -> None:
    """One JobParameter per software parameter given a value (what CytomineJob did for CLI runs)."""
    try:
        listing = get_json(client, f"software/{int(software)}/software_parameter.json",
                           {"withSetByServer": "true", "max": 0, "offset": 0}, f"the parameters of software {software}")
    except CysegError as exc:
        log.warning("job %s: software parameters not listed (%s); job parameters not saved", job.get("id"), exc)
        return
    for parameter in listing.get("collection", []):
        name = parameter.get("name")
        if parameter.get("setByServer") or name not in values or values[name] in (None, ""):
            continue
        value = str(values[name]).lower() if isinstance(values[name], bool) else str(values[name])
        payload = {"job": job["id"], "softwareParameter": parameter["id"], "value": value}
        try:
            response = client._post("jobparameter.json", json.dumps(payload))
            if response.status_code != 200:
                log.warning("job %s: parameter %s not saved (%s)", job.get("id"), name, server_message(response))
        except Exception as exc:  # noqa: BLE001
            log.warning("job %s: parameter %s not saved (%s)", job.get("id"), name, type(exc).__name__)


def project_images(client: Any, project: int, ids: list[int]) -> list[dict[str, Any]]:
    """The images to segment: the given ids (checked to be in the project) or all the project's."""
    try:
        get_json(client, f"project/{project}.json", None, f"Cytomine project {project}")
    except HttpStatusError as exc:
        if exc.status == 404:
            raise CysegError(f"Cytomine project {project} does not exist (HTTP 404); check the project id") from None
        raise
    if not ids:
        listing = get_json(client, f"project/{project}/imageinstance.json", {"max": 0, "offset": 0},
                           f"the images of project {project}")
        return sorted(listing.get("collection", []), key=lambda i: i["id"])
    images = []
    for ident in ids:
        try:
            image = get_json(client, f"imageinstance/{ident}.json", None, f"Cytomine image {ident}")
        except HttpStatusError as exc:
            if exc.status == 404:
                raise CysegError(f"Cytomine image {ident} does not exist (HTTP 404); check cytomine_id_images") from None
            raise
        if image.get("project") != project:
            raise CysegError(f"Cytomine image {ident} belongs to project {image.get('project')}, not {project}")
        images.append(image)
    return images


@dataclass
class JobSettings:
    host: str | None
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
    min_area: float
    window_size: int
    config: Path | None = None
    insecure: bool = False
    work_dir: Path | None = None
    device: str = "auto"
    timeout: float = 60.0
    upload_batch: int = 100
    tta: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


def run_job(settings: JobSettings, progress_bar: bool = False) -> str:
    """Run the Cytomine job end to end; returns the final status comment. Raises CysegError
    (already reported to the job as FAILED when a job exists) on failure."""
    from segmenter.cytomine.connection import connect, credentials

    creds = credentials(settings.host, settings.public_key, settings.private_key, settings.config)
    secrets = [creds.public_key, creds.private_key]
    if settings.insecure:
        warn_insecure()
    client = connect(creds, timeout=settings.timeout, verify=not settings.insecure)
    reporter: JobReporter | None = None
    try:
        job, job_keys = find_or_create_job(client, settings.project, settings.software)
        secrets += job_keys
        reporter = JobReporter(client, job, secrets)
        reporter.update(RUNNING, 0, "Initialization...", force=True)
        if job_keys and settings.software is not None:
            save_job_parameters(client, job, settings.software, settings.raw)
        comment = _run(client, creds.host, settings, reporter, progress_bar)
        reporter.update(SUCCESS, 100, comment, force=True)
        return comment
    except (Exception, KeyboardInterrupt) as exc:
        message = redact(one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted", secrets)
        if not isinstance(exc, CysegError):
            message = f"{type(exc).__name__}: {message}" if message != type(exc).__name__ else message
            log.debug("job failure", exc_info=True)
        if reporter is not None:
            reporter.update(FAILED, None, message, force=True)
        raise CysegError(message) from None


def job_wsi_options(s: JobSettings) -> "WsiOptions":
    """The slide engine's options for a job: its tiling, threshold and TTA, windows overlapping by
    a quarter (at most 256 px), polygons simplified by half a pixel."""
    from segmenter.wsi.windows import WsiOptions

    return WsiOptions(tile=s.tile, overlap=s.overlap, batch=s.batch, tta=s.tta, window_size=s.window_size,
                      window_overlap=min(256, s.window_size // 4), threshold=s.threshold, simplify=0.5,
                      min_area=s.min_area)


def _run(client: Any, host: str, s: JobSettings, reporter: JobReporter, progress_bar: bool) -> str:
    from segmenter.allocator import freeze_loaded_objects
    from segmenter.cytomine.reader import CytomineSource
    from segmenter.cytomine.upload import check_term
    from segmenter.wsi.scaleout import InProcess
    from unet import load_segmenter

    images = project_images(client, s.project, s.images)
    if s.predicted_term is not None:
        check_term(client, s.predicted_term, s.project)
    if s.roi_term is not None:
        check_term(client, s.roi_term, s.project)
    model_path = resolve_job_model(s.model)
    seg = load_segmenter(model_path, device=None if s.device == "auto" else s.device)
    freeze_loaded_objects()
    work = s.work_dir or Path(os.environ.get("CYSEG_WORK_DIR") or Path.home() / f"cyseg-job-{reporter.id}")
    work.mkdir(parents=True, exist_ok=True)
    opts = job_wsi_options(s)
    source = CytomineSource(host, None if s.config is None else str(Path(s.config).resolve()), not s.insecure,
                            s.timeout)
    if not images:
        return f"Finished: project {s.project} has no images; 0 annotations uploaded."
    runner = InProcess(seg)
    total_uploaded, total_on_server, outcomes, skipped_rois = 0, 0, [], 0
    n = len(images)
    for index, info in enumerate(images):
        image_id = int(info["id"])
        reader = CytomineSlideReader(image_id, source, client)
        label = f"image {image_id} ({index + 1}/{n})"

        def seg_progress(fraction: float, what: str, index: int = index, label: str = label) -> None:
            reporter.update(RUNNING, 100 * (index + SEGMENT_SHARE * fraction) / n, f"Segmenting {label}: {what}")

        windows: list[tuple[str, str | None]] = [("image", None)]
        if s.roi_term is not None:
            rois = roi_windows(client, reader, s.project, s.roi_term)
            if not rois:
                skipped_rois += 1
                reporter.update(RUNNING, 100 * (index + 1) / n, f"{label}: no ROI of term {s.roi_term}; skipped")
                continue
            windows = [(f"roi{ident}", region) for ident, region in rois]
        reporter.update(RUNNING, 100 * index / n, f"Segmenting {label}", force=True)
        geojson, summaries = segment_image(seg, model_path, reader, work / f"image-{image_id}.geojson", opts, runner,
                                           windows, work / ".cyseg-cache", on_progress=seg_progress,
                                           progress_bar=progress_bar)

        def up_progress(done: int, total: int, index: int = index, label: str = label) -> None:
            share = SEGMENT_SHARE + (1 - SEGMENT_SHARE) * done / max(total, 1)
            reporter.update(RUNNING, 100 * (index + share) / n, f"Uploading {label}: {done}/{total} annotations")

        result = upload_output(client, reader, geojson, s.predicted_term, s.upload_batch, up_progress)
        if not result.complete:
            raise CysegError(f"{result.summary()}; rerun the job with the same work folder to resume")
        total_uploaded += result.uploaded
        total_on_server += result.on_server
        outcomes.append(ImageOutcome(image_id, sum(x["polygons"] for x in summaries), len(windows), result))
    done = len(outcomes)
    note = f" ({skipped_rois} without ROI skipped)" if skipped_rois else ""
    if total_on_server == 0:
        return f"Finished: 0 annotations (no cells found) on {done} image{'s' if done != 1 else ''}{note}."
    return (f"Finished: {total_on_server} annotations uploaded on {done} image{'s' if done != 1 else ''}{note}"
            + (f" ({total_on_server - total_uploaded} from an earlier run)." if total_on_server != total_uploaded else "."))
