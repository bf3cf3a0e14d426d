"""A dataset folder's "read_scale" (dataset.json): the network reads its images at that fraction of
their size, on top of the model's working resolution, in training, validation, evaluation, segmentation,
suggestion and IDI; masks, scores and polygons stay at the images' size."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY, invoke

from segmenter.errors import DatasetError
from segmenter.io.dataset import open_dataset
from segmenter.io.images import read_image, write_png
from segmenter.resolution import resample_image
from unet import load_segmenter


def with_read_scale(source: Path, out: Path, scale: object) -> Path:
    """A copy of the dataset folder `source` whose dataset.json declares `scale`."""
    shutil.copytree(source, out)
    manifest = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**manifest, "read_scale": scale}))
    return out


def at_resolution(model: Path, out: Path, factor: float) -> Path:
    """A copy of `model` working at `factor` times its working resolution."""
    seg = load_segmenter(model, device="cpu")
    seg.preprocess["resolution"] = seg.resolution * factor
    return seg.save(out)


def summary(model: Path, data: Path, report: Path) -> dict:
    result = invoke(["-q", "evaluate", model, data, "--out", report, "--no-sweep"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((report / "summary.json").read_text())


def test_a_dataset_declares_the_scale_its_images_are_read_at(tmp_path, ihc_dataset):
    assert open_dataset(ihc_dataset.val).read_scale == 1.0
    assert open_dataset(with_read_scale(ihc_dataset.val, tmp_path / "half", 0.5)).read_scale == 0.5
    for k, bad in enumerate((0, -1, 5, "half", True, None)):
        folder = with_read_scale(ihc_dataset.val, tmp_path / f"bad{k}", bad)
        with pytest.raises(DatasetError, match=rf'^{folder / "dataset.json"} "read_scale" is .*; give a number in '
                                               r"\(0, 4\] \(0.5: the network reads the images at half their size\)$"):
            open_dataset(folder)


def test_a_bad_read_scale_stops_training_with_one_line(tmp_path, ihc_dataset):
    folder = with_read_scale(ihc_dataset.train, tmp_path / "bad", "half")
    result = invoke(["-q", "train", folder, "--out", tmp_path / "m.pt", *TINY])
    assert result.exit_code == 2 and not (tmp_path / "m.pt").exists()
    assert result.stderr.strip().splitlines() == [f'cyseg: error: {folder / "dataset.json"} "read_scale" is '
                                                  "'half'; give a number in (0, 4] (0.5: the network reads the "
                                                  "images at half their size)"]


def test_predicting_at_a_read_scale_is_predicting_at_that_fraction_of_the_working_resolution(tiny_model, ihc_dataset,
                                                                                                 tmp_path):
    image = read_image(next(iter(sorted((ihc_dataset.val / "images").iterdir()))))
    seg = load_segmenter(tiny_model, device="cpu")
    halved = load_segmenter(at_resolution(tiny_model, tmp_path / "half.pt", 0.5), device="cpu")
    probs = seg.predict(image, read_scale=0.5)
    assert probs.shape[1:] == image.shape[:2]
    assert torch.equal(probs, halved.predict(image))
    assert not torch.equal(probs, seg.predict(image))


def test_evaluate_and_segment_read_a_folder_at_its_read_scale(tmp_path, tiny_model, ihc_dataset):
    """A folder declaring 0.5 scores and segments as a model at half the working resolution does on the
    same folder without it: masks at the images' size."""
    half = with_read_scale(ihc_dataset.val, tmp_path / "half", 0.5)
    halved = at_resolution(tiny_model, tmp_path / "halved.pt", 0.5)
    declared = summary(tiny_model, half, tmp_path / "eval_declared")
    assert declared["read_scale"] == 0.5
    halved_summary = summary(halved, ihc_dataset.val, tmp_path / "eval_halved")
    assert declared["dice_mean"] == halved_summary["dice_mean"] and "read_scale" not in halved_summary
    assert declared["dice_mean"] != summary(tiny_model, ihc_dataset.val, tmp_path / "eval_plain")["dice_mean"]
    for model, data, out in ((tiny_model, half, "seg_declared"), (halved, ihc_dataset.val, "seg_halved")):
        result = invoke(["-q", "segment", model, data, "--out", tmp_path / out])
        assert result.exit_code == 0, result.output + repr(result.exception)
    for path in sorted((tmp_path / "seg_declared" / "masks").iterdir()):
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert mask.shape == read_image(half / "images" / path.name).shape[:2]
        assert np.array_equal(mask, cv2.imread(str(tmp_path / "seg_halved" / "masks" / path.name),
                                               cv2.IMREAD_UNCHANGED))


def test_training_reads_each_folder_at_its_read_scale(tmp_path, ihc_dataset):
    """The 160 x 192 crops of a folder declaring 0.5 reach the network at 80 x 96 (the crop is lowered to
    80), as at `--resolution 0.5`; the objects' sizes the model records stay in the images' pixels."""
    half = with_read_scale(ihc_dataset.train, tmp_path / "half", 0.5)
    info = {}
    for name, data, resolution in (("declared", half, "1"), ("halved", ihc_dataset.train, "0.5")):
        out = tmp_path / f"{name}.pt"
        result = invoke(["-q", "train", data, "--out", out, *TINY, "--crop", "128", "--epochs", "1",
                         "--threshold", "0.5", "--resolution", resolution])
        assert result.exit_code == 0, result.output + repr(result.exception)
        info[name] = load_segmenter(out, device="cpu").training_info
    assert info["declared"]["options"]["crop"] == info["halved"]["options"]["crop"] == 80
    assert info["declared"]["options"]["resolution"] == 1
    sizes = {name: list(next(iter(i["object_size_px_by_folder"].values())).values()) for name, i in info.items()}
    assert sizes["declared"] == sizes["halved"] and sizes["declared"][0] > 20
    assert [d.get("read_scale") for d in info["declared"]["scope"]["data"]] == [0.5]
    assert "read_scale" not in info["halved"]["scope"]["data"][0]
    result = invoke(["info", tmp_path / "declared.pt"])
    assert result.exit_code == 0 and " images, read at 0.5x)" in result.stdout


def test_suggest_scores_a_folders_crops_at_its_read_scale(tmp_path, tiny_model, ihc_dataset):
    """Suggesting from a folder declaring 0.5 scores its crops as the same crops halved beforehand."""
    half = with_read_scale(ihc_dataset.val, tmp_path / "half", 0.5)
    plain = with_read_scale(ihc_dataset.val, tmp_path / "plain", 1)
    shutil.rmtree(half / "masks")
    shutil.rmtree(plain / "masks")
    small = tmp_path / "small"
    (small / "images").mkdir(parents=True)
    for path in (half / "images").iterdir():
        write_png(small / "images" / path.name, resample_image(read_image(path), 0.5))
    scores = {}
    for name, folder in (("declared", half), ("small", small), ("plain", plain)):
        result = invoke(["-q", "suggest", tiny_model, folder, "--count", "2", "--out", tmp_path / f"out_{name}"])
        assert result.exit_code == 0, result.output + repr(result.exception)
        with open(tmp_path / f"out_{name}.csv", newline="") as handle:
            scores[name] = {row["source"]: row["uncertainty"] for row in csv.DictReader(handle)}
    assert len(scores["declared"]) == 2 and scores["declared"] == scores["small"] != scores["plain"]


def test_folders_derived_from_a_dataset_keep_what_it_declares_about_its_images(tmp_path, tiny_model, ihc_dataset):
    """cydata split, augment and select, and cyseg improve's versions, keep the stain, µm/px and read scale
    of the folder they come from (they describe the same images)."""
    from click.testing import CliRunner

    from cydata.cli import cli as cydata

    declared = {"stain": "DAB + haematoxylin", "mpp": 0.5, "read_scale": 0.5}
    source = with_read_scale(ihc_dataset.train, tmp_path / "ds", 0.5)
    manifest = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps({**manifest, **declared}))
    for args in (["split", source, "--train", "0.5"], ["augment", source, "--steps", "1"],
                 ["select", source, "--model", tiny_model, "--min-completeness", "0", "--out", tmp_path / "sel",
                  "--device", "cpu"]):
        result = CliRunner().invoke(cydata, ["-q", *map(str, args)])
        assert result.exit_code == 0, result.output + repr(result.exception)
    result = invoke(["-q", "improve", source, "--out", tmp_path / "idi", *TINY, "--iterations", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    derived = [tmp_path / "ds_train", tmp_path / "ds_test", tmp_path / "ds_aug", tmp_path / "sel",
               *(p for p in (tmp_path / "idi").iterdir() if (p / "dataset.json").is_file())]
    assert len(derived) >= 5
    for folder in derived:
        manifest = json.loads((folder / "dataset.json").read_text())
        assert {key: manifest.get(key) for key in declared} == declared, folder
