"""The only code that sends requests to a Cytomine server. Every request is built and signed here
(through the real cytomine-python-client's session, the one module allowed to use its private
`_get/_post/_put/_session`), carries a timeout, verifies certificates unless told not to, follows
the one retry policy (`segmenter.cytomine.retry`) and fails with a typed error
(`segmenter.cytomine.errors`). An unreachable server or refused keys are one line, instead of the
client's long wait for the server or silent `False` results; the keys are never printed or logged.

Signing: client 4.x signs without the request path, which only the current core verifies. The
session here replaces the client's signature on every request by `Signature`, with or without the
path as the server's generation verifies (`segmenter.cytomine.generations`, found once per
connection by `detect` or given as --cytomine-api). `cytomine_client` gives a plain client object
the same session, for code and tests that drive the client's models.

Hosts: the host string may hold a user name and password (`https://user:pw@host`); requests go to
it without them, and messages name it as `scheme://name:port` only (`safe_host`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
import urllib3

from segmenter.cytomine import generations
from segmenter.cytomine.credentials import Credentials, connect_url, safe_host, server_fingerprint
from segmenter.cytomine.errors import AccessRefused, HttpStatusError, ServerFailure, status_error
from segmenter.cytomine.retry import REQUEST_ERRORS, RetryPolicy, describe
from segmenter.errors import CysegError
from segmenter.io.images import decode_rgb

log = logging.getLogger(__name__)
T = TypeVar("T")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_FIELDS = ("id", "username", "algo", "job")  # kept from the user JSON, which also holds its keys
PAGE = 1000  # items per page where the server pages Spring-style (page/size)


class _BadAnswer(Exception):
    """A 200 answer whose body is unusable (undecodable image bytes): retried."""


class Connection:
    """A connection to one Cytomine server with one key pair; see the module docstring.

    `api` is the server's generation (legacy, spring, current) or auto (found when connecting);
    `self.api` is the generation in use. Pickles as its credentials (without the keys), policy
    and generation; the copy reconnects on first use, without probing again."""

    def __init__(self, creds: Credentials, policy: RetryPolicy | None = None, api: str | None = None) -> None:
        """Connect at once: the server is pinged, its generation found and the keys checked
        (CysegError otherwise)."""
        self.creds = creds
        self.policy = policy or RetryPolicy()
        self.host = safe_host(creds.host)
        self.api = generations.check_choice(api if api and api != generations.AUTO else creds.api)
        self.user: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._client: Any = None
        if not creds.verify:
            log.warning("not verifying the HTTPS certificate of %s (--insecure): verification is OFF, the "
                        "connection can be intercepted", self.host)
        self._open()

    def __getstate__(self) -> dict[str, Any]:
        return {"creds": self.creds, "policy": self.policy, "host": self.host, "api": self.api, "user": self.user}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._client = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection({self.host!r}, {self.api}, user={self.user.get('username')!r})"

    @property
    def user_id(self) -> int | None:
        """Id of the user the keys belong to."""
        ident = self.user.get("id")
        return int(ident) if isinstance(ident, int) else None

    @property
    def server_id(self) -> str:
        """What output files may record of the server: a digest of its normalised address."""
        return server_fingerprint(self.creds.host)

    def require(self, feature: str) -> None:
        """CysegError naming this server's generation when `feature` does not exist there."""
        generations.require(self.api, feature, self.host)

    # ------------------------------------------------------------------ life cycle ----------------
    def _open(self) -> None:
        with self._lock:
            creds = self.creds.with_keys()
            if not creds.verify:  # said once, by the constructor, instead of by urllib3 on every request
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            _quiet_transport_logs()
            self._client = _signing_client(creds, self.policy)
            try:
                ping = _ping(self._client, self.host)
                self.api = generations.detect(self.api, ping, self._keys_accepted, self.host)
                self._client._session.with_path = generations.signs_path(self.api)
            except BaseException:
                self._client = None
                raise
            log.info("connected to Cytomine at %s (%s) as %s", self.host, self.api, self.user.get("username", "?"))

    def _keys_accepted(self, with_path: bool) -> bool:
        """Whether the keys' user is served with that signature style (and keep the user)."""
        self._client._session.with_path = with_path
        try:
            user = self.get_json("user/current.json", what=f"the user of these keys on {self.host}")
        except HttpStatusError as exc:
            if isinstance(exc, AccessRefused) or exc.status in REDIRECTS:
                return False
            raise
        if not isinstance(user, dict) or "id" not in user:
            raise CysegError(f"Cytomine at {self.host} did not say whose keys these are; check the host address")
        self.user = {name: user[name] for name in USER_FIELDS if name in user}
        return True

    @property
    def client(self) -> Any:
        """The signing client; after unpickling, a new connection (keys from config/environment)."""
        with self._lock:
            if self._client is None:
                self._open()
            return self._client

    def switch_keys(self, public_key: str, private_key: str) -> None:
        """Work with another key pair from now on (a job's own user)."""
        with self._lock:
            client = self.client
            self.creds = self.creds.with_key_pair(public_key, private_key)
            client._public_key, client._private_key = public_key, private_key
            if not self._keys_accepted(generations.signs_path(self.api)):
                raise CysegError(f"Cytomine at {self.host} refused the job user's keys (authentication failed)")

    def close(self) -> None:
        """Close the HTTP session and forget the client's process-wide singleton."""
        from cytomine import Cytomine

        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        try:
            client._session.close()
        finally:
            if Cytomine._Cytomine__instance is client:  # the client's name-mangled singleton slot
                Cytomine._Cytomine__instance = None

    # ------------------------------------------------------------------ requests ------------------
    def get_json(self, uri: str, params: dict[str, Any] | None = None, *, what: str) -> Any:
        """GET `uri` (relative to /api/) as JSON, retried; `what` names the object in messages."""
        return self._request("GET", uri, what, params=params, parse=_json_of(what))

    def get_collection(self, uri: str, params: dict[str, Any] | None = None, *, what: str) -> list[dict[str, Any]]:
        """Every item of a collection: one request for the whole of it (`max=0`), or page by page
        where the server pages Spring-style and ignores `max` (the current core's term lists)."""
        params = {**(params or {}), "max": 0, "offset": 0}
        rows: list[dict[str, Any]] = []
        page = 0
        while True:
            if self.api == generations.CURRENT:
                params.update(page=page, size=PAGE)
            data = self.get_json(uri, params, what=what)
            items = data.get("collection") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise ServerFailure(f"{what}: the server's answer has no collection; check the host address")
            rows += [row for row in items if isinstance(row, dict) and "id" in row]
            page += 1
            total = data.get("totalPages")
            if self.api != generations.CURRENT or not items or not isinstance(total, int) or page >= total:
                return rows

    def get_bytes(self, uri: str, params: dict[str, Any] | None = None, *, what: str) -> bytes:
        """GET the body of an image request, retried; a redirect to the image server is followed."""
        return self._request("GET", uri, what, params=params, follow=True, parse=lambda r: r.content)

    def get_image(self, uri: str, params: dict[str, Any] | None = None, *, what: str) -> np.ndarray:
        """GET an image as RGB uint8 through the shared decoder; bytes that do not decode are retried."""
        return self._request("GET", uri, what, params=params, follow=True, parse=_decoded)

    def put_json(self, uri: str, body: Any, *, what: str) -> Any:
        """PUT a whole object as JSON, retried (sending the same object again is harmless)."""
        return self._request("PUT", uri, what, body=body, parse=_json_of(what))

    def post_json(self, uri: str, body: Any, *, what: str) -> Any:
        """POST JSON once and return the JSON answer: never retried, since a POST whose answer was
        lost may have created its objects."""
        return self._request("POST", uri, what, body=body, retry=False, parse=_json_of(what))

    def post_file(self, uri: str, params: dict[str, Any], path: Path, *, what: str) -> Any:
        """POST a file once as the multipart part `files[]` (attached files), signed with the
        multipart content type as the cores verify it; the JSON answer."""
        return self._request("POST", uri, what, params=params, body=Path(path), retry=False, parse=_json_of(what))

    def post_once(self, uri: str, body: Any, *, what: str) -> requests.Response:
        """POST JSON once and return the answer whatever its status, for callers that read the
        outcome themselves; ServerFailure (with `reason`) when no answer came back."""
        try:
            response = self._send("POST", uri, None, body, follow=False)
            response.content  # noqa: B018  (a truncated answer raises here)
        except REQUEST_ERRORS as exc:
            reason = describe(exc)
            raise ServerFailure(f"{what}: {reason}", reason) from None
        return response

    def _send(self, method: str, uri: str, params: dict[str, Any] | None, body: Any,
              follow: bool) -> requests.Response:
        """Build, sign and send one request (the single place a request is made)."""
        client = self.client
        if method == "GET":
            response = client._get(uri, params)
            location = response.headers.get("Location")
            if follow and response.status_code in REDIRECTS and location:
                # the image server answers without our signature: follow it unsigned
                response = client._session.get(urljoin(response.url, location))
            return response
        if isinstance(body, Path):
            return _post_multipart(client, uri, params, body)
        data = None if body is None else json.dumps(body)
        if method == "POST":
            return client._post(uri, data, params)
        if method == "PUT":
            return client._put(uri, data, params)
        raise ValueError(f"unsupported method {method}")

    def _request(self, method: str, uri: str, what: str, *, params: dict[str, Any] | None = None,
                 body: Any = None, parse: Callable[[requests.Response], T], retry: bool = True,
                 follow: bool = False) -> T:
        """Send under the retry policy and return `parse` of the 200 answer; typed errors otherwise."""
        attempts = self.policy.attempts if retry else 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                log.debug("%s: %s; retry %d/%d", what, last, attempt, attempts - 1)
                time.sleep(self.policy.delay(attempt - 1))
            try:
                response = self._send(method, uri, params, body, follow)
                response.content  # noqa: B018  (read the body now: a truncated body raises here)
            except REQUEST_ERRORS as exc:
                if self.policy.transport_gave_up(method, error=exc):
                    raise ServerFailure(f"{what}: Cytomine unreachable ({type(exc).__name__}) after the connection's "
                                        "retries; check the server and rerun", describe(exc)) from None
                last = describe(exc)
                continue
            status = response.status_code
            if status == 200:
                try:
                    return parse(response)
                except _BadAnswer as exc:
                    last = str(exc)
                    continue
            if self.policy.transport_gave_up(method, status=status):
                raise ServerFailure(f"{what}: Cytomine answered HTTP {status} after the connection's retries; "
                                    "check the server and rerun", f"HTTP {status}")
            if not self.policy.retriable(status):
                raise status_error(response, what, self.host)
            last = f"HTTP {status}"
        if attempts == 1:
            raise ServerFailure(f"{what}: {last}; check the server", last)
        raise ServerFailure(f"{what}: no valid answer from Cytomine after {attempts} attempts (last: {last}); "
                            "check the server and rerun", last)


def _json_of(what: str) -> Callable[[requests.Response], Any]:
    def parse(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise CysegError(f"{what}: Cytomine answered something that is not JSON; check the host address") from None

    return parse


def _decoded(response: requests.Response) -> np.ndarray:
    pixels = decode_rgb(response.content)
    if pixels is None:
        raise _BadAnswer(f"not a decodable image ({len(response.content)} bytes)")
    return pixels


class Signature(requests.auth.AuthBase):
    """The CYTOMINE HMAC-SHA1 authorization header: `METHOD\\n\\nCONTENT-TYPE\\nDATE`, followed by
    `\\n<path>[?<query>]` of the request as sent when `with_path` (the Grails and Spring cores)."""

    def __init__(self, public_key: str, private_key: str, with_path: bool) -> None:
        self.public_key, self.private_key, self.with_path = public_key, private_key, with_path

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = [r.method or "", "", r.headers.get("content-type", ""), r.headers["date"]]
        if self.with_path:
            url = urlsplit(r.url or "")
            parts.append(url.path + (f"?{url.query}" if url.query else ""))
        mac = hmac.new(self.private_key.encode(), "\n".join(parts).encode(), hashlib.sha1).digest()
        r.headers["authorization"] = f"CYTOMINE {self.public_key}:{base64.b64encode(mac).decode()}"
        return r


class SigningSession(requests.Session):
    """The client's session: every request the client signs is signed again as the server's
    generation verifies (`with_path`); requests carry `timeout` when one is set and verify
    certificates unless told not to."""

    def __init__(self, with_path: bool, timeout: float | None = None, verify: bool = True) -> None:
        super().__init__()
        self.with_path = with_path
        self._timeout = timeout
        self.verify = verify

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        from cytomine.cytomine import CytomineAuth

        if self._timeout is not None:
            kwargs.setdefault("timeout", self._timeout)
        auth = kwargs.get("auth")
        if isinstance(auth, CytomineAuth):
            kwargs["auth"] = Signature(auth.public_key, auth.private_key, self.with_path)
        return super().request(method, url, **kwargs)


def cytomine_client(host: str, public_key: str, private_key: str, generation: str, **kwargs: Any) -> Any:
    """A real `cytomine.Cytomine` client (it pings and fetches its user as usual) whose requests are
    signed as `generation`'s core verifies; `kwargs` go to the client (verbose, use_cache, ...)."""
    from cachecontrol import CacheControlAdapter
    from cytomine import Cytomine

    with_path = generations.signs_path(generations.check_choice(generation))

    class GenerationClient(Cytomine):
        def _start(self) -> None:
            self._session = SigningSession(with_path)
            if self._use_cache:
                self._session.mount(f"{self._protocol}://", CacheControlAdapter())
            Cytomine._Cytomine__instance = self
            self.wait_to_accept_connection()
            self._current_user = None
            self.set_current_user()

    return GenerationClient(connect_url(host), public_key, private_key, **kwargs)


def _signing_client(creds: Credentials, policy: RetryPolicy) -> Any:
    """A `cytomine.Cytomine` client (the process-wide singleton) whose session has the policy's
    adapter and signs path-less until the generation is known; it sends nothing yet."""
    from cytomine import Cytomine

    class SigningClient(Cytomine):
        def _start(self) -> None:
            session = SigningSession(False, creds.timeout, creds.verify)
            session.mount("http://", policy.adapter())
            session.mount("https://", policy.adapter())
            self._session = session
            self._current_user = None
            Cytomine._Cytomine__instance = self

    return SigningClient(connect_url(creds.host), creds.public_key, creds.private_key, verbose=logging.WARNING,
                         use_cache=False, configure_logging=False)


def _ping(client: Any, host: str) -> dict[str, Any]:
    """The /server/ping answer (unsigned on every core); CysegError when the server cannot be reached."""
    try:
        response = client._session.get(f"{client._base_url(with_base_path=False)}/server/ping")
    except requests.exceptions.SSLError as exc:
        raise CysegError(f"Cytomine at {host}: HTTPS certificate not trusted ({type(exc).__name__}); "
                         "fix the certificate or pass --insecure") from None
    except REQUEST_ERRORS as exc:
        raise CysegError(f"cannot reach Cytomine at {host} ({type(exc).__name__}); check the host address "
                         "and the network") from None
    if response.status_code != 200:
        raise CysegError(f"Cytomine at {host} answered HTTP {response.status_code} to /server/ping; "
                         "check the host address")
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _post_multipart(client: Any, uri: str, params: dict[str, Any] | None, path: Path) -> requests.Response:
    """POST `path` as the part `files[]` through the client's session (signed there)."""
    from cytomine.cytomine import CytomineAuth
    from requests_toolbelt import MultipartEncoder

    with open(path, "rb") as handle:
        body = MultipartEncoder(fields={"files[]": (path.name, handle)})
        return client._session.post(f"{client._base_url()}{uri}", params=params, data=body,
                                    headers=client._headers(content_type=body.content_type),
                                    auth=CytomineAuth(client._public_key, client._private_key, client._base_url(),
                                                      client._base_path))


class _UnlessDebug(logging.Filter):
    """Drops the client's and urllib3's records unless we log at DEBUG (-v)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return log.isEnabledFor(logging.DEBUG)


_FILTER = _UnlessDebug()


def _quiet_transport_logs() -> None:
    """urllib3 logs every retry as a warning and the client logs calls; failures are reported
    once, in our words. A filter, because the client resets its logger's level."""
    for name in ("cytomine.client", "urllib3.connectionpool"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
