"""The model file (DESIGN §4): save/load round trip, plain-type content that
`torch.load(weights_only=True)` opens, and a clear refusal of everything else."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segmenter.errors import CysegError, ModelFileError
from segmenter.modelfile import (
    FORMAT,
    REQUIRED,
    load_model_file,
    plain,
    save_model_file,
)
from transforms.chain import default_chain
from unet import UNet, UNetSegmenter, load_segmenter


@pytest.fixture
def segmenter() -> UNetSegmenter:
    torch.manual_seed(3)
    seg = UNetSegmenter({"n": 4, "depth": 3}, device="cpu", threshold=0.4,
                        postprocess=default_chain(0.4, erode_k=5, erode_iterations=2, smoothing_k=3),
                        preprocess={"scale": 255.0, "mean": [0.6, 0.5, 0.7], "std": [0.2, 0.25, 0.15]})
    seg.training_info = {"dataset_hash": "ab" * 32, "options": {"seed": 3, "epochs": 2},
                         "versions": {"torch": torch.__version__}, "best_val_iou": np.float64(0.5),
                         "path": Path("/data/x"), "shape": (3, 4)}
    return seg


def message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_round_trip_restores_everything(segmenter, tmp_path, ihc_image):
    path = segmenter.save(tmp_path / "m.pt")
    loaded = load_segmenter(path, device="cpu")
    assert type(loaded) is UNetSegmenter
    assert loaded.config == segmenter.config
    assert loaded.threshold == 0.4 and loaded.postprocess == segmenter.postprocess
    assert loaded.preprocess == segmenter.preprocess and loaded.class_weights == [1.0]
    assert loaded.inference == segmenter.inference
    original = segmenter.model.state_dict()
    assert all(torch.equal(v, original[k]) for k, v in loaded.model.state_dict().items())
    assert loaded.training_info == {"dataset_hash": "ab" * 32, "options": {"seed": 3, "epochs": 2},
                                    "versions": {"torch": torch.__version__}, "best_val_iou": 0.5,
                                    "path": "/data/x", "shape": [3, 4]}
    crop = ihc_image[:96, :80]
    np.testing.assert_array_equal(loaded.segment(crop), segmenter.segment(crop))
    assert torch.equal(loaded.predict(crop), segmenter.predict(crop))


def test_content_is_plain_types_and_tensors(segmenter, tmp_path):
    path = segmenter.save(tmp_path / "m.pt")
    content = torch.load(path, map_location="cpu", weights_only=True)
    assert content["format"] == FORMAT and set(REQUIRED) <= set(content)

    def walk(value, where):
        if isinstance(value, dict):
            for k, v in value.items():
                assert type(k) is str, where
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        else:
            assert value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor), \
                f"{where} is a {type(value).__name__}"

    walk(content, "content")
    assert all(t.device.type == "cpu" for t in content["state_dict"].values())
    json.dumps({k: v for k, v in content.items() if k != "state_dict"})  # everything else is JSON


def test_plain_reduces_values():
    assert plain({1: (np.int64(2), np.float32(0.5)), "p": Path("/a"), "t": None, "b": True}) == \
        {"1": [2, 0.5], "p": "/a", "t": None, "b": True}
    tensor = torch.ones(2)
    assert plain({"x": tensor})["x"] is tensor


def test_save_is_atomic_and_refuses_incomplete_content(segmenter, tmp_path):
    content = segmenter.state()
    del content["state_dict"]
    with pytest.raises(ModelFileError) as excinfo:
        save_model_file(tmp_path / "m.pt", content)
    assert "lacks state_dict" in message(excinfo)
    assert list(tmp_path.iterdir()) == []


def test_save_into_missing_folders(segmenter, tmp_path):
    path = segmenter.save(tmp_path / "a" / "b" / "m.pt")
    assert load_model_file(path)["format"] == FORMAT
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]


def test_a_failed_save_keeps_the_previous_file(segmenter, tmp_path, monkeypatch):
    path = segmenter.save(tmp_path / "m.pt")
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CysegError) as excinfo:
        segmenter.save(path)
    assert "No space left on device" in message(excinfo) and str(path) in message(excinfo)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


# ---------------------------------------------------------------- refusals

def write(path: Path, what: str, valid: Path) -> list[str]:
    """Write a file that is not a cyseg model; return what the refusal must say."""
    if what == "bare state_dict":
        torch.save(UNet(n=4, depth=3).state_dict(), path)
        return ["is a bare state_dict", "no 'format' key", "cyseg train"]
    if what == "dict without format":
        torch.save({"epoch": 3, "lr": 0.1}, path)
        return ["is a dict (epoch, lr)", "no 'format' key", "cyseg train"]
    if what == "list":
        torch.save([1, 2], path)
        return ["is a list", "no 'format' key"]
    if what == "other format":
        torch.save({"format": "other/1"}, path)
        return ["format 'other/1'", FORMAT, "cyseg train"]
    if what == "missing keys":
        content = torch.load(valid, weights_only=True)
        del content["postprocess"], content["threshold"]
        torch.save(content, path)
        return ["lacks threshold, postprocess", "cyseg train"]
    if what == "pickled module":
        torch.save(UNet(n=4, depth=3), path)
        return ["holds Python objects", "cyseg train"]
    if what == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
        return ["is not a PyTorch file", "cyseg train"]
    if what == "truncated":
        data = valid.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        return ["is not a PyTorch file", "truncated", "cyseg train"]
    if what == "empty":
        path.write_bytes(b"")
        return ["is not a PyTorch file"]
    if what == "text":
        path.write_text("hello")
        return ["is not a PyTorch file"]
    if what == "missing":
        return ["does not exist", "cyseg train"]
    raise AssertionError(what)


REFUSED = ["bare state_dict", "dict without format", "list", "other format", "missing keys", "pickled module",
           "random bytes", "truncated", "empty", "text", "missing"]


@pytest.mark.parametrize("what", REFUSED)
def test_foreign_or_broken_files_are_refused(what, segmenter, tmp_path):
    valid = segmenter.save(tmp_path / "valid.pt")
    path = tmp_path / "bad.pt"
    needles = write(path, what, valid)
    with pytest.raises(ModelFileError) as excinfo:
        load_segmenter(path, device="cpu")
    text = message(excinfo)
    assert text.startswith(f"model file {path} ")
    for needle in needles:
        assert needle in text


def test_unknown_architecture_is_refused(segmenter, tmp_path):
    content = torch.load(segmenter.save(tmp_path / "m.pt"), weights_only=True)
    content["arch"] = "segformer"
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(ModelFileError) as excinfo:
        load_segmenter(tmp_path / "other.pt", device="cpu")
    assert "architecture 'segformer'" in message(excinfo) and "unet" in message(excinfo)


def test_weights_that_do_not_match_the_configuration_are_refused(segmenter, tmp_path):
    content = torch.load(segmenter.save(tmp_path / "m.pt"), weights_only=True)
    content["config"]["depth"] = 4
    torch.save(content, tmp_path / "other.pt")
    with pytest.raises(ModelFileError) as excinfo:
        load_segmenter(tmp_path / "other.pt", device="cpu")
    assert "does not match its own configuration" in message(excinfo) and "retrain" in message(excinfo)


@pytest.mark.parametrize("damage", [
    "threshold 1.5", "unknown post-processing op", "preprocess without mean",
    "depth 99",
])
def test_inconsistent_model_content_is_refused_naming_the_file(damage, segmenter, tmp_path):
    content = torch.load(segmenter.save(tmp_path / "m.pt"), weights_only=True)
    if damage == "threshold 1.5":
        content["threshold"] = 1.5
    elif damage == "unknown post-processing op":
        content["postprocess"] = [{"op": "blur"}]
    elif damage == "depth 99":
        content["config"]["depth"] = 99
    else:
        content["preprocess"] = {"scale": 255.0}
    path = tmp_path / "edited.pt"
    torch.save(content, path)
    with pytest.raises(CysegError) as excinfo:
        load_segmenter(path, device="cpu")
    assert f"model file {path}" in message(excinfo) and "cyseg train" in message(excinfo)
