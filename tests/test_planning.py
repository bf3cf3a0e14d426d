"""What `--resolution auto` and `--epochs auto` plan from the data: the size of the annotated objects,
the network's receptive field, and a fixed pixel budget."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from conftest import invoke, write_grey, write_rgb
from skimage import data
from skimage.filters import threshold_otsu

from segmenter.planning import object_size, plan_epochs, plan_resolution
from unet.model import UNet

# tiny training for the CLI tests: the plans are what is tested, not the model
SMALL = ["--n", "4", "--depth", "3", "--batch", "1", "--steps-per-epoch", "1", "--workers", "0", "--device", "cpu",
         "--threshold", "0.5"]


def disks(side: int, centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    for x, y in centres:
        cv2.circle(mask, (x, y), radius, 1, -1)
    return mask


def test_object_size_is_the_diameter_of_the_objects_holding_most_foreground() -> None:
    big = disks(400, [(100, 100), (300, 300)], 40)
    small = disks(400, [(40 + 30 * i, 360) for i in range(10)], 5)
    specks = np.zeros((400, 400), np.uint8)
    specks[10:13:, 200:203] = 1  # 9 px: ignored
    measured = object_size([big | small | specks])
    area = cv2.countNonZero(disks(400, [(100, 100)], 40))
    assert measured == pytest.approx(2 * np.sqrt(area / np.pi))
    assert 78 < measured < 82
    assert object_size([small]) == pytest.approx(2 * np.sqrt(cv2.countNonZero(disks(40, [(20, 20)], 5)) / np.pi))
    assert object_size([np.zeros((50, 50), np.uint8), specks]) == 0.0
    assert object_size([]) == 0.0


def test_object_size_follows_the_images_scale() -> None:
    coins = data.coins()
    mask = (coins > threshold_otsu(coins)).astype(np.uint8)
    half = cv2.resize(mask, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_NEAREST)
    assert object_size([half]) == pytest.approx(object_size([mask]) / 2, rel=0.05)


@pytest.mark.parametrize("size, field, expected", [
    (0.0, 200, 1.0),     # no foreground: nothing to plan from
    (27.3, 200, 1.0),    # miccai15 nuclei
    (77.6, 200, 1.0),    # wbc cells
    (100.0, 200, 1.0),   # exactly half the field
    (232.6, 200, 0.4),   # GlaS glands
    (150.0, 200, 0.6),
    (5000.0, 200, 0.1),  # never below a tenth
    (43.0, 44, 0.5),
])
def test_planned_resolution(size, field, expected) -> None:
    assert plan_resolution(size, field) == expected


@pytest.mark.parametrize("crop, epochs", [(256, 30), (208, 45), (128, 120), (512, 8), (4096, 1)])
def test_planned_epochs_keep_the_pixel_budget(crop, epochs) -> None:
    assert plan_epochs(crop) == epochs


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_receptive_field_matches_the_gradient(depth) -> None:
    torch.manual_seed(0)
    model = UNet(3, 1, depth=depth, n=8).eval().double()
    spans = []
    for offset in range(model.multiple):
        x = torch.randn(1, 3, 128, 128, dtype=torch.float64, requires_grad=True)
        model(x)[0, 0, 64, 64 + offset].backward()
        cols = (x.grad.abs().sum((0, 1, 2)) > 0).nonzero()[:, 0]
        spans.append(int(cols.max() - cols.min() + 1))
    assert model.receptive_field <= max(spans) <= model.receptive_field + 4
    assert UNet(depth=5).receptive_field == 200


@pytest.fixture(scope="module")
def coins_dataset(tmp_path_factory):
    """scikit-image's coins (a real photograph, mirrored 2x2 to 606x768) with Otsu masks: objects
    ~47 px across."""
    root = tmp_path_factory.mktemp("coins")
    coins = data.coins()
    mask = (coins > threshold_otsu(coins)).astype(np.uint8) * 255
    coins, mask = (np.block([[a, a[:, ::-1]], [a[::-1], a[::-1, ::-1]]]) for a in (coins, mask))
    for i, flip in enumerate((None, 1)):
        image = coins if flip is None else cv2.flip(coins, flip)
        write_rgb(root / "images" / f"c{i}.png", np.repeat(image[:, :, None], 3, axis=2))
        write_grey(root / "masks" / f"c{i}.png", mask if flip is None else cv2.flip(mask, flip))
    return root


def test_train_plans_resolution_crop_and_epochs(coins_dataset, tmp_path, caplog) -> None:
    model = tmp_path / "auto.pt"
    result = invoke(["train", coins_dataset, "--out", model, *SMALL])
    assert result.exit_code == 0, result.output
    content = torch.load(model, weights_only=True)
    options = content["training"]["options"]
    assert content["training"]["object_size_px"] == pytest.approx(object_size(
        [cv2.imread(str(coins_dataset / "masks" / "c0.png"), cv2.IMREAD_GRAYSCALE)]), abs=0.1)
    # depth 3 sees 44 px; coins of ~47 px -> 22 / 47 -> 0.4; images of 242x307 then cap the crop at 240
    assert content["preprocess"]["resolution"] == options["resolution"] == 0.4
    assert options["crop"] == 240 and options["epochs"] == plan_epochs(240) == 34
    history = json.loads((tmp_path / "auto.history.json").read_text())
    assert len(history) == 34
    assert "resolution auto" in caplog.text and "epochs auto: 34 epochs" in caplog.text


def test_explicit_values_win_over_the_plan(coins_dataset, tmp_path) -> None:
    model = tmp_path / "fixed.pt"
    result = invoke(["-q", "train", coins_dataset, "--out", model, *SMALL, "--resolution", "1", "--epochs", "3",
                     "--crop", "128"])
    assert result.exit_code == 0, result.output
    content = torch.load(model, weights_only=True)
    assert content["preprocess"]["resolution"] == 1.0
    assert (content["training"]["options"]["epochs"], content["training"]["options"]["crop"]) == (3, 128)


@pytest.mark.parametrize("option, value, message", [
    ("--resolution", "half", "--resolution 'half' must be a number or auto"),
    ("--resolution", "5", "must be in (0, 4]"),
    ("--epochs", "2.5", "--epochs '2.5' must be a whole number or auto"),
    ("--epochs", "0", "--epochs must be >= 1 or auto (got 0)"),
])
def test_bad_plan_values_are_refused(coins_dataset, tmp_path, option, value, message) -> None:
    model = tmp_path / "bad.pt"
    result = invoke(["-q", "train", coins_dataset, "--out", model, *SMALL, option, value])
    assert result.exit_code == 2
    assert message in result.output
    assert not model.exists()


def test_improve_keeps_the_starting_models_resolution(coins_dataset, tmp_path) -> None:
    start = tmp_path / "half.pt"
    assert invoke(["-q", "train", coins_dataset, "--out", start, *SMALL, "--resolution", "0.5",
                   "--epochs", "1"]).exit_code == 0
    out = tmp_path / "idi"
    result = invoke(["-q", "improve", coins_dataset, "--out", out, "--model", start, "--iterations", "1",
                     "--epochs", "1", "--batch", "1", "--steps-per-epoch", "1", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert torch.load(out / "models" / "iter1.pt", weights_only=True)["preprocess"]["resolution"] == 0.5
