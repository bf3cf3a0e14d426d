"""SQLite storage of the test server: one file, one connection, every access under one lock."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

SCHEMA = """
CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL, public_key TEXT UNIQUE NOT NULL,
    private_key TEXT NOT NULL, algo INTEGER NOT NULL DEFAULT 0, admin INTEGER NOT NULL DEFAULT 0,
    job INTEGER, creator INTEGER, created INTEGER NOT NULL);
CREATE TABLE ontologies (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created INTEGER NOT NULL);
CREATE TABLE terms (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ontology INTEGER NOT NULL, color TEXT,
    parent INTEGER, created INTEGER NOT NULL);
CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL, ontology INTEGER, created INTEGER NOT NULL);
CREATE TABLE images (id INTEGER PRIMARY KEY, project INTEGER NOT NULL, base_image INTEGER NOT NULL,
    slice INTEGER NOT NULL, path TEXT NOT NULL, original_filename TEXT, instance_filename TEXT,
    width INTEGER NOT NULL, height INTEGER NOT NULL, magnification INTEGER, physical_size REAL,
    mime TEXT, max_zoom INTEGER, user INTEGER, created INTEGER NOT NULL);
CREATE TABLE annotations (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, image INTEGER NOT NULL,
    slice INTEGER, project INTEGER NOT NULL, user INTEGER NOT NULL, location TEXT NOT NULL,
    received TEXT, geometry_compression REAL DEFAULT 0.0, created INTEGER NOT NULL,
    updated INTEGER, source TEXT NOT NULL);
CREATE TABLE annotation_terms (id INTEGER PRIMARY KEY, annotation INTEGER NOT NULL, term INTEGER NOT NULL,
    user INTEGER, created INTEGER NOT NULL);
CREATE TABLE software (id INTEGER PRIMARY KEY, name TEXT NOT NULL, version TEXT, execute_command TEXT,
    pulling_command TEXT, created INTEGER NOT NULL);
CREATE TABLE software_parameters (id INTEGER PRIMARY KEY, software INTEGER NOT NULL, name TEXT NOT NULL,
    type TEXT NOT NULL, default_value TEXT, required INTEGER NOT NULL DEFAULT 0,
    set_by_server INTEGER NOT NULL DEFAULT 0, server_parameter INTEGER NOT NULL DEFAULT 0, idx INTEGER,
    human_name TEXT, value_key TEXT, command_line_flag TEXT, uri TEXT, uri_print TEXT, uri_sort TEXT,
    created INTEGER NOT NULL);
CREATE TABLE jobs (id INTEGER PRIMARY KEY, software INTEGER NOT NULL, project INTEGER NOT NULL,
    user_job INTEGER NOT NULL, creator INTEGER NOT NULL, number INTEGER NOT NULL, status INTEGER NOT NULL,
    progress INTEGER NOT NULL, status_comment TEXT, created INTEGER NOT NULL, updated INTEGER);
CREATE TABLE job_history (seq INTEGER PRIMARY KEY AUTOINCREMENT, job INTEGER NOT NULL, status INTEGER,
    progress INTEGER, status_comment TEXT, user INTEGER, at REAL NOT NULL, body TEXT);
CREATE TABLE job_parameters (id INTEGER PRIMARY KEY, job INTEGER NOT NULL, software_parameter INTEGER NOT NULL,
    value TEXT, created INTEGER NOT NULL);
CREATE TABLE attached_files (id INTEGER PRIMARY KEY, domain_class TEXT NOT NULL, domain_kind TEXT NOT NULL,
    domain_ident INTEGER NOT NULL, filename TEXT NOT NULL, key TEXT, data BLOB NOT NULL, user INTEGER,
    created INTEGER NOT NULL);
CREATE TABLE properties (id INTEGER PRIMARY KEY, domain_class TEXT NOT NULL, domain_kind TEXT NOT NULL,
    domain_ident INTEGER NOT NULL, key TEXT NOT NULL, value TEXT, user INTEGER, created INTEGER NOT NULL);
CREATE TABLE requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, method TEXT, path TEXT, query TEXT,
    status INTEGER, user INTEGER, auth TEXT, fault TEXT, at REAL);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """Thin typed layer over the SQLite file. Rows come back as plain dicts."""

    def __init__(self, path: str, first_id: int = 1000) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        self._next_id = first_id

    # -- generic --------------------------------------------------------------------------------
    def new_id(self) -> int:
        """Cytomine ids come from one global sequence: an id names at most one object."""
        with self.lock:
            self._next_id += 1
            return self._next_id

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self.lock:
            return self.db.execute(sql, tuple(params))

    def all(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.db.execute(sql, tuple(params)).fetchall()]

    def one(self, sql: str, params: Iterable[Any] = ()) -> dict | None:
        with self.lock:
            row = self.db.execute(sql, tuple(params)).fetchone()
            return dict(row) if row is not None else None

    def insert(self, table: str, **values: Any) -> int:
        if "id" not in values and table not in ("job_history", "requests"):
            values["id"] = self.new_id()
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self.lock:
            cur = self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(values.values()))
            return values.get("id", cur.lastrowid)

    def get(self, table: str, ident: Any) -> dict | None:
        try:
            ident = int(ident)
        except (TypeError, ValueError):
            return None
        return self.one(f"SELECT * FROM {table} WHERE id = ?", (ident,))

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- users ----------------------------------------------------------------------------------
    def add_user(self, username: str | None = None, *, algo: bool = False, admin: bool = False,
                 job: int | None = None, creator: int | None = None, public_key: str | None = None,
                 private_key: str | None = None) -> tuple[int, str, str]:
        public_key = public_key or str(uuid.uuid4())
        private_key = private_key or str(uuid.uuid4())
        ident = self.new_id()
        username = username or (f"userjob{ident}" if algo else f"user{ident}")
        self.insert("users", id=ident, username=username, public_key=public_key, private_key=private_key,
                    algo=int(algo), admin=int(admin), job=job, creator=creator, created=now_ms())
        return ident, public_key, private_key

    def user_by_public_key(self, public_key: str) -> dict | None:
        return self.one("SELECT * FROM users WHERE public_key = ?", (public_key,))

    # -- annotations ----------------------------------------------------------------------------
    def annotation_terms(self, annotation: int) -> list[int]:
        rows = self.all("SELECT term FROM annotation_terms WHERE annotation = ? ORDER BY id", (annotation,))
        return [r["term"] for r in rows]

    def add_annotation_row(self, *, image: dict, user: dict, location: str, terms: Iterable[int] = (), algo: bool,
                           received: str | None = None, source: str = "api",
                           compression: float = 0.0) -> int:
        ts = now_ms()
        ident = self.insert("annotations", kind="algo" if algo else "user", image=image["id"],
                            slice=image["slice"], project=image["project"], user=user["id"], location=location,
                            received=received, geometry_compression=compression, created=ts, updated=ts,
                            source=source)
        for term in terms:
            self.insert("annotation_terms", annotation=ident, term=int(term), user=user["id"], created=ts)
        return ident

    # -- jobs -----------------------------------------------------------------------------------
    def record_job_update(self, job: int, status: int | None, progress: int | None, comment: str | None,
                          user: int | None, body: Any) -> None:
        self.insert("job_history", job=job, status=status, progress=progress, status_comment=comment,
                    user=user, at=time.time(), body=json.dumps(body) if body is not None else None)
