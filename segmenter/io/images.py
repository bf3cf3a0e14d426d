"""Image files and bytes in and out, with one policy for every reader of pixels: RGB uint8,
16-bit samples scaled to 8 bits, grey replicated, and transparency composited on white (a
transparent pixel is empty glass), whether the image is a dataset crop, a plain image read as a
slide, a TIFF plane or a Cytomine window."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from segmenter.errors import CysegError, DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_is_complete(data: bytes) -> bool:
    """True when `data` is a structurally whole PNG: signature, chunks with valid CRCs, up to IEND.

    Checked before decoding so that a truncated or damaged PNG is reported in our one line, not
    by libpng and OpenCV writing their own warnings to the process' stderr."""
    if not data.startswith(PNG_SIGNATURE):
        return False
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            return False
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            return False
        if kind == b"IEND":
            return True
        pos = end
    return False


def decode(data: bytes | np.ndarray, png: bool = False) -> np.ndarray | None:
    """The image in `data` as OpenCV decodes it (BGR/BGRA/grey, any depth), or None when it cannot
    be decoded; a PNG (by signature, or `png` for a .png file) must be whole first."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    if not buffer.size:
        return None
    if (png or buffer[:8].tobytes() == PNG_SIGNATURE) and not png_is_complete(buffer.tobytes()):
        return None
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)


def composite_on_white(rgb: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """RGB uint8 of `rgb` (h, w, 3) drawn over white with `alpha` (h, w) uint8."""
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    return _blend_on_white(rgb, alpha, premultiplied)


def rgba_on_white(rgba: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """`composite_on_white` of an RGBA (h, w, 4) uint8 image: an opaque one only loses its alpha
    channel, in one OpenCV pass (much faster than numpy's strided copy)."""
    if rgba[..., 3].min() == 255:
        return cv2.cvtColor(np.ascontiguousarray(rgba), cv2.COLOR_RGBA2RGB)
    return _blend_on_white(rgba[..., :3], rgba[..., 3], premultiplied)


def _blend_on_white(rgb: np.ndarray, alpha: np.ndarray, premultiplied: bool) -> np.ndarray:
    a = alpha[..., None].astype(np.uint16)
    if premultiplied:
        return (rgb.astype(np.uint16) + (255 - a)).clip(0, 255).astype(np.uint8)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb(decoded: np.ndarray) -> np.ndarray:
    """An OpenCV-decoded image (BGR, BGRA or grey; 8 or 16 bit) as RGB uint8 with alpha composited
    on white; ValueError for other sample types. A BGR image is converted in place (no second copy
    of a large image), so pass one you own."""
    if decoded.dtype == np.uint16:
        decoded = ((decoded.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif decoded.dtype != np.uint8:
        raise ValueError(f"pixel type {decoded.dtype}; supported: 8 or 16 bit")
    if decoded.ndim == 2 or decoded.shape[2] == 1:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 4:
        return rgba_on_white(cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA))
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB, dst=decoded)


def decode_rgb(data: bytes) -> np.ndarray | None:
    """PNG/JPEG/TIFF bytes (a server's answer) as RGB uint8, None when they are not a whole image."""
    decoded = decode(data)
    if decoded is None:
        return None
    try:
        return to_rgb(decoded)
    except ValueError:
        return None


def decode_file(path: Path, kind: str, fix: str) -> np.ndarray:
    """The decoded pixels of the file `path` (an image or mask, as `kind` says); DatasetError naming it,
    with `fix`, when it is missing or cannot be decoded."""
    if not path.is_file():
        raise DatasetError(f"{kind} {path} does not exist; check the path")
    decoded = decode(np.fromfile(path, dtype=np.uint8), png=path.suffix.lower() == ".png")
    if decoded is None:
        raise DatasetError(f"{kind} {path} cannot be decoded (corrupt or not an image); {fix}")
    return decoded


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); DatasetError naming the file when it cannot be."""
    path = Path(path)
    decoded = decode_file(path, "image", "re-export or remove it")
    try:
        return to_rgb(decoded)
    except ValueError as exc:
        raise DatasetError(f"image {path} has {exc}: convert it to 8-bit RGB") from None


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or single-channel uint8 array as PNG."""
    image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise CysegError(f"cannot encode {path} as PNG")
    Path(path).write_bytes(buffer.tobytes())
