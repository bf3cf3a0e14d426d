"""Connecting to a Cytomine server with the real cytomine-python-client, safely: credentials only
from flags the job injects, a config file or environment variables, never printed or logged;
HTTPS certificates verified; every request with a timeout; idempotent GETs retried with back-off;
an unreachable server or refused keys reported as one line instead of the client's 120-s wait
or silent `False` results."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from segmenter.errors import CysegError

log = logging.getLogger(__name__)
ENV = ("CYTOMINE_HOST", "CYTOMINE_PUBLIC_KEY", "CYTOMINE_PRIVATE_KEY")


@dataclass(frozen=True)
class Credentials:
    """Where the server is and the key pair; the keys never appear in repr, logs or messages."""

    host: str
    public_key: str = field(repr=False)
    private_key: str = field(repr=False)


def credentials(host: str | None = None, public_key: str | None = None, private_key: str | None = None,
                config: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Credentials:
    """Credentials from explicit values (a job's injected flags), else a JSON config file
    ({"host", "public_key", "private_key"}), else CYTOMINE_HOST / CYTOMINE_PUBLIC_KEY / CYTOMINE_PRIVATE_KEY."""
    environ = os.environ if environ is None else environ
    values = {"host": host, "public_key": public_key, "private_key": private_key}
    if config is not None:
        path = Path(config)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CysegError(f"Cytomine config {path} cannot be read as JSON ({type(exc).__name__}); "
                             "give a file with host, public_key and private_key") from exc
        if not isinstance(data, dict):
            raise CysegError(f"Cytomine config {path} must hold a JSON object with host, public_key and private_key")
        for key in values:
            values[key] = values[key] or data.get(key)
    for key, name in zip(values, ENV):
        values[key] = values[key] or environ.get(name)
    missing = [name for key, name in zip(values, ENV) if not values[key]]
    if missing:
        raise CysegError(f"no Cytomine credentials: set {', '.join(missing)} (or give --cytomine-config FILE)")
    return Credentials(str(values["host"]), str(values["public_key"]), str(values["private_key"]))


class _SafeSession(requests.Session):
    """A session whose requests always carry a timeout and verify certificates unless told not to."""

    def __init__(self, timeout: float, verify: bool):
        super().__init__()
        self._timeout = timeout
        self.verify = verify

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


#: Statuses the transport adapter retries itself (see `_retrying_adapter`): a caller that gets one
#: back has already seen the retries run out and must not retry again.
TRANSPORT_RETRIED = frozenset({429, 502, 503, 504})


def transport_retried(exc: BaseException | None) -> bool:
    """True for the exceptions `requests` raises once the adapter's retries ran out (MaxRetryError)."""
    if exc is None:
        return False
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return True
    return any(isinstance(arg, urllib3.exceptions.MaxRetryError) for arg in getattr(exc, "args", ()))


def _retrying_adapter(retries: int) -> HTTPAdapter:
    """GETs retried on connection errors and 429/502/503/504 with exponential back-off; writes are not
    retried here (a retried POST could duplicate annotations; uploads resume instead)."""
    return HTTPAdapter(max_retries=Retry(total=retries, connect=retries, read=retries, status=retries,
                                         backoff_factor=0.5, status_forcelist=sorted(TRANSPORT_RETRIED),
                                         allowed_methods=frozenset({"GET", "HEAD"}), raise_on_status=False))


def connect(creds: Credentials, timeout: float = 60.0, verify: bool = True, retries: int = 4):
    """A connected `cytomine.Cytomine` client (the process-wide singleton the client's models use)."""
    from cytomine import Cytomine

    class SafeCytomine(Cytomine):
        def _start(self) -> None:
            self._session = _SafeSession(timeout, verify)
            self._session.mount("http://", _retrying_adapter(retries))
            self._session.mount("https://", _retrying_adapter(retries))
            Cytomine._Cytomine__instance = self
            self.wait_to_accept_connection()
            self._current_user = None
            self.set_current_user()

        def wait_to_accept_connection(self, *args: Any, **kwargs: Any) -> bool:
            url = f"{self._base_url(with_base_path=False)}/server/ping"
            try:
                response = self._session.get(url)
            except requests.exceptions.SSLError as exc:
                raise CysegError(f"Cytomine at {creds.host}: HTTPS certificate not trusted ({type(exc).__name__}); "
                                 "fix the certificate or pass --insecure") from None
            except requests.RequestException as exc:
                raise CysegError(f"cannot reach Cytomine at {creds.host} ({type(exc).__name__}); check the host "
                                 "address and the network") from None
            if response.status_code != 200:
                raise CysegError(f"Cytomine at {creds.host} answered HTTP {response.status_code} to /server/ping; "
                                 "check the host address")
            return True

    try:
        client = SafeCytomine(creds.host, creds.public_key, creds.private_key, verbose=logging.WARNING,
                              use_cache=False, configure_logging=False)
    except requests.RequestException as exc:
        raise CysegError(f"cannot reach Cytomine at {creds.host} ({type(exc).__name__}); check the host and network") from None
    if not client.current_user:
        raise CysegError(f"Cytomine at {creds.host} refused the keys (authentication failed); check "
                         "CYTOMINE_PUBLIC_KEY and CYTOMINE_PRIVATE_KEY")
    log.info("connected to Cytomine at %s as %s", creds.host, getattr(client.current_user, "username", "?"))
    return client
