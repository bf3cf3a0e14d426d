"""The gaps between touching objects weighed in the class loss (`cyseg train --gap-weight`, U-Net's
weight map): the map's math, its place in the training crops and the loss; and the CLI of the options
that only instance training takes (`--gap-weight`, `--distance-cap`): recorded, or refused in one line."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY, invoke
from test_instances import write_discs

from segmenter.sampler import CropSampler
from transforms.instances import GAP_SIGMA, gap_weight
from unet import UNetSegmenter


def two_bars(gap: int) -> np.ndarray:
    """Labels 1 and 2: two 20-px-wide bars side by side, `gap` background columns between them."""
    labels = np.zeros((40, 60 + gap), np.int32)
    labels[:, 10:30] = 1
    labels[:, 30 + gap:50 + gap] = 2
    return labels


def test_the_gap_between_two_objects_weighs_most_and_far_background_and_objects_one():
    labels = two_bars(2)
    weight = gap_weight(labels, 10.0)
    assert weight.dtype == np.float32 and weight.shape == labels.shape
    assert (weight[labels > 0] == 1).all()
    # column 30: 1 px from bar 1, 2 px from bar 2
    assert weight[20, 30] == pytest.approx(1 + 10 * math.exp(-(1 + 2) ** 2 / (2 * GAP_SIGMA ** 2)), rel=1e-5)
    assert weight[20, 0] == pytest.approx(1 + 10 * math.exp(-(10 + 32) ** 2 / (2 * GAP_SIGMA ** 2)), abs=1e-6)
    wider = gap_weight(two_bars(8), 10.0)
    assert wider[20, 33] < weight[20, 30]  # the middle of a wider gap weighs less


def test_a_lone_object_or_a_zero_weight_leaves_every_pixel_at_one():
    lone = np.zeros((30, 30), np.int32)
    lone[5:15, 5:15] = 3
    assert (gap_weight(lone, 10.0) == 1).all()
    assert (gap_weight(two_bars(2), 0.0) == 1).all()
    assert (gap_weight(np.zeros((8, 8), np.int32), 10.0) == 1).all()


def test_the_crops_carry_the_gap_weights_on_the_instance_class_channel_only():
    labels = np.tile(two_bars(3), (2, 2))
    labels[:, labels.shape[1] // 2:][labels[:, labels.shape[1] // 2:] > 0] += 2  # four distinct bars
    labels[labels.shape[0] // 2:][labels[labels.shape[0] // 2:] > 0] += 4
    image = np.repeat(((labels > 0) * 200 + 20).astype(np.uint8)[:, :, None], 3, axis=2)
    mask = (labels > 0).astype(np.uint8)
    instances = [(labels.astype(np.uint16)[:, :, None], np.ones(1, np.float32))]
    plain = CropSampler([image], [mask], 64, 4, seed=2, colour=False, translate=0.0, instances=instances)
    weighted = CropSampler([image], [mask], 64, 4, seed=2, colour=False, translate=0.0, instances=instances,
                           gap=10.0, gap_channels=[0])
    for i in range(4):
        x, target, _, none = plain[i]
        assert none.numel() == 0
        x_w, target_w, _, weight = weighted[i]
        assert torch.equal(x, x_w) and torch.equal(target, target_w)  # the weights change no draw
        assert weight.shape == (1, 64, 64)
        inside = target[0] > 0.5
        assert (weight[0][inside] == 1).all() and weight[0][~inside].max() > 5


def test_unit_weights_leave_the_loss_as_it_was_and_weighted_gaps_raise_it():
    seg = UNetSegmenter({"n": 4, "depth": 2, "instances": ["foreground"]}, device="cpu")
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 16, 16)
    target = torch.cat([(torch.rand(2, 1, 16, 16) > 0.5).float(), torch.rand(2, 1, 16, 16)], dim=1)
    plain = seg.loss(logits, target)
    assert seg.loss(logits, target, weight=torch.ones(2, 1, 16, 16)).item() == pytest.approx(plain.item(), rel=1e-6)
    weight = torch.ones(2, 1, 16, 16)
    weight[:, :, 4:8] = 11.0
    assert seg.loss(logits, target, weight=weight).item() > plain.item()
    known = torch.ones(2, 2)
    known[1, 0] = 0  # partial labels: the weights apply to the counted pairs
    assert seg.loss(logits, target, known, weight).item() > seg.loss(logits, target, known).item()


@pytest.mark.parametrize(("option", "value", "key"), [("--gap-weight", "10", "gap_weight"),
                                                   ("--distance-cap", "8", "distance_cap")])
def test_train_with_an_instance_option_learns_and_records_it(tmp_path, option, value, key):
    data = write_discs(tmp_path / "discs", 3, 0)
    out = tmp_path / "m.pt"
    result = invoke(["-q", "train", data, "--instances", option, value, "--out", out, *TINY])
    assert result.exit_code == 0, result.output + repr(result.exception)
    content = torch.load(out, map_location="cpu", weights_only=True)
    assert content["training"]["options"][key] == float(value)


@pytest.mark.parametrize(("options", "message"), [
    (["--gap-weight", "10"], "--gap-weight 10 weighs the gaps between touching objects, which only instance labels "
                             "show; add --instances"),
    (["--instances", "--gap-weight", "-1"], "--gap-weight -1 must be in [0, 100]; e.g. 10"),
    (["--distance-cap", "50"], "--distance-cap 50 caps the distance targets that only --instances learns; add "
                               "--instances"),
    (["--instances", "--distance-cap", "-1"], "--distance-cap -1 must be >= 0 (px; 0: off)"),
    (["--instances", "--distance-cap", "nan"], "--distance-cap nan must be >= 0 (px; 0: off)"),
])
def test_an_instance_option_without_instances_or_out_of_range_is_one_line(tmp_path, options, message):
    data = write_discs(tmp_path / "discs", 2, 0)
    result = invoke(["train", data, "--out", tmp_path / "m.pt", *TINY, *options])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.pt").exists()
