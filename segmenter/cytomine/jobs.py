"""The REST side of a Cytomine software job: cytomine-python-client 4.x has no CytomineJob, so
the protocol is ours. The job API exists only on the legacy (Grails) core; on the others
`find_or_create_job` stops with one line naming the server's generation.

Find the job (an algo user launched from the UI has `job` in its user JSON) or create one (a human
user: `POST /api/job.json`, then work with the job user's keys so that the annotations land in the
job's layer as AlgoAnnotations, and save the job parameters); report with `PUT /api/job/<id>.json`
carrying the whole job JSON (the core replaces the job: an absent status or progress becomes 0):
RUNNING (2) with progress, then SUCCESS (3) or FAILED (4) with a one-line comment (<= 255
characters, keys removed); attach the run's log to the job (`attach_log`). Also the job's inputs:
the project's images and ROI boxes.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from shapely import wkt as shapely_wkt
from shapely.geometry import box

from segmenter.cytomine.connection import Connection
from segmenter.cytomine.errors import HttpStatusError, NotFound
from segmenter.cytomine.geometry import flip_y
from segmenter.errors import CysegError

log = logging.getLogger(__name__)

STATUS = {"NOT_LAUNCH": 0, "INQUEUE": 1, "RUNNING": 2, "SUCCESS": 3, "FAILED": 4, "INDETERMINATE": 5, "WAIT": 6,
          "PREVIEW_DONE": 7, "KILLED": 8}
RUNNING, SUCCESS, FAILED = STATUS["RUNNING"], STATUS["SUCCESS"], STATUS["FAILED"]
STATUS_NAMES = {code: name for name, code in STATUS.items()}
COMMENT_MAX = 255  # the job's statusComment column
PROGRESS_STEP = 5  # percent between progress updates
JOB_CLASS = "be.cytomine.processing.Job"  # the Grails core's domain class name of a job


def redact(text: str, secrets: list[str | None]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class JobReporter:
    """Status, progress and comment of one Cytomine job, progress throttled to PROGRESS_STEP %;
    an update the server does not record is logged, never fatal (the work goes on)."""

    def __init__(self, connection: Connection, job: dict[str, Any], secrets: list[str | None]):
        self.connection = connection
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
        try:
            answer = self.connection.put_json(f"job/{self.id}.json", body, what=f"status of job {self.id}")
        except CysegError as exc:
            log.warning("job %d: status update not recorded by Cytomine (%s)", self.id, redact(str(exc), self.secrets))
            return
        if isinstance(answer, dict) and isinstance(answer.get("job"), dict):
            self.job.update(answer["job"])
        log.info("job %d: %s %s%% %s", self.id, STATUS_NAMES.get(status, status), body.get("progress", "?"),
                 body.get("statusComment") or "")
        self.last_status = status
        if pct is not None:
            self.last_progress = pct


def find_or_create_job(connection: Connection, project: int, software: int | None) -> tuple[dict[str, Any], list[str]]:
    """The job to report to: the current algo user's job, else a new job of `software` in
    `project` whose user's keys the connection switches to. Returns the job JSON and the job
    user's keys (to keep out of messages)."""
    connection.require("jobs")
    job_id = connection.user.get("job")
    if job_id:
        return connection.get_json(f"job/{int(job_id)}.json", what=f"Cytomine job {job_id}"), []
    if software is None:
        raise CysegError("--cytomine_id_software is required to create a job (the keys are a human user's)")
    try:
        body = connection.post_json("job.json", {"project": project, "software": software},
                                    what=f"a new job of software {software} in project {project}")
    except HttpStatusError as exc:
        raise CysegError(f"Cytomine refused to create a job of software {software} in project {project} "
                         f"({exc.detail}); check both ids") from None
    job = (body.get("job") or body.get("data") or {}) if isinstance(body, dict) else {}
    user_job = job.get("userJob")
    if not job.get("id") or not user_job:
        raise CysegError("Cytomine created a job without a job user; cannot run as that job")
    keys = connection.get_json(f"user/{int(user_job)}.json", what=f"the user of job {job['id']}")
    public, private = keys.get("publicKey"), keys.get("privateKey")
    if not public or not private:
        raise CysegError(f"Cytomine did not give the keys of job {job['id']}'s user; cannot run as that job")
    try:
        connection.switch_keys(public, private)
    except CysegError:
        raise CysegError(f"Cytomine refused the keys of job {job['id']}'s user") from None
    log.info("created job %s (software %s, project %s)", job["id"], software, project)
    return job, [public, private]


def save_job_parameters(connection: Connection, job: dict[str, Any], software: int, values: dict[str, Any]) -> None:
    """One JobParameter per software parameter given a value (what CytomineJob did for CLI runs);
    a parameter not saved is logged, never fatal."""
    try:
        listing = connection.get_collection(f"software/{int(software)}/software_parameter.json",
                                            {"withSetByServer": "true"}, what=f"the parameters of software {software}")
    except CysegError as exc:
        log.warning("job %s: software parameters not listed (%s); job parameters not saved", job.get("id"), exc)
        return
    for parameter in listing:
        name = parameter.get("name")
        if parameter.get("setByServer") or name not in values or values[name] in (None, ""):
            continue
        value = str(values[name]).lower() if isinstance(values[name], bool) else str(values[name])
        payload = {"job": job["id"], "softwareParameter": parameter["id"], "value": value}
        try:
            connection.post_json("jobparameter.json", payload, what=f"parameter {name} of job {job.get('id')}")
        except CysegError as exc:
            log.warning("job %s: parameter %s not saved (%s)", job.get("id"), name, exc)


def project_images(connection: Connection, project: int, ids: list[int]) -> list[dict[str, Any]]:
    """The images to segment: the given ids (checked to be in the project) or all the project's."""
    try:
        connection.get_json(f"project/{project}.json", what=f"Cytomine project {project}")
    except NotFound:
        raise CysegError(f"Cytomine project {project} does not exist (HTTP 404); check the project id") from None
    if not ids:
        listing = connection.get_collection(f"project/{project}/imageinstance.json",
                                            what=f"the images of project {project}")
        return sorted(listing, key=lambda i: i["id"])
    images = []
    for ident in ids:
        try:
            image = connection.get_json(f"imageinstance/{ident}.json", what=f"Cytomine image {ident}")
        except NotFound:
            raise CysegError(f"Cytomine image {ident} does not exist (HTTP 404); check cytomine_id_images") from None
        if image.get("project") != project:
            raise CysegError(f"Cytomine image {ident} belongs to project {image.get('project')}, not {project}")
        images.append(image)
    return images


def roi_windows(connection: Connection, image: int, width: int, height: int, project: int | None,
                term: int) -> list[tuple[int, str]]:
    """(annotation id, 'x,y,w,h') of each ROI annotation of `term` on the image: its bounding box
    in level-0 pixels (top-left), clipped to the image; ROIs outside the image are skipped."""
    params: dict[str, Any] = {"image": image, "term": term, "showWKT": "true", "showTerm": "true",
                              "showBasic": "true"}
    if project is not None:
        params["project"] = project
    listing = connection.get_collection("annotation.json", params, what=f"listing the ROI annotations of image {image}")
    out = []
    frame = box(0, 0, width, height)
    for row in sorted(listing, key=lambda r: r.get("id", 0)):
        try:
            geometry = flip_y(shapely_wkt.loads(row["location"]), height)
        except Exception:
            log.warning("image %d: ROI annotation %s has no readable geometry; skipped", image, row.get("id"))
            continue
        clipped = geometry.envelope.intersection(frame)
        if clipped.is_empty or clipped.area == 0:
            log.warning("image %d: ROI annotation %s lies outside the image; skipped", image, row.get("id"))
            continue
        x0, y0, x1, y1 = clipped.bounds
        x0, y0, x1, y1 = math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        out.append((int(row.get("id", 0)), f"{x0},{y0},{x1 - x0},{y1 - y0}"))
    return out


def attach_log(connection: Connection, job: int, path: Path) -> None:
    """Attach the run's log file to the job (`POST attachedfile.json`, part `files[]`), as the
    router attaches its own; a log not attached is logged, never fatal."""
    try:
        connection.post_file("attachedfile.json", {"domainClassName": JOB_CLASS, "domainIdent": int(job)}, path,
                             what=f"the log of job {job}")
    except CysegError as exc:
        log.warning("job %d: log not attached (%s)", job, exc)
