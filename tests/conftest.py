"""Shared fixtures: a small real-microscopy dataset, a tiny model trained once through the real
`cyseg train`, and the real data in ../shared/data when present.

The dataset is cut from scikit-image's bundled immunohistochemistry image (512x512 RGB IHC, no
download); each mask is the Otsu threshold of the image's haematoxylin channel (`rgb2hed`) with a
small morphological clean-up, so the mask is a known function of the image and a U-Net can learn it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

# The test machines have few cores and run other jobs: torch's default thread pool then spins
# against them and a 64x64 training step takes seconds instead of milliseconds. One thread keeps
# the tiny trainings of the tests fast and deterministic; subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# the local Cytomine server's fixtures (cytomine_server, cytomine_seed, cytomine_client, ...)
pytest_plugins = ["cytomine_server.fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

CROP_H, CROP_W = 160, 192  # non-square, not multiples of 16
TRAIN_BOXES = [(y, x) for y in (0, 160, 320) for x in (0, 192)]  # six disjoint crops (y, x)
VAL_BOXES = [(352, 320), (352, 100)]  # bottom band, mostly unseen in training
SLIDE = "skimage-immunohistochemistry"

# The tiny training settings every test uses unless it needs more (a few steps on CPU, at the
# images' resolution: test_planning covers --resolution auto).
TINY = ["--n", "4", "--depth", "3", "--crop", "64", "--batch", "2", "--steps-per-epoch", "2", "--resolution", "1",
        "--epochs", "2", "--workers", "0", "--device", "cpu"]


@dataclass(frozen=True)
class IHCDataset:
    """The two dataset folders and the images and masks they hold (RGB uint8, 0/1 uint8)."""

    train: Path
    val: Path
    images: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]


def nuclei_mask(ihc: np.ndarray) -> np.ndarray:
    """0/1 mask of the haematoxylin-stained nuclei of the IHC image (whole-image Otsu threshold,
    opening with a 3x3 cross and removal of specks below 16 px)."""
    from skimage import color, filters

    hema = color.rgb2hed(ihc)[:, :, 0]
    mask = (hema > filters.threshold_otsu(hema)).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= 16
    return keep[labels].astype(np.uint8)


def write_rgb(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_grey(path: Path, array: np.ndarray) -> None:
    """Write a single-channel array (uint8 or uint16) as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def make_dataset(root: Path, ihc: np.ndarray, mask: np.ndarray, boxes: list[tuple[int, int]], prefix: str,
                 size: tuple[int, int] = (CROP_H, CROP_W)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write crops of the IHC image and their 0/255 masks as a dataset folder with a manifest."""
    h, w = size
    items, entries = {}, {}
    for i, (y, x) in enumerate(boxes):
        stem = f"{prefix}{i:02d}"
        image, truth = ihc[y:y + h, x:x + w].copy(), mask[y:y + h, x:x + w].copy()
        write_rgb(root / "images" / f"{stem}.png", image)
        write_grey(root / "masks" / f"{stem}.png", truth * 255)
        items[stem] = (image, truth)
        entries[stem] = {"kind": "pattern", "slide": SLIDE, "crop": [x, y, w, h]}
    manifest = {"format": "cyseg-dataset/1", "source": {"file": "skimage.data.immunohistochemistry()"},
                "parent": None, "iteration": None, "items": entries}
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return items


@pytest.fixture(scope="session")
def ihc_image() -> np.ndarray:
    """scikit-image's 512x512 RGB immunohistochemistry image."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry())


@pytest.fixture(scope="session")
def ihc_dataset(tmp_path_factory, ihc_image) -> IHCDataset:
    """Six 160x192 training crops and two validation crops of the IHC image, with masks."""
    root = tmp_path_factory.mktemp("ihc")
    mask = nuclei_mask(ihc_image)
    train = make_dataset(root / "train", ihc_image, mask, TRAIN_BOXES, "tr")
    val = make_dataset(root / "val", ihc_image, mask, VAL_BOXES, "va")
    both = {**train, **val}
    return IHCDataset(root / "train", root / "val", {k: v[0] for k, v in both.items()},
                      {k: v[1] for k, v in both.items()})


def invoke(args: list[str], **kwargs):
    """Run the real `cyseg` click group in-process; stdout and stderr are kept apart."""
    from click.testing import CliRunner

    from cyseg.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="cyseg", **kwargs)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, ihc_dataset) -> Path:
    """A small U-Net trained once with `cyseg train` (a few dozen CPU steps: enough to segment
    the nuclei roughly, so that masks and polygons are not trivially empty)."""
    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    args = ["-q", "train", ihc_dataset.train, "--val", ihc_dataset.val, "--out", out, *TINY,
            "--batch", "4", "--steps-per-epoch", "15", "--epochs", "3", "--lr", "0.01"]
    result = invoke(args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert out.is_file()
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real microscopy with expert masks), or skip the test."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present: real-data test skipped")
    return SHARED_DATA
