"""`cyseg demo`: the shipped model on real microscopy that scikit-image ships (an IHC-stained
tissue image), plus a larger slide-like mosaic of it on glass-coloured background, segmented tile
by tile. Writes masks, GeoJSON and an overlay figure, and says where they are."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cyseg.segment_cmd import run_segment_crops
from segmenter.base import Segmenter
from segmenter.classes import COLOUR_NAMES
from segmenter.errors import CysegError
from segmenter.io.images import read_image, write_png

log = logging.getLogger(__name__)
GLASS = (236, 232, 238)
NAMES = {"cell": "cells", "nucleus": "nuclei"}


def demo_images() -> dict[str, np.ndarray]:
    """The IHC sample image and a 1536x1024 mosaic of its quarters on empty glass."""
    from skimage import data

    ihc = np.ascontiguousarray(data.immunohistochemistry())
    mosaic = np.empty((1024, 1536, 3), dtype=np.uint8)
    mosaic[:] = GLASS
    rng = np.random.default_rng(0)
    quarters = [ihc[y:y + 256, x:x + 256] for y in (0, 256) for x in (0, 256)]
    for i, (y, x) in enumerate([(96, 160), (600, 420), (180, 900), (640, 1200)]):
        q = np.rot90(quarters[i], k=int(rng.integers(4)))
        mosaic[y:y + 256, x:x + 256] = q
    return {"ihc": ihc, "mosaic": mosaic}


def run_demo(seg: Segmenter, model_path: Path, out: Path, progress: bool = True) -> list[str]:
    """Segment the demo images; returns the lines to print."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CysegError(f"--out {out} is a file; give a folder for the demo's outputs")
    if (out / "segmentation").exists() or (out / "overlay.png").exists():
        log.warning("%s already holds a demo run: replacing its inputs, segmentation and overlay.png", out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for name, image in demo_images().items():
        write_png(inputs / f"{name}.png", image)
    result = out / "segmentation"
    stats = run_segment_crops(seg, model_path, inputs, result, None, simplify=0.5, min_area=4.0, overlays=True,
                              tiling={}, progress=progress)
    figure = out / "overlay.png"
    ihc = read_image(inputs / "ihc.png")
    gap = np.full((ihc.shape[0], 10, 3), 255, np.uint8)
    write_png(figure, np.concatenate([ihc, gap, read_image(result / "overlays" / "ihc.png")], axis=1))
    return [
        f"segmented {stats['images']} images ({stats['pixels'] / 1e6:.2f} MP) into {stats['polygons']} polygons "
        f"in {stats['seconds']:.1f} s with model '{seg.training_info.get('name', 'given').split(';')[0]}'",
        f"inputs:   {inputs}",
        f"masks:    {result / 'masks'}",
        f"GeoJSON:  {result / 'geojson'}",
        f"overlays: {result / 'overlays'}",
        f"figure:   {figure} ({legend(seg)})",
    ]


def legend(seg: Segmenter) -> str:
    """What the overlay's colours mean."""
    if not seg.classes:
        return "foreground in green"
    return ", ".join(f"{NAMES.get(label, label)} outlined in {COLOUR_NAMES[label]}" for label in seg.labels)
