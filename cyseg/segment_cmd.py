"""`cyseg segment` on crops: a mask (PNG) and polygons (GeoJSON) for every image of a folder."""
from __future__ import annotations

import json
import logging
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from segmenter.base import Segmenter
from segmenter.errors import CysegError
from segmenter.io.atomic import atomic_dir
from segmenter.io.images import IMAGE_SUFFIXES, read_image, write_png
from segmenter.overlays import overlay
from segmenter.pipeline import BackgroundWriter, read_ahead
from segmenter.polygons import feature_collection, mask_to_polygons

log = logging.getLogger(__name__)


CROP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def is_slide(path: Path, plain_images_too: bool = False) -> bool:
    """Whether an input goes to the whole-slide engine: any file but a plain crop image (unless
    asked), i.e. SVS, NDPI, MRXS, SCN, DICOM, TIFF..."""
    if path.is_dir() or not path.exists():
        return False
    return plain_images_too or path.suffix.lower() not in CROP_SUFFIXES


def list_images(source: Path) -> list[Path]:
    """The images to segment: a file, a dataset folder's images/, or the image files of a folder."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise CysegError(f"input {source} does not exist; give an image file or a folder of images")
    folder = source / "images" if (source / "images").is_dir() else source
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise CysegError(f"{folder} holds no images (.png, .jpg, .tif); give a folder of crops")
    seen: dict[str, Path] = {}
    for path in files:  # outputs are named by stem: a.png and a.jpg would overwrite each other's mask
        if path.stem in seen:
            raise CysegError(f"{folder} holds two images named '{path.stem}' ({seen[path.stem].name}, {path.name}); "
                             "rename or remove one")
        seen[path.stem] = path
    return files


def run_segment_crops(seg: Segmenter, source: Path, out: Path, threshold: float | None, simplify: float,
                      min_area: float, overlays: bool, tiling: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Segment every image; write masks/, geojson/ (and overlays/) under `out`, atomically. The next
    image is read and the last one's outputs written in background threads (segmenter.pipeline)."""
    files = list_images(source)
    stats = {"images": 0, "polygons": 0, "pixels": 0}
    start = time.perf_counter()

    def write_outputs(folder: Path, path: Path, image: np.ndarray, mask: np.ndarray, fg: np.ndarray) -> None:
        write_png(folder / "masks" / f"{path.stem}.png", mask * 255 if seg.n_classes == 1 else mask)
        polygons = mask_to_polygons(mask, fg, simplify=simplify, min_area=min_area)
        collection = feature_collection(polygons, extra={"image": path.name, "width": image.shape[1],
                                                          "height": image.shape[0]})
        (folder / "geojson" / f"{path.stem}.geojson").write_text(json.dumps(collection))
        if overlays:
            write_png(folder / "overlays" / f"{path.stem}.png", overlay(image, mask))
        stats["polygons"] += len(polygons)  # only the writer thread counts polygons

    with atomic_dir(out, overwrite=True) as tmp:
        for sub in ("masks", "geojson") + (("overlays",) if overlays else ()):
            (tmp / sub).mkdir()
        with BackgroundWriter() as writer, closing(read_ahead(files, read_image)) as images:
            for path, image in tqdm(images, total=len(files), desc="segmenting", unit="image", disable=not progress):
                probs = seg.predict(image, **tiling)
                with torch.inference_mode():
                    mask = seg.masks_from_probabilities(probs, threshold).cpu().numpy()
                    fg = probs[0 if seg.n_classes == 1 else 1:].max(dim=0).values.cpu().numpy()
                writer.submit(write_outputs, tmp, path, image, mask, fg)
                stats["images"] += 1
                stats["pixels"] += image.shape[0] * image.shape[1]
    stats["seconds"] = time.perf_counter() - start
    log.info("%d images, %d polygons, %.1f s; masks in %s, GeoJSON in %s", stats["images"], stats["polygons"],
             stats["seconds"], out / "masks", out / "geojson")
    return stats
