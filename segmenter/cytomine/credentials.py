"""Who talks to which Cytomine server: the host, the key pair and where the keys came from (the
flags a job is given, a JSON config file or the CYTOMINE_* environment variables), TLS
verification and the request timeout. The keys never appear in a repr, a pickle, a log or a
message: another process (a Dask worker) receives the rest and reads the keys again from their
source."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segmenter.errors import CysegError

ENV = ("CYTOMINE_HOST", "CYTOMINE_PUBLIC_KEY", "CYTOMINE_PRIVATE_KEY")
EXPLICIT, CONFIG, ENVIRONMENT = "explicit", "config", "environment"


@dataclass(frozen=True)
class Credentials:
    """A server and a key pair; `source` says where the private key came from (explicit, config
    or environment) and `config` is the config file's absolute path when there is one."""

    host: str
    public_key: str = field(default="", repr=False, compare=False)
    private_key: str = field(default="", repr=False, compare=False)
    source: str = EXPLICIT
    config: str | None = None
    verify: bool = True
    timeout: float = 60.0

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
        return credentials(host=self.host, config=self.config, verify=self.verify, timeout=self.timeout)

    def with_key_pair(self, public_key: str, private_key: str) -> Credentials:
        """The same server with another key pair (a job's user), given explicitly."""
        return dataclasses.replace(self, public_key=public_key, private_key=private_key, source=EXPLICIT,
                                   config=None)


def credentials(host: str | None = None, public_key: str | None = None, private_key: str | None = None,
                config: str | os.PathLike | None = None, environ: dict[str, str] | None = None, *,
                verify: bool = True, timeout: float = 60.0) -> Credentials:
    """Credentials from explicit values (a job's injected flags), else a JSON config file
    ({"host", "public_key", "private_key"}), else CYTOMINE_HOST / CYTOMINE_PUBLIC_KEY / CYTOMINE_PRIVATE_KEY."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {"host": host, "public_key": public_key, "private_key": private_key}
    origin = {key: EXPLICIT for key, value in values.items() if value}
    path = None if config is None else Path(config)
    if path is not None:
        data = _read_config(path)
        for key in values:
            if not values[key] and data.get(key):
                values[key], origin[key] = data[key], CONFIG
    for key, name in zip(values, ENV, strict=True):
        if not values[key] and environ.get(name):
            values[key], origin[key] = environ[name], ENVIRONMENT
    missing = [name for key, name in zip(values, ENV, strict=True) if not values[key]]
    if missing:
        raise CysegError(f"no Cytomine credentials: set {', '.join(missing)} (or give --cytomine-config FILE)")
    return Credentials(str(values["host"]), str(values["public_key"]), str(values["private_key"]),
                       origin["private_key"], None if path is None else str(path.resolve()), verify, timeout)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CysegError(f"Cytomine config {path} cannot be read as JSON ({type(exc).__name__}); "
                         "give a file with host, public_key and private_key") from exc
    if not isinstance(data, dict):
        raise CysegError(f"Cytomine config {path} must hold a JSON object with host, public_key and private_key")
    return data
