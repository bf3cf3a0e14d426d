"""Named classes (cell, nucleus): datasets declare the classes their masks annotate, several datasets
train one multi-label model, a class a dataset does not declare is left out of the loss (partial
labels), and the model file, `cyseg evaluate` and `cyseg segment` carry the classes through.

The synthetic data are light-pink cells with a dark nucleus inside each, on pale background: one
dataset annotates only the nuclei, one both classes (0 background, 1 cell outside its nucleus, 2 nucleus)."""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY, invoke, write_grey, write_rgb

import segmenter.training as training
from segmenter.classes import ENCODINGS, VOCABULARY, ChannelMap, channel_map, decode, encode
from segmenter.errors import CysegError, ModelFileError
from segmenter.io.dataset import open_dataset, read_pair
from unet import UNetSegmenter, load_segmenter

SIDE = 64
BOTH = ("cell", "nucleus")


def cells(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image of three cells and its labels (0 background, 1 cell outside its nucleus, 2 nucleus)."""
    rng = np.random.default_rng(seed)
    image = np.full((SIDE, SIDE, 3), (235, 225, 230), np.uint8)
    labels = np.zeros((SIDE, SIDE), np.uint8)
    for _ in range(3):
        cx, cy = (int(v) for v in rng.integers(12, SIDE - 12, 2))
        radius = int(rng.integers(7, 11))
        cv2.circle(image, (cx, cy), radius, (200, 120, 170), -1)
        cv2.circle(labels, (cx, cy), radius, 1, -1)
        cv2.circle(image, (cx, cy), radius // 2, (90, 40, 120), -1)
        cv2.circle(labels, (cx, cy), radius // 2, 2, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), labels


def stored(labels: np.ndarray, classes: tuple[str, ...] | None) -> np.ndarray:
    """The mask file of labels for a dataset declaring `classes` (None: no declaration, cells as 0/255)."""
    if classes == BOTH:
        return labels
    if classes == ("nucleus",):
        return (labels == 2).astype(np.uint8) * 255
    return (labels >= 1).astype(np.uint8) * 255


def make(root: Path, classes: tuple[str, ...] | None, seeds: range, manifest_classes: object = None) -> Path:
    """A dataset folder of the synthetic cells whose masks annotate `classes` and whose dataset.json
    declares them (or `manifest_classes` when given; no "classes" key for None)."""
    for seed in seeds:
        image, labels = cells(seed)
        write_rgb(root / "images" / f"c{seed:03d}.png", image)
        write_grey(root / "masks" / f"c{seed:03d}.png", stored(labels, classes))
    declared = manifest_classes if manifest_classes is not None else list(classes or [])
    manifest = {"format": "cyseg-dataset/1", "items": {}, **({"classes": declared} if declared else {})}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A nuclei-only training set, a cell + nucleus training set, a cell + nucleus validation set
    and a cell + nucleus test set."""
    root = tmp_path_factory.mktemp("classes")
    return {"nuclei": make(root / "nuclei", ("nucleus",), range(6)),
            "both": make(root / "both", BOTH, range(10, 16)),
            "val": make(root / "val", BOTH, range(20, 23)),
            "test": make(root / "test", BOTH, range(30, 33))}


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    """A cell + nucleus model trained with `cyseg train` on both training sets at once."""
    out = tmp_path_factory.mktemp("model") / "classes.pt"
    result = invoke(["-q", "train", data["nuclei"], data["both"], "--val", data["val"], "--out", out, *TINY,
                     "--steps-per-epoch", "4", "--lr", "0.01"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def one_line_error(result, *needles: str) -> str:
    """Exit 2 and one `cyseg: error:` line holding every needle."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("cyseg: error: ") and "Traceback" not in result.output, lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing from {lines[0]!r}"
    return lines[0]


def digest(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- encodings

def test_every_set_of_classes_a_dataset_may_declare_has_an_encoding_that_round_trips():
    subsets = [s for k in range(1, len(VOCABULARY) + 1) for s in itertools.combinations(VOCABULARY, k)]
    assert set(ENCODINGS) == {(), *subsets}
    for declared, encoding in ENCODINGS.items():
        labels = np.arange(len(encoding.values), dtype=np.uint8).repeat(3).reshape(1, -1)
        np.testing.assert_array_equal(decode(encode(labels, declared), declared, "m.png"), labels)


def test_cell_and_nucleus_masks_give_overlapping_targets():
    labels = np.array([[0, 1, 2]], np.uint8)
    both = channel_map(BOTH, BOTH, "ds")
    np.testing.assert_array_equal(both.targets(labels)[0], [[0, 0], [1, 0], [1, 1]])  # a nucleus is in its cell
    nuclei = channel_map(("nucleus",), BOTH, "ds")
    assert nuclei.known.tolist() == [0, 1]  # cells are unknown there, not background
    np.testing.assert_array_equal(nuclei.targets(np.array([[0, 1]], np.uint8))[0, :, 1], [0, 1])


# ---------------------------------------------------------------- the masked loss

def test_the_loss_ignores_the_target_of_a_class_the_item_does_not_annotate():
    torch.manual_seed(0)
    seg = UNetSegmenter({"classes": list(BOTH), "depth": 2, "n": 4}, device="cpu")
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    target = (torch.rand(2, 2, 16, 16) > 0.5).float()
    known = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # item 0 comes from a nuclei-only dataset

    def loss_and_grad(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits.grad = None
        loss = seg.loss(logits, t, known)
        loss.backward()
        return loss.detach(), logits.grad.clone()

    loss, grad = loss_and_grad(target)
    altered = target.clone()
    altered[0, 0] = 1 - altered[0, 0]  # item 0's cell target, which its dataset does not annotate
    assert [torch.equal(a, b) for a, b in zip((loss, grad), loss_and_grad(altered), strict=True)] == [True, True]
    assert torch.count_nonzero(grad[0, 0]) == 0 and torch.count_nonzero(grad[0, 1]) > 0
    annotated = target.clone()
    annotated[0, 1] = 1 - annotated[0, 1]  # item 0's nucleus target counts
    assert not torch.equal(loss_and_grad(annotated)[0], loss)
    # with every class known, the partial-label loss is the plain one
    everything = torch.ones(2, 2)
    assert seg._partial_loss(logits, target, everything).item() == pytest.approx(seg.loss(logits, target).item(),
                                                                                 rel=1e-6)


def tiny_train(data: dict[str, Path], out: Path) -> str:
    """Train a tiny cell + nucleus model on both training sets; the digest of its weights."""
    torch.manual_seed(3)
    seg = UNetSegmenter({"classes": list(BOTH), "depth": 2, "n": 4}, device="cpu")
    options = {"epochs": 1, "steps_per_epoch": 3, "batch": 4, "crop": 32, "resolution": 1.0, "workers": 0,
               "seed": 3, "progress": False, "out": str(out)}
    training.train(seg, [data["nuclei"], data["both"]], None, training.TrainOptions(**options))
    return digest(seg.model.state_dict())


def test_training_is_blind_to_the_targets_of_unannotated_classes(data, tmp_path, monkeypatch):
    reference = tiny_train(data, tmp_path / "a.pt")
    real = training.channel_map

    def unknown_cells_everywhere(declared, model, where) -> ChannelMap:
        channels = real(declared, model, where)
        lut = channels.lut.copy()
        lut[:, channels.known == 0] = 1.0  # the nuclei-only dataset's cell targets: all foreground
        return ChannelMap(lut, channels.known)

    monkeypatch.setattr(training, "channel_map", unknown_cells_everywhere)
    assert tiny_train(data, tmp_path / "b.pt") == reference

    def cells_known_as_background(declared, model, where) -> ChannelMap:
        channels = real(declared, model, where)
        return ChannelMap(channels.lut, np.ones_like(channels.known))

    monkeypatch.setattr(training, "channel_map", cells_known_as_background)
    assert tiny_train(data, tmp_path / "c.pt") != reference  # the control: counting them changes the weights


# ---------------------------------------------------------------- training, model file, evaluate, segment

def test_the_model_file_records_the_classes_and_their_thresholds(model, data):
    content = torch.load(model, map_location="cpu", weights_only=True)
    assert content["config"]["classes"] == ["cell", "nucleus"] and content["config"]["n_classes"] == 2
    info = content["training"]
    assert set(content["thresholds"]) == set(BOTH) and content["thresholds"] == info["threshold"]["thresholds"]
    assert {r["class"] for r in info["threshold"]["sweep"]} == set(BOTH)
    assert info["dataset"] == [str(data["nuclei"].resolve()), str(data["both"].resolve())]
    assert info["dataset_classes"][str(data["nuclei"].resolve())] == ["nucleus"]
    history = json.loads(Path(f"{model.with_suffix('')}.history.json").read_text())
    assert {"val_iou_cell", "val_iou_nucleus", "val_dice_cell", "val_dice_nucleus"} <= set(history[0])
    seg = load_segmenter(model, device="cpu")
    assert seg.classes == BOTH and seg.thresholds == content["thresholds"]
    assert seg.state()["thresholds"] == content["thresholds"]


def test_a_model_file_of_unnamed_classes_is_refused(model, tmp_path):
    content = torch.load(model, map_location="cpu", weights_only=True)
    del content["config"]["classes"]
    del content["thresholds"]
    torch.save(content, tmp_path / "old.pt")
    with pytest.raises(ModelFileError, match=r"2 unnamed classes.*--classes cell,nucleus"):
        load_segmenter(tmp_path / "old.pt", device="cpu")


def test_evaluate_reports_each_class_on_the_datasets_that_annotate_it(model, data, tmp_path):
    result = invoke(["evaluate", model, data["test"], "--out", tmp_path / "both", "--no-sweep", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("cell: IoU ") and lines[1].startswith("nucleus: IoU ") and "(3 images" in lines[1]
    report = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert set(report["classes"]) == set(BOTH) and report["model_thresholds"] == load_segmenter(model).thresholds
    with open(tmp_path / "both" / "per_image.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["image"], r["class"]) for r in rows) == sorted(
        (f"c{s:03d}", c) for s in range(30, 33) for c in BOTH)
    for name in BOTH:  # each class's mean is the mean of its rows, scored against its own truth
        mean = np.mean([float(r["iou"]) for r in rows if r["class"] == name])
        assert report["classes"][name]["iou_mean"] == pytest.approx(mean)
    assert report["classes"]["cell"]["iou_mean"] != report["classes"]["nucleus"]["iou_mean"]

    result = invoke(["evaluate", model, data["nuclei"], "--out", tmp_path / "nuclei", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.splitlines() if " IoU " in line] == ["nucleus"]
    assert all(line.startswith("nucleus: unmatched ") for line in result.stdout.splitlines()[1:-1])
    report = json.loads((tmp_path / "nuclei" / "summary.json").read_text())
    assert list(report["classes"]) == ["nucleus"] and (tmp_path / "nuclei" / "sweep_nucleus.png").is_file()


def test_segment_writes_a_mask_per_class_and_classified_polygons(model, data, tmp_path):
    result = invoke(["segment", model, data["test"], "--out", tmp_path / "seg", "--device", "cpu", "--min-area", "0"])
    assert result.exit_code == 0, result.output
    seg = load_segmenter(model, device="cpu")
    image, _ = read_pair(open_dataset(data["test"]).items[0])
    with torch.inference_mode():
        expected = seg.class_masks(seg.predict(image)).numpy()
    for c, name in enumerate(BOTH):
        mask = cv2.imread(str(tmp_path / "seg" / "masks" / f"c030_{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, expected[c] * 255)
    features = json.loads((tmp_path / "seg" / "geojson" / "c030.geojson").read_text())["features"]
    names = [f["properties"]["classification"]["name"] for f in features]
    assert set(names) <= set(BOTH) and names == sorted(names)  # cells first, then nuclei
    assert not (tmp_path / "seg" / "masks" / "c030.png").exists()


def test_a_one_class_model_is_named_after_its_class(data, tmp_path):
    out = tmp_path / "n.pt"
    result = invoke(["-q", "train", data["nuclei"], data["both"], "--classes", "nucleus", "--out", out, *TINY])
    assert result.exit_code == 0, result.output
    seg = load_segmenter(out, device="cpu")
    assert seg.classes == ("nucleus",) and seg.labels == ("nucleus",)
    image, _ = read_pair(open_dataset(data["both"]).items[0])
    assert seg.segment(image).shape == image.shape[:2]  # one class: a plain mask, as for the slide engine


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(("declared", "needles"), [
    (["tumour"], ["names class 'tumour', which cyseg does not know", "cell, nucleus", "dataset.json"]),
    ("cell", ["must list class names"]),
    (["cell", "cell"], ["names a class twice"]),
])
def test_a_dataset_declaring_an_unknown_class_is_refused(tmp_path, declared, needles):
    root = make(tmp_path / "ds", ("cell",), range(2), manifest_classes=declared)
    result = invoke(["-q", "train", root, "--out", tmp_path / "m.pt", *TINY])
    one_line_error(result, str(root / "dataset.json"), *needles)
    assert not (tmp_path / "m.pt").exists()


def test_a_mask_holding_a_class_its_dataset_does_not_declare_is_refused(tmp_path):
    root = make(tmp_path / "ds", BOTH, range(2), manifest_classes=["nucleus"])  # 0/1/2 masks, nucleus declared
    result = invoke(["-q", "train", root, "--out", tmp_path / "m.pt", *TINY])
    one_line_error(result, str(root / "masks" / "c000.png"), "holds values [1, 2]", "(nucleus: 0 background, 255 "
                   "nucleus)", "declare the classes it holds")
    undeclared = make(tmp_path / "plain", BOTH, range(2), manifest_classes=[])  # 0/1/2 masks, nothing declared
    result = invoke(["-q", "train", undeclared, "--out", tmp_path / "m.pt", *TINY])
    one_line_error(result, "not binary", '"classes": ["cell", "nucleus"]')
    assert not (tmp_path / "m.pt").exists()


def test_classes_that_do_not_fit_the_datasets_are_refused(data, tmp_path):
    out = tmp_path / "m.pt"
    plain = make(tmp_path / "plain", None, range(2))
    cases = [
        (["--classes", "tumour"], [data["both"]], ["--classes tumour names class 'tumour'"]),
        (["--classes", "3"], [data["both"]], ["--classes takes class names, not a count"]),
        (["--classes", "cell"], [data["nuclei"]], [str(data["nuclei"]), "annotates nucleus, none of --classes cell"]),
        (["--classes", "cell"], [plain], [str(plain), "declares no classes"]),
        ([], [plain, data["both"]], [str(plain), "declares no classes but", str(data["both"])]),
        (["--val", data["nuclei"]], [data["both"]], ["no --val dataset annotates cell"]),
        (["--val", plain], [data["both"]], [str(plain), "declares no classes", 'add "classes"']),
    ]
    for options, folders, needles in cases:
        one_line_error(invoke(["-q", "train", *folders, "--out", out, *TINY, *options]), *needles)
        assert not out.exists()


def test_calibrate_chooses_each_classs_threshold_on_the_folders_that_annotate_it(model, data, tmp_path):
    out = tmp_path / "tuned.pt"
    result = invoke(["-q", "calibrate", model, data["nuclei"], data["val"], "--out", out, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "threshold   cell: " in result.stdout and "threshold   nucleus: " in result.stdout
    training = torch.load(out, weights_only=True)["training"]
    assert set(training["threshold"]["thresholds"]) == {"cell", "nucleus"}
    assert training["recalibrated"]["n_images"] == 9 and training["recalibrated"]["tta"] is False


def test_calibrating_a_class_no_folder_annotates_is_refused(model, data, tmp_path):
    out = tmp_path / "m.pt"
    result = invoke(["-q", "calibrate", model, data["nuclei"], "--out", out, "--device", "cpu"])
    one_line_error(result, "no folder given annotates cell", "add one that declares it")
    assert not out.exists()


def test_a_model_and_a_dataset_without_a_class_in_common_are_refused(model, tiny_model, data, ihc_dataset, tmp_path):
    result = invoke(["-q", "evaluate", model, ihc_dataset.val, "--out", tmp_path / "r", "--device", "cpu"])
    one_line_error(result, str(ihc_dataset.val), "declares no classes", "predicts cell, nucleus")
    result = invoke(["-q", "evaluate", tiny_model, data["both"], "--out", tmp_path / "r", "--device", "cpu"])
    one_line_error(result, str(data["both"]), "declares classes cell, nucleus", "one unnamed foreground")
    assert not (tmp_path / "r").exists()


def test_the_slide_engine_classifies_each_class_and_one_mask_stays_one_class(model, data, tmp_path):
    image = data["test"] / "images" / "c030.png"
    result = invoke(["-q", "segment", model, image, "--as-slide", "--out", tmp_path / "s.geojson", "--device", "cpu",
                     "--min-area", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "s.geojson").read_text())["properties"]["summary"]
    assert set(summary["objects"]) == {"cell", "nucleus"} and summary["instances"] is False
    seg = load_segmenter(model, device="cpu")
    with pytest.raises(CysegError, match="handles one class"):
        seg.segment(cells(0)[0])


# ---------------------------------------------------------------- derived datasets keep the classes

def test_split_and_augment_keep_the_declared_classes_and_their_masks(data, tmp_path):
    from click.testing import CliRunner

    from cydata.cli import cli as cydata

    runner = CliRunner()
    result = runner.invoke(cydata, ["split", str(data["both"]), "--train", "0.5", "--out-train", str(tmp_path / "a"),
                                    "--out-test", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cydata, ["augment", str(tmp_path / "a"), "--steps", "1", "--out", str(tmp_path / "aug")])
    assert result.exit_code == 0, result.output
    for name in ("a", "b", "aug"):
        dataset = open_dataset(tmp_path / name)
        assert dataset.classes == BOTH
        labels = [read_pair(item)[1] for item in dataset.items]
        assert all(set(np.unique(m).tolist()) == {0, 1, 2} for m in labels)


# ---------------------------------------------------------------- real data

def test_cell_and_nucleus_on_white_blood_cells(shared_data, tmp_path):
    """wbc/dataset1's masks_3class (0 background, 1 cytoplasm, 2 nucleus) as a cell + nucleus dataset,
    trained together with a nuclei-only dataset cut from other images of the set."""
    wbc = shared_data / "wbc" / "dataset1"
    if not (wbc / "masks_3class").is_dir():
        pytest.skip(f"{wbc / 'masks_3class'} not present: the real cell + nucleus test is skipped")

    def real(name: str, stems: range, classes: tuple[str, ...]) -> Path:
        root = tmp_path / name
        for i in stems:
            stem = f"{i:03d}"
            write_rgb(root / "images" / f"{stem}.png", cv2.cvtColor(cv2.imread(str(wbc / "images" / f"{stem}.png")),
                                                                    cv2.COLOR_BGR2RGB))
            write_grey(root / "masks" / f"{stem}.png",
                       stored(cv2.imread(str(wbc / "masks_3class" / f"{stem}.png"), cv2.IMREAD_UNCHANGED), classes))
        (root / "dataset.json").write_text(json.dumps({"format": "cyseg-dataset/1", "classes": list(classes),
                                                       "items": {}}))
        return root

    both, nuclei, val = real("both", range(1, 11), BOTH), real("nuclei", range(11, 19), ("nucleus",)), \
        real("val", range(19, 23), BOTH)
    out = tmp_path / "wbc.pt"
    result = invoke(["-q", "train", both, nuclei, "--val", val, "--out", out, *TINY, "--steps-per-epoch", "3"])
    assert result.exit_code == 0, result.output
    assert load_segmenter(out, device="cpu").classes == BOTH
    result = invoke(["evaluate", out, val, "--out", tmp_path / "report", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert list(report["classes"]) == ["cell", "nucleus"]
    assert all(report["classes"][c]["n_images"] == 4 and 0 <= report["classes"][c]["dice_mean"] <= 1 for c in BOTH)
