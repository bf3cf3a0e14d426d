"""Whole-slide readers behind one interface: OpenSlide formats, other TIFFs, and plain images.

Every reader returns RGB uint8 regions addressed like OpenSlide (x, y in level-0 pixels, w, h in
pixels of the level read), fills the parts outside the slide with white and composites alpha on
white, so the tiling, tissue detection and segmentation code never depends on the file format.
Readers hold no open handle when pickled: a Dask worker reopens the file on its first read.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import openslide
import tifffile
from PIL import Image

from segmenter.errors import CysegError, one_line
from segmenter.io.images import rgba_on_white, to_rgb
from segmenter.wsi.slide import ArrayReader, SlideReader, positive_float
from segmenter.wsi.tiff import TiffReader

log = logging.getLogger(__name__)

SUPPORTED = "SVS, NDPI, MRXS, SCN, DICOM, CZI, tiled/pyramidal TIFF, PNG, JPEG"
TIFF_SUFFIXES = {".tif", ".tiff"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
# Suffixes that only OpenSlide reads: a file with one of them that OpenSlide rejects is damaged.
OPENSLIDE_SUFFIXES = {".svs", ".svslide", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".dcm", ".czi"}


class OpenSlideReader(SlideReader):
    """Slides OpenSlide detects: SVS, NDPI, MRXS, SCN, DICOM, Zeiss CZI, generic tiled TIFF, ..."""

    _TRANSIENT = ("_slide",)

    def __init__(self, path: str | os.PathLike, fmt: str | None = None) -> None:
        """Open `path` with OpenSlide and read its geometry and metadata."""
        self.path = Path(path)
        self._slide: openslide.OpenSlide | None = None
        slide = self._open()
        self.format = fmt or openslide.OpenSlide.detect_format(str(self.path)) or "openslide"
        props = slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.description = props.get(openslide.PROPERTY_NAME_COMMENT)
        self.level_dimensions = [tuple(map(int, d)) for d in slide.level_dimensions]
        self.level_downsamples = [float(d) for d in slide.level_downsamples]
        self.width, self.height = self.level_dimensions[0]
        self.mpp = positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
        self.magnification = positive_float(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))

    def _reset(self) -> None:
        self._slide = None

    def _open(self) -> openslide.OpenSlide:
        if self._slide is None:
            try:
                self._slide = openslide.OpenSlide(str(self.path))
            except (openslide.OpenSlideError, OSError) as exc:
                raise CysegError(f"slide {self.path} cannot be read by OpenSlide ({one_line(exc, 200)}); "
                                 "the file may be truncated or corrupt: copy it again") from exc
        return self._slide

    def _read(self, x: int, y: int, w: int, h: int, level: int) -> np.ndarray:
        try:
            rgba = np.asarray(self._open().read_region((x, y), level, (w, h)))
        except openslide.OpenSlideError as exc:
            self.close()  # OpenSlide errors are sticky: the next read reopens the file
            raise CysegError(f"slide {self.path}: region x={x}, y={y}, {w}x{h} at level {level} cannot be "
                             f"decoded ({one_line(exc, 200)}); the file may be corrupt") from exc
        return rgba_on_white(rgba)

    def close(self) -> None:
        """Close the OpenSlide handle."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None


class ImageReader(ArrayReader):
    """Plain PNG/JPEG/BMP images: one level, decoded whole by OpenCV on the first read."""

    _TRANSIENT = ("_image",)

    def __init__(self, path: str | os.PathLike) -> None:
        """Read the image header (size) now; decode the pixels lazily."""
        self.path = Path(path)
        self._image: np.ndarray | None = None
        self.format = self.path.suffix.lower().lstrip(".").replace("jpg", "jpeg")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(self.path) as img:  # reads the header only
                    self.width, self.height = img.size
        except Image.DecompressionBombError:  # too many pixels for PIL's guard: OpenCV tells the size
            self.height, self.width = self._pixels().shape[:2]
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CysegError(f"slide {self.path} is not a readable {self.format.upper()} image "
                             f"({one_line(exc, 200)}); the file may be truncated or corrupt") from exc
        self.level_dimensions = [(self.width, self.height)]
        self.level_downsamples = [1.0]

    def _reset(self) -> None:
        self._image = None

    def _pixels(self) -> np.ndarray:
        if self._image is None:
            decoded = cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED)  # streamed: no copy of the file's bytes
            if decoded is None:
                raise CysegError(f"slide {self.path} cannot be decoded as {self.format.upper()}; "
                                 "the file may be truncated or corrupt")
            try:
                self._image = to_rgb(decoded)
            except ValueError as exc:
                raise CysegError(f"slide {self.path} has {exc}") from None
        return self._image

    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._pixels()[y:y + h, x:x + w].copy()

    def close(self) -> None:
        """Drop the decoded pixels."""
        self._image = None


def open_slide(path: str | os.PathLike) -> SlideReader:
    """Open a slide file with the reader that handles it: OpenSlide for the formats it detects
    (unless tifffile sees more pyramid levels in a generic TIFF), tifffile for other TIFFs,
    OpenCV for PNG/JPEG/BMP. Raises CysegError naming the file for missing, unsupported or
    damaged files."""
    path = Path(path)
    if not path.exists():
        raise CysegError(f"slide {path} does not exist; check the path")
    if path.is_dir():
        raise CysegError(f"slide {path} is a folder; give the slide file (for DICOM, any .dcm file in it)")
    suffix = path.suffix.lower()
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        fmt = None
    if fmt is not None:
        reader = OpenSlideReader(path, fmt)
        if fmt != "generic-tiff" or not _tifffile_prefers(path, reader.level_count):
            return reader
        reader.close()
    if suffix in TIFF_SUFFIXES:
        return TiffReader(path)
    if suffix in IMAGE_SUFFIXES:
        return ImageReader(path)
    if suffix in OPENSLIDE_SUFFIXES:
        raise CysegError(f"slide {path} is not a readable {suffix[1:].upper()} file (OpenSlide does not "
                         "recognise it); the file may be truncated or corrupt: copy it again")
    raise CysegError(f"slide {path} has an unsupported format ({suffix or 'no extension'}); supported: {SUPPORTED}")


def _tifffile_prefers(path: Path, openslide_levels: int) -> bool:
    """True when tifffile sees an OME-TIFF or more pyramid levels (SubIFDs) than OpenSlide."""
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.is_ome or len(tif.series[0].levels) > openslide_levels
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError):
        return False
