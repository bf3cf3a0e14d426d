"""The training loop is a pure function of its seed: two runs give bit-identical weights, a run
stopped after an epoch and resumed from its checkpoint gives the uninterrupted run's weights, and
the tiny run below gives the weights measured before `train` was split into steps."""
from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import albumentations
import cv2
import pytest
import torch

import segmenter.training as training
from segmenter.precision import precision_name
from unet import UNetSegmenter

SEED = 5
TINY_RUN = {"epochs": 2, "steps_per_epoch": 3, "batch": 2, "crop": 64, "resolution": 1.0, "workers": 0, "seed": SEED,
            "lr": 0.01,
                "calibrate_threshold": True, "progress": False}

# The tiny run's weights (SHA-256 of every state_dict tensor, by name) and chosen threshold, measured
# on the code before `train` was split into steps. Floating-point kernels differ between CPUs and
# library versions, so they are only compared where the environment is one that measured them. The
# first pin's CPU computed bfloat16 but gives other weights than an AVX512-BF16 CPU without AMX (the
# second pin, measured on the same code and again on later code): AMX is the other way a CPU has native
# bfloat16 (segmenter.precision), and oneDNN sums in another order on it.
PINNED_ENVIRONMENT = {"torch": "2.13.0+cpu", "cpu precision": "bfloat16", "machine": "x86_64",
                      "albumentations": "2.0.8", "opencv": "5.1.0", "torch threads": 1}
PINS = [({**PINNED_ENVIRONMENT, "amx": True}, "1b198c59614b1d6e684d8c14de2a45c8eaf61158de3926e007b46bb2ec3b25cb"),
        ({**PINNED_ENVIRONMENT, "amx": False}, "96438338a7dec2d305fa98021b1de1816b7980ea98dbda155313ba55fb5e33cf")]
PINNED_THRESHOLD = 0.4


def environment() -> dict[str, object]:
    """What the pinned digests depend on besides the code."""
    return {"torch": torch.__version__, "cpu precision": precision_name(torch.device("cpu")),
            "machine": platform.machine(), "albumentations": albumentations.__version__, "opencv": cv2.__version__,
            "torch threads": torch.get_num_threads(), "amx": bool(torch.cpu._is_amx_tile_supported())}


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Run:
    """What a tiny run leaves: the digests of its initial, final and saved weights, and its results."""

    initial: str
    final: str
    saved: str
    history: list[dict]
    threshold: float
    preprocess: dict


def tiny_train(train_dir: Path, out: Path, init_seed: int = SEED, **options) -> Run:
    """Train a 4-filter, depth-3 U-Net for 2 epochs of 3 steps, writing `out` and its checkpoints."""
    torch.manual_seed(init_seed)
    seg = UNetSegmenter({"n_classes": 1, "depth": 3, "n": 4}, device="cpu")
    initial = weights_digest(seg.model.state_dict())
    history = training.train(seg, train_dir, None, training.TrainOptions(**{**TINY_RUN, "out": str(out), **options}))
    saved = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    return Run(initial, weights_digest(seg.model.state_dict()), weights_digest(saved),
               [{k: v for k, v in row.items() if k != "seconds"} for row in history], seg.threshold, seg.preprocess)


@pytest.fixture(scope="module")
def reference(ihc_dataset, tmp_path_factory) -> Run:
    """The uninterrupted tiny run."""
    return tiny_train(ihc_dataset.train, tmp_path_factory.mktemp("reference") / "m.pt")


def test_the_same_seed_gives_bit_identical_weights(reference, ihc_dataset, tmp_path):
    again = tiny_train(ihc_dataset.train, tmp_path / "m.pt")
    assert again == reference
    assert reference.final == reference.saved != reference.initial
    assert len(reference.history) == 2


def test_a_run_stopped_after_an_epoch_resumes_to_the_same_weights(reference, ihc_dataset, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"
    real_tqdm = training.tqdm

    def stop_before_epoch_2(iterable=None, *args, desc="", **kwargs):
        if desc.startswith("epoch 2/"):
            raise KeyboardInterrupt
        return real_tqdm(iterable, *args, desc=desc, **kwargs)

    monkeypatch.setattr(training, "tqdm", stop_before_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        tiny_train(ihc_dataset.train, out)
    assert not out.exists() and torch.load(out.with_suffix(".ckpt"), weights_only=True)["epoch"] == 1
    monkeypatch.setattr(training, "tqdm", real_tqdm)

    resumed = tiny_train(ihc_dataset.train, out, init_seed=SEED + 99, resume=True)
    assert resumed.initial != reference.initial, "other initial weights: the checkpoint must restore them"
    assert (resumed.final, resumed.history, resumed.threshold, resumed.preprocess) == (
        reference.final, reference.history, reference.threshold, reference.preprocess)
    assert not out.with_suffix(".ckpt").exists()


def test_the_tiny_run_gives_the_weights_measured_before_the_split(reference):
    here = environment()
    pinned = next((digest for where, digest in PINS if where == here), None)
    if pinned is None:
        differ = ", ".join(f"{k} {here[k]} (pinned on {v})" for k, v in PINNED_ENVIRONMENT.items() if here[k] != v)
        pytest.skip(f"the pinned digests were measured elsewhere: {differ or 'another CPU'}; "
                    "floating-point kernels differ")
    assert (reference.final, reference.threshold) == (pinned, PINNED_THRESHOLD)
