"""The Cytomine App Engine's file protocol for a task's inputs and outputs (Cytomine docs, "Task
I/O"): each parameter is a file or folder named exactly like it in the input or output folder.
A scalar is a file holding its value as plain UTF-8 text (`true`/`false`, a number); an image is
the original file, renamed to the parameter's name without its extension (a zipped WSI DICOM
arrives unzipped, as a folder); an array is a folder of items `0`, `1`, ... and `array.yml`
stating its size.

Reading turns each malformed input into a one-line CysegError that names the input. Writing puts
the outputs in place only once all of them are complete, so a run that fails leaves none: the
App Engine fails a run whose outputs are missing, rather than keeping half of them.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from segmenter.errors import CysegError, one_line

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
# TIFF flavours whose OpenSlide driver needs the file's usual extension, by tifffile's is_<flavour> flag
TIFF_FLAVOURS = {"svs": ".svs", "ndpi": ".ndpi", "scn": ".scn", "bif": ".bif"}
IMAGE_KINDS = "a TIFF (SVS, NDPI, SCN, pyramidal TIFF), DICOM, PNG or JPEG file"


@dataclass(frozen=True)
class Bounds:
    """The range of a `number` input, as its descriptor states it (`gt`, `geq`, `leq`)."""

    gt: float | None = None
    geq: float | None = None
    leq: float | None = None

    def check(self, name: str, value: float) -> float:
        """`value` if it lies in the range, else a CysegError naming the input."""
        inside = ((self.gt is None or value > self.gt) and (self.geq is None or value >= self.geq)
                  and (self.leq is None or value <= self.leq))
        if not inside:
            raise CysegError(f"input {name} is {value:g}; it must be {self.describe()}")
        return value

    def describe(self) -> str:
        """The range in words, e.g. 'between 0 and 1' or '> 0'."""
        if self.geq is not None and self.leq is not None:
            return f"between {self.geq:g} and {self.leq:g}"
        parts = [f"{op} {bound:g}" for op, bound in ((">", self.gt), (">=", self.geq), ("<=", self.leq))
                 if bound is not None]
        return " and ".join(parts) or "a number"


def read_value(folder: Path, name: str) -> str | None:
    """The text of scalar input `name`, stripped; None when it was not given (no file, or an
    empty one: an optional input left empty)."""
    path = folder / name
    if not path.exists():
        return None
    if path.is_dir():
        raise CysegError(f"input {name} ({path}) is a folder; this input is a file holding its value")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise CysegError(f"input {name} ({path}) is not UTF-8 text") from None
    except OSError as exc:
        raise CysegError(f"input {name} ({path}) cannot be read: {exc.strerror or one_line(exc)}") from None
    return text or None


def read_number(folder: Path, name: str, bounds: Bounds) -> float | None:
    """Number input `name` (decimal or scientific notation) checked against `bounds`; None when
    not given. Infinity and NaN are refused (the descriptor does not allow them)."""
    text = read_value(folder, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise CysegError(f"input {name} is {text[:40]!r}, not a number; it must be {bounds.describe()}") from None
    if not math.isfinite(value):
        raise CysegError(f"input {name} is {text!r}; it must be a finite number {bounds.describe()}")
    return bounds.check(name, value)


def read_boolean(folder: Path, name: str) -> bool | None:
    """Boolean input `name` (`true` or `false`, in any case); None when not given."""
    text = read_value(folder, name)
    if text is None:
        return None
    if text.lower() not in ("true", "false"):
        raise CysegError(f"input {name} is {text[:40]!r}; it must be true or false")
    return text.lower() == "true"


def image_file(folder: Path, name: str, work: Path) -> Path:
    """A path to image input `name` that `open_slide` reads. The App Engine drops the file's
    extension, which OpenSlide and the other readers go by for some formats, so the format is
    told from the content and the file is linked under `work` with the extension it calls for.
    A folder (a zipped WSI DICOM, unzipped) gives its first DICOM file, read in place so that
    OpenSlide finds the other levels beside it."""
    path = folder / name
    if not path.exists():
        raise CysegError(f"input {name} is missing ({path} does not exist); the task needs the slide to segment")
    if path.is_dir():
        return _dicom_in(path, name)
    link = work / f"{name}{_suffix(path, name)}"
    link.symlink_to(path.resolve())
    return link


def _head(path: Path, name: str) -> bytes:
    """The first bytes of `path`, enough for every signature tested here."""
    try:
        with path.open("rb") as file:
            return file.read(132)
    except OSError as exc:
        raise CysegError(f"input {name} ({path}) cannot be read: {exc.strerror or one_line(exc)}") from None


def _suffix(path: Path, name: str) -> str:
    """The extension the file's content calls for; CysegError when it is no image we read."""
    head = _head(path, name)
    if head[:4] in TIFF_MAGIC:
        return _tiff_suffix(path)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[128:132] == b"DICM":
        return ".dcm"
    raise CysegError(f"input {name} ({path}) is not a slide: it is not {IMAGE_KINDS}")


def _tiff_suffix(path: Path) -> str:
    """.svs, .ndpi, ... for the TIFF flavours OpenSlide recognises by extension, else .tif (also for
    a damaged TIFF: opening it then reports the damage)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return next((suffix for flavour, suffix in TIFF_FLAVOURS.items() if getattr(tif, f"is_{flavour}")),
                        ".tif")
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError):
        return ".tif"


def _dicom_in(folder: Path, name: str) -> Path:
    """The first DICOM file (by name) in `folder` or below it."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if _head(path, name)[128:132] == b"DICM":
            return path
    raise CysegError(f"input {name} ({folder}) is a folder without a DICOM file; give the slide file, or a zipped "
                     "WSI DICOM folder")


def write_arrays(folder: Path, arrays: dict[str, list[str]]) -> None:
    """Write each output array as the App Engine reads it: `<folder>/<name>/array.yml` (`size: N`)
    and the items `0` ... `N-1`, each holding its text. All are written in a hidden folder and
    moved into place at the end, replacing those of an earlier run; if that fails, the ones already
    moved are removed again, so the folder never holds part of the outputs."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".cyseg-", suffix=".part", dir=folder))
    except OSError as exc:
        raise CysegError(f"cannot write the outputs in {folder}: {exc.strerror or one_line(exc)}") from None
    placed: list[Path] = []
    try:
        for name, items in arrays.items():
            _write_array(staging / name, items)
        for name in arrays:
            target = folder / name
            _remove(target)
            os.replace(staging / name, target)
            placed.append(target)
    except BaseException as exc:
        for target in placed:
            _remove(target)
        if isinstance(exc, OSError):
            raise CysegError(f"cannot write the outputs in {folder}: {exc.strerror or one_line(exc)}") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_array(path: Path, items: list[str]) -> None:
    """One array folder: its size in `array.yml`, then one file per item."""
    path.mkdir()
    (path / "array.yml").write_text(f"size: {len(items)}\n", encoding="utf-8")
    for index, item in enumerate(items):
        (path / str(index)).write_text(item, encoding="utf-8")


def _remove(path: Path) -> None:
    """Remove a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
