"""Accuracy regressions on real data (../shared/data; skipped without it).

- The shipped model on its held-out test images (bench/default_model.py's split: images that played
  no part in its training, epoch, threshold or recipe choice) keeps each source's Dice within
  MARGIN of the figure bench/results/default_model.json measured when it was built: a change to
  prediction, tiling, pre- or post-processing that costs accuracy fails here.
- A short fresh training on a few real smear images beats the same network untrained by a clear
  margin on other smear images: a change that breaks learning (loss, sampler, augmentation,
  optimiser) fails here even when every unit test passes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, invoke

from cyseg.models import SHIPPED

MARGIN = 0.02  # the same model and images give the same figure here; other CPUs compute in float32, not bfloat16
GAIN = 0.5  # Dice a short training must add to the untrained network's (which predicts next to nothing)
RESULTS = REPO / "bench" / "results" / "default_model.json"
# The short training: a small U-Net at the smears' resolution, 120 steps of 4 crops of 96².
SHORT = {"epochs": 6, "steps_per_epoch": 20, "batch": 4, "crop": 96, "lr": 3e-3, "seed": 0, "workers": 0,
         "resolution": 1.0, "progress": False}
SMALL_UNET = {"n_classes": 1, "depth": 4, "n": 8, "upsampling": "transpose"}


def link(out: Path, folder: Path, stems: list[str], prefix: str) -> Path:
    from bench.common import link_dataset

    return link_dataset(out, folder, stems, prefix)


@pytest.fixture(scope="module")
def recorded() -> dict:
    """The build record of the shipped model (it must describe the file that is shipped)."""
    record = json.loads(RESULTS.read_text())
    assert record["installed"] and record["model_bytes"] == SHIPPED["default"].stat().st_size, \
        "bench/results/default_model.json does not describe cyseg/models/default.pt: rebuild with --install"
    return record


@pytest.mark.parametrize("source", ["miccai15", "wbc"])
def test_shipped_model_keeps_its_test_dice(shared_data, recorded, source, tmp_path):
    from bench.default_model import source_items

    split = source_items()[source]
    assert split.test == recorded["split"][source]["test"]
    data = link(tmp_path / "test", split.folder, split.test, f"{source}_")
    result = invoke(["-q", "evaluate", "default", data, "--out", tmp_path / "eval", "--no-sweep", "--device", "cpu"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    dice = json.loads((tmp_path / "eval" / "summary.json").read_text())["dice_mean"]
    floor = recorded["test"][source]["dice_mean"] - MARGIN
    assert dice >= floor, f"{source}: test Dice {dice:.4f} fell below {floor:.4f} (recorded figure - {MARGIN})"


def test_short_training_beats_the_untrained_network(shared_data, tmp_path):
    from bench.default_model import source_items
    from unet import UNetSegmenter

    split = source_items()["wbc"]
    train = link(tmp_path / "train", split.folder, split.train[:24], "")
    test = link(tmp_path / "test", split.folder, split.test, "")
    torch.manual_seed(0)
    seg = UNetSegmenter(dict(SMALL_UNET), device="cpu")

    def dice() -> float:
        rows = seg.evaluate(test)
        return sum(r["dice"] for r in rows) / len(rows)

    untrained = dice()
    seg.fit(train, **SHORT)
    trained = dice()
    assert trained >= untrained + GAIN, f"trained Dice {trained:.4f} vs untrained {untrained:.4f}"
