"""A network working at a fraction of the images' resolution (`--resolution`): training data and
predictions are resampled, probabilities come back at the image's size."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY, invoke

from segmenter.errors import CysegError
from segmenter.resolution import (
    check_resolution,
    resample_pair,
    scaled_size,
    to_image,
    to_network,
)
from unet import UNetSegmenter, load_segmenter


def test_resampled_pairs_keep_labels_and_shapes(ihc_image) -> None:
    mask = (ihc_image[:, :, 0] < 120).astype(np.uint8) * 255
    image, small = resample_pair(ihc_image[:302, :200], mask[:302, :200], 0.5)
    assert image.shape == (151, 100, 3) and small.shape == (151, 100)
    assert set(np.unique(small)) <= {0, 255}
    same_image, same_mask = resample_pair(ihc_image, mask, 1.0)
    assert same_image is ihc_image and same_mask is mask
    assert scaled_size(3, 3, 0.1) == (1, 1)


def test_shrinking_averages_areas_like_opencv(ihc_image) -> None:
    x = torch.from_numpy(ihc_image).permute(2, 0, 1)
    ours = to_network(x, 0.5).permute(1, 2, 0).numpy()
    theirs = cv2.resize(ihc_image, (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(ours - theirs).max() <= 0.5 + 1e-4  # OpenCV rounds to uint8


@pytest.mark.parametrize("value", [0, -1, 4.5])
def test_resolution_outside_0_4_is_refused(value) -> None:
    with pytest.raises(CysegError, match="must be in"):
        check_resolution(value)


def test_prediction_runs_at_the_working_resolution_and_comes_back_at_full_size(ihc_image) -> None:
    torch.manual_seed(0)
    seg = UNetSegmenter({"n_classes": 1, "depth": 3, "n": 4}, device="cpu")
    image = ihc_image[:300, :260]
    full = seg.predict(image)
    seg.preprocess = {**seg.preprocess, "resolution": 0.5}
    half = seg.predict(image)
    assert half.shape == full.shape == (1, 300, 260)
    seg.preprocess = {**seg.preprocess, "resolution": 1.0}
    small = seg.predict(to_network(torch.from_numpy(image).permute(2, 0, 1), 0.5))
    assert small.shape == (1, 150, 130)
    torch.testing.assert_close(half, to_image(small, (300, 260)))
    assert not torch.allclose(half, full, atol=1e-3)


def test_train_evaluate_and_segment_at_half_resolution(ihc_dataset, tmp_path) -> None:
    model = tmp_path / "half.pt"
    result = invoke(["-q", "train", ihc_dataset.train, "--out", model, *TINY, "--resolution", "0.5"])
    assert result.exit_code == 0, result.output
    content = torch.load(model, weights_only=True)
    assert content["preprocess"]["resolution"] == 0.5 and content["training"]["options"]["resolution"] == 0.5
    assert content["training"]["options"]["crop"] == 64
    assert load_segmenter(model).resolution == 0.5
    report = tmp_path / "report"
    result = invoke(["-q", "evaluate", model, ihc_dataset.val, "--out", report, "--no-sweep"])
    assert result.exit_code == 0, result.output
    assert json.loads((report / "summary.json").read_text())["n_images"] == 2
    out = tmp_path / "seg"
    result = invoke(["-q", "segment", model, ihc_dataset.val, "--out", out])
    assert result.exit_code == 0, result.output
    for stem, image in ihc_dataset.images.items():
        if stem.startswith("va"):
            assert cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED).shape == image.shape[:2]
