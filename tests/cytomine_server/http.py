"""HTTP plumbing shared by the routes: parsed requests, responses, errors, the route table."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

JSON_TYPE = "application/json;charset=UTF-8"


class HttpError(Exception):
    """An error response with a Cytomine-shaped JSON body."""

    def __init__(self, status: int, message: str, body: Any = None, *, html: bool = False,
                 missing: tuple[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.body = body if body is not None else {"success": False, "errors": message}
        self.html = html  # answered as the core's HTML error page
        self.missing = missing  # (domain, id) of a 404, worded per core by the server


def not_found(domain: str, ident: Any) -> HttpError:
    """404 as the Spring core's ``ObjectNotFoundException`` sends it (the server words it as the
    Grails core's ``responseNotFound`` on the legacy profile)."""
    msg = f"{domain} not found with filters : {{id={ident}}}"
    return HttpError(404, msg, {"errors": {"message": msg, "values": {"id": str(ident), "domain": domain}}},
                     missing=(domain, ident))


def bad_request(message: str) -> HttpError:
    return HttpError(400, message)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj).encode("utf-8"))


@dataclass
class Request:
    method: str
    target: str              # raw request target: path plus "?query"
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    user: dict | None = None
    auth: str | None = None

    @staticmethod
    def parse_query(raw: str) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    def json(self) -> Any:
        """The JSON body; a form-encoded body (what the client sends for a ``dict`` passed to
        ``Cytomine.post``) is accepted too, as Spring's lenient parsing does not apply there."""
        text = self.body.decode("utf-8", "replace").strip()
        if not text:
            return {}
        try:
            return json.loads(text)
        except ValueError:
            if "=" in text and not text.startswith(("{", "[")):
                return {k: (v if len(v) > 1 else v[0]) for k, v in parse_qs(text, keep_blank_values=True).items()}
            raise bad_request("Json not valid") from None

    def param(self, name: str, default: Any = None) -> Any:
        value = self.query.get(name)
        return default if value is None or value == "" else value

    def bool_param(self, name: str, default: bool = False) -> bool:
        value = self.param(name)
        return default if value is None else str(value).strip().lower() == "true"

    def int_param(self, name: str, default: int | None = None) -> int | None:
        value = self.param(name)
        if value is None or str(value).lower() == "null":
            return default
        try:
            return int(float(value))
        except ValueError:
            raise bad_request(f"Parameter {name} must be a number, got {value!r}") from None

    def float_param(self, name: str, default: float | None = None) -> float | None:
        value = self.param(name)
        if value is None:
            return default
        try:
            return float(value)
        except ValueError:
            raise bad_request(f"Parameter {name} must be a number, got {value!r}") from None

    def list_param(self, name: str) -> list[int] | None:
        """Comma (or underscore) separated ids, as ``StringUtils.extractListFromParameter``."""
        value = self.param(name)
        if value is None:
            return None
        items = [s for s in re.split(r"[,_]", str(value)) if s.strip()]
        try:
            return [int(s) for s in items]
        except ValueError:
            raise bad_request(f"Parameter {name} must be a list of ids, got {value!r}") from None


def paginate(items: list, req: Request) -> dict:
    """``buildJsonList`` (Spring) / ``responseList`` (Grails): offset/max slicing and the page fields."""
    offset = req.int_param("offset", 0) or 0
    max_ = req.int_param("max", 0) or 0
    size = len(items)
    per = max_ if max_ > 0 else 2**31 - 1
    sub = items[offset:offset + per] if offset < size else []
    return {"collection": sub, "offset": offset, "perPage": min(per, size), "size": size,
            "totalPages": math.ceil(size / per) if size else 0}



def ts(value: int | None) -> str | None:
    return None if value is None else str(value)


def message_of(verb: str, name: str, ident: Any) -> str:
    return f"{name} {ident} {'added' if verb == 'Add' else 'edited' if verb == 'Edit' else 'deleted'}"


def respond_command(key: str, obj: dict, verb: str, name: str) -> Response:
    body = {"printMessage": True, "callback": {f"{key}ID": obj.get("id"), "method": f"be.cytomine.{verb}{name}Command"},
            "message": message_of(verb, name, obj.get("id")), key: obj}
    return json_response(body)



Handler = Callable[..., Response]


class Router:
    """Ordered (method, regex, handler) table; path parameters become keyword arguments."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern, Callable]] = []

    def add(self, method: str, pattern: str, handler: Callable) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def match(self, method: str, path: str) -> tuple[Callable | None, dict[str, str], bool]:
        """(handler function, path params, path matched with another method)."""
        other = False
        for m, rx, name in self.routes:
            found = rx.match(path)
            if found:
                if m == method or (method == "HEAD" and m == "GET"):
                    return name, found.groupdict(), False
                other = True
        return None, {}, other


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    """Mark a method of the API class as the handler of ``method pattern``."""
    def deco(fn: Handler) -> Handler:
        fn.__dict__.setdefault("_routes", []).append((method, pattern))
        return fn
    return deco


def needs(feature: str) -> Callable[[Handler], Handler]:
    """Serve the route only on cores whose profile has ``feature`` (a Profile flag); elsewhere it
    does not exist (404, as an unknown route)."""
    def deco(fn: Handler) -> Handler:
        fn.__dict__["_feature"] = feature
        return fn
    return deco


def html_error(status: int, server_url: str) -> bytes:
    """The HTML page of the Spring and monorepo cores' ``CustomErrorController`` (401, 404, else)."""
    subject = {401: "Authorization required", 404: "Resource not found"}.get(status, "Internal Error")
    message = {401: "This page is not publicly available. To access it, please login first or use a valid token.",
               404: "The page does not exists."}.get(status, "")
    return (f"<html><head><title>Cytomine error {status}</title></head><body><div class=\"container\">"
            f"<h1>{status}</h1><h2>{subject}</h2><p>{message}</p><p><a href=\"{server_url}\">Go back to Cytomine "
            "homepage</a></p></div></body></html>").encode()


def parse_multipart(body: bytes, content_type: str) -> list[dict]:
    """Parts of a multipart/form-data body: dicts with name, filename (or None) and data."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        raise bad_request("multipart body without boundary")
    boundary = b"--" + m.group(1).encode("latin-1")
    parts = []
    for chunk in body.split(boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        headers = head.decode("utf-8", "replace")
        name = re.search(r'(?:^|[;\s])name="([^"]*)"', headers)
        filename = re.search(r'filename="([^"]*)"', headers)
        parts.append({"name": name.group(1) if name else None,
                      "filename": filename.group(1) if filename else None, "data": data})
    return parts
