"""Pixels nobody labelled (a dataset's unknown/ maps): read and checked with the dataset, carried
through crops and augmentation, left out of the loss and of the evaluation scores, and written by
`cyseg improve --unsure unknown` for what its model found but the growth rule did not add."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import invoke, write_grey

from segmenter.errors import DatasetError
from segmenter.io.dataset import DatasetWriter, manifest_hash, open_dataset, read_unknown
from segmenter.sampler import CropSampler
from unet.segmenter import UNetSegmenter


def with_unknown(src, dst, maps: dict[str, np.ndarray]):
    """A copy of the dataset `src` with unknown/<stem>.png written from `maps` (bool)."""
    shutil.copytree(src, dst)
    (dst / "unknown").mkdir()
    for stem, unknown in maps.items():
        write_grey(dst / "unknown" / f"{stem}.png", unknown.astype(np.uint8) * 255)
    return dst


def left_half(shape: tuple[int, int]) -> np.ndarray:
    unknown = np.zeros(shape, bool)
    unknown[:, : shape[1] // 2] = True
    return unknown


# ---------------------------------------------------------------- the loss

def seg_and_batch(seed: int = 0, instances: bool = False):
    torch.manual_seed(seed)
    config = {"n": 4, "depth": 3, **({"instances": ["foreground"]} if instances else {})}
    seg = UNetSegmenter(config, device="cpu")
    channels = 2 if instances else 1
    logits = torch.randn(2, channels, 32, 32, requires_grad=True)
    target = (torch.rand(2, channels, 32, 32) > 0.5).float()
    return seg, logits, target


def test_pixel_loss_with_every_pixel_known_is_the_loss():
    seg, logits, target = seg_and_batch()
    known = torch.ones_like(target)
    assert seg._pixel_loss(logits, target, known).item() == pytest.approx(seg.loss(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize("instances", [False, True])
def test_unknown_pixels_neither_change_the_loss_nor_get_a_gradient(instances):
    seg, logits, target = seg_and_batch(instances=instances)
    known = torch.ones_like(target)
    known[:, :, :, :10] = 0  # the left 10 columns nobody labelled
    loss = seg.loss(logits, target, known)
    loss.backward()
    assert logits.grad[:, :, :, :10].abs().max() == 0
    assert logits.grad[:, :, :, 10:].abs().max() > 0
    flipped_target, other_logits = target.clone(), logits.detach().clone()
    flipped_target[:, :, :, :10] = 1 - flipped_target[:, :, :, :10]
    other_logits[:, :, :, :10] = torch.randn(2, target.shape[1], 32, 10) * 5
    again = seg.loss(other_logits, flipped_target if not instances else target, known)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_a_batch_whose_pixels_are_all_known_takes_the_plain_loss():
    seg, logits, target = seg_and_batch()
    assert seg.loss(logits, target, torch.ones_like(target)).item() == seg.loss(logits, target).item()


# ---------------------------------------------------------------- crops and augmentation

def test_the_unknown_map_travels_with_the_image_through_crops_and_augmentation():
    rng = np.random.default_rng(0)
    blocks = rng.integers(1, 255, (38, 33, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((16, 16, 1), np.uint8))
    unknown = image[:, :, 0] > 128  # the map and the mask are functions of the image: misalignment would show
    mask = (image[:, :, 1] > 100).astype(np.uint8)
    sampler = CropSampler([image], [mask], 64, 16, seed=1, colour=False, translate=0.15, unknown=[unknown])
    for i in range(16):
        x, target, known, _ = sampler[i]
        assert known.shape == (1, 64, 64)
        inside = x[0].numpy() > 0  # translation may bring in a constant border, which is labelled background
        assert np.array_equal((known[0].numpy() == 0)[inside], (x[0].numpy() > 128)[inside])
        assert np.array_equal((target[0].numpy() > 0)[inside], (x[1].numpy() > 100)[inside])
    zoomed = CropSampler([image], [unknown.astype(np.uint8)], 64, 16, seed=1, colour=False, translate=0.15,
                         zoom=0.5, unknown=[unknown])
    for i in range(16):  # magnified with the mask's nearest-neighbour resampling
        _, target, known, _ = zoomed[i]
        assert np.array_equal(known[0].numpy() == 0, target[0].numpy() > 0)


def test_without_unknown_maps_the_samples_are_unchanged():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    mask = (image[:, :, 1] > 100).astype(np.uint8)
    plain = CropSampler([image], [mask], 64, 4, seed=1, colour=False, translate=0.15)
    none = CropSampler([image], [mask], 64, 4, seed=1, colour=False, translate=0.15, unknown=[None])
    for i in range(4):
        for a, b in zip(plain[i], none[i], strict=True):
            assert torch.equal(a, b)
    assert plain[0][2].shape == (1,)


# ---------------------------------------------------------------- the dataset folder

def test_unknown_maps_are_read_copied_and_hashed(ihc_dataset, tmp_path):
    plain = open_dataset(ihc_dataset.train)
    item = plain.items[0]
    shape = read_unknown_shape(item)
    root = with_unknown(ihc_dataset.train, tmp_path / "d", {item.stem: left_half(shape)})
    dataset = open_dataset(root)
    assert np.array_equal(read_unknown(dataset.items[0], shape), left_half(shape))
    assert all(read_unknown(other, shape) is None for other in dataset.items[1:])
    assert manifest_hash(dataset) != manifest_hash(plain)
    with DatasetWriter(tmp_path / "copy", classes=dataset.classes) as writer:
        for each in dataset.items:
            writer.copy(each)
    assert (tmp_path / "copy" / "unknown" / f"{item.stem}.png").read_bytes() == \
        (root / "unknown" / f"{item.stem}.png").read_bytes()


def read_unknown_shape(item) -> tuple[int, int]:
    image = cv2.imread(str(item.image))
    return image.shape[:2]


@pytest.mark.parametrize("case", ["stray", "size", "values"])
def test_bad_unknown_maps_are_named(case, ihc_dataset, tmp_path):
    item = open_dataset(ihc_dataset.train).items[0]
    shape = read_unknown_shape(item)
    unknown = left_half(shape).astype(np.uint8) * 255
    root = with_unknown(ihc_dataset.train, tmp_path / "d", {})
    if case == "stray":
        write_grey(root / "unknown" / "nothing.png", unknown)
        with pytest.raises(DatasetError, match=r"nothing\.png has no image images/nothing\.png; remove it"):
            open_dataset(root)
        return
    if case == "size":
        unknown, needle = unknown[:-4], "export the map at the image's size"
    else:
        unknown, needle = unknown // 2, "0 \\(labelled\\) and 255 \\(unknown\\)"
    write_grey(root / "unknown" / f"{item.stem}.png", unknown)
    with pytest.raises(DatasetError, match=needle):
        read_unknown(open_dataset(root).items[0], shape)
    result = invoke(["-q", "train", root, "--out", tmp_path / "m.pt", "--n", "4", "--depth", "3", "--epochs", "1",
                     "--steps-per-epoch", "1", "--batch", "2", "--crop", "64", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 2 and f"{item.stem}.png" in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_augment_moves_the_unknown_map_with_its_image(ihc_dataset, tmp_path):
    item = open_dataset(ihc_dataset.train).items[0]
    image = cv2.cvtColor(cv2.imread(str(item.image)), cv2.COLOR_BGR2RGB)
    unknown = image[:, :, 0] > np.median(image[:, :, 0])
    root = with_unknown(ihc_dataset.train, tmp_path / "d", {item.stem: unknown})
    from click.testing import CliRunner

    from cydata.cli import cli
    result = CliRunner().invoke(cli, ["augment", str(root), "--out", str(tmp_path / "aug"), "--steps", "2"])
    assert result.exit_code == 0, result.output
    augmented = {each.stem: each for each in open_dataset(tmp_path / "aug").items}
    for k in (1, 2):
        copy = augmented[f"{item.stem}_aug{k}"]
        moved = cv2.cvtColor(cv2.imread(str(copy.image)), cv2.COLOR_BGR2RGB)
        inside = moved.any(axis=2)
        got = read_unknown(copy, moved.shape[:2])
        assert np.array_equal(got[inside], (moved[:, :, 0] > np.median(image[:, :, 0]))[inside])


# ---------------------------------------------------------------- evaluation and training

def test_evaluation_scores_only_the_labelled_pixels(tiny_model, ihc_dataset, tmp_path):
    from segmenter.evaluation import evaluate_dataset
    from unet import load_segmenter

    seg = load_segmenter(tiny_model, device="cpu")
    val = open_dataset(ihc_dataset.val)
    shapes = {item.stem: read_unknown_shape(item) for item in val.items}
    everywhere = with_unknown(ihc_dataset.val, tmp_path / "all", {s: np.ones(v, bool) for s, v in shapes.items()})
    rows = evaluate_dataset(seg, everywhere, [0.5])
    assert all(r["iou"] == 1.0 and r["tp"] + r["fp"] + r["fn"] == 0 for r in rows)
    half = with_unknown(ihc_dataset.val, tmp_path / "half", {s: left_half(v) for s, v in shapes.items()})
    full_rows, half_rows = evaluate_dataset(seg, val, [0.5]), evaluate_dataset(seg, half, [0.5])
    for full, part in zip(full_rows, half_rows, strict=True):
        assert part["tp"] + part["fp"] + part["fn"] < full["tp"] + full["fp"] + full["fn"]


def test_training_leaves_unknown_pixels_out_of_the_loss(ihc_dataset, tmp_path):
    """Two trainings whose masks differ only where both are unknown end with the same weights."""
    shapes = {item.stem: read_unknown_shape(item) for item in open_dataset(ihc_dataset.train).items}
    first = with_unknown(ihc_dataset.train, tmp_path / "a", {s: left_half(v) for s, v in shapes.items()})
    second = with_unknown(ihc_dataset.train, tmp_path / "b", {s: left_half(v) for s, v in shapes.items()})
    for item in open_dataset(second).items:
        mask = cv2.imread(str(item.mask), cv2.IMREAD_GRAYSCALE)
        left = left_half(mask.shape)
        mask[left] = 255 - mask[left]
        write_grey(item.mask, mask)
    weights = []
    for data in (first, second):
        out = tmp_path / f"{data.name}.pt"
        result = invoke(["-q", "train", data, "--out", out, "--n", "4", "--depth", "3", "--epochs", "1",
                         "--steps-per-epoch", "2", "--batch", "2", "--crop", "64", "--translate", "0",
                         "--resolution", "1", "--workers", "0", "--device", "cpu", "--no-amp"])
        assert result.exit_code == 0, result.stdout + result.stderr + repr(result.exception)
        weights.append(torch.load(out, weights_only=True)["state_dict"])
    assert all(torch.allclose(weights[0][k].float(), weights[1][k].float(), atol=1e-6) for k in weights[0])


# ---------------------------------------------------------------- cyseg improve --unsure unknown

def test_unsure_pixels_are_what_was_predicted_away_from_the_expert_and_not_added():
    from cyseg.idi_rules import GrowthRule, candidates, expert_means, typical_area

    gt = np.zeros((60, 80), np.uint8)
    for x in (10, 60):
        cv2.circle(gt, (x, 10), 6, 1, -1)
    gt = gt.astype(bool)
    missed, doubted = np.zeros((60, 80), np.uint8), np.zeros((60, 80), np.uint8)
    cv2.circle(missed, (12, 35), 6, 1, -1)
    cv2.circle(doubted, (40, 35), 6, 1, -1)
    missed, doubted = missed.astype(bool), doubted.astype(bool)
    pred = gt | missed | doubted
    probs = np.where(pred, 0.3, 0.05).astype(np.float32)
    probs[gt | missed] = 0.6
    area = typical_area([gt])
    rule = GrowthRule(unsure="unknown")
    found = candidates(gt, pred, probs, rule, area)
    level = rule.level(expert_means(gt, probs))
    added = found.added(gt.shape, level)
    unsure = found.unsure(added)
    assert added[missed].mean() > 0.8 and not (added & doubted).any()
    assert unsure[doubted].all() and not (unsure & (added | gt)).any()
    found_away = (doubted | missed).astype(np.uint8)  # the doubted object, and the rim the opening cut off the added
    grown = cv2.dilate(found_away, np.ones((2 * found.grow + 3,) * 2, np.uint8)) > 0
    assert not (unsure & ~grown).any()  # grown by at most the opening's radius
    background = candidates(gt, pred, probs, GrowthRule(), area)
    assert not background.unsure(background.added(gt.shape, level)).any()


def test_improve_with_unsure_unknown_writes_the_unknown_maps(tiny_model, ihc_dataset, tmp_path):
    out = tmp_path / "run"
    result = invoke(["-q", "improve", ihc_dataset.train, "--out", out, "--iterations", "2", "--unsure", "unknown",
                     "--model", tiny_model, "--confidence", "0.99", "--crop", "64", "--batch", "2",
                     "--steps-per-epoch", "2", "--epochs", "2", "--resolution", "1", "--workers", "0",
                     "--device", "cpu"])
    assert result.exit_code == 0, result.stdout + result.stderr + repr(result.exception)
    report = json.loads((out / "report.json").read_text())
    first = report["iterations"][0]
    version = open_dataset(out / "iter1")
    written = {item.stem: item for item in version.items if item.unknown is not None}
    total = 0
    for item in written.values():
        mask = cv2.imread(str(item.mask), cv2.IMREAD_GRAYSCALE) > 0
        unknown = read_unknown(item, mask.shape)
        assert not (unknown & mask).any()  # the labelled foreground is never unknown
        total += int(unknown.sum())
    assert first["pixels_unknown"] == total > 0
    meta = json.loads((out / "iter1" / "dataset.json").read_text())["items"]
    assert sum(m["idi"]["unknown_px"] for m in meta.values()) == total


def test_objects_lying_mostly_on_unknown_pixels_are_not_scored():
    from segmenter.instances import outside_unknown

    labels = np.zeros((20, 30), np.uint16)
    labels[2:8, 2:8] = 1  # all unknown
    labels[10:16, 2:8] = 2  # a third unknown: kept
    labels[2:8, 20:26] = 3  # half unknown: kept (not over half)
    unknown = np.zeros((20, 30), bool)
    unknown[:, :4] = True
    unknown[2:8, 2:8] = True
    unknown[2:8, 20:23] = True
    assert sorted(np.unique(outside_unknown(labels, unknown)).tolist()) == [0, 2, 3]
    assert outside_unknown(labels, None) is labels


def test_instance_scores_leave_out_the_objects_nobody_labelled(tiny_model, ihc_dataset, tmp_path):
    from segmenter.evaluation import evaluate_dataset
    from unet import load_segmenter

    seg = load_segmenter(tiny_model, device="cpu")
    shapes = {item.stem: read_unknown_shape(item) for item in open_dataset(ihc_dataset.val).items}
    everywhere = with_unknown(ihc_dataset.val, tmp_path / "all", {s: np.ones(v, bool) for s, v in shapes.items()})
    rows = evaluate_dataset(seg, everywhere, [0.5], instances_at={None: 0.5})
    assert all(r["objects_tp"] + r["objects_fp"] + r["objects_fn"] == 0 for r in rows)
    full = evaluate_dataset(seg, ihc_dataset.val, [0.5], instances_at={None: 0.5})
    assert sum(r["objects_tp"] + r["objects_fp"] + r["objects_fn"] for r in full) > 0
