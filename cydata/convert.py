"""`cydata convert`: read the thesis layout (a flat folder of `<id>_x.jpg` crops and `<id>_y.jpg`
masks) into a dataset folder (DESIGN §3).

Thesis masks are JPEG: white = foreground, black = background, pure red (cell borders drawn by
the thesis' 'borders' mode) = background. JPEG blurs the colours, so a pixel is foreground when
its green channel is >= 128: white has G = 255, red and black have G close to 0.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segmenter.errors import CysegError, DatasetError
from segmenter.io.dataset import DatasetWriter
from segmenter.io.images import read_image

log = logging.getLogger(__name__)

LAYOUT = "thesis N_x.jpg/N_y.jpg"
SUFFIXES = (".jpg", ".jpeg", ".png")
GREEN_THRESHOLD = 128
_PATTERN = re.compile(r"^(?P<id>.*)_(?P<role>[xy])$", re.IGNORECASE)


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _scan(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    found: dict[str, dict[str, Path]] = {"x": {}, "y": {}}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in SUFFIXES:
            continue
        match = _PATTERN.match(path.stem)
        if not match:
            continue
        ident, role = match.group("id"), match.group("role").lower()
        if not ident:
            raise DatasetError(f"{path} has an empty id; thesis files are named <id>_x.jpg and <id>_y.jpg")
        if ident in found[role]:
            raise DatasetError(f"{folder} holds two files for '{ident}_{role}' ({found[role][ident].name}, "
                               f"{path.name}); keep one")
        found[role][ident] = path
    return found["x"], found["y"]


def decode_thesis_mask(rgb: np.ndarray) -> np.ndarray:
    """Foreground (1) where the green channel is >= 128: white cells; black background and red borders are 0."""
    return (rgb[:, :, 1] >= GREEN_THRESHOLD).astype(np.uint8)


def convert_thesis(thesis_dir: str | os.PathLike, out: str | os.PathLike, progress: bool | None = None) -> Path:
    """Convert a thesis folder into a new dataset at `out`; returns `out`."""
    folder = Path(thesis_dir)
    out = Path(out)
    if not folder.is_dir():
        raise DatasetError(f"thesis folder {folder} does not exist; give the folder holding <id>_x.jpg and <id>_y.jpg")
    xs, ys = _scan(folder)
    if not xs:
        raise DatasetError(
            f"{folder} holds no <id>_x.jpg files; the thesis layout is one flat folder of pairs <id>_x.jpg"
            " (RGB crop) and <id>_y.jpg (mask: white cells, black background, red borders); .png pairs also work"
        )
    ids = sorted(xs, key=_natural_key)
    for ident in ids:
        if ident not in ys:
            raise DatasetError(f"{xs[ident]} has no mask {folder / (ident + '_y' + xs[ident].suffix)}; "
                               "add it or remove the crop")
    orphans = sorted(set(ys) - set(xs), key=_natural_key)
    if orphans:
        log.warning("%d mask(s) without a crop are ignored, e.g. %s", len(orphans), ys[orphans[0]].name)
    if out.exists():
        raise CysegError(f"output folder {out} already exists; remove it or choose another --out")
    log.info("converting %d pairs from %s", len(ids), folder)
    source = {"converted_from": str(folder.resolve()), "layout": LAYOUT}
    with DatasetWriter(out, source=source) as writer:
        for ident in tqdm(ids, desc="convert", unit="pair", disable=None if progress is None else not progress):
            image = read_image(xs[ident])
            mask_rgb = read_image(ys[ident])
            if mask_rgb.shape[:2] != image.shape[:2]:
                raise DatasetError(
                    f"mask {ys[ident]} is {mask_rgb.shape[1]}x{mask_rgb.shape[0]} but its crop {xs[ident]} is"
                    f" {image.shape[1]}x{image.shape[0]}; the pair must have the same size"
                )
            writer.add(ident, image, decode_thesis_mask(mask_rgb), meta={"x": xs[ident].name, "y": ys[ident].name})
    log.info("wrote %s (%d items)", out, len(ids))
    return out
