"""A large, mostly empty slide built from real annotated microscopy tiles (GlaS, miccai15) placed
on glass-coloured background, as cytology slides are mostly empty glass. It comes with its
ground-truth mask, so the benchmark can measure how much foreground background-skipping loses."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import SHARED_DATA
from segmenter.io.dataset import read_mask
from segmenter.io.images import read_image

GLASS = np.array([236, 232, 238], dtype=np.uint8)
TILE_FOLDERS = {"miccai15": SHARED_DATA / "miccai15", "GlaS": SHARED_DATA / "glas" / "train"}


@dataclass
class Placement:
    """A real tile placed at (x, y) in level-0 pixels; `paint`: the pixels of its box it paints
    (a cell and its feathered rim), None for the whole box."""

    x: int
    y: int
    image: np.ndarray
    mask: np.ndarray
    paint: np.ndarray | None = None


def present_tile_folders() -> dict[str, Path]:
    """The folders of TILE_FOLDERS that hold images: the ones `real_tiles` reads."""
    return {name: folder for name, folder in TILE_FOLDERS.items() if (folder / "images").is_dir()}


def tile_sources() -> str:
    """Where `real_tiles` takes its tiles from, as the slide's description names it."""
    return (", ".join(present_tile_folders())
            or "scikit-image's IHC sample in 256-px crops, as ../shared/data is missing")


def real_tiles(limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, binary mask) pairs from miccai15 and GlaS train, or scikit-image's IHC crops."""
    pairs = []
    for folder in present_tile_folders().values():
        for path in sorted((folder / "images").glob("*.png")):
            image = read_image(path)
            pairs.append((image, read_mask(folder / "masks" / path.name, image.shape[:2])))
    if not pairs:
        from skimage import color, data, filters

        ihc = np.ascontiguousarray(data.immunohistochemistry())
        hema = color.rgb2hed(ihc)[:, :, 0]
        mask = (hema > filters.threshold_otsu(hema)).astype(np.uint8)
        pairs = [(ihc[y:y + 256, x:x + 256], mask[y:y + 256, x:x + 256]) for y in (0, 256) for x in (0, 256)]
    return pairs[:limit] if limit else pairs


def layout(width: int, height: int, fill: float, seed: int = 0) -> list[Placement]:
    """Tiles scattered without overlap until about `fill` of the area is covered."""
    rng = np.random.default_rng(seed)
    tiles = real_tiles()
    placements: list[Placement] = []
    occupied = np.zeros((height // 64 + 1, width // 64 + 1), bool)
    covered, attempts = 0, 0
    while covered < fill * width * height and attempts < 20000:
        attempts += 1
        image, mask = tiles[int(rng.integers(len(tiles)))]
        k = int(rng.integers(4))
        image, mask = np.ascontiguousarray(np.rot90(image, k)), np.ascontiguousarray(np.rot90(mask, k))
        h, w = mask.shape
        if w >= width or h >= height:
            continue
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        cells = occupied[y // 64:(y + h) // 64 + 2, x // 64:(x + w) // 64 + 2]
        if cells.any():
            continue
        cells[:] = True
        placements.append(Placement(x, y, image, mask))
        covered += w * h
    return placements


def render(placements: list[Placement], x: int, y: int, w: int, h: int, what: str = "image") -> np.ndarray:
    """The level-0 region (x, y, w, h) of the mosaic: RGB image or uint8 0/1 mask."""
    out = np.empty((h, w, 3), np.uint8) if what == "image" else np.zeros((h, w), np.uint8)
    if what == "image":
        out[:] = GLASS
    for p in placements:
        ph, pw = p.mask.shape
        x0, y0, x1, y1 = max(x, p.x), max(y, p.y), min(x + w, p.x + pw), min(y + h, p.y + ph)
        if x0 >= x1 or y0 >= y1:
            continue
        src = p.image if what == "image" else p.mask
        piece = src[y0 - p.y:y1 - p.y, x0 - p.x:x1 - p.x]
        if p.paint is None:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = piece
        else:
            painted = p.paint[y0 - p.y:y1 - p.y, x0 - p.x:x1 - p.x]
            out[y0 - y:y1 - y, x0 - x:x1 - x][painted] = piece[painted]
    return out


def foreground_total(placements: list[Placement]) -> int:
    """Ground-truth foreground pixels of the whole mosaic."""
    return int(sum(int(p.mask.sum()) for p in placements))


def describe(width: int, height: int, placements: list[Placement]) -> str:
    """The slide's ImageDescription: says it was built, from what."""
    return (f"BUILT by cyseg bench/mosaic.py: {width}x{height} mosaic of {len(placements)} real annotated tiles "
            f"({tile_sources()}) on empty glass-coloured background; not a scanned slide")

