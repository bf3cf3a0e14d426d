"""Upload polygons (slide pixels, top-left origin) to Cytomine as annotations of one image,
resumably and without duplicates.

* Geometry: every polygon is made valid, clipped to the image, snapped to a 0.01-px grid, split
  into simple polygons (a MultiPolygon or GeometryCollection becomes several annotations; empty
  and sub-pixel pieces are dropped and counted), then put in Cytomine's frame with `flip_y`
  (the only y conversion). One bad item can therefore not fail a whole batch.
* Batches of `batch_size` annotations are POSTed as one JSON array, each sent once per try.
  A batch is identified by the image id, the term and its geometries (SHA-256).
* Journal: `<output>.upload.json` (atomic JSON) records each batch as "sent" before the POST and
  "done" once acknowledged; it names the server by its fingerprint, never by its address. A
  rerun skips "done" batches; for a "sent" batch (connection dropped after sending, process
  killed, ...) it first lists the image's annotations of the current user
  in the batch's bounding box and re-sends only the polygons not found there. The same check
  runs at once when a POST's outcome is unknown (timeout, dropped or truncated answer, 5xx), and
  the batch is tried up to the retry policy's `attempts` times, waiting its delays in between.
* The result says how many annotations are on the server for this output; `complete` is False
  when anything is left to send or was refused, and callers report that as a failure.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely import wkt as shapely_wkt
from shapely.geometry import Polygon, box
from shapely.strtree import STRtree
from shapely.validation import make_valid

from segmenter.cytomine.connection import Connection
from segmenter.cytomine.errors import HttpStatusError, NotFound, ServerFailure, server_message
from segmenter.cytomine.geometry import flip_y
from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_path
from segmenter.polygons import clean

log = logging.getLogger(__name__)

JOURNAL_FORMAT = "cyseg-upload-journal/2"
BATCH_SIZE = 100
GRID = 0.01  # coordinates are snapped to this grid (pixels) before upload
MATCH_IOU = 0.9  # a server annotation this close to a batch polygon counts as that polygon


@dataclass
class Prepared:
    """Polygons ready for upload (top-left frame, inside the image) and what cleaning did."""

    polygons: list[Polygon]
    given: int = 0
    clipped: int = 0  # polygons cut at the image border
    split: int = 0  # extra pieces from multi-part geometries
    dropped: int = 0  # empty, outside the image or thinner than a pixel


@dataclass
class UploadResult:
    """What is on the server for this output after the upload (this run and earlier ones)."""

    image: int
    total: int
    uploaded: int = 0  # created by this run
    already: int = 0  # found done in the journal or on the server
    refused: int = 0  # refused by the server (invalid there)
    pending: int = 0  # not sent or outcome unknown: rerun to finish
    batches: int = 0
    prepared: Prepared | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def on_server(self) -> int:
        return self.uploaded + self.already

    @property
    def complete(self) -> bool:
        return self.pending == 0 and self.refused == 0

    def summary(self) -> str:
        p = self.prepared
        extra = f"; {p.clipped} clipped at the image border, {p.dropped} dropped (empty/outside/sub-pixel)" if p and (
            p.clipped or p.dropped) else ""
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"image {self.image}: upload {state}: {self.on_server} of {self.total} annotations on the server "
                f"({self.uploaded} new, {self.already} uploaded before"
                + (f", {self.refused} refused" if self.refused else "")
                + (f", {self.pending} pending" if self.pending else "") + f"){extra}")


def prepare_polygons(polygons: Iterable[Any], width: int, height: int) -> Prepared:
    """Valid simple polygons inside the image box, snapped to GRID, sorted (top-left first)."""
    frame = box(0, 0, width, height)
    out: list[Polygon] = []
    result = Prepared([])
    for geometry in polygons:
        result.given += 1
        if geometry is None or geometry.is_empty:
            result.dropped += 1
            continue
        if not geometry.is_valid:
            geometry = make_valid(geometry)
        if not frame.contains(geometry):
            if frame.intersects(geometry):
                result.clipped += 1
            geometry = geometry.intersection(frame)
        geometry = shapely.set_precision(geometry, GRID)
        parts = [p for p in clean(geometry) if p.is_valid]
        parts = [p for p in parts if p.bounds[2] - p.bounds[0] >= 1 and p.bounds[3] - p.bounds[1] >= 1]
        if not parts:
            result.dropped += 1
            continue
        result.split += len(parts) - 1
        out.extend(parts)
    out.sort(key=lambda p: (p.bounds[1], p.bounds[0], p.wkt))
    result.polygons = out
    return result


def cytomine_wkt(polygon: Polygon, image_height: int) -> str:
    """The polygon in Cytomine's frame (y up), as WKT on the upload grid."""
    return shapely.to_wkt(flip_y(polygon, image_height), rounding_precision=2, trim=True)


def batch_key(image: int, term: int | None, wkts: list[str]) -> str:
    digest = hashlib.sha256(f"{image}|{term}|".encode())
    for text in wkts:
        digest.update(text.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


class Journal:
    """Which batches of one image's upload are done, written atomically after every change."""

    def __init__(self, path: Path | None, server: str, image: int, term: int | None):
        self.path = path
        self.data: dict[str, Any] = {"format": JOURNAL_FORMAT, "server": server, "image": image, "term": term,
                                     "batches": {}}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                log.warning("upload journal %s is unreadable; starting a new one (uploaded batches are found on "
                            "the server)", path)
                data = None
            if isinstance(data, dict) and data.get("format") == JOURNAL_FORMAT and data.get("image") == image \
                    and data.get("server") == server:
                self.data = data
                self.data.setdefault("batches", {})

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data["batches"].get(key)

    def set(self, key: str, **entry: Any) -> None:
        self.data["batches"][key] = {**entry, "at": round(time.time(), 3)}
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data, indent=1))


def journal_path(output: Path) -> Path:
    """The journal beside an output file: <output>.upload.json."""
    return output.with_name(output.name + ".upload.json")


class Uploader:
    """Sends one image's polygons in batches; see the module docstring."""

    def __init__(self, connection: Connection, image: int, project: int | None, height: int, term: int | None = None,
                 batch_size: int = BATCH_SIZE, journal: Path | None = None,
                 progress: Callable[[int, int], None] | None = None):
        if batch_size < 1:
            raise CysegError(f"upload batch size {batch_size} must be >= 1")
        self.connection = connection
        self.image = int(image)
        self.project = project
        self.height = int(height)
        self.term = term
        self.batch_size = batch_size
        self.journal = Journal(journal, connection.server_id, self.image, term)
        self.progress = progress
        self.user = connection.user_id

    # ------------------------------------------------------------------ server calls -----------
    def _annotation(self, wkt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"location": wkt, "image": self.image}
        if self.project is not None:
            body["project"] = self.project
        if self.term is not None:
            body["term"] = [self.term]
        return body

    def post(self, wkts: list[str]) -> tuple[str, list[str]]:
        """POST one batch. ("ok", []) when all were saved; ("refused", wkts refused) when the
        server refused some as invalid (the rest saved); ("unknown", reason) otherwise."""
        try:
            response = self.connection.post_once("annotation.json", [self._annotation(w) for w in wkts],
                                                 what=f"annotations of image {self.image}")
        except ServerFailure as exc:
            return "unknown", [exc.reason]
        status = response.status_code
        body: Any = None
        with contextlib.suppress(ValueError):
            body = response.json()
        if status == 200 and isinstance(body, dict) and isinstance(body.get("status"), int) and "data" in body:
            status, body = body["status"], body["data"]  # Cytomine-core-spring wraps the real status
        if status == 200:
            return "ok", []
        if status in (206, 400) and isinstance(body, dict) and isinstance(body.get("errors"), list):
            refused = [str(e.get("data", {}).get("location")) for e in body["errors"] if isinstance(e, dict)
                       and isinstance(e.get("data"), dict)]
            if refused:
                for e in body["errors"][:3]:
                    log.warning("image %d: Cytomine refused an annotation: %s", self.image, str(e.get("message"))[:200])
                return "refused", refused
        if status in (401, 403, 404) or (400 <= status < 500 and status != 429):
            raise HttpStatusError(status, f"Cytomine refused the annotations of image {self.image} "
                                          f"({server_message(response)}); check the term, the image and the keys")
        return "unknown", [f"HTTP {status}"]

    def on_server(self, wkts: list[str]) -> set[int]:
        """Indices of `wkts` that already exist on the server as annotations of the current user
        on this image (listing in the batch's bounding box; geometry match by IoU)."""
        geoms = [shapely_wkt.loads(w) for w in wkts]
        minx = min(g.bounds[0] for g in geoms)
        miny = min(g.bounds[1] for g in geoms)
        maxx = max(g.bounds[2] for g in geoms)
        maxy = max(g.bounds[3] for g in geoms)
        params: dict[str, Any] = {"image": self.image, "bbox": f"{minx},{miny},{maxx},{maxy}", "showWKT": "true",
                                  "showTerm": "true", "showBasic": "true", "max": 0, "offset": 0}
        if self.user is not None:
            params["user"] = self.user
        listing = self.connection.get_json("annotation.json", params,
                                           what=f"listing the annotations of image {self.image} to check an upload")
        rows = listing.get("collection", []) if isinstance(listing, dict) else []
        found = []
        for row in rows:
            if self.user is not None and row.get("user") not in (None, self.user):
                continue
            if self.term is not None and row.get("term") is not None and self.term not in row.get("term", []):
                continue
            try:
                found.append(shapely_wkt.loads(row["location"]))
            except Exception:
                continue
        if not found:
            return set()
        tree = STRtree(found)
        used: set[int] = set()
        present: set[int] = set()
        for i, g in enumerate(geoms):
            for j in tree.query(g, predicate="intersects"):
                if j in used:
                    continue
                other = found[j]
                union = g.union(other).area
                if union > 0 and g.intersection(other).area / union >= MATCH_IOU:
                    used.add(int(j))
                    present.add(i)
                    break
        return present

    # ------------------------------------------------------------------ the upload -------------
    def upload(self, polygons: Iterable[Any], width: int) -> UploadResult:
        """Upload the polygons (top-left frame, level-0 pixels); see the module docstring."""
        prepared = prepare_polygons(polygons, width, self.height)
        if prepared.clipped or prepared.dropped:
            log.warning("image %d: %d polygons clipped at the image border, %d dropped (empty, outside the image "
                        "or thinner than a pixel)", self.image, prepared.clipped, prepared.dropped)
        wkts = [cytomine_wkt(p, self.height) for p in prepared.polygons]
        result = UploadResult(self.image, len(wkts), prepared=prepared)
        batches = [wkts[i:i + self.batch_size] for i in range(0, len(wkts), self.batch_size)]
        result.batches = len(batches)
        done = 0
        for number, batch in enumerate(batches, 1):
            key = batch_key(self.image, self.term, batch)
            entry = self.journal.get(key)
            if entry is not None and entry.get("state") == "done":
                result.already += entry.get("saved", len(batch))
                result.refused += entry.get("refused", 0)
            else:
                try:
                    self._send(key, batch, entry is not None, result)
                except _Stop as stop:
                    result.uploaded += stop.counts["new"]
                    result.already += stop.counts["old"]
                    result.pending += sum(len(b) for b in batches[number - 1:]) - sum(stop.counts.values())
                    result.errors.append(stop.reason)
                    log.error("image %d: upload stopped at batch %d of %d: %s", self.image, number, len(batches),
                              stop.reason)
                    break
            done += len(batch)
            if self.progress is not None:
                self.progress(done, len(wkts))
        return result

    def _send(self, key: str, batch: list[str], was_sent: bool, result: UploadResult) -> None:
        """Bring one batch to "done": check the server first when an earlier send's outcome is
        unknown, send what is missing, retry unknown outcomes with the policy's back-off."""
        attempts = self.connection.policy.attempts
        missing = list(range(len(batch)))
        counts = {"new": 0, "old": 0}  # saved by this run / found from an earlier run

        def finish(refused: int = 0) -> None:
            result.uploaded += counts["new"]
            result.already += counts["old"]
            result.refused += refused
            self.journal.set(key, state="done", saved=len(batch) - refused, refused=refused)

        for attempt in range(attempts):
            if was_sent:
                try:
                    present = self.on_server([batch[i] for i in missing])
                except HttpStatusError:
                    raise
                except CysegError as exc:
                    raise _Stop(str(exc), counts) from None
                if present:
                    log.info("image %d: %d annotations of an unacknowledged batch are already on the server",
                             self.image, len(present))
                counts["old" if attempt == 0 else "new"] += len(present)
                missing = [i for k, i in enumerate(missing) if k not in present]
            if not missing:
                finish()
                return
            if attempt:
                time.sleep(self.connection.policy.delay(attempt - 1))
            self.journal.set(key, state="sent", count=len(batch))
            outcome, detail = self.post([batch[i] for i in missing])
            was_sent = True
            if outcome == "ok":
                counts["new"] += len(missing)
                finish()
                return
            if outcome == "refused":
                refused = set(detail)
                n_refused = sum(1 for i in missing if batch[i] in refused) or len(detail)
                counts["new"] += len(missing) - n_refused
                finish(n_refused)
                return
            log.warning("image %d: upload of %d annotations got no clear answer (%s); checking the server",
                        self.image, len(missing), ", ".join(detail))
        try:  # last look: what did the final attempt leave?
            present = self.on_server([batch[i] for i in missing])
        except CysegError:
            present = set()
        counts["new"] += len(present)
        if len(present) == len(missing):
            finish()
            return
        raise _Stop(f"no acknowledgement from Cytomine after {attempts} attempts", counts)


class _Stop(Exception):
    """The upload cannot go on now; `counts` says what the current batch got on the server."""

    def __init__(self, reason: str, counts: dict[str, int]):
        super().__init__(reason)
        self.reason = reason
        self.counts = counts


def check_term(connection: Connection, term: int, project: int | None) -> dict[str, Any]:
    """The term, checked to exist and to belong to the project's ontology."""
    try:
        data = connection.get_json(f"term/{int(term)}.json", what=f"Cytomine term {term}")
    except NotFound:
        raise CysegError(f"Cytomine term {term} does not exist (HTTP 404); check the term id") from None
    if project is not None:
        proj = connection.get_json(f"project/{int(project)}.json", what=f"Cytomine project {project}")
        ontology = proj.get("ontology", proj.get("ontologyId")) if isinstance(proj, dict) else None
        if ontology is not None and data.get("ontology", data.get("ontologyId")) != ontology:
            raise CysegError(f"Cytomine term {term} ({data.get('name')}) is not in the ontology of project {project}; "
                             "choose one of the project's terms")
    return data
