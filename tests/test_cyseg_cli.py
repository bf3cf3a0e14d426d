"""`cyseg train`, `evaluate` and `segment` end to end through the real command line (click's test
runner, and a real subprocess), on crops of real microscopy (see conftest.py)."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio.features
import torch
from affine import Affine
from conftest import TINY, invoke
from shapely.geometry import shape

from metrics.numpy_metrics import dice, jaccard, mean_std
from segmenter.evaluation import SWEEP
from segmenter.io.dataset import manifest_hash, open_dataset, read_mask
from segmenter.io.images import read_image
from segmenter.precision import precision_name

FORMAT = "cyseg-model/1"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(data: Path, out: Path, *extra) -> None:
    result = invoke(["-q", "train", data, "--out", out, *TINY, *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.stdout.strip().splitlines()[-1] == str(out)


def plain_types_only(value, where="content") -> None:
    """Everything in a model file is a plain type or a tensor (what weights_only loading allows)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{where} has key {k!r}"
            plain_types_only(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            plain_types_only(v, f"{where}[{i}]")
    else:
        assert value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor), \
            f"{where} is {type(value).__name__}"


# ---------------------------------------------------------------- train

def test_train_writes_model_history_and_curves(tiny_model, ihc_dataset):
    content = load(tiny_model)
    assert content["format"] == FORMAT and content["arch"] == "unet"
    plain_types_only(content)
    assert content["config"] == {"in_channels": 3, "n_classes": 1, "depth": 3, "n": 4, "upsampling": "transpose"}
    pre = content["preprocess"]
    assert pre["scale"] == 255.0 and len(pre["mean"]) == len(pre["std"]) == 3
    assert all(0 < m < 1 for m in pre["mean"]) and all(s > 0 for s in pre["std"])
    assert [s["op"] for s in content["postprocess"]] == ["erode_dilate", "smoothing", "threshold"]
    # --threshold auto with --val: the sweep value with the best validation IoU is stored
    calibration = content["training"]["threshold"]
    assert [r["threshold"] for r in calibration["sweep"]] == list(SWEEP)
    assert (calibration["chosen_on"], calibration["n_images"]) == ("validation images", 2)
    assert content["threshold"] == calibration["threshold"] == content["postprocess"][-1]["t"]
    assert max(r["iou_mean"] for r in calibration["sweep"]) == \
        next(r["iou_mean"] for r in calibration["sweep"] if r["threshold"] == content["threshold"])
    assert set(content["state_dict"]) and all(isinstance(v, torch.Tensor) for v in content["state_dict"].values())

    info = content["training"]
    assert info["dataset_hash"] == manifest_hash(open_dataset(ihc_dataset.train))
    assert info["dataset"] == str(ihc_dataset.train.resolve())
    assert info["validation"] == str(ihc_dataset.val.resolve())
    assert info["n_images"] == 6
    opts = info["options"]
    assert (opts["seed"], opts["epochs"], opts["steps_per_epoch"], opts["batch"], opts["crop"], opts["lr"]) == \
        (0, 3, 15, 4, 64, 0.01)
    assert {"torch", "numpy", "opencv", "albumentations", "python"} <= set(info["versions"])
    assert info["versions"]["torch"] == torch.__version__
    assert info["epochs_run"] == 3
    assert opts["amp"] is True and info["precision"] == precision_name(torch.device("cpu"))

    stem = tiny_model.with_suffix("")
    rows = read_csv(Path(f"{stem}.history.csv"))
    history = json.loads(Path(f"{stem}.history.json").read_text())
    assert [int(r["epoch"]) for r in rows] == [r["epoch"] for r in history] == [1, 2, 3]
    assert all(0 <= r["val_iou"] <= 1 and 0 <= r["val_dice"] <= 1 and r["train_loss"] > 0 for r in history)
    assert [float(r["val_iou"]) for r in rows] == pytest.approx([r["val_iou"] for r in history])
    curves = cv2.imread(f"{stem}.curves.png")
    assert curves is not None and curves.shape[0] > 100 and curves.shape[1] > 100
    assert not tiny_model.with_suffix(".ckpt").exists(), "the checkpoint must be removed at the end"
    assert not list(tiny_model.parent.glob("*.part"))


def test_best_epoch_is_argmax_of_val_iou_and_its_weights_are_kept(tiny_model, ihc_dataset):
    from segmenter.evaluation import mean_scores
    from unet import load_segmenter

    info = load(tiny_model)["training"]
    history = json.loads(Path(f"{tiny_model.with_suffix('')}.history.json").read_text())
    val_iou = [r["val_iou"] for r in history]
    assert info["best_epoch"] == int(np.argmax(val_iou)) + 1
    assert info["best_val_iou"] == pytest.approx(max(val_iou))
    # the file holds the best epoch's weights: re-scoring it on the validation set at the threshold
    # epochs are compared at (0.5; the stored one is calibrated afterwards) gives that IoU
    seg = load_segmenter(tiny_model, device="cpu")
    val = open_dataset(ihc_dataset.val)
    assert mean_scores(seg, val, threshold=0.5)["iou"] == pytest.approx(info["best_val_iou"], abs=1e-6)
    calibrated = next(r for r in info["threshold"]["sweep"] if r["threshold"] == seg.threshold)
    assert mean_scores(seg, val)["iou"] == pytest.approx(calibrated["iou_mean"], abs=1e-6)
    # and it learnt something: the nuclei of unseen crops are found far better than chance
    assert info["best_val_iou"] > 0.4


def test_same_seed_gives_identical_weights(tmp_path, ihc_dataset):
    train(ihc_dataset.train, tmp_path / "a.pt", "--seed", "7")
    train(ihc_dataset.train, tmp_path / "b.pt", "--seed", "7")
    train(ihc_dataset.train, tmp_path / "c.pt", "--seed", "8")
    a, b, c = (load(tmp_path / f"{n}.pt") for n in "abc")
    calibration = a["training"]["threshold"]  # --threshold auto without --val: chosen on the training images
    assert (calibration["chosen_on"], calibration["n_images"]) == ("training images (no --val)", 6)
    assert a["threshold"] == calibration["threshold"] == b["threshold"]
    assert same_weights(a["state_dict"], b["state_dict"])
    assert a["preprocess"] == b["preprocess"]
    assert not same_weights(a["state_dict"], c["state_dict"])


def test_zoom_and_elastic_reach_the_training_and_are_recorded(tmp_path, ihc_dataset):
    train(ihc_dataset.train, tmp_path / "z.pt", "--zoom", "0.5", "--elastic", "--epochs", "1")
    options = load(tmp_path / "z.pt")["training"]["options"]
    assert options["zoom"] == 0.5 and options["elastic"] is True
    train(ihc_dataset.train, tmp_path / "plain.pt", "--epochs", "1")
    options = load(tmp_path / "plain.pt")["training"]["options"]
    assert options["zoom"] == 0.0 and options["elastic"] is False


def test_a_given_threshold_is_stored_as_it_is(tmp_path, ihc_dataset):
    train(ihc_dataset.train, tmp_path / "m.pt", "--val", ihc_dataset.val, "--threshold", "0.3")
    content = load(tmp_path / "m.pt")
    assert content["threshold"] == content["postprocess"][-1]["t"] == 0.3
    assert "threshold" not in content["training"]


def test_resume_after_interrupt_gives_the_uninterrupted_weights(tmp_path, ihc_dataset, monkeypatch):
    import segmenter.training as training

    args = ["--val", ihc_dataset.val, "--epochs", "3"]
    reference = tmp_path / "ref" / "model.pt"
    train(ihc_dataset.train, reference, *args)

    out = tmp_path / "run" / "model.pt"
    real_tqdm = training.tqdm

    class OneStepThenCtrlC:
        """Epoch 2's progress bar: one optimiser step, then the user presses Ctrl-C."""

        def __init__(self, bar):
            self.bar = bar

        def __iter__(self):
            for i, batch in enumerate(self.bar):
                if i == 1:
                    raise KeyboardInterrupt
                yield batch

        def set_postfix(self, **kw):
            self.bar.set_postfix(**kw)

    def interrupt_in_epoch_2(iterable=None, *a, desc="", **kw):
        bar = real_tqdm(iterable, *a, desc=desc, **kw)
        return OneStepThenCtrlC(bar) if desc.startswith("epoch 2/") else bar

    monkeypatch.setattr(training, "tqdm", interrupt_in_epoch_2)
    result = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY, *args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # Ctrl-C, not an error in the loop
    ckpt = out.with_suffix(".ckpt")
    assert ckpt.is_file() and not out.exists(), "interrupted: the checkpoint of epoch 1 but no model"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in json.loads((out.parent / "model.history.json").read_text())] == [1]

    monkeypatch.setattr(training, "tqdm", real_tqdm)
    train(ihc_dataset.train, out, *args, "--resume")
    assert not ckpt.exists(), "the checkpoint is removed once training completes"
    ref, res = load(reference), load(out)
    assert same_weights(ref["state_dict"], res["state_dict"])
    assert ref["preprocess"] == res["preprocess"]
    for key in ("best_epoch", "best_val_iou", "epochs_run", "dataset_hash"):
        assert ref["training"][key] == res["training"][key]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    ref_hist = json.loads((reference.parent / "model.history.json").read_text())
    res_hist = json.loads((out.parent / "model.history.json").read_text())
    assert strip(ref_hist) == strip(res_hist) and len(res_hist) == 3


# ---------------------------------------------------------------- evaluate

def test_evaluate_writes_reports_sweep_and_overlays(tiny_model, ihc_dataset, tmp_path):
    report = tmp_path / "report"
    result = invoke(["-q", "evaluate", tiny_model, ihc_dataset.train, "--overlays", "--out", report, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("IoU ") and result.stdout.strip().splitlines()[-1] == str(report)

    stems = sorted(p.stem for p in (ihc_dataset.train / "images").glob("*.png"))
    per_image = read_csv(report / "per_image.csv")
    assert sorted(r["image"] for r in per_image) == stems
    iou = np.array([float(r["iou"]) for r in per_image])
    dsc = np.array([float(r["dice"]) for r in per_image])
    assert ((iou >= 0) & (iou <= dsc) & (dsc <= 1)).all()

    summary = json.loads((report / "summary.json").read_text())
    assert summary["n_images"] == len(stems) and summary["model_threshold"] == load(tiny_model)["threshold"]
    assert summary["iou_mean"] == pytest.approx(iou.mean()) and summary["iou_std"] == pytest.approx(iou.std())
    assert summary["dice_mean"] == pytest.approx(dsc.mean()) and summary["dice_std"] == pytest.approx(dsc.std())
    assert summary["training"]["best_epoch"] == load(tiny_model)["training"]["best_epoch"]

    sweep = read_csv(report / "sweep.csv")
    assert [float(r["threshold"]) for r in sweep] == pytest.approx(list(SWEEP))
    assert all(int(r["n_images"]) == len(stems) for r in sweep)
    at_model = next(r for r in sweep if float(r["threshold"]) == pytest.approx(summary["model_threshold"]))
    assert float(at_model["iou_mean"]) == pytest.approx(summary["iou_mean"])
    best = max(sweep, key=lambda r: float(r["iou_mean"]))
    assert summary["best_threshold"] == pytest.approx(float(best["threshold"]))
    assert cv2.imread(str(report / "sweep.png")) is not None

    assert sorted(p.stem for p in (report / "overlays").iterdir()) == stems
    for stem in stems:
        h, w = ihc_dataset.images[stem].shape[:2]
        panel = cv2.imread(str(report / "overlays" / f"{stem}.png"))
        assert panel.shape == (h, 5 * w + 4 * 10, 3)
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("tta", [[], ["--tta"]], ids=["plain", "tta"])
def test_evaluate_and_segment_agree_at_the_same_threshold(tta, tiny_model, ihc_dataset, tmp_path):
    threshold = "0.45"
    report, seg_out = tmp_path / "report", tmp_path / "seg"
    result = invoke(["-q", "evaluate", tiny_model, ihc_dataset.val, "--threshold", threshold, "--no-sweep",
                     "--out", report, "--device", "cpu", *tta])
    assert result.exit_code == 0, result.output
    assert not (report / "sweep.csv").exists() and not (report / "sweep.png").exists()
    assert not (report / "overlays").exists()
    result = invoke(["-q", "segment", tiny_model, ihc_dataset.val, "--threshold", threshold, "--simplify", "0",
                     "--out", seg_out, "--device", "cpu", *tta])
    assert result.exit_code == 0, result.output

    rows = {r["image"]: r for r in read_csv(report / "per_image.csv")}
    assert all(float(r["threshold"]) == 0.45 for r in rows.values())
    ious, dices = [], []
    for stem, truth in ihc_dataset.masks.items():
        if not stem.startswith("va"):
            continue
        mask = cv2.imread(str(seg_out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        ious.append(jaccard(mask, truth))
        dices.append(dice(mask, truth))
        assert float(rows[stem]["iou"]) == pytest.approx(ious[-1], abs=1e-6)
        assert float(rows[stem]["dice"]) == pytest.approx(dices[-1], abs=1e-6)
        assert int(rows[stem]["tp"]) == int(((mask > 0) & (truth > 0)).sum())
    summary = json.loads((report / "summary.json").read_text())
    assert (summary["iou_mean"], summary["iou_std"]) == pytest.approx(mean_std(ious), abs=1e-6)
    assert (summary["dice_mean"], summary["dice_std"]) == pytest.approx(mean_std(dices), abs=1e-6)
    assert summary["model_threshold"] == 0.45


def test_evaluate_default_report_folder_is_named_after_the_dataset(tiny_model, ihc_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["-q", "evaluate", tiny_model, ihc_dataset.val, "--no-sweep", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval-val" / "summary.json").is_file()


# ---------------------------------------------------------------- segment

def rasterise(features: list[dict], shape_hw: tuple[int, int]) -> np.ndarray:
    geoms = [(f["geometry"], 1) for f in features]
    if not geoms:
        return np.zeros(shape_hw, np.uint8)
    return rasterio.features.rasterize(geoms, out_shape=shape_hw, transform=Affine.identity(), fill=0, dtype="uint8")


def test_segment_writes_masks_geojson_and_overlays(tiny_model, ihc_dataset, tmp_path):
    from unet import load_segmenter

    out = tmp_path / "seg"
    result = invoke(["-q", "segment", tiny_model, ihc_dataset.train, "--simplify", "0", "--out", out, "--device",
                     "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    seg = load_segmenter(tiny_model, device="cpu")
    stems = sorted(p.stem for p in (ihc_dataset.train / "images").glob("*.png"))
    assert sorted(p.stem for p in (out / "masks").iterdir()) == stems
    total_features = 0
    for stem in stems:
        image = ihc_dataset.images[stem]
        h, w = image.shape[:2]
        mask = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) <= {0, 255}
        np.testing.assert_array_equal(mask, seg.segment(image) * 255)  # the CLI gives what the API gives

        collection = json.loads((out / "geojson" / f"{stem}.geojson").read_text())
        assert collection["type"] == "FeatureCollection"
        assert collection["properties"] == {"image": f"{stem}.png", "width": w, "height": h}
        for feature in collection["features"]:
            assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
            polygon = shape(feature["geometry"])
            assert polygon.is_valid and polygon.area > 0
            assert feature["properties"]["area"] == pytest.approx(polygon.area)
            assert 0 <= feature["properties"]["mean_probability"] <= 1
            minx, miny, maxx, maxy = polygon.bounds
            assert minx >= 0 and miny >= 0 and maxx <= w and maxy <= h
        total_features += len(collection["features"])
        burnt = rasterise(collection["features"], (h, w))
        fg = mask > 0
        union = (fg | (burnt > 0)).sum()
        iou = 1.0 if union == 0 else (fg & (burnt > 0)).sum() / union
        assert iou > 0.95, f"{stem}: polygons and mask disagree (IoU {iou:.3f})"

        overlay = cv2.imread(str(out / "overlays" / f"{stem}.png"))
        assert overlay.shape == (h, w, 3)
    assert total_features > 10, "the tiny model should find many nuclei"
    assert not list(tmp_path.glob(".*.part"))


def test_segment_simplified_polygons_stay_valid_and_close(tiny_model, ihc_dataset, tmp_path):
    out = tmp_path / "seg"
    result = invoke(["-q", "segment", tiny_model, ihc_dataset.val, "--no-overlays", "--min-area", "20",
                     "--out", out, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not (out / "overlays").exists()
    for path in (out / "geojson").iterdir():
        features = json.loads(path.read_text())["features"]
        assert all(shape(f["geometry"]).is_valid and shape(f["geometry"]).area >= 20 for f in features)
        mask = cv2.imread(str(out / "masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED) > 0
        burnt = rasterise(features, mask.shape) > 0
        assert (burnt & ~mask).sum() <= 0.1 * max(burnt.sum(), 1), "simplified polygons stay on the mask"


def test_segment_a_single_image_file_in_a_real_process(tiny_model, ihc_dataset, tmp_path):
    image = ihc_dataset.train / "images" / "tr03.png"
    out = tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cyseg.cli", "-v", "segment", str(tiny_model), str(image),
                           "--out", str(out), "--device", "cpu"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    # torch, the model and the modules, loaded, are hidden from the cyclic collector's full passes
    frozen = re.search(r"(\d+) loaded objects frozen out of the cyclic collector", proc.stderr)
    assert frozen and int(frozen.group(1)) > 50_000, proc.stderr
    assert [p.name for p in (out / "masks").iterdir()] == ["tr03.png"]
    assert [p.name for p in (out / "geojson").iterdir()] == ["tr03.geojson"]
    mask = read_mask(out / "masks" / "tr03.png", shape=read_image(image).shape[:2])
    assert mask.any()


def test_a_closed_stdout_ends_quietly_after_the_work_is_done(tiny_model, ihc_dataset, tmp_path):
    """`cyseg evaluate ... | head -1`: the reader leaves before cyseg prints; the report is still
    written and cyseg exits as SIGPIPE would (141) without an error line or traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "cyseg.cli", "-q", "evaluate", str(tiny_model), str(ihc_dataset.val),
                           "--out", str(report), "--no-sweep", "--device", "cpu"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
    assert (report / "summary.json").is_file()


def test_demo_with_a_given_model(tiny_model, tmp_path):
    out = tmp_path / "demo"
    result = invoke(["-q", "demo", "--model", tiny_model, "--out", out, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "segmented 2 images" in result.stdout and result.stderr == ""  # -q: no progress bars either
    mosaic = cv2.imread(str(out / "segmentation" / "masks" / "mosaic.png"), cv2.IMREAD_UNCHANGED)
    assert mosaic.shape == (1024, 1536)
    figure = cv2.imread(str(out / "overlay.png"))
    assert figure.shape == (512, 2 * 512 + 10, 3)
    assert json.loads((out / "segmentation" / "geojson" / "ihc.geojson").read_text())["features"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
def test_train_evaluate_segment_on_cuda(ihc_dataset, tmp_path):
    model = tmp_path / "gpu.pt"
    gpu = [a if a != "cpu" else "cuda" for a in TINY]
    result = invoke(["-q", "train", ihc_dataset.train, "--val", ihc_dataset.val, "--out", model, *gpu])
    assert result.exit_code == 0, result.output
    content = load(model)
    assert content["training"]["device"].startswith("cuda")
    assert all(t.device.type == "cpu" for t in content["state_dict"].values())
    assert invoke(["-q", "evaluate", model, ihc_dataset.val, "--out", tmp_path / "r", "--device",
                   "cuda"]).exit_code == 0
    assert invoke(["-q", "segment", model, ihc_dataset.val, "--out", tmp_path / "s", "--device", "cuda"]).exit_code == 0
    assert (tmp_path / "s" / "masks" / "va00.png").is_file()
    # the same model on the CPU scores within a whisker of the GPU (fp16 autocast there)
    assert invoke(["-q", "evaluate", model, ihc_dataset.val, "--out", tmp_path / "rc", "--device",
                   "cpu"]).exit_code == 0
    gpu_iou = json.loads((tmp_path / "r" / "summary.json").read_text())["iou_mean"]
    cpu_iou = json.loads((tmp_path / "rc" / "summary.json").read_text())["iou_mean"]
    assert gpu_iou == pytest.approx(cpu_iou, abs=0.02)


# ---------------------------------------------------------------- help

@pytest.mark.parametrize("command", ["train", "evaluate", "segment", "demo"])
def test_help_shows_every_default(command):
    from cyseg.cli import cli

    result = invoke([command, "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "[default:" in text
    for param in cli.commands[command].params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        if param.is_flag and not param.secondary_opts:
            continue  # a plain on/off flag: off unless given
        if param.required:
            continue
        assert param.show_default or "[default:" in (param.help or ""), f"{command} {param.opts[0]} hides its default"


# ---------------------------------------------------------------- real data

def test_real_data_train_and_evaluate(shared_data, tmp_path):
    source = shared_data / "miccai15"
    if not (source / "images").is_dir():
        pytest.skip("../shared/data/miccai15 not present: real-data test skipped")

    def subset(name: str, stems: list[str]) -> Path:
        root = tmp_path / name
        for sub in ("images", "masks"):
            (root / sub).mkdir(parents=True)
            for stem in stems:
                (root / sub / f"{stem}.png").symlink_to(source / sub / f"{stem}.png")
        return root

    train_dir = subset("train", ["image02", "image06", "image07"])
    test_dir = subset("test", ["image14"])
    model = tmp_path / "m15.pt"
    train(train_dir, model, "--steps-per-epoch", "3")
    report = tmp_path / "report"
    result = invoke(["-q", "evaluate", model, test_dir, "--no-sweep", "--out", report, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["n_images"] == 1
    assert 0 <= summary["iou_mean"] <= 1 and 0 <= summary["dice_mean"] <= 1
