"""`cyseg improve` (iterative data improvement), `cydata select` (annotation completeness) and the
object removal of the IDI benchmark, through the real command lines on crops of real microscopy
(scikit-image's IHC image, see conftest.py) with tiny trainings."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SLIDE, invoke, write_grey, write_rgb

from segmenter.errors import CysegError
from segmenter.io.dataset import open_dataset, read_mask
from segmenter.io.images import read_image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# tiny training: 2 epochs of 2 steps per iteration
TINY_IDI = ["--n", "4", "--depth", "3", "--crop", "64", "--batch", "2", "--steps-per-epoch", "2", "--epochs", "2",
            "--resolution", "1", "--workers", "0", "--device", "cpu"]
CELLS = ("tr00", "tr02", "tr04")  # the items given kind 'cell'; the others stay 'pattern'
FLOOR = 0.25  # the default --min-probability at threshold 0.5


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(result, prog: str, *needles: str) -> str:
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_improve(data: Path, out: Path, *extra) -> None:
    result = invoke(["-q", "improve", data, "--out", out, *TINY_IDI, *extra])
    assert result.exit_code == 0, result.stdout + result.stderr + repr(result.exception)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, ihc_dataset) -> Path:
    """The IHC training crops with items tr00, tr02, tr04 of kind 'cell', the others 'pattern'."""
    root = tmp_path_factory.mktemp("mixed") / "train"
    shutil.copytree(ihc_dataset.train, root)
    manifest = json.loads((root / "dataset.json").read_text())
    for stem in CELLS:
        manifest["items"][stem]["kind"] = "cell"
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture(scope="module")
def improved(tmp_path_factory, mixed, ihc_dataset) -> SimpleNamespace:
    """One K=2 run on all items, with validation; the input's digest taken before it."""
    before = tree_digest(mixed)
    out = tmp_path_factory.mktemp("idi") / "run"
    run_improve(mixed, out, "--iterations", "2", "--val", ihc_dataset.val, "--mode", "or")
    return SimpleNamespace(data=mixed, out=out, before=before)


def masks_of(root: Path) -> dict[str, np.ndarray]:
    return {item.stem: read_mask(item.mask).astype(bool) for item in open_dataset(root).items}


# ---------------------------------------------------------------- improve

def test_versions_form_a_chain_with_manifests(improved):
    out, data = improved.out, improved.data
    for k in (1, 2):
        version = out / f"iter{k}"
        manifest = json.loads((version / "dataset.json").read_text())
        parent = data if k == 1 else out / "iter1"
        assert manifest["parent"] == str(parent.resolve())
        assert manifest["iteration"] == k
        assert manifest["original"] == str(data.resolve())
        assert manifest["model"] == str((out / "models" / f"iter{k}.pt").resolve())
        assert (out / "models" / f"iter{k}.pt").is_file()
        assert not (out / "models" / f"iter{k}.ckpt").exists()
        assert manifest["threshold"] == 0.5
        chain = manifest["postprocess"]["chain"]
        assert chain[0] == {"op": "normalize_minmax", "min_probability": FLOOR}
        assert chain[-1] == {"op": "threshold", "t": 0.5}
        assert manifest["idi"]["stats"]["iteration"] == k
        dataset = open_dataset(version)
        assert [i.stem for i in dataset.items] == [i.stem for i in open_dataset(data).items]
        for item in dataset.items:
            assert item.mask.suffix == ".png" and item.image.suffix == ".png"
            assert item.image.read_bytes() == (data / "images" / item.image.name).read_bytes()
            assert item.kind == ("cell" if item.stem in CELLS else "pattern")
            assert item.slide == SLIDE
    assert not list(out.rglob("*.part"))


def test_masks_are_ground_truth_or_the_prediction_pixel_exact(improved):
    from cyseg.improve import idi_postprocess
    from unet import load_segmenter

    gt = masks_of(improved.data)
    for k in (1, 2):
        version = improved.out / f"iter{k}"
        new = masks_of(version)
        manifest = json.loads((version / "dataset.json").read_text())
        seg = load_segmenter(improved.out / "models" / f"iter{k}.pt", device="cpu")
        for stem, truth in gt.items():
            assert not (truth & ~new[stem]).any(), f"iter{k}/{stem} lost annotated pixels"
            raw = cv2.imread(str(version / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            assert raw.ndim == 2 and raw.dtype == np.uint8 and set(np.unique(raw).tolist()) <= {0, 255}
            with torch.inference_mode():
                pred, tau = idi_postprocess(seg, seg.predict(read_image(improved.data / "images" / f"{stem}.png")),
                                            0.5, True, FLOOR)
            assert np.array_equal(new[stem], truth | pred.numpy()), f"iter{k}/{stem} is not GT OR prediction"
            meta = manifest["items"][stem]["idi"]
            assert meta["threshold_used"] == pytest.approx(tau) and meta["threshold_used"] >= FLOOR
            assert meta["added_px"] == int((new[stem] & ~truth).sum())
            overlay = version / "added" / f"{stem}.png"
            assert overlay.is_file() == bool((new[stem] & ~truth).any())
            if overlay.is_file():
                shown = read_image(overlay)
                assert shown.shape[0] == truth.shape[0] and shown.shape[1] > 2 * truth.shape[1]
            else:  # nothing added: the mask file is the input's, byte for byte
                assert (version / "masks" / f"{stem}.png").read_bytes() == \
                    (improved.data / "masks" / f"{stem}.png").read_bytes()
    assert sum(1 for _ in (improved.out / "iter1" / "added").iterdir()) > 0, "the tiny model added nothing"


def test_input_never_modified(improved):
    assert tree_digest(improved.data) == improved.before


def test_report_has_every_field_and_consistent_numbers(improved):
    from cyseg.improve import ITERATION_FIELDS

    report = json.loads((improved.out / "report.json").read_text())
    rows = report["iterations"]
    with open(improved.out / "report.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["iteration"] for r in rows] == [1, 2] and [int(r["iteration"]) for r in csv_rows] == [1, 2]
    assert list(csv_rows[0]) == list(ITERATION_FIELDS)
    gt = masks_of(improved.data)
    total = sum(m.size for m in gt.values())
    prev = gt
    for row in rows:
        assert set(ITERATION_FIELDS) <= set(row)
        new = masks_of(improved.out / f"iter{row['iteration']}")
        assert row["fg_before"] == pytest.approx(sum(m.sum() for m in prev.values()) / total)
        assert row["fg_after"] == pytest.approx(sum(m.sum() for m in new.values()) / total)
        assert row["pixels_added"] == sum(int((new[s] & ~gt[s]).sum()) for s in gt)
        assert row["pixels_added_vs_previous"] == sum(int((new[s] & ~prev[s]).sum()) for s in gt)
        assert row["pixels_removed_vs_previous"] == sum(int((prev[s] & ~new[s]).sum()) for s in gt)
        assert row["masks_changed"] == sum(not np.array_equal(new[s], prev[s]) for s in gt)
        assert row["items"] == row["items_selected"] == 6
        assert 0 <= row["val_iou"] <= 1 and 0 <= row["val_dice"] <= 1
        assert row["val_iou"] >= row["val_iou_strict"] - 1e-12  # unknown pixels were all false positives
        assert 0 <= row["confidence_level"] <= 1
        assert row["fg_after"] >= sum(m.sum() for m in gt.values()) / total
        prev = new


def test_only_kind_leaves_other_items_byte_identical(mixed, tmp_path):
    out = tmp_path / "cells"
    run_improve(mixed, out, "--iterations", "1", "--only-kind", "cell", "--from-scratch", "--mode", "or")
    version = out / "iter1"
    row = json.loads((out / "report.json").read_text())["iterations"][0]
    assert row["items_selected"] == len(CELLS)
    assert json.loads((version / "dataset.json").read_text())["only_kind"] == ["cell"]
    gt = masks_of(mixed)
    new = masks_of(version)
    for stem in gt:
        if stem in CELLS:
            assert not (gt[stem] & ~new[stem]).any()
        else:
            for sub in ("images", "masks"):
                assert (version / sub / f"{stem}.png").read_bytes() == (mixed / sub / f"{stem}.png").read_bytes()
            assert not (version / "added" / f"{stem}.png").exists()
    assert any((new[s] & ~gt[s]).any() for s in CELLS)


def test_rerun_skips_finished_and_redoes_deleted_last_iteration(improved, tmp_path, ihc_dataset):
    out = tmp_path / "run"
    shutil.copytree(improved.out, out)
    iter1 = (out / "iter1" / "dataset.json").read_text()
    model1 = (out / "models" / "iter1.pt").read_bytes()
    # a finished run: nothing is redone
    run_improve(improved.data, out, "--iterations", "2", "--val", ihc_dataset.val, "--mode", "or")
    assert (out / "iter2" / "dataset.json").read_text() == (improved.out / "iter2" / "dataset.json").read_text()
    # the last iteration deleted (its dataset and its model): redone, with the same result
    shutil.rmtree(out / "iter2")
    for path in (out / "models").glob("iter2.*"):
        path.unlink()
    (out / ".iter2.abc.part").mkdir()  # a leftover of an interrupted write
    run_improve(improved.data, out, "--iterations", "2", "--val", ihc_dataset.val, "--mode", "or")
    assert (out / "iter1" / "dataset.json").read_text() == iter1, "iteration 1 was redone"
    assert (out / "models" / "iter1.pt").read_bytes() == model1
    ref, res = masks_of(improved.out / "iter2"), masks_of(out / "iter2")
    assert all(np.array_equal(ref[s], res[s]) for s in ref)
    a = torch.load(improved.out / "models" / "iter2.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "models" / "iter2.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(out.glob(".iter*.part"))
    rows = json.loads((out / "report.json").read_text())["iterations"]
    assert [r["iteration"] for r in rows] == [1, 2]


def test_interrupted_training_resumes_to_the_same_result(improved, tmp_path, ihc_dataset, monkeypatch):
    import segmenter.training as training

    real_tqdm = training.tqdm
    seen = []

    def interrupt_second_iteration(iterable=None, *a, desc="", **kw):
        bar = real_tqdm(iterable, *a, desc=desc, **kw)
        seen.append(desc)
        if desc.startswith("epoch 2/") and len([d for d in seen if d.startswith("epoch 2/")]) == 2:
            def ctrl_c():
                for i, batch in enumerate(bar):
                    if i == 1:
                        raise KeyboardInterrupt
                    yield batch
            return ctrl_c()
        return bar

    out = tmp_path / "run"
    monkeypatch.setattr(training, "tqdm", interrupt_second_iteration)
    result = invoke(["-q", "improve", improved.data, "--out", out, *TINY_IDI, "--iterations", "2",
                     "--val", ihc_dataset.val, "--mode", "or"])
    assert result.exit_code != 0
    assert (out / "iter1" / "dataset.json").is_file() and not (out / "iter2").exists()
    assert (out / "models" / "iter2.ckpt").is_file() and not (out / "models" / "iter2.pt").exists()
    monkeypatch.setattr(training, "tqdm", real_tqdm)
    run_improve(improved.data, out, "--iterations", "2", "--val", ihc_dataset.val, "--mode", "or")
    ref, res = masks_of(improved.out / "iter2"), masks_of(out / "iter2")
    assert all(np.array_equal(ref[s], res[s]) for s in ref)
    assert not (out / "models" / "iter2.ckpt").exists()


def test_a_larger_k_continues_a_finished_run(improved, tmp_path, ihc_dataset):
    out = tmp_path / "run"
    shutil.copytree(improved.out, out)
    run_improve(improved.data, out, "--iterations", "3", "--val", ihc_dataset.val, "--mode", "or", "--no-early-stop")
    assert json.loads((out / "iter3" / "dataset.json").read_text())["parent"] == str((out / "iter2").resolve())
    assert (out / "iter2" / "dataset.json").read_text() == (improved.out / "iter2" / "dataset.json").read_text()
    assert [r["iteration"] for r in json.loads((out / "report.json").read_text())["iterations"]] == [1, 2, 3]


def test_stall_and_best_iteration_follow_the_validation_iou():
    from cyseg.improve import best_iteration, stalled

    rows = [{"iteration": k, "val_iou": v} for k, v in enumerate((0.5, 0.6, 0.6), start=1)]
    assert not stalled(rows[:1]) and not stalled(rows[:2]) and stalled(rows)
    assert best_iteration(rows) == 2  # the earliest of the tied best
    assert stalled([{"iteration": 1, "val_iou": 0.5}, {"iteration": 2, "val_iou": 0.4}])
    no_val = [{"iteration": k, "val_iou": None} for k in (1, 2)]
    assert not stalled(no_val) and best_iteration(no_val) == 2
    assert best_iteration([]) is None


def test_improve_stops_when_the_validation_iou_stops_rising(ihc_dataset, tmp_path, monkeypatch):
    import cyseg.improve as improve

    scores = iter([0.5, 0.4, 0.3])  # iteration 2 scores lower: iteration 3 must not run
    monkeypatch.setattr(improve, "val_scores", lambda seg, data, rule, area, level: {
        "iou": (v := next(scores)), "dice": v, "iou_strict": v, "unknown_px": 0})
    out = tmp_path / "run"
    result = invoke(["-q", "improve", ihc_dataset.train, "--out", out, *TINY_IDI, "--iterations", "3",
                     "--val", ihc_dataset.val])
    assert result.exit_code == 0, result.stdout + result.stderr + repr(result.exception)
    report = json.loads((out / "report.json").read_text())
    assert [r["iteration"] for r in report["iterations"]] == [1, 2]
    assert not (out / "iter3").exists() and not (out / "models" / "iter3.pt").exists()
    assert report["stopped_early"] and report["best_iteration"] == 1
    assert report["best"] == {"model": str((out / "models" / "iter1.pt").resolve()),
                              "dataset": str((out / "iter1").resolve())}
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "stopped after iteration 2: the validation IoU stopped rising; best iteration 1"
    assert lines[-1] == str(out / "iter1")


def grow(gt: np.ndarray, pred: np.ndarray, probs: np.ndarray, rule, area: float) -> np.ndarray:
    """One mask grown by `rule` at the level of its own expert objects, as `cyseg improve` grows a dataset."""
    from cyseg.idi_rules import addable, expert_means

    return gt | addable(gt, pred, probs, rule, area).added(gt.shape, rule.level(expert_means(gt, probs)))


def test_objects_rule_adds_only_confident_object_sized_predictions_away_from_the_expert():
    from cyseg.idi_rules import GrowthRule, typical_area

    gt = np.zeros((160, 80), np.uint8)
    for x in (10, 60):
        cv2.circle(gt, (x, 10), 6, 1, -1)  # expert objects
    gt = gt.astype(bool)
    pred = np.zeros_like(gt)
    pred[2:19, 2:19] = True  # the first expert object, predicted wider: only its outline would move
    missed, unsure = np.zeros(gt.shape, np.uint8), np.zeros(gt.shape, np.uint8)
    cv2.circle(missed, (12, 35), 6, 1, -1)
    cv2.circle(unsure, (40, 35), 6, 1, -1)
    missed, unsure = missed.astype(bool), unsure.astype(bool)
    cluster = np.zeros_like(gt)
    cluster[50:70, 0:60] = True  # 1200 px: a clump of touching missed objects, ~10 times the median object
    missed |= cluster
    pred |= missed | unsure
    pred[28:40, 24:30] = True  # a bridge joining the two missed objects: opened away
    pred[2:3, 30:32] = True  # a speck: not added
    sheet = np.zeros_like(gt)
    sheet[80:160, 0:80] = True  # 6400 px, over 32 times the expert's median object: not added
    pred |= sheet
    probs = np.where(pred, 0.4, 0.05).astype(np.float32)
    probs[gt | missed | sheet] = 0.6  # the model's level on the expert's objects, the missed ones and the sheet
    area = typical_area([gt])
    new = grow(gt, pred, probs, GrowthRule(), area)
    added = new & ~gt
    assert (new & gt).sum() == gt.sum() and not (added & ~missed).any()
    assert (added & ~cluster).sum() >= 0.8 * (missed & ~cluster).sum()  # the opening only rounds its outline
    assert (added & cluster).sum() >= 0.9 * cluster.sum()
    assert not (grow(gt, pred, probs, GrowthRule(size_range=8), area) & cluster).any()  # within 8 times only
    assert np.array_equal(grow(gt, pred, probs, GrowthRule("or"), area), gt | pred)  # the method
    assert (grow(gt, pred, probs, GrowthRule(confidence=0.3), area) & unsure).sum() >= 0.8 * unsure.sum()
    assert np.array_equal(grow(gt, pred, probs, GrowthRule(), 0.0), gt)  # no expert object: nothing to size by
    assert np.array_equal(grow(np.zeros_like(gt), pred, probs, GrowthRule(), area), np.zeros_like(gt))
    with pytest.raises(CysegError, match="--confidence 2"):
        GrowthRule(confidence=2).check()


def test_confidence_level_is_the_models_own_on_the_expert_objects():
    """Auto confidence: the lower quartile of the expert objects' mean probabilities; a number overrides it."""
    from cyseg.idi_rules import GrowthRule, expert_means

    gt = np.zeros((20, 50), bool)
    probs = np.zeros((20, 50), np.float32)
    for i, level in enumerate((0.2, 0.4, 0.6, 0.8, 1.0)):
        gt[5:10, 10 * i:10 * i + 5] = True
        probs[5:10, 10 * i:10 * i + 5] = level
    means = expert_means(gt, probs)
    assert np.allclose(sorted(means), [0.2, 0.4, 0.6, 0.8, 1.0])
    assert GrowthRule().level(means) == pytest.approx(0.4)
    assert GrowthRule(confidence=0.7).level(means) == 0.7
    assert GrowthRule().level([]) == 1.0  # no expert object: nothing is as sure as one
    assert GrowthRule("or").level(means) == 0.0  # the method adds every predicted pixel


def test_validation_counts_objects_the_rule_would_add_as_unknown(tmp_path):
    """The early stop's IoU: a found, unannotated, object-sized and confident object is neither right
    nor wrong; a speck and the outline past the expert's are still false positives."""
    from cyseg.idi_rules import GrowthRule
    from cyseg.improve import val_scores
    from metrics import jaccard

    gt = np.zeros((40, 80), np.uint8)
    cv2.circle(gt, (15, 20), 8, 1, -1)
    found = gt.copy()
    cv2.circle(found, (15, 20), 9, 1, -1)  # the annotated object, one pixel wider
    cv2.circle(found, (55, 20), 8, 1, -1)  # an object the expert did not annotate
    found[2:4, 70:72] = 1  # a speck
    write_rgb(tmp_path / "val" / "images" / "a.png", np.full((40, 80, 3), 200, np.uint8))
    write_grey(tmp_path / "val" / "masks" / "a.png", gt * 255)

    class Found:  # stands in for a model that predicts `found` with probability 0.9
        def predict(self, image, read_scale=1.0):
            return torch.from_numpy(np.where(found > 0, 0.9, 0.05).astype(np.float32))[None]

        def masks_from_probabilities(self, probs):
            return (probs[0] > 0.5).to(torch.uint8)

    area = float(gt.sum())
    scores = val_scores(Found(), open_dataset(tmp_path / "val"), GrowthRule(), area, level=0.8)
    unknown = np.zeros_like(gt)
    cv2.circle(unknown, (55, 20), 8, 1, -1)
    assert 0.95 * unknown.sum() <= scores["unknown_px"] <= unknown.sum()  # the opening rounds its outline
    inter, union = int((found & gt).sum()), int((found | gt).sum())
    assert scores["iou"] == pytest.approx(inter / (union - scores["unknown_px"]))
    assert scores["iou_strict"] == pytest.approx(jaccard(found, gt)) and scores["iou_strict"] < scores["iou"] < 1
    assert val_scores(Found(), open_dataset(tmp_path / "val"), GrowthRule(), area, level=0.95)["unknown_px"] == 0
    assert val_scores(Found(), open_dataset(tmp_path / "val"), GrowthRule("or"), area, 0.0)["unknown_px"] == 0
    marked = np.zeros_like(gt)
    marked[:, 64:] = 255  # the images' own unknown pixels: the speck's column is not scored
    write_grey(tmp_path / "val" / "unknown" / "a.png", marked)
    cut = val_scores(Found(), open_dataset(tmp_path / "val"), GrowthRule(), area, level=0.95)
    assert cut["unknown_px"] == 40 * 16
    assert cut["iou"] == pytest.approx(jaccard(found[:, :64], gt[:, :64]))


def test_default_improvement_never_moves_expert_outlines(mixed, tmp_path):
    """The default rule (--mode objects) through the real CLI: every added pixel belongs to a whole
    predicted object that keeps clear of the expert's annotations."""
    from cyseg.idi_rules import GrowthRule

    out = tmp_path / "run"
    run_improve(mixed, out, "--iterations", "1")
    manifest = json.loads((out / "iter1" / "dataset.json").read_text())
    assert manifest["growth"]["mode"] == "objects" and manifest["growth"]["expert_median_area_px"] > 0
    margin = GrowthRule().margin
    for stem, truth in masks_of(mixed).items():
        added = masks_of(out / "iter1")[stem] & ~truth
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        near = cv2.dilate(truth.astype(np.uint8), kernel) > 0
        assert not (added & near).any(), f"{stem}: an added object touches the expert's annotation"


def test_normalised_threshold_is_a_probability_level_not_a_z_score():
    """The normalised threshold: min-max rescaling, cut at max(floor, lo + t (hi - lo)); constant maps add nothing."""
    from cyseg.improve import idi_postprocess
    from transforms.chain import default_chain

    seg = SimpleNamespace(postprocess=default_chain(0.5, erode_iterations=0, smoothing_k=1))  # identity chain
    ramp = torch.linspace(0, 0.4, 100).reshape(1, 10, 10)  # an under-confident map
    mask, tau = idi_postprocess(seg, ramp, 0.5, True, 0.1)
    assert tau == pytest.approx(0.2) and torch.equal(mask, ramp[0] > 0.2)
    mask, tau = idi_postprocess(seg, ramp, 0.5, False, 0.1)
    assert tau == 0.5 and not mask.any()
    mask, tau = idi_postprocess(seg, ramp * 0.25, 0.5, True, 0.25)  # max 0.1: the floor stops the stretching
    assert tau == 0.25 and not mask.any()
    mask, tau = idi_postprocess(seg, torch.full((1, 8, 8), 0.7), 0.5, True, 0.1)
    assert tau is None and not mask.any()
    # a z-scored map thresholded at t (the method) marks every pixel above mean + 0.5 std instead
    z_cut = ramp.mean() + 0.5 * ramp.std(unbiased=False)
    assert float(z_cut) != pytest.approx(0.2)


@pytest.mark.parametrize("case", ["missing", "k0", "model_missing", "model_mismatch", "out_inside", "kind_absent",
                                  "options_changed", "foreign_out", "bad_threshold", "bad_confidence",
                                  "word_confidence", "unsure_with_or"])
def test_improve_bad_input_is_one_line_exit_2(case, improved, mixed, tmp_path):
    out = tmp_path / "out"
    args = ["improve", mixed, "--out", out, *TINY_IDI, "--iterations", "1"]
    needles: tuple[str, ...] = ()
    if case == "missing":
        args[1], needles = tmp_path / "nowhere", ("does not exist",)
    elif case == "k0":
        args[-1], needles = "0", ("--iterations",)
    elif case == "model_missing":
        args += ["--model", tmp_path / "none.pt"]
        needles = ("none.pt",)
    elif case == "model_mismatch":
        args += ["--model", improved.out / "models" / "iter1.pt", "--n", "8"]
        needles = ("n=4", "--n 8")
    elif case == "out_inside":
        args[3], needles = mixed / "idi", ("inside the input",)
    elif case == "kind_absent":
        args += ["--only-kind", "roi"]
        needles = ("roi",)
    elif case == "options_changed":
        args[3] = improved.out
        args[args.index("--epochs") + 1] = "3"
        needles = ("epochs",)
    elif case == "foreign_out":
        out.mkdir()
        (out / "something.txt").write_text("mine")
        needles = ("not an IDI run",)
    elif case == "bad_threshold":
        args += ["--threshold", "1.5"]
        needles = ("--threshold",)
    elif case == "bad_confidence":
        args += ["--confidence", "1.5"]
        needles = ("--confidence 1.5", "auto")
    elif case == "word_confidence":
        args += ["--confidence", "high"]
        needles = ("--confidence 'high'", "auto")
    elif case == "unsure_with_or":
        args += ["--mode", "or", "--unsure", "unknown"]
        needles = ("--unsure unknown needs --mode objects",)
    before = tree_digest(improved.out)
    one_line_error(invoke(args), "cyseg", *needles)
    if case not in ("foreign_out", "options_changed"):
        assert not out.exists()
    assert tree_digest(improved.out) == before
    assert not (mixed / "idi").exists()


# ---------------------------------------------------------------- cydata select

def select(args: list) -> object:
    from cydata.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="cydata")


def test_completeness_scores_by_hand():
    from cydata.select import completeness

    pred = np.zeros((4, 4), np.uint8)
    pred[:2, :2] = 1
    assert completeness(pred, pred) == 1.0
    assert completeness(pred, np.zeros_like(pred)) == 0.0
    gt = pred.copy()
    gt[0, 0] = 0
    gt[3, 3] = 1  # annotation outside the prediction does not count
    assert completeness(pred, gt) == 0.75
    assert completeness(np.zeros_like(pred), gt) == 1.0  # nothing predicted: nothing missing


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model, ihc_dataset) -> SimpleNamespace:
    """A dataset on two slides whose masks are built from the model's own prediction, so that the
    scores are known: exact (1.0), half kept, empty (0.0), superset (1.0), three quarters kept."""
    from unet import load_segmenter

    seg = load_segmenter(tiny_model, device="cpu")
    root = tmp_path_factory.mktemp("select") / "data"
    stems = sorted(ihc_dataset.images)
    plan = {"a1": ("A", "exact"), "a2": ("A", "half"), "a3": ("A", "empty"), "b1": ("B", "superset"),
            "b2": ("B", "quarter_off")}
    expected, entries = {}, {}
    for (stem, (slide, how)), source in zip(plan.items(), stems[:len(plan)], strict=True):
        image = ihc_dataset.images[source]
        pred = seg.segment(image).astype(bool)
        n = int(pred.sum())
        assert n > 20, "the tiny model must predict some foreground"
        mask = pred.copy()
        flat = np.flatnonzero(pred)
        if how == "half":
            mask.flat[flat[: n // 2]] = False
        elif how == "quarter_off":
            mask.flat[flat[: n // 4]] = False
        elif how == "empty":
            mask[:] = False
        elif how == "superset":
            mask[:, :10] = True
        expected[stem] = float((pred & mask).sum() / n)
        write_rgb(root / "images" / f"{stem}.png", image)
        write_grey(root / "masks" / f"{stem}.png", mask.astype(np.uint8) * 255)
        entries[stem] = {"kind": "cell", "slide": slide}
    (root / "dataset.json").write_text(json.dumps({"format": "cyseg-dataset/1", "items": entries}))
    assert expected["a1"] == expected["b1"] == 1.0 and expected["a3"] == 0.0
    assert 0.5 <= expected["a2"] < 0.52 and 0.75 <= expected["b2"] < 0.77
    return SimpleNamespace(root=root, model=tiny_model, expected=expected)


def test_select_scores_threshold_and_manifest(scored, tmp_path):
    out = tmp_path / "kept"
    before = tree_digest(scored.root)
    result = select(["-q", "select", scored.root, "--model", scored.model, "--out", out, "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    with open(out / "scores.csv", newline="") as fh:
        rows = {r["stem"]: r for r in csv.DictReader(fh)}
    assert {s: float(r["score"]) for s, r in rows.items()} == pytest.approx(scored.expected)
    kept = {s for s, r in rows.items() if r["selected"] == "True"}
    assert kept == {"a1", "a2", "b1", "b2"}  # a3 (empty annotation, 0.0) is below 0.5
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["parent"] == str(scored.root.resolve())
    assert manifest["selection"]["min_completeness"] == 0.5 and manifest["selection"]["per_slide"] is None
    assert {s: e["completeness"] for s, e in manifest["items"].items()} == pytest.approx(
        {s: scored.expected[s] for s in kept})
    assert all(e["slide"] in ("A", "B") for e in manifest["items"].values())
    for stem in kept:
        for sub in ("images", "masks"):
            assert (out / sub / f"{stem}.png").read_bytes() == (scored.root / sub / f"{stem}.png").read_bytes()
    assert tree_digest(scored.root) == before


def test_select_per_slide_keeps_the_best_of_each_slide(scored, tmp_path):
    out, scores = tmp_path / "balanced", tmp_path / "all.csv"
    result = select(["-q", "select", scored.root, "--model", scored.model, "--out", out, "--per-slide", "1",
                     "--min-completeness", "0.6", "--csv", scores, "--device", "cpu"])
    assert result.exit_code == 0, result.stderr
    assert {i.stem for i in open_dataset(out).items} == {"a1", "b1"}
    with open(scores, newline="") as fh:
        rows = {r["stem"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 5 and rows["b2"]["reason"].startswith("slide already has 1")
    assert rows["a2"]["reason"] == "score below 0.6"


@pytest.mark.parametrize("case", ["bad_min", "bad_cap", "no_model", "none_kept", "exists"])
def test_select_bad_input_is_one_line_exit_2(case, scored, tmp_path):
    out = tmp_path / "out"
    args = ["-q", "select", scored.root, "--model", scored.model, "--out", out, "--device", "cpu"]
    needles: tuple[str, ...] = ()
    if case == "bad_min":
        args += ["--min-completeness", "1.5"]
        needles = ("--min-completeness",)
    elif case == "bad_cap":
        args += ["--per-slide", "0"]
        needles = ("--per-slide",)
    elif case == "no_model":
        args[4], needles = tmp_path / "none.pt", ("none.pt",)
    elif case == "none_kept":
        args += ["--threshold", "0.0", "--min-completeness", "1.0"]  # everything predicted, nothing fully annotated
        needles = ("lower --min-completeness",)
    elif case == "exists":
        out.mkdir()
        needles = ("already exists",)
    one_line_error(select(args), "cydata", *needles)
    if case != "exists":
        assert not out.exists()


# ---------------------------------------------------------------- object removal of the benchmark

def test_remove_objects_removes_p_of_the_components_and_never_adds():
    from bench.idi import count_objects, remove_objects

    mask = np.zeros((100, 100), np.uint8)
    for i in range(5):
        for j in range(4):
            mask[i * 20 + 2:i * 20 + 12, j * 25 + 3:j * 25 + 9 + i] = 255
    original = mask.copy()
    assert count_objects(mask) == 20
    for p, left in ((0.0, 20), (0.25, 15), (0.5, 10), (0.75, 5), (1.0, 0)):
        cut = remove_objects(mask, p, np.random.default_rng(0))
        assert count_objects(cut) == left
        assert not ((cut > 0) & (mask == 0)).any(), "pixels were added"
        assert cut.dtype == mask.dtype and set(np.unique(cut).tolist()) <= {0, 255}
        # each object is kept whole or removed whole
        n, labels = cv2.connectedComponents((mask > 0).astype(np.uint8))
        for label in range(1, n):
            part = cut[labels == label]
            assert (part == 255).all() or (part == 0).all()
    a = remove_objects(mask, 0.5, np.random.default_rng(1))
    b = remove_objects(mask, 0.5, np.random.default_rng(1))
    c = remove_objects(mask, 0.5, np.random.default_rng(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(mask, original), "the input was modified"


def test_remove_objects_on_real_nuclei(ihc_dataset):
    from bench.idi import count_objects, remove_objects

    mask = np.concatenate([m for s, m in sorted(ihc_dataset.masks.items()) if s.startswith("tr")], axis=0)
    n = count_objects(mask)
    cut = remove_objects(mask, 0.5, np.random.default_rng(0))
    assert count_objects(cut) == n - int(np.floor(0.5 * n + 0.5))
    assert not (cut & ~mask).any() and 0.2 < cut.sum() / mask.sum() < 0.8


# ---------------------------------------------------------------- help

@pytest.mark.parametrize("prog", ["cyseg", "cydata"])
def test_help_shows_every_default(prog):
    if prog == "cyseg":
        from cyseg.cli import cli

        name, result = "improve", invoke(["improve", "--help"])
    else:
        from cydata.cli import cli

        name, result = "select", select(["select", "--help"])
    assert result.exit_code == 0
    for param in cli.commands[name].params:
        if param.param_type_name != "option" or param.name == "help" or param.required:
            continue
        if param.is_flag and not param.secondary_opts:
            continue
        assert param.show_default or "[default:" in (param.help or ""), f"{name} {param.opts[0]} hides its default"
