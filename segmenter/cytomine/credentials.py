"""Who talks to which Cytomine server: the host, the key pair and where the keys came from (the
flags a job is given, a JSON config file or the CYTOMINE_* environment variables), the server's
generation when known (--cytomine-api, or the config file's `api`), TLS verification and the
request timeout. The keys never appear in a repr, a pickle, a log or a message: another process
(a Dask worker) receives the rest and reads the keys again from their source. The host string
never appears in a repr, a message or a file either (it may hold `user:password@`): messages show
`safe_host`, files `server_fingerprint`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from segmenter.errors import CysegError

ENV = ("CYTOMINE_HOST", "CYTOMINE_PUBLIC_KEY", "CYTOMINE_PRIVATE_KEY")
EXPLICIT, CONFIG, ENVIRONMENT = "explicit", "config", "environment"


@dataclass(frozen=True)
class Credentials:
    """A server and a key pair; `source` says where the private key came from (explicit, config
    or environment) and `config` is the config file's absolute path when there is one."""

    host: str = field(repr=False)
    public_key: str = field(default="", repr=False, compare=False)
    private_key: str = field(default="", repr=False, compare=False)
    source: str = EXPLICIT
    config: str | None = None
    verify: bool = True
    timeout: float = 60.0
    api: str = "auto"

    def __repr__(self) -> str:
        return f"Credentials({safe_host(self.host)!r}, source={self.source!r}, api={self.api!r})"

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise CysegError(f"the Cytomine timeout {self.timeout} must be positive (seconds)")

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the keys."""
        return {**self.__dict__, "public_key": "", "private_key": ""}

    def with_keys(self) -> Credentials:
        """These credentials, with the keys read again from their source after unpickling."""
        if self.public_key and self.private_key:
            return self
        if self.source == EXPLICIT:
            raise CysegError("the Cytomine keys given on the command line are not sent to other processes; give "
                             "them in a config file (--cytomine-config) or in CYTOMINE_PUBLIC_KEY / "
                             "CYTOMINE_PRIVATE_KEY")
        return credentials(host=self.host, config=self.config, verify=self.verify, timeout=self.timeout,
                           api=self.api)

    def with_key_pair(self, public_key: str, private_key: str) -> Credentials:
        """The same server with another key pair (a job's user), given explicitly."""
        return dataclasses.replace(self, public_key=public_key, private_key=private_key, source=EXPLICIT,
                                   config=None)


def credentials(host: str | None = None, public_key: str | None = None, private_key: str | None = None,
                config: str | os.PathLike | None = None, environ: dict[str, str] | None = None, *,
                verify: bool = True, timeout: float = 60.0, api: str | None = None) -> Credentials:
    """Credentials from explicit values (a job's injected flags), else a JSON config file
    ({"host", "public_key", "private_key"[, "api"]}), else CYTOMINE_HOST / CYTOMINE_PUBLIC_KEY /
    CYTOMINE_PRIVATE_KEY. `api` (not auto) wins over the config file's."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {"host": host, "public_key": public_key, "private_key": private_key}
    origin = {key: EXPLICIT for key, value in values.items() if value}
    path = None if config is None else Path(config)
    data = {} if path is None else _read_config(path)
    for key in values:
        if not values[key] and data.get(key):
            values[key], origin[key] = data[key], CONFIG
    for key, name in zip(values, ENV, strict=True):
        if not values[key] and environ.get(name):
            values[key], origin[key] = environ[name], ENVIRONMENT
    missing = [name for key, name in zip(values, ENV, strict=True) if not values[key]]
    if missing:
        raise CysegError(f"no Cytomine credentials: set {', '.join(missing)} (or give --cytomine-config FILE)")
    if not api or api == "auto":
        api = str(data.get("api") or "auto")
    return Credentials(str(values["host"]), str(values["public_key"]), str(values["private_key"]),
                       origin["private_key"], None if path is None else str(path.resolve()), verify, timeout, api)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CysegError(f"Cytomine config {path} cannot be read as JSON ({type(exc).__name__}); "
                         "give a file with host, public_key and private_key") from exc
    if not isinstance(data, dict):
        raise CysegError(f"Cytomine config {path} must hold a JSON object with host, public_key and private_key")
    return data


def safe_host(host: str) -> str:
    """The host as it may be shown: scheme, name and port only (no user info, path or query)."""
    parts = urlsplit(host if "://" in host else f"http://{host}")
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, "", "", ""))


def connect_url(host: str) -> str:
    """The address requests go to: the host without user info, query or fragment (a path prefix
    is kept)."""
    parts = urlsplit(host if "://" in host else f"http://{host}")
    return safe_host(host) + parts.path.rstrip("/")


def server_fingerprint(host: str) -> str:
    """A short digest of the normalised host: what output files and journals record of the server."""
    return "cytomine-" + hashlib.sha256(safe_host(host).lower().encode()).hexdigest()[:16]
