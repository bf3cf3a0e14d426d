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
from .http import HttpError, Request, Response, Router, html_error, json_response
from .imaging import SlideFile
from .profiles import Profile
from .profiles import profile as make_profile
from .store import Store, now_ms


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
    """A local stand-in for one Cytomine core generation (+ its image server) speaking the REST
    API that cytomine-python-client uses. Use as a context manager or call :meth:`start`/:meth:`stop`.

    ``profile`` is the generation: ``"legacy"`` (Grails), ``"spring"`` (CE 2023-2025; ``version``
    picks the release, default 5.2.0) or ``"current"`` (monorepo after 2025-12); see
    :mod:`cytomine_server.profiles`. ``timeout_delay`` is how long a ``"timeout"`` fault holds a
    request before closing it.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, *, profile: str, version: str | None = None,
                 timeout_delay: float = 5.0, username: str = "testuser") -> None:
        self.profile: Profile = make_profile(profile, version)
        self._own_dir = workdir is None
        self.workdir = tempfile.mkdtemp(prefix="cytomine-test-server-") if workdir is None else os.fspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.db_path = os.path.join(self.workdir, "cytomine.sqlite3")
        if os.path.exists(self.db_path):
            os.remove(self.db_path)
        self.store = Store(self.db_path)
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
                                             algo=bool(owner["algo"]) and self.profile.legacy,
                                             source="seed")

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
                return self._ping(req)
            if not req.path.startswith("/api/"):
                raise self._unknown_route(req)
            refusal = self._authenticate(req)
            if refusal is not None:
                return refusal
            handler, params, other_method = self.router.match(req.method, req.path)
            feature = getattr(handler, "_feature", None)
            if handler is None or (feature is not None and not getattr(self.profile, feature)):
                if other_method and handler is None:
                    msg = f"Method not allowed: {req.method} {req.path}"
                    raise HttpError(405, msg, {"errors": {"message": msg}})
                raise self._unknown_route(req)
            return handler(self, req, **params)
        except HttpError as exc:
            if exc.missing is not None and self.profile.legacy:  # RestController.responseNotFound
                domain, ident = exc.missing
                return json_response({"errors": {"message": f"{domain} not found with id : {ident}"}}, 404)
            if exc.html:
                return Response(exc.status, html_error(exc.status, self.url), "text/html;charset=UTF-8")
            return json_response(exc.body, exc.status)
        except Exception:
            tb = traceback.format_exc()
            self.errors.append(f"{req.method} {req.target}\n{tb}")
            return json_response({"success": False, "errors": {"message": tb.strip().splitlines()[-1]}}, 500)

    def _unknown_route(self, req: Request) -> HttpError:
        msg = f"No endpoint {req.method} {req.path}"
        return HttpError(404, msg, {"errors": {"message": msg}}, html=self.profile.html_errors)

    def _ping(self, req: Request) -> Response:
        """``/server/ping``: GET (and POST but on the monorepo core) without authentication; the
        ``.json`` alias is gone from the monorepo core."""
        if req.path.endswith(".json") and not self.profile.ping_json:
            raise self._unknown_route(req)
        if req.method not in (("GET",) if self.profile.name == "current" else ("GET", "POST")):
            raise HttpError(405, "Method not allowed", html=self.profile.html_errors)
        self._authenticate(req, required=False)
        return self.ping(req)

    def _authenticate(self, req: Request, required: bool = True) -> Response | None:
        """Sign-in as the profile's core does it; the refusal to send when `required`, else None."""
        p = self.profile
        result = _auth.verify(req.method, req.target, req.headers, self.store.user_by_public_key,
                              with_path=p.signs_path, empty_type_retry=p.empty_type_retry)
        if result.user is not None:
            req.user, req.auth = result.user, result.variant
            return None
        if not required:
            return None
        if p.login_redirect and not result.unknown_key and req.headers.get("nopage") != "true":
            # Grails: the request stays anonymous and Spring Security sends it to the login page
            return Response(302, b"", "text/html;charset=UTF-8", {"Location": f"{self.url}/login/auth"})
        if p.html_errors:
            return Response(401, html_error(401, self.url), "text/html;charset=UTF-8")
        body = {"success": False, "errors": {"message": f"Unauthorized: {result.error}"}}
        return json_response(body, 401)

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
