"""Contour bands as a second instance target (`cyseg train --instances --contours`, DCAN): the target's
math, the markers the predicted contours cut, the model's channels, loss and crops, the choice on
validation images, the CLI and its refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, invoke
from test_instances import disc, touching_discs, write_discs

from segmenter.errors import CysegError
from segmenter.instances import CONTOUR_LEVELS, H_VALUES, JOINS, instance_labels, separations
from segmenter.sampler import CropSampler
from transforms.instances import Separation, contour_markers, contour_target, distance_target, separate
from unet import UNetSegmenter, load_segmenter


def dumbbell(shape: tuple[int, int] = (80, 140)) -> np.ndarray:
    """One object: two discs of radius 22 joined by a 10-px-wide bar (a gland with a waist), label 1."""
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (40, 32), 22) | disc(shape, (40, 108), 22)] = 1
    labels[35:45, 32:108] = 1
    return labels


def test_the_contour_band_lies_on_each_edge_both_sides_and_nowhere_else():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 10:30] = 1
    labels[10:30, 30:50] = 2  # touching square
    band = contour_target(labels)
    assert band.dtype == np.float32 and set(np.unique(band)) == {0.0, 1.0}
    assert band[20, 9] == 1 and band[20, 10] == 1 and band[20, 11] == 1 and band[20, 8] == 0  # outer edge
    assert band[20, 28:32].tolist() == [1, 1, 1, 1]  # both objects' edges where they touch
    assert band[20, 20] == 0 and band[0, 0] == 0  # a core, the far background
    whole = np.ones((20, 20), np.int32)
    assert (contour_target(whole) == 0).all()  # the image border is no edge
    assert (contour_target(np.zeros((8, 8), np.int32)) == 0).all()


def test_contour_cores_keep_a_waisted_object_whole_where_the_distance_peaks_split_it():
    labels = dumbbell()
    foreground = labels > 0
    by_peaks = separate(foreground, distance_target(labels), Separation(h=0.1))
    assert int(by_peaks.max()) == 2  # its true distance has one peak per lobe
    by_contour = separate(foreground, distance_target(labels), Separation(marks="contour"),
                          contour=contour_target(labels))
    assert int(by_contour.max()) == 1 and (by_contour[foreground] == 1).all()


def test_contour_cores_split_touching_objects_along_the_predicted_contour():
    labels = touching_discs()
    foreground = labels > 0
    for grow in ("watershed", "nearest"):
        split = separate(foreground, distance_target(labels), Separation(marks="contour", grow=grow),
                         contour=contour_target(labels))
        assert int(split.max()) == 2
        for i in (1, 2):
            overlap = np.bincount(split[labels == i], minlength=3)[1:]
            assert overlap.max() / overlap.sum() > 0.95


def test_a_faint_or_thin_contour_bridge_does_not_merge_and_specks_do_not_mark():
    labels = touching_discs()
    band = contour_target(labels)
    band[40, 50:66] = 0.0  # a one-pixel gap in the predicted contour between the two discs
    marks = contour_markers(labels > 0, band, 0.5)
    assert int(marks.max()) == 2
    speck = np.zeros((30, 30), bool)
    speck[14:16, 14:16] = True
    assert int(contour_markers(speck, np.zeros((30, 30), np.float32), 0.5).max()) == 0


def test_contour_marks_without_a_contour_or_out_of_range_are_refused():
    labels = touching_discs()
    with pytest.raises(ValueError, match="contour marks need the predicted contour"):
        separate(labels > 0, distance_target(labels), Separation(marks="contour"))
    with pytest.raises(ValueError, match="marks 'rings' must be one of peaks, contour"):
        Separation(marks="rings").check()
    with pytest.raises(ValueError, match=r"contour 1.5 must be in \(0, 1\)"):
        Separation(marks="contour", contour=1.5).check()


def test_a_model_with_contours_has_a_contour_channel_per_instance_class():
    seg = UNetSegmenter({"n": 4, "depth": 2, "classes": ["cell", "nucleus"], "instances": ["cell", "nucleus"],
                         "contours": True}, device="cpu")
    assert seg.contours and seg.n_outputs == 6
    probs = np.arange(6)[:, None, None] * np.ones((6, 4, 4))
    assert seg.instance_map(probs, "nucleus", "distance")[0, 0] == 3
    assert seg.instance_map(probs, "cell", "contour")[0, 0] == 4
    assert seg.instance_map(probs, "nucleus", "contour")[0, 0] == 5
    assert seg.predict(np.zeros((32, 32, 3), np.uint8)).shape == (6, 32, 32)
    plain = UNetSegmenter({"n": 4, "depth": 2, "instances": ["foreground"]}, device="cpu")
    assert not plain.contours and plain.n_outputs == 2


def test_contours_without_instances_or_contour_marks_without_contours_are_refused():
    with pytest.raises(CysegError, match="a model with contours needs instance classes"):
        UNetSegmenter({"n": 4, "depth": 2, "contours": True}, device="cpu")
    with pytest.raises(CysegError, match="marked by contours, which the model does not predict"):
        UNetSegmenter({"n": 4, "depth": 2, "instances": ["foreground"]}, device="cpu",
                      separation={"foreground": {"marks": "contour"}})


def test_the_contour_loss_counts_only_annotated_pairs_and_falls_as_the_band_is_learnt():
    seg = UNetSegmenter({"n": 4, "depth": 2, "instances": ["foreground"], "contours": True}, device="cpu")
    torch.manual_seed(0)
    labels = touching_discs((32, 48))
    band = torch.from_numpy(contour_target(labels)).expand(2, 1, 32, 48)
    inside = torch.from_numpy(labels > 0).float().expand(2, 1, 32, 48)
    target = torch.cat([inside, torch.rand(2, 1, 32, 48) * inside, band], dim=1)
    guess = torch.randn(2, 3, 32, 48)
    learnt = guess.clone()
    learnt[:, 2] = (band[:, 0] * 2 - 1) * 8  # confident and right on the contour channel
    assert seg.loss(learnt, target).item() < seg.loss(guess, target).item()
    known = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # item 1: instances unknown
    other = learnt.clone()
    other[1, 2] = -learnt[1, 2]
    assert seg.loss(learnt, target, known).item() == pytest.approx(seg.loss(other, target, known).item())
    assert seg._contour_loss(guess[:, 2:], band, torch.zeros(2, 1)).item() == 0


def test_the_crops_carry_the_contour_targets_after_the_distances_without_changing_the_draws():
    labels = touching_discs((96, 128))
    image = np.repeat(((labels > 0) * 200 + 20).astype(np.uint8)[:, :, None], 3, axis=2)
    instances = [(labels.astype(np.uint16)[:, :, None], np.ones(1, np.float32))]
    plain = CropSampler([image], [(labels > 0).astype(np.uint8)], 64, 3, seed=1, colour=False, translate=0.0,
                        instances=instances)
    contoured = CropSampler([image], [(labels > 0).astype(np.uint8)], 64, 3, seed=1, colour=False, translate=0.0,
                            instances=instances, contours=True)
    for i in range(3):
        x, target, _, _ = plain[i]
        x_c, target_c, known_c, _ = contoured[i]
        assert torch.equal(x, x_c) and torch.equal(target[0], target_c[0])
        assert torch.allclose(target[1], target_c[1], atol=1e-5)  # OpenCV's exact distance varies in the last bits
        assert target_c.shape == (3, 64, 64) and known_c.tolist() == [1.0, 1.0, 1.0]
        distance, band = target_c[1], target_c[2]
        assert (band[(distance > 0) & (distance < 0.05)] == 1).all()  # the edge pixels (1 px of about 24)
        assert (band[distance > 0.2] == 0).all() and band.sum() > 0


def test_validation_tries_contour_levels_only_for_models_with_contours_and_nearest_growth_from_nuclei():
    plain = separations(False, (False,))
    assert [(s.marks, s.h, s.grow) for s in plain] == [("peaks", h, "watershed") for h in H_VALUES]
    contoured = separations(True, (False, True))
    assert sorted({s.contour for s in contoured if s.marks == "contour"}) == sorted(CONTOUR_LEVELS)
    assert len(contoured) == (1 + 2 * len(JOINS)) * (len(H_VALUES) + len(CONTOUR_LEVELS))
    assert all(s.nucleus_seeds for s in contoured if s.grow == "nearest")
    assert {s.join for s in contoured if s.nucleus_seeds} == set(JOINS) and {s.join for s in plain} == {0.0}
    assert [s for s in contoured if not s.nucleus_seeds][:len(plain)] == plain  # the peaks first: ties go to them


@pytest.fixture(scope="module")
def contour_model(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("contour_discs")
    sets = {"train": write_discs(root / "train", 6, 0), "val": write_discs(root / "val", 2, 1)}
    out = root / "contours.pt"
    result = invoke(["-q", "train", sets["train"], "--val", sets["val"], "--instances", "--contours", "--out", out,
                     *TINY, "--steps-per-epoch", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, sets


def test_train_with_contours_records_them_and_segment_and_info_use_them(contour_model, tmp_path):
    out, sets = contour_model
    content = torch.load(out, map_location="cpu", weights_only=True)
    assert content["config"]["contours"] is True
    assert content["separation"]["foreground"]["marks"] in ("peaks", "contour")
    seg = load_segmenter(out, device="cpu")
    probs = seg.predict(np.zeros((64, 64, 3), np.uint8))
    assert probs.shape == (3, 64, 64)
    masks = seg.class_masks(probs).cpu().numpy()
    for marks in ("peaks", "contour"):
        labels = instance_labels(seg, masks, probs.cpu().numpy(), {"foreground": {"marks": marks}})
        assert labels["foreground"].shape == (64, 64)
    assert "(instances, with contours)" in invoke(["info", out]).stdout
    result = invoke(["-q", "segment", out, sets["val"], "--out", tmp_path / "seg"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(list((tmp_path / "seg" / "labels").glob("*.png"))) == 2


def test_a_refit_without_contours_cannot_adopt_a_contour_models_settings(contour_model, tmp_path):
    out, sets = contour_model
    result = invoke(["train", sets["train"], "--instances", "--settings-from", out, "--out", tmp_path / "r.pt", *TINY])
    assert result.exit_code == 2
    assert "predicts classes foreground (instances: ['foreground'], with contours)" in result.stderr
    assert "give a model trained with the same --classes, --instances and --contours" in result.stderr
    assert not (tmp_path / "r.pt").exists()


def test_contours_without_instances_is_one_line(tmp_path):
    data = write_discs(tmp_path / "discs", 2, 0)
    result = invoke(["train", data, "--contours", "--out", tmp_path / "m.pt", *TINY])
    assert result.exit_code == 2
    assert "--contours needs --instances" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.pt").exists()


def test_an_onnx_export_of_a_contour_model_gives_its_contour_channels_and_says_so(contour_model, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "contours.onnx"
    result = invoke(["export", contour_model[0], "--onnx", out])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["contours"] == "true" and "then (contours true) one contour probability" in meta["output"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = np.full((64, 64, 3), 200, np.uint8)
    got = session.run(None, {"image": image.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
    expected = load_segmenter(contour_model[0], device="cpu").predict(image, amp=False).cpu().numpy()
    assert got.shape == (3, 64, 64) and np.abs(got - expected).max() < 1e-3
