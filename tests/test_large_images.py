"""`cyseg segment` on a folder: an image larger than one slide window goes through the whole-slide
engine, window by window, instead of being predicted whole (which needs memory in proportion to
its pixels), and gives the polygons `--as-slide` gives."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, write_rgb

from segmenter.io.images import read_image

GLASS = (236, 232, 238)


def scattered_on_glass(ihc: np.ndarray, side: int, patches: int, seed: int = 0) -> np.ndarray:
    """A side x side image of glass with copies of the IHC image scattered over it."""
    image = np.full((side, side, 3), GLASS, np.uint8)
    rng = np.random.default_rng(seed)
    h, w = min(512, side // 2), min(512, side // 2)
    for _ in range(patches):
        y, x = rng.integers(0, side - h), rng.integers(0, side - w)
        image[y:y + h, x:x + w] = ihc[:h, :w]
    return image


def features(path: Path) -> list[dict]:
    return [f["geometry"] for f in json.loads(path.read_text())["features"]]


def test_an_image_larger_than_a_window_is_segmented_as_a_slide(tiny_model, ihc_image, tmp_path):
    crops = tmp_path / "crops"
    write_rgb(crops / "large.png", scattered_on_glass(ihc_image, 900, 4))
    write_rgb(crops / "small.png", ihc_image[:200, :300])
    small_windows = ["--tile", "256", "--overlap", "32", "--window-size", "512", "--window-overlap", "64"]
    out = tmp_path / "seg"
    result = invoke(["segment", tiny_model, crops, "--out", out, *small_windows])
    assert result.exit_code == 0, result.output
    assert "large.png is 900x900 px, more than one 512-px window" in result.stderr
    assert "small.png" not in result.stderr  # a crop that fits is predicted whole, as before
    slide = tmp_path / "slide.geojson"
    assert invoke(["segment", tiny_model, crops / "large.png", "--as-slide", "--out", slide, "--cache",
                   tmp_path / "cache", *small_windows]).exit_code == 0
    assert features(out / "geojson" / "large.geojson") == features(slide) != []
    mask = read_image(out / "masks" / "large.png")
    assert mask.shape == (900, 900, 3) and set(np.unique(mask)) == {0, 255}
    assert read_image(out / "overlays" / "large.png").shape == (900, 900, 3)
    assert {p.name for p in (out / "masks").iterdir()} == {"large.png", "small.png"}


@pytest.mark.slow
def test_a_large_image_in_crop_mode_stays_under_2_gb(tiny_model, ihc_image, tmp_path):
    crops = tmp_path / "crops"
    write_rgb(crops / "big.png", scattered_on_glass(ihc_image, 6144, 40))
    # a parent process that only waits for cyseg: its children's peak RSS is cyseg's own
    measure = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cyseg = [str(Path(sys.executable).parent / "cyseg"), "-q", "segment", str(tiny_model), str(crops), "--out",
             str(tmp_path / "seg")]
    result = subprocess.run([sys.executable, "-c", measure, *cyseg], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    peak_gb = int(result.stdout.split()[-1]) / 2**20
    assert peak_gb < 2.0, f"peak memory {peak_gb:.2f} GB"
    assert (tmp_path / "seg" / "geojson" / "big.geojson").exists()
