"""Helpers shared by the benchmarks: where the real data lives, a real-microscopy test image,
and writing results as JSON."""
from __future__ import annotations

import json
import resource
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.io.atomic import atomic_path
from segmenter.io.images import read_image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MICCAI_TEST = ("image02", "image06", "image10", "image13", "image15")  # the test tiles of the split
MICCAI_40X = tuple(f"image{i:02d}" for i in range(8, 16))  # scanned at 40x; image01-07 at 20x (data README)


def bench_image(size: int) -> np.ndarray:
    """A size x size mosaic of real microscopy: the miccai15 tiles when ../shared/data is present,
    else scikit-image's bundled IHC image."""
    folder = SHARED_DATA / "miccai15" / "images"
    if folder.is_dir():
        tiles = [read_image(p) for p in sorted(folder.glob("*.png"))]
    else:
        from skimage import data

        tiles = [np.ascontiguousarray(data.immunohistochemistry())]
    out = np.empty((size, size, 3), dtype=np.uint8)
    y = 0
    i = 0
    while y < size:
        x, row_h = 0, 0
        while x < size:
            t = tiles[i % len(tiles)]
            i += 1
            h, w = min(t.shape[0], size - y), min(t.shape[1], size - x)
            out[y:y + h, x:x + w] = t[:h, :w]
            x += w
            row_h = max(row_h, h)
        y += row_h
    return out


def link_dataset(out: Path, source: Path, stems: list[str], prefix: str = "") -> Path:
    """A dataset folder of symbolic links to `stems` of `source` (images/, masks/), named
    `prefix` + stem (a prefix keeps items of several sources apart)."""
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            target = out / sub / f"{prefix}{stem}.png"
            if not target.exists():
                target.symlink_to((source / sub / f"{stem}.png").resolve())
    return out


def stems_of(folder: Path) -> list[str]:
    """The item names of a dataset folder."""
    return sorted(p.stem for p in (folder / "images").glob("*.png"))


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_evaluate(model: Path, data: Path, report: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Score a dataset folder with the real `cyseg evaluate` (report in `report`); its summary.json.
    With -q it writes nothing on success; a failure's one-line error reaches stderr."""
    subprocess.run(["cyseg", "-q", "evaluate", str(model), str(data), "--out", str(report), *extra], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((report / "summary.json").read_text())


def write_results(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
