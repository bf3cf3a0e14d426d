"""The Cytomine test server: a threaded loopback HTTP server, its seeding and read-back API, and
fault injection. See docs/cytomine-test-server.md."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from shapely import wkt as shapely_wkt

from . import auth as _auth
from . import faults as _faults
from .api import Api
from .http import HttpError, Request, Response, Router, json_response
from .imaging import SlideFile
from .store import Store, now_ms

#: The five connection parameters every Cytomine app descriptor declares (set by the server).
CONNECTION_PARAMETERS = (("cytomine_host", "String"), ("cytomine_public_key", "String"),
                         ("cytomine_private_key", "String"), ("cytomine_id_project", "Number"),
                         ("cytomine_id_software", "Number"))


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (``server.requests``)."""

    seq: int
    method: str
    path: str
    query: dict[str, str]
    status: int | None          # None when no response was sent (drop/timeout faults)
    user: int | None            # authenticated user id
    auth: str | None            # signature variant that matched ("no-path", "with-path", ...)
    fault: str | None           # injected fault kind, if any
    content_type: str | None
    body: bytes
    at: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: faults cannot poison a pooled connection
    server_version = "CytomineTestServer/1.0"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _serve(self) -> None:
        self.server.app._handle(self, self.command)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class CytomineTestServer(Api):
    """A local stand-in for a Cytomine core (+ image server) speaking the REST API that
    cytomine-python-client uses. Use as a context manager or call :meth:`start`/:meth:`stop`.

    Options:
      * ``collection_status``: ``"http"`` (default) answers an annotation array POST with HTTP 200 /
        206 (some saved) / 400 (none saved), as the Grails core did and the client expects;
        ``"spring"`` answers HTTP 200 with ``{"data": ..., "status": 200|206|400}`` in the body, as
        Cytomine-core-spring's ``RestCytomineController.add`` + ``ModelService.addMultiple`` do.
      * ``crop_default_max_size``: ``maxSize`` used by annotation crop/mask/alphamask when the client
        sends none (Spring core: 256, and then ``zoom`` is ignored); ``None`` gives full resolution.
      * ``window_masks``: honour ``mask``/``alphaMask`` on windows (Grails core) or ignore them
        (``False``: current Spring core).
      * ``attached_filename``: ``"as-sent"`` keeps the multipart filename (the client sends the full
        local path; Spring keeps it) or ``"basename"`` (Grails/commons-fileupload stripped the path).
      * ``timeout_delay``: seconds a ``"timeout"`` fault holds the request before closing it.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, *, collection_status: str = "http",
                 crop_default_max_size: int | None = 256, window_masks: bool = True,
                 attached_filename: str = "as-sent", timeout_delay: float = 5.0,
                 username: str = "testuser") -> None:
        if collection_status not in ("http", "spring"):
            raise ValueError("collection_status must be 'http' or 'spring'")
        if attached_filename not in ("as-sent", "basename"):
            raise ValueError("attached_filename must be 'as-sent' or 'basename'")
        self._own_dir = workdir is None
        self.workdir = tempfile.mkdtemp(prefix="cytomine-test-server-") if workdir is None else os.fspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.db_path = os.path.join(self.workdir, "cytomine.sqlite3")
        if os.path.exists(self.db_path):
            os.remove(self.db_path)
        self.store = Store(self.db_path)
        self.collection_status = collection_status
        self.crop_default_max_size = crop_default_max_size
        self.window_masks = window_masks
        self.attached_filename = attached_filename
        self.timeout_delay = timeout_delay
        self.faults = _faults.FaultInjector()
        self.errors: list[str] = []  # tracebacks of unexpected server-side exceptions
        self._records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._seq = 0
        self._slides: dict[str, SlideFile] = {}
        self._slides_lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.router = Router()
        for klass in reversed(type(self).__mro__):  # route functions themselves: immune to overriding
            for fn in vars(klass).values():
                for method, pattern in getattr(fn, "_routes", ()):
                    self.router.add(method, pattern, fn)
        self.user_id, self.public_key, self.private_key = self.store.add_user(username, admin=True)

    # ------------------------------------------------------------------ life cycle ---------------
    def start(self) -> CytomineTestServer:
        if self._httpd is not None:
            return self
        self._stop.clear()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.app = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="cytomine-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._slides_lock:
            for slide in self._slides.values():
                slide.close()
            self._slides.clear()
        self.store.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> CytomineTestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (what to pass as the client's ``host``)."""
        return f"http://127.0.0.1:{self.port}"

    host = url

    def slide(self, image: dict) -> SlideFile:
        with self._slides_lock:
            slide = self._slides.get(image["path"])
            if slide is None:
                slide = self._slides[image["path"]] = SlideFile(image["path"])
            return slide

    # ------------------------------------------------------------------ seeding -------------------
    def add_user(self, username: str | None = None, *, admin: bool = False) -> tuple[int, str, str]:
        """A human user: (id, public key, private key)."""
        return self.store.add_user(username, admin=admin)

    def add_ontology(self, name: str = "ontology") -> int:
        return self.store.insert("ontologies", name=name, created=now_ms())

    def add_project(self, name: str = "project", ontology: int | None = None) -> int:
        """A project; an ontology named after it is created unless one is given."""
        if ontology is None:
            ontology = self.add_ontology(f"{name} ontology")
        return self.store.insert("projects", name=name, ontology=ontology, created=now_ms())

    def add_term(self, name: str, ontology: int | None = None, *, project: int | None = None,
                 color: str = "#FF0000", parent: int | None = None) -> int:
        """A term of ``ontology`` (or of ``project``'s ontology)."""
        if ontology is None:
            if project is None:
                raise ValueError("add_term needs an ontology or a project")
            ontology = self.store.get("projects", project)["ontology"]
        return self.store.insert("terms", name=name, ontology=ontology, color=color, parent=parent, created=now_ms())

    def add_image(self, project: int, path: str | os.PathLike, *, filename: str | None = None,
                  magnification: int | None = None, resolution: float | None = None) -> int:
        """An image instance of ``project`` backed by the slide/image file at ``path`` (read with
        OpenSlide; plain PNG/JPEG through OpenSlide's ImageSlide). Returns the image instance id."""
        path = os.path.abspath(os.fspath(path))
        if self.store.get("projects", project) is None:
            raise ValueError(f"no project {project}")
        with self._slides_lock:
            slide = self._slides.get(path)
            if slide is None:
                slide = self._slides[path] = SlideFile(path)
        name = filename or os.path.basename(path)
        return self.store.insert(
            "images", project=project, base_image=self.store.new_id(), slice=self.store.new_id(), path=path,
            original_filename=name, instance_filename=name, width=slide.width, height=slide.height,
            magnification=magnification if magnification is not None else slide.magnification,
            physical_size=resolution if resolution is not None else slide.mpp, mime=slide.mime,
            max_zoom=slide.max_zoom, user=self.user_id, created=now_ms())

    def add_annotation(self, image: int, wkt: str, term: int | Sequence[int] | None = None,
                       user: int | None = None) -> int:
        """Store an annotation as given (Cytomine frame: origin bottom-left, y up; no clipping).
        ``user`` defaults to the server's human user; an algo user makes it an algo annotation."""
        shapely_wkt.loads(wkt)  # must parse
        img = self.store.get("images", image)
        owner = self.store.get("users", user if user is not None else self.user_id)
        if img is None or owner is None:
            raise ValueError("unknown image or user")
        terms = [] if term is None else [term] if isinstance(term, int) else list(term)
        return self.store.add_annotation_row(image=img, user=owner, location=wkt, terms=terms, received=wkt,
                                             source="seed")

    def add_software(self, name: str, parameters: Iterable[Any] = (), *, version: str = "1.0.0",
                     connection_parameters: bool = True) -> int:
        """A software (Cytomine app). ``parameters``: dicts with ``name``, ``type`` (String, Number,
        Boolean, Domain, ListDomain, Date), optional ``default``, ``required``, ``set_by_server``,
        ``uri``, ``uri_print``, ``uri_sort`` -- or ``(name, type[, default])`` tuples. The five
        ``cytomine_*`` connection parameters (set by server) come first unless disabled."""
        sid = self.store.insert("software", name=name, version=version, created=now_ms())
        specs: list[dict] = []
        if connection_parameters:
            specs += [{"name": n, "type": t, "required": True, "set_by_server": True} for n, t in CONNECTION_PARAMETERS]
        for p in parameters:
            if isinstance(p, dict):
                specs.append(dict(p))
            else:
                name_, type_, *rest = p
                specs.append({"name": name_, "type": type_, "default": rest[0] if rest else None})
        for index, p in enumerate(specs):
            default = p.get("default")
            self.store.insert("software_parameters", software=sid, name=p["name"], type=p.get("type", "String"),
                              default_value=None if default is None else str(default),
                              required=int(bool(p.get("required", False))),
                              set_by_server=int(bool(p.get("set_by_server", False))), idx=(index + 1) * 100,
                              uri=p.get("uri"), uri_print=p.get("uri_print"), uri_sort=p.get("uri_sort"),
                              created=now_ms())
        return sid

    def add_job(self, project: int, software: int, user: int | None = None) -> tuple[int, int, str, str]:
        """A job as ``POST /api/job.json`` makes it: (job id, algo user id, public key, private key)."""
        return self.create_job(project, software, user if user is not None else self.user_id)

    # ------------------------------------------------------------------ reading back --------------
    def _annotation_out(self, a: dict) -> dict:
        out = dict(a)
        out["terms"] = self.store.annotation_terms(a["id"])
        return out

    def annotations(self, image: int | None = None, user: int | None = None, project: int | None = None,
                    term: int | None = None, kind: str | None = None) -> list[dict]:
        """Stored annotations (ascending id): dicts with id, kind ("user"/"algo"), image, slice,
        project, user, location (WKT as stored, after clipping), received (WKT as sent), terms,
        source ("api"/"seed"), created."""
        clauses, params = [], []
        for col, value in (("image", image), ("user", user), ("project", project), ("kind", kind)):
            if value is not None:
                clauses.append(f"{col} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = [self._annotation_out(a) for a in self.store.all(f"SELECT * FROM annotations {where} ORDER BY id",
                                                                params)]
        return [a for a in rows if term is None or term in a["terms"]]

    def annotation(self, ident: int) -> dict | None:
        a = self.store.get("annotations", ident)
        return self._annotation_out(a) if a else None

    def user(self, ident: int) -> dict | None:
        return self.store.get("users", ident)

    def job(self, ident: int) -> dict | None:
        return self.store.get("jobs", ident)

    def jobs(self, project: int | None = None) -> list[dict]:
        if project is None:
            return self.store.all("SELECT * FROM jobs ORDER BY id")
        return self.store.all("SELECT * FROM jobs WHERE project = ? ORDER BY id", (project,))

    def job_history(self, job: int) -> list[dict]:
        """Every ``PUT /api/job/<id>.json`` in arrival order: dicts with status, progress,
        statusComment, user, at (epoch s) and body (the JSON the client sent)."""
        rows = self.store.all("SELECT * FROM job_history WHERE job = ? ORDER BY seq", (job,))
        return [{"status": r["status"], "progress": r["progress"], "statusComment": r["status_comment"],
                 "user": r["user"], "at": r["at"], "body": json.loads(r["body"]) if r["body"] else None}
                for r in rows]

    def job_parameters(self, job: int) -> list[dict]:
        """Job parameters with the software parameter's name: dicts name, value, softwareParameter."""
        rows = self.store.all("SELECT jp.*, sp.name FROM job_parameters jp JOIN software_parameters sp "
                              "ON sp.id = jp.software_parameter WHERE jp.job = ? ORDER BY jp.id", (job,))
        return [{"id": r["id"], "name": r["name"], "value": r["value"], "softwareParameter": r["software_parameter"]}
                for r in rows]

    def attached_files(self, domain_ident: int | None = None) -> list[dict]:
        """Attached files (with their ``data`` bytes)."""
        if domain_ident is None:
            rows = self.store.all("SELECT * FROM attached_files ORDER BY id")
        else:
            rows = self.store.all("SELECT * FROM attached_files WHERE domain_ident = ? ORDER BY id", (domain_ident,))
        for r in rows:
            r["data"] = bytes(r["data"])
        return rows

    def properties(self, domain_ident: int | None = None) -> list[dict]:
        if domain_ident is None:
            return self.store.all("SELECT * FROM properties ORDER BY id")
        return self.store.all("SELECT * FROM properties WHERE domain_ident = ? ORDER BY id", (domain_ident,))

    def sql(self, query: str, params: Iterable[Any] = ()) -> list[dict]:
        """Run any read query on the SQLite store (tables: see store.SCHEMA)."""
        return self.store.all(query, params)

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the request log, in arrival order."""
        with self._records_lock:
            return list(self._records)

    def clear_requests(self) -> None:
        with self._records_lock:
            self._records.clear()

    # ------------------------------------------------------------------ faults --------------------
    def inject(self, path_regex: str, kind: int | str, times: int = 1, *, method: str | None = None,
               delay: float | None = None) -> _faults.Injection:
        """Make the next ``times`` requests whose ``path?query`` matches ``path_regex`` (re.search)
        fail: ``kind`` is an HTTP status (500, 502, 503, ...), ``"timeout"`` (hold the request
        ``delay`` s, default ``timeout_delay``, then close without answering), ``"drop"`` (close the
        connection without answering) or ``"truncate"`` (send the real response's headers but only
        half of its Content-Length bytes). Faults are checked before authentication."""
        return self.faults.inject(path_regex, kind, times, method=method, delay=delay)

    def clear_faults(self) -> None:
        self.faults.clear()

    # ------------------------------------------------------------------ request handling ----------
    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(h.rfile.readline().strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    h.rfile.readline()
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        target = h.path
        split = urlsplit(target)
        headers = {k.lower(): v for k, v in h.headers.items()}
        body = self._read_body(h)
        req = Request(method, target, split.path, Request.parse_query(split.query), headers, body)
        injection = self.faults.take(method, target)
        fault = None if injection is None else str(injection.kind)
        # the request is logged before anything is sent back, so a test that got its answer sees it
        if injection is not None and injection.kind in (_faults.DROP, _faults.TIMEOUT):
            self._log(req, None, fault)
            if injection.kind == _faults.TIMEOUT:
                self._stop.wait(injection.delay if injection.delay is not None else self.timeout_delay)
            h.close_connection = True
            return
        if injection is not None and isinstance(injection.kind, int):
            resp = self._fault_response(injection.kind)
        else:
            resp = self._dispatch(req)
        self._log(req, resp.status, fault)
        self._send(h, resp, method, truncate=injection is not None and injection.kind == _faults.TRUNCATE)

    def _fault_response(self, status: int) -> Response:
        if status in (502, 503, 504):  # what a reverse proxy in front of the core answers
            text = f"<html><head><title>{status}</title></head><body><center><h1>{status}</h1></center>" \
                   f"<hr><center>nginx</center></body></html>"
            return Response(status, text.encode(), "text/html")
        return json_response({"success": False, "errors": f"injected fault {status}"}, status)

    def _dispatch(self, req: Request) -> Response:
        try:
            if req.path in ("/server/ping", "/server/ping.json"):
                self._authenticate(req, required=False)
                return self.ping(req)
            if not req.path.startswith("/api/"):
                raise HttpError(404, f"No endpoint {req.method} {req.path}",
                                {"errors": {"message": f"No endpoint {req.method} {req.path}"}})
            self._authenticate(req, required=True)
            handler, params, other_method = self.router.match(req.method, req.path)
            if handler is None:
                status = 405 if other_method else 404
                msg = f"{'Method not allowed' if other_method else 'No endpoint'}: {req.method} {req.path}"
                raise HttpError(status, msg, {"errors": {"message": msg}})
            return handler(self, req, **params)
        except HttpError as exc:
            return json_response(exc.body, exc.status)
        except Exception:
            tb = traceback.format_exc()
            self.errors.append(f"{req.method} {req.target}\n{tb}")
            return json_response({"success": False, "errors": {"message": tb.strip().splitlines()[-1]}}, 500)

    def _authenticate(self, req: Request, required: bool) -> None:
        result = _auth.verify(req.method, req.target, req.headers, self.store.user_by_public_key)
        if result.user is not None:
            req.user, req.auth = result.user, result.variant
        elif required:
            raise HttpError(401, result.error or "unauthorized",
                            {"success": False, "errors": {"message": f"Unauthorized: {result.error}"}})

    def _send(self, h: BaseHTTPRequestHandler, resp: Response, method: str, truncate: bool = False) -> None:
        body = resp.body
        length = len(body) if not truncate else max(len(body), 2)
        h.send_response(resp.status)
        h.send_header("Content-Type", resp.content_type)
        h.send_header("Content-Length", str(length))
        h.send_header("Cache-Control", "no-store")
        for k, v in resp.headers.items():
            h.send_header(k, v)
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body[: length // 2] if truncate else body)
        h.wfile.flush()
        h.close_connection = True

    def _log(self, req: Request, status: int | None, fault: str | None) -> None:
        with self._records_lock:
            self._seq += 1
            record = RequestRecord(self._seq, req.method, req.path, dict(req.query), status,
                                   req.user["id"] if req.user else None, req.auth, fault,
                                   req.headers.get("content-type"), req.body, time.time())
            self._records.append(record)
        with contextlib.suppress(sqlite3.ProgrammingError):  # store closed while a held (timeout) request finished
            self.store.insert("requests", method=req.method, path=req.path, query=json.dumps(req.query),
                              status=status, user=record.user, auth=req.auth, fault=fault, at=record.at)
