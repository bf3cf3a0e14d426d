"""The only code that sends requests to a Cytomine server. Every request is built and signed here
(by the real cytomine-python-client's session, the one module allowed to use its private
`_get/_post/_put/_session`), carries a timeout, verifies certificates unless told not to, follows
the one retry policy (`segmenter.cytomine.retry`) and fails with a typed error
(`segmenter.cytomine.errors`). An unreachable server or refused keys are one line, instead of the
client's long wait for the server or silent `False` results; the keys are never printed or logged.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit, urlunsplit

import numpy as np
import requests
import urllib3

from segmenter.cytomine.credentials import Credentials
from segmenter.cytomine.errors import AccessRefused, HttpStatusError, ServerFailure, status_error
from segmenter.cytomine.retry import REQUEST_ERRORS, RetryPolicy, describe
from segmenter.errors import CysegError
from segmenter.io.images import decode_rgb

log = logging.getLogger(__name__)
T = TypeVar("T")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
USER_FIELDS = ("id", "username", "algo", "job")  # kept from the user JSON, which also holds its keys


class _BadAnswer(Exception):
    """A 200 answer whose body is unusable (undecodable image bytes): retried."""


class Connection:
    """A connection to one Cytomine server with one key pair; see the module docstring.

    Pickles as its credentials (without the keys) and policy; the copy reconnects on first use."""

    def __init__(self, creds: Credentials, policy: RetryPolicy | None = None) -> None:
        """Connect at once: the server is pinged and the keys checked (CysegError otherwise)."""
        self.creds = creds
        self.policy = policy or RetryPolicy()
        self.host = safe_host(creds.host)
        self.user: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._client: Any = None
        if not creds.verify:
            log.warning("not verifying the HTTPS certificate of %s (--insecure): verification is OFF, the "
                        "connection can be intercepted", self.host)
        self._open()

    def __getstate__(self) -> dict[str, Any]:
        return {"creds": self.creds, "policy": self.policy, "host": self.host, "user": self.user}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._client = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Connection({self.host!r}, user={self.user.get('username')!r})"

    @property
    def user_id(self) -> int | None:
        """Id of the user the keys belong to."""
        ident = self.user.get("id")
        return int(ident) if isinstance(ident, int) else None

    # ------------------------------------------------------------------ life cycle ----------------
    def _open(self) -> None:
        with self._lock:
            creds = self.creds.with_keys()
            if not creds.verify:  # said once, by the constructor, instead of by urllib3 on every request
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            _quiet_transport_logs()
            self._client = _signing_client(creds, self.policy, self.host)
            try:
                self._check_keys()
            except BaseException:
                self._client = None
                raise
            log.info("connected to Cytomine at %s as %s", self.host, self.user.get("username", "?"))

    def _check_keys(self) -> None:
        """Fetch the keys' user; refused keys (401/403, or a redirect to a login page) are one line."""
        try:
            user = self.get_json("user/current.json", what=f"the user of these keys on {self.host}")
        except HttpStatusError as exc:
            if isinstance(exc, AccessRefused) or exc.status in REDIRECTS:
                raise CysegError(f"Cytomine at {self.host} refused the keys (authentication failed); check "
                                 "CYTOMINE_PUBLIC_KEY and CYTOMINE_PRIVATE_KEY") from None
            raise
        if not isinstance(user, dict) or "id" not in user:
            raise CysegError(f"Cytomine at {self.host} did not say whose keys these are; check the host address")
        self.user = {name: user[name] for name in USER_FIELDS if name in user}

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
            self._check_keys()

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


def safe_host(host: str) -> str:
    """The host as it may be shown and recorded: scheme, name and port only (no user info, path or query)."""
    parts = urlsplit(host if "://" in host else f"http://{host}")
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, "", "", ""))


class _SafeSession(requests.Session):
    """A session whose requests always carry a timeout and verify certificates unless told not to."""

    def __init__(self, timeout: float, verify: bool):
        super().__init__()
        self._timeout = timeout
        self.verify = verify

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


def _signing_client(creds: Credentials, policy: RetryPolicy, host: str) -> Any:
    """A `cytomine.Cytomine` client (the process-wide singleton) whose session has the policy's
    adapter, after one ping of the server."""
    from cytomine import Cytomine

    class SigningClient(Cytomine):
        def _start(self) -> None:
            session = _SafeSession(creds.timeout, creds.verify)
            session.mount("http://", policy.adapter())
            session.mount("https://", policy.adapter())
            self._session = session
            self._current_user = None
            Cytomine._Cytomine__instance = self

    client = SigningClient(creds.host, creds.public_key, creds.private_key, verbose=logging.WARNING,
                           use_cache=False, configure_logging=False)
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
    return client


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
