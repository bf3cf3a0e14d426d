"""Write files and folders under a temporary name and rename them into place, so a crash never
leaves a half-written output that looks complete."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from segmenter.errors import CysegError


def _cannot_write(target: Path, exc: OSError) -> str:
    """The one-line message for an output that cannot be written."""
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(target) else ""
    return f"cannot write {target}: {exc.strerror or exc}{where}; free disk space or choose another path"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_dir(target: Path) -> Path:
    """A new hidden folder beside `target`, with the permissions the umask gives any new folder
    (mkdtemp makes 0700, which would hide the output from colleagues on a shared server)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; rename it onto `target` if the block succeeds."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise CysegError(_cannot_write(target, exc)) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise CysegError(_cannot_write(target, exc)) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it onto `target` if the block succeeds."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise CysegError(f"output folder {target} already exists; choose a new --out or remove it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_dir(target)
    except OSError as exc:
        raise CysegError(_cannot_write(target, exc)) from exc
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CysegError(_cannot_write(target, exc)) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
