"""What a user can get wrong, through the real `cyseg` command line: every case must end with ONE
line `cyseg: error: ...` on stderr that names the file (or option) at fault and the fix, exit status
2, no traceback, and nothing half-written (no model, no report or output folder, no *.part)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY, invoke, write_grey

PREFIX = "cyseg: error: "


def assert_one_line_error(result, *needles: str) -> str:
    """Exit 2 and a single `cyseg: error:` line on stderr holding every needle; returns the line.
    `result` is click's Result, or a CompletedProcess given an `exit_code`."""
    output = result.stderr
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "Traceback" not in result.stdout
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    line = lines[0]
    assert line.startswith(PREFIX), line
    for needle in needles:
        assert needle in line, f"{needle!r} missing from {line!r}"
    return line


def assert_nothing_written(folder: Path, *outputs: Path) -> None:
    for path in outputs:
        assert not path.exists(), f"{path} was written although the command failed"
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".part") or p.suffix == ".ckpt"]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def model_outputs(model: Path) -> list[Path]:
    stem = model.with_suffix("")
    return [model, Path(f"{stem}.history.csv"), Path(f"{stem}.history.json"), Path(f"{stem}.curves.png"),
            model.with_suffix(".ckpt")]


@pytest.fixture
def dataset(tmp_path, ihc_dataset) -> Path:
    """A fresh copy of three crops of the IHC dataset, for a test to break."""
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for stem in ("tr00", "tr01", "tr02"):
            shutil.copy(ihc_dataset.train / sub / f"{stem}.png", root / sub / f"{stem}.png")
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- datasets: train and evaluate

def break_missing_folder(root: Path) -> tuple[Path, list[str]]:
    missing = root.parent / "no-such-dataset"
    return missing, [str(missing), "does not exist", "images/"]


def break_no_images(root: Path) -> tuple[Path, list[str]]:
    shutil.rmtree(root / "images")
    return root, [str(root), "no images/ folder", "cydata convert"]


def break_empty_images(root: Path) -> tuple[Path, list[str]]:
    for p in (root / "images").iterdir():
        p.unlink()
    return root, [str(root / "images"), "holds no images", "add crops"]


def break_no_mask(root: Path) -> tuple[Path, list[str]]:
    (root / "masks" / "tr01.png").unlink()
    return root, [str(root / "images" / "tr01.png"), "has no mask", "masks/tr01.png", "add the masks"]


def break_mask_size(root: Path) -> tuple[Path, list[str]]:
    mask = cv2.imread(str(root / "masks" / "tr01.png"), cv2.IMREAD_UNCHANGED)
    write_grey(root / "masks" / "tr01.png", mask[:-8, :-4])
    return root, [str(root / "masks" / "tr01.png"), "188x152", "192x160", "export the mask at the image's size"]


def break_mask_values(root: Path) -> tuple[Path, list[str]]:
    mask = cv2.imread(str(root / "masks" / "tr02.png"), cv2.IMREAD_UNCHANGED)
    write_grey(root / "masks" / "tr02.png", (mask > 0).astype(np.uint8))  # 0/1 instead of 0/255
    return root, [str(root / "masks" / "tr02.png"), "not binary", "[1]", "255 for foreground"]


def break_jpeg_mask(root: Path) -> tuple[Path, list[str]]:
    mask = cv2.imread(str(root / "masks" / "tr00.png"), cv2.IMREAD_UNCHANGED)
    (root / "masks" / "tr00.png").unlink()
    assert cv2.imwrite(str(root / "masks" / "tr00.jpg"), mask)
    return root, [str(root / "masks" / "tr00.jpg"), "JPEG", "store masks as PNG"]


def break_image_png(root: Path) -> tuple[Path, list[str]]:
    truncate(root / "images" / "tr01.png")
    return root, [str(root / "images" / "tr01.png"), "cannot be decoded", "re-export"]


def break_mask_png(root: Path) -> tuple[Path, list[str]]:
    truncate(root / "masks" / "tr02.png")
    return root, [str(root / "masks" / "tr02.png"), "cannot be decoded", "re-export"]


DATASET_CASES = {
    "missing dataset folder": break_missing_folder,
    "no images/ folder": break_no_images,
    "empty images/ folder": break_empty_images,
    "image without mask": break_no_mask,
    "mask size mismatch": break_mask_size,
    "non-binary mask": break_mask_values,
    "JPEG mask": break_jpeg_mask,
    "corrupt image PNG": break_image_png,
    "corrupt mask PNG": break_mask_png,
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_train_refuses_a_bad_dataset(case, dataset, tmp_path):
    data, needles = DATASET_CASES[case](dataset)
    model = tmp_path / "out" / "model.pt"
    result = invoke(["-q", "train", data, "--out", model, *TINY])
    assert_one_line_error(result, *needles)
    assert_nothing_written(tmp_path, *model_outputs(model))
    assert not model.parent.exists() or not any(model.parent.iterdir())


@pytest.mark.parametrize("case", ["mask size mismatch", "non-binary mask", "corrupt mask PNG"])
def test_train_refuses_a_bad_validation_dataset(case, dataset, ihc_dataset, tmp_path):
    val, needles = DATASET_CASES[case](dataset)
    model = tmp_path / "model.pt"
    result = invoke(["-q", "train", ihc_dataset.train, "--val", val, "--out", model, *TINY])
    assert_one_line_error(result, *needles)
    assert_nothing_written(tmp_path, *model_outputs(model))


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_evaluate_refuses_a_bad_dataset(case, dataset, tiny_model, tmp_path):
    data, needles = DATASET_CASES[case](dataset)
    report = tmp_path / "report"
    result = invoke(["-q", "evaluate", tiny_model, data, "--overlays", "--out", report, "--device", "cpu"])
    assert_one_line_error(result, *needles)
    assert_nothing_written(tmp_path, report)


def test_corrupt_png_gives_one_line_in_a_real_process(dataset, tmp_path):
    """Decoders print their own complaints on the process' stderr, which click's runner cannot see."""
    data, needles = break_mask_png(dataset)
    model = tmp_path / "model.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cyseg.cli", "-q", "train", str(data), "--out", str(model), *TINY],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    proc.exit_code = proc.returncode
    assert_one_line_error(proc, *needles)
    assert_nothing_written(tmp_path, *model_outputs(model))


# ---------------------------------------------------------------- train --out

def test_train_refuses_an_out_that_is_a_folder(ihc_dataset, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    result = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY])
    assert_one_line_error(result, str(out), "is a folder", "model.pt")
    assert list(out.iterdir()) == []


def test_train_refuses_an_out_under_a_file_before_training(ihc_dataset, tmp_path, monkeypatch):
    import segmenter.training as training

    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    out = blocker / "model.pt"
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained although --out cannot be written"))
    result = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY])
    assert_one_line_error(result, str(out), "--out")
    assert blocker.read_text() == "not a folder"
    assert_nothing_written(tmp_path)


def test_train_refuses_a_non_writable_out_folder_before_training(ihc_dataset, tmp_path, monkeypatch):
    import cyseg.train_cmd
    import segmenter.training as training

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    # tests may run as root, for whom chmod does not lock a folder: make it read-only in os.access' eyes
    monkeypatch.setattr(cyseg.train_cmd.os, "access",
                        lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained although --out cannot be written"))
    out = locked / "sub" / "model.pt"
    result = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY])
    assert_one_line_error(result, f"cannot write --out {out}", f"{locked} is not writable", "choose another path")
    assert list(locked.iterdir()) == []


def test_train_creates_missing_parent_folders(ihc_dataset, tmp_path):
    out = tmp_path / "new" / "deeper" / "model.pt"
    result = invoke(["-q", "train", ihc_dataset.train, "--out", out, *TINY, "--epochs", "1", "--steps-per-epoch", "1"])
    assert result.exit_code == 0, result.output
    assert out.is_file()


@pytest.mark.parametrize("option, value, needle", [
    ("--epochs", "0", "--epochs must be >= 1"),
    ("--lr", "0", "--lr must be > 0"),
    ("--class-weights", "1,x", "--class-weights '1,x'"),
    ("--threshold", "1.5", "--threshold"),
    ("--threshold", "half", "--threshold 'half' must be a number in [0, 1] or auto"),
    ("--resolution", "0", "--resolution 0.0 must be in (0, 4]"),
    ("--zoom", "-0.2", "--zoom -0.2 must be in [0, 3]"),
])
def test_train_refuses_bad_options(option, value, needle, ihc_dataset, tmp_path):
    model = tmp_path / "model.pt"
    result = invoke(["-q", "train", ihc_dataset.train, "--out", model, *TINY, option, value])
    assert_one_line_error(result, needle)
    assert_nothing_written(tmp_path, *model_outputs(model))


def test_resume_without_checkpoint_is_refused(ihc_dataset, tmp_path):
    model = tmp_path / "model.pt"
    result = invoke(["-q", "train", ihc_dataset.train, "--out", model, *TINY, "--resume"])
    assert_one_line_error(result, str(model.with_suffix(".ckpt")), "run without --resume")
    assert_nothing_written(tmp_path, *model_outputs(model))


# ---------------------------------------------------------------- model files: evaluate and segment

def foreign_state_dict(path: Path) -> list[str]:
    from unet import UNet

    torch.save(UNet(n=4, depth=3).state_dict(), path)
    return ["bare state_dict", "no 'format' key", "cyseg train"]


def foreign_dict(path: Path) -> list[str]:
    torch.save({"epoch": 3, "weights": [1.0, 2.0]}, path)
    return ["not a cyseg model", "no 'format' key", "cyseg train"]


def foreign_format(path: Path) -> list[str]:
    torch.save({"format": "other/1", "state_dict": {}}, path)
    return ["'other/1'", "cyseg-model/1", "cyseg train"]


def pickled_module(path: Path) -> list[str]:
    from unet import UNet

    torch.save(UNet(n=4, depth=3), path)
    return ["holds Python objects", "cyseg train"]


def random_bytes(path: Path) -> list[str]:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return ["is not a PyTorch file", "cyseg train"]


def truncated_model(path: Path, model: Path) -> list[str]:
    data = model.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["is not a PyTorch file", "cyseg train"]


def bad_resolution(path: Path, model: Path) -> list[str]:
    content = torch.load(model, weights_only=True)
    content["preprocess"]["resolution"] = 0
    torch.save(content, path)
    return ["unusable working resolution 0", "cyseg train"]


def text_file(path: Path) -> list[str]:
    path.write_text("hello")
    return ["is not a PyTorch file", "cyseg train"]


MODEL_CASES = {
    "missing model file": lambda path, model: ["does not exist", "cyseg train"],
    "text file": lambda path, model: text_file(path),
    "random bytes": lambda path, model: random_bytes(path),
    "truncated model file": truncated_model,
    "bare state_dict": lambda path, model: foreign_state_dict(path),
    "dict without format": lambda path, model: foreign_dict(path),
    "format other/1": lambda path, model: foreign_format(path),
    "pickled nn.Module": lambda path, model: pickled_module(path),
    "resolution 0": bad_resolution,
}


@pytest.mark.parametrize("command", ["evaluate", "segment"])
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_file_is_refused(case, command, tiny_model, ihc_dataset, tmp_path):
    path = tmp_path / "model.pt"
    needles = MODEL_CASES[case](path, tiny_model)
    out = tmp_path / "out"
    result = invoke(["-q", command, path, ihc_dataset.val, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, f"model file {path}", *needles)
    assert_nothing_written(tmp_path, out)


@pytest.mark.parametrize("command", ["evaluate", "segment"])
@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_threshold_outside_0_1_is_refused(command, value, tiny_model, ihc_dataset, tmp_path):
    out = tmp_path / "out"
    result = invoke(["-q", command, tiny_model, ihc_dataset.val, "--threshold", value, "--out", out])
    assert_one_line_error(result, "--threshold", value, "[0, 1]", "0.5")
    assert_nothing_written(tmp_path, out)


# ---------------------------------------------------------------- segment inputs

def test_segment_missing_input(tiny_model, tmp_path):
    missing, out = tmp_path / "nothing-here", tmp_path / "out"
    result = invoke(["-q", "segment", tiny_model, missing, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, str(missing), "does not exist", "folder of images")
    assert_nothing_written(tmp_path, out)


def test_segment_empty_folder(tiny_model, tmp_path):
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    result = invoke(["-q", "segment", tiny_model, empty, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, str(empty), "holds no images")
    assert_nothing_written(tmp_path, out)


def test_segment_refuses_two_images_with_one_name(tiny_model, ihc_dataset, tmp_path):
    folder, out = tmp_path / "crops", tmp_path / "out"
    folder.mkdir()
    shutil.copy(ihc_dataset.val / "images" / "va00.png", folder / "a.png")
    assert cv2.imwrite(str(folder / "a.jpg"), cv2.imread(str(ihc_dataset.val / "images" / "va01.png")))
    result = invoke(["-q", "segment", tiny_model, folder, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, str(folder), "two images named 'a'", "a.jpg, a.png", "rename")
    assert_nothing_written(tmp_path, out)


def test_failing_segment_leaves_no_output_and_no_temporary_folder(tiny_model, dataset, tmp_path):
    truncate(dataset / "images" / "tr01.png")  # the second of three: the first was already segmented
    out = tmp_path / "out"
    result = invoke(["-q", "segment", tiny_model, dataset, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, str(dataset / "images" / "tr01.png"), "cannot be decoded")
    assert_nothing_written(tmp_path, out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failing_segment_keeps_an_earlier_output(tiny_model, dataset, tmp_path):
    out = tmp_path / "out"
    assert invoke(["-q", "segment", tiny_model, dataset, "--out", out, "--device", "cpu"]).exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    truncate(dataset / "images" / "tr02.png")
    result = invoke(["-q", "segment", tiny_model, dataset, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, "tr02.png", "cannot be decoded")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert not list(tmp_path.glob(".*.part"))


@pytest.mark.parametrize("command", ["evaluate", "segment"])
def test_out_under_a_file_is_refused(command, tiny_model, ihc_dataset, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    out = blocker / "report"
    result = invoke(["-q", command, tiny_model, ihc_dataset.val, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, f"cannot write {out}", "choose another path")
    assert blocker.read_text() == "not a folder"
    assert_nothing_written(tmp_path)


def test_without_quiet_the_error_is_still_one_line_and_last(tiny_model, dataset, tmp_path):
    """Progress bars and log lines may come first; the error is a single final line."""
    truncate(dataset / "images" / "tr02.png")
    out = tmp_path / "out"
    result = invoke(["segment", tiny_model, dataset, "--out", out, "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line] == [lines[-1]]
    assert lines[-1].startswith(PREFIX) and "tr02.png" in lines[-1]
    assert_nothing_written(tmp_path, out)


# ---------------------------------------------------------------- out of memory

@pytest.fixture
def out_of_memory(monkeypatch):
    """Every U-Net forward pass fails as a GPU does when its memory is full."""
    from unet.model import UNet

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(UNet, "forward", forward)


def test_out_of_memory_while_segmenting(out_of_memory, tiny_model, ihc_dataset, tmp_path):
    out = tmp_path / "out"
    result = invoke(["-q", "segment", tiny_model, ihc_dataset.val, "--out", out, "--device", "cpu"])
    assert_one_line_error(result, "out of memory", "lower --batch or --tile")
    assert_nothing_written(tmp_path, out)


def test_out_of_memory_while_evaluating(out_of_memory, tiny_model, ihc_dataset, tmp_path):
    from cyseg.cli import cli

    out = tmp_path / "out"
    result = invoke(["-q", "evaluate", tiny_model, ihc_dataset.val, "--out", out, "--device", "cpu"])
    line = assert_one_line_error(result, "out of memory")
    advised = [word for word in line.replace(",", " ").replace(")", " ").split() if word.startswith("--")]
    options = {o for p in cli.commands["evaluate"].params for o in p.opts}
    assert advised and set(advised) <= options, f"advises options that evaluate lacks: {line}"
    assert_nothing_written(tmp_path, out)


def test_out_of_memory_while_training(out_of_memory, ihc_dataset, tmp_path):
    from cyseg.cli import cli

    model = tmp_path / "model.pt"
    result = invoke(["-q", "train", ihc_dataset.train, "--out", model, *TINY])
    line = assert_one_line_error(result, "out of memory", "--batch")
    advised = [word for word in line.replace(",", " ").replace(")", " ").split() if word.startswith("--")]
    options = {o for p in cli.commands["train"].params for o in p.opts}
    assert set(advised) <= options, f"advises options that train lacks: {line}"
    assert_nothing_written(tmp_path, *model_outputs(model))
