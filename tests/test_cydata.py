"""cydata split / augment / convert, run through the real CLI on real microscopy.

Datasets are cut from scikit-image's bundled immunohistochemistry image (512x512 RGB IHC); masks
are a threshold of its haematoxylin channel (rgb2hed), so every mask is a known function of its image.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import color, data, filters

from cydata.cli import cli
from cydata.split import _slide_split
from segmenter.io.dataset import DatasetWriter, Item, open_dataset, read_mask, read_pair
from segmenter.io.images import read_image

ROOT = Path(__file__).resolve().parents[1]
MICCAI = ROOT.parent / "shared" / "data" / "miccai15"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return data.immunohistochemistry()


@pytest.fixture(scope="module")
def h_threshold(ihc) -> float:
    return float(filters.threshold_otsu(color.rgb2hed(ihc)[:, :, 0]))


def nuclei(image: np.ndarray, threshold: float) -> np.ndarray:
    """The mask as a function of the image: haematoxylin above the Otsu threshold of the whole slide."""
    return (color.rgb2hed(image)[:, :, 0] > threshold).astype(np.uint8)


def crops(ihc: np.ndarray, n: int, size: tuple[int, int] = (64, 64)) -> list[np.ndarray]:
    """n distinct crops (h, w) from the IHC image, row by row."""
    h, w = size
    per_row = ihc.shape[1] // w
    out = [ihc[(k // per_row) * h:(k // per_row + 1) * h, (k % per_row) * w:(k % per_row + 1) * w] for k in range(n)]
    assert all(c.shape[:2] == size for c in out), "not enough room in the image for that many crops"
    return [np.ascontiguousarray(c) for c in out]


def make_dataset(root: Path, ihc: np.ndarray, threshold: float, slides: list[int], size=(64, 64),
                 with_slide: bool = True) -> Path:
    """A dataset with len(slides) slides; slide s holds slides[s] crops. Items are named s<slide>_<k>."""
    images = crops(ihc, sum(slides), size)
    with DatasetWriter(root, source={"test": "skimage immunohistochemistry"}) as writer:
        k = 0
        for s, count in enumerate(slides):
            for j in range(count):
                meta = {"slide": f"slide{s}", "kind": "pattern"} if with_slide else {"kind": "pattern"}
                writer.add(f"s{s}_{j}", images[k], nuclei(images[k], threshold), meta=meta)
                k += 1
    return root


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_of(*args: str) -> str:
    """Run a command expected to fail; returns its one-line message (without the 'cydata: error: ' prefix)."""
    result = run("-q", *args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cydata: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0][len("cydata: error: "):]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# ---------------------------------------------------------------- help

@pytest.mark.parametrize("command, expected", [
    ("split", ["--train", "[default: 0.8]", "--seed", "[default: 0]", "--by-slide", "--out-train", "<DIR>_train",
               "--out-test", "<DIR>_test"]),
    ("augment", ["--steps", "[required]", "--seed", "--colour / --no-colour", "[default: no-colour]", "<DIR>_aug"]),
    ("convert", ["--out", "[required]", "_x.jpg", "_y.jpg", "green"]),
])
def test_help_explains_options_and_defaults(command, expected):
    result = run(command, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for word in expected:
        assert word in text, word


# ---------------------------------------------------------------- split

def test_split_ratio_seed_and_provenance(tmp_path, ihc, h_threshold):
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [4, 4, 4, 4, 4])
    before = tree_digest(src)
    result = run("split", src, "--train", "0.75", "--seed", "7")
    assert result.exit_code == 0, result.output
    train, test = tmp_path / "ds_train", tmp_path / "ds_test"  # defaults: beside DIR
    a, b = open_dataset(train), open_dataset(test)
    train_stems, test_stems = {i.stem for i in a.items}, {i.stem for i in b.items}
    assert len(train_stems) == 15 and len(test_stems) == 5  # round(0.75 * 20)
    assert train_stems.isdisjoint(test_stems) and train_stems | test_stems == {i.stem for i in open_dataset(src).items}
    assert tree_digest(src) == before  # input untouched
    for item in a.items + b.items:  # copied unchanged, meta kept
        assert item.image.read_bytes() == (src / "images" / item.image.name).read_bytes()
        assert item.mask.read_bytes() == (src / "masks" / item.mask.name).read_bytes()
        assert item.slide is not None and item.kind == "pattern"
    for folder, side in ((train, "train"), (test, "test")):
        m = manifest(folder)
        assert m["parent"] == str(src.resolve())
        assert m["split"]["side"] == side and m["split"]["ratio"] == 0.75 and m["split"]["seed"] == 7
        assert m["split"]["by_slide"] is False
        assert m["source"] == {"test": "skimage immunohistochemistry"}
    assert not leftovers(tmp_path)

    # the same seed gives the same split; another seed another one
    assert run("split", src, "--train", "0.75", "--seed", "7", "--out-train", tmp_path / "t2",
               "--out-test", tmp_path / "e2").exit_code == 0
    assert {i.stem for i in open_dataset(tmp_path / "t2").items} == train_stems
    assert run("split", src, "--train", "0.75", "--seed", "8", "--out-train", tmp_path / "t3",
               "--out-test", tmp_path / "e3").exit_code == 0
    assert {i.stem for i in open_dataset(tmp_path / "t3").items} != train_stems


@pytest.mark.parametrize("train, n_train", [(0.5, 5), (0.34, 3), (0.66, 7), (0.92, 9)])
def test_split_counts_are_rounded(tmp_path, ihc, h_threshold, train, n_train):
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [10])
    assert run("split", src, "--train", train).exit_code == 0
    assert len(open_dataset(tmp_path / "ds_train")) == n_train == round(train * 10)
    assert len(open_dataset(tmp_path / "ds_test")) == 10 - n_train


def test_split_by_slide_never_straddles(tmp_path, ihc, h_threshold):
    sizes = [1, 6, 2, 5, 3, 4, 2, 1]  # uneven slides, 24 items
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, sizes)
    for seed in range(6):
        tr, te = tmp_path / f"tr{seed}", tmp_path / f"te{seed}"
        result = run("split", src, "--by-slide", "--train", "0.7", "--seed", seed, "--out-train", tr, "--out-test", te)
        assert result.exit_code == 0, result.output
        train_slides = {i.slide for i in open_dataset(tr).items}
        test_slides = {i.slide for i in open_dataset(te).items}
        assert train_slides and test_slides and train_slides.isdisjoint(test_slides)
        assert len(train_slides | test_slides) == len(sizes)
        n_train = len(open_dataset(tr))
        assert n_train >= round(0.7 * 24)  # slides are added until the ratio is reached (rule: test_slide_split_rule)
        assert manifest(tr)["split"]["by_slide"] is True
        assert manifest(tr)["split"]["slides"] == sorted(train_slides)
    # reproducible
    assert run("split", src, "--by-slide", "--train", "0.7", "--seed", "3", "--out-train", tmp_path / "again",
               "--out-test", tmp_path / "again_test").exit_code == 0
    assert tree_digest(tmp_path / "again" / "images") == tree_digest(tmp_path / "tr3" / "images")


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 8), min_size=2, max_size=12), train=st.floats(0.05, 0.95), seed=st.integers(0,
                                                                                                                 10**6))
def test_slide_split_rule(sizes, train, seed):
    items = [Item(f"{s}_{k}", Path(f"{s}_{k}.png"), None, {"image_id": s}) for s,
             n in enumerate(sizes) for k in range(n)]
    tr, te = _slide_split(items, train, seed)
    assert sorted(i.stem for i in tr + te) == sorted(i.stem for i in items)
    assert {i.slide for i in tr}.isdisjoint({i.slide for i in te})
    target = round(train * len(items))
    # greedy rule: the train side reaches the target, and did not before its last slide was added
    if target > 0:
        assert len(tr) >= target
        last = tr[-1].slide
        assert len(tr) - sum(1 for i in tr if i.slide == last) < target
    else:
        assert tr == []
    assert _slide_split(items, train, seed) == (tr, te)


@pytest.mark.parametrize("train", ["0", "1", "1.5", "-0.2"])
def test_split_rejects_bad_ratio(tmp_path, ihc, h_threshold, train):
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [4])
    message = error_of("split", src, "--train", train)
    assert f"--train {float(train)}" in message and "between 0 and 1" in message
    assert not (tmp_path / "ds_train").exists() and not (tmp_path / "ds_test").exists()


def test_split_errors(tmp_path, ihc, h_threshold):
    # missing and empty datasets
    assert "does not exist" in error_of("split", tmp_path / "nope")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    assert "holds no images" in error_of("split", tmp_path / "empty")

    # one side left empty
    two = make_dataset(tmp_path / "two", ihc, h_threshold, [2])
    message = error_of("split", two, "--train", "0.1")
    assert "training side empty" in message and "change --train or add data" in message
    one = make_dataset(tmp_path / "one", ihc, h_threshold, [1])
    message = error_of("split", one, "--train", "0.8")
    assert "test side empty" in message and "change --train or add data" in message

    # existing outputs are never overwritten, and no half result appears
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [3, 3])
    (tmp_path / "ds_test").mkdir()
    (tmp_path / "ds_test" / "keep.txt").write_text("mine")
    message = error_of("split", src)
    assert "ds_test already exists" in message
    assert not (tmp_path / "ds_train").exists() and (tmp_path / "ds_test" / "keep.txt").read_text() == "mine"
    assert "same folder" in error_of("split", src, "--out-train", tmp_path / "x", "--out-test", tmp_path / "x")

    # --by-slide without slide ids, or with a single slide
    bare = make_dataset(tmp_path / "bare", ihc, h_threshold, [4], with_slide=False)
    message = error_of("split", bare, "--by-slide")
    assert "item 's0_0' and 3 more has no slide id" in message and "dataset.json" in message and "'slide'" in message
    single = make_dataset(tmp_path / "single", ihc, h_threshold, [5])
    assert "one slide (slide0)" in error_of("split", single, "--by-slide")
    assert not leftovers(tmp_path)


# ---------------------------------------------------------------- augment

def test_augment_keeps_masks_binary_and_aligned(tmp_path, ihc, h_threshold):
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [2, 1], size=(96, 80))  # not square: rotations swap h/w
    before = tree_digest(src)
    result = run("augment", src, "--steps", "6", "--seed", "3")
    assert result.exit_code == 0, result.output
    out = tmp_path / "ds_aug"
    assert tree_digest(src) == before  # never modified in place
    dataset = open_dataset(out)
    stems = {i.stem for i in dataset.items}
    originals = {i.stem: i for i in open_dataset(src).items}
    assert stems == set(originals) | {f"{s}_aug{k}" for s in originals for k in range(1, 7)}
    m = manifest(out)
    assert m["parent"] == str(src.resolve())
    aug = m["augmentation"]
    assert aug["steps"] == 6 and aug["seed"] == 3 and aug["colour"] is False
    assert "flips" in aug["augmenter"] and "translation" in aug["augmenter"]
    ops = [t["__class_fullname__"] for t in aug["albumentations"]["transform"]["transforms"]]
    assert ops == ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine"]
    dihedral_only = 0
    for item in dataset.items:
        image, mask = read_pair(item)  # validates 0/255 masks of the image's size
        assert set(np.unique(cv2.imread(str(item.mask), cv2.IMREAD_UNCHANGED)).tolist()) <= {0, 255}
        if item.stem in originals:
            assert item.image.read_bytes() == originals[item.stem].image.read_bytes()
            continue
        source = originals[item.meta["source"]]
        assert item.slide == source.slide and item.kind == "pattern" and item.meta["augmentation"] >= 1
        assert sorted(image.shape[:2]) == [80, 96]
        # the mask is still the same function of the image: exact away from 1-pixel boundaries
        derived = nuclei(image, h_threshold)
        mismatch = derived != mask
        band = cv2.dilate(mask, np.ones((3, 3), np.uint8)) != cv2.erode(mask, np.ones((3, 3), np.uint8))
        assert not (mismatch & ~band).any()
        assert mismatch.mean() <= 0.01
        assert 0.05 < mask.mean() < 0.95
        # and a misaligned mask would not be: (flipping it breaks the relation)
        assert (derived != mask[::-1]).mean() > 0.1
        original = read_image(source.image)
        variants = [np.rot90(v, r) for v in (original, original[::-1]) for r in range(4)]
        dihedral_only += any(v.shape == image.shape and np.array_equal(v, image) for v in variants)
    assert 0 < dihedral_only < 18, "expected both pure flips/rotations and translated copies"

    # same seed, same copies
    assert run("augment", src, "--steps", "6", "--seed", "3", "--out", tmp_path / "again").exit_code == 0
    assert tree_digest(tmp_path / "again" / "masks") == tree_digest(out / "masks")
    assert tree_digest(tmp_path / "again" / "images") == tree_digest(out / "images")

    # split --by-slide still works afterwards: copies stay with their slide
    assert run("split", out, "--by-slide", "--train", "0.5").exit_code == 0
    train_slides = {i.slide for i in open_dataset(tmp_path / "ds_aug_train").items}
    test_slides = {i.slide for i in open_dataset(tmp_path / "ds_aug_test").items}
    assert train_slides.isdisjoint(test_slides) and train_slides | test_slides == {"slide0", "slide1"}
    assert not leftovers(tmp_path)


def test_augment_colour(tmp_path, ihc, h_threshold):
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [2])
    result = run("augment", src, "--steps", "2", "--colour", "--out", tmp_path / "col")
    assert result.exit_code == 0, result.output
    m = manifest(tmp_path / "col")
    assert m["augmentation"]["colour"] is True and "colour" in m["augmentation"]["augmenter"]
    for item in open_dataset(tmp_path / "col").items:
        image, mask = read_pair(item)
        assert image.shape[:2] == mask.shape


def test_augment_errors(tmp_path, ihc, h_threshold):
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [2])
    for steps in ("0", "-1"):
        message = error_of("augment", src, "--steps", steps)
        assert f"--steps {steps}" in message and "1 or more" in message
    (tmp_path / "taken").mkdir()
    assert "taken already exists" in error_of("augment", src, "--steps", "1", "--out", tmp_path / "taken")
    assert "does not exist" in error_of("augment", tmp_path / "nope", "--steps", "1")
    # a mask that is not binary is reported, and nothing is written
    bad = make_dataset(tmp_path / "bad", ihc, h_threshold, [3])
    cv2.imwrite(str(bad / "masks" / "s0_1.png"), np.full((64, 64), 7, np.uint8))
    message = error_of("augment", bad, "--steps", "1")
    assert "s0_1.png is not binary" in message
    assert not (tmp_path / "bad_aug").exists() and not leftovers(tmp_path)
    missing = run("augment", src)  # click's own usage error for a missing required option
    assert missing.exit_code == 2 and "--steps" in missing.output


# ---------------------------------------------------------------- convert

def write_thesis(folder: Path, ihc: np.ndarray, threshold: float, n: int = 4, border: int = 3,
                 suffix: str = ".jpg") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The thesis layout: <id>_x.jpg crops and <id>_y.jpg masks, white cells, red borders, black background.

    Returns id -> (crop, expected foreground, red border pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for k, crop in enumerate(crops(ihc, n, (96, 128))):
        cells = cv2.morphologyEx(nuclei(crop, threshold), cv2.MORPH_OPEN, kernel)  # blobs, as drawn by annotators
        ring = (cv2.dilate(cells, np.ones((2 * border + 1,) * 2, np.uint8)) > 0) & (cells == 0)
        y = np.zeros(crop.shape, np.uint8)
        y[cells > 0] = (255, 255, 255)
        y[ring] = (255, 0, 0)  # pure red borders (RGB)
        ident = str(k + 1)
        cv2.imwrite(str(folder / f"{ident}_x{suffix}"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / f"{ident}_y{suffix}"), cv2.cvtColor(y, cv2.COLOR_RGB2BGR))
        out[ident] = (crop, cells.astype(bool), ring)
    return out


def test_convert_thesis_jpeg_round_trip(tmp_path, ihc, h_threshold):
    thesis = tmp_path / "thesis"
    truth = write_thesis(thesis, ihc, h_threshold, n=4)
    (thesis / "notes.txt").write_text("not an image")
    out = tmp_path / "converted"
    result = run("convert", thesis, "--out", out)
    assert result.exit_code == 0, result.output
    dataset = open_dataset(out)
    assert [i.stem for i in dataset.items] == sorted(truth)
    assert all(i.image.name == f"{i.stem}.png" and i.mask.name == f"{i.stem}.png" for i in dataset.items)
    m = manifest(out)
    assert m["source"] == {"converted_from": str(thesis.resolve()), "layout": "thesis N_x.jpg/N_y.jpg"}
    for item in dataset.items:
        crop, cells, ring = truth[item.stem]
        image, mask = read_pair(item)
        # the crop is the decoded JPEG, losslessly stored
        assert np.array_equal(image, cv2.cvtColor(cv2.imread(str(thesis / f"{item.stem}_x.jpg")), cv2.COLOR_BGR2RGB))
        assert np.abs(image.astype(int) - crop).mean() < 8
        # mask: white = 1, red borders and black = 0, up to JPEG ringing at colour edges
        stored = cv2.imread(str(item.mask), cv2.IMREAD_UNCHANGED)
        assert stored.ndim == 2 and set(np.unique(stored).tolist()) == {0, 255}
        inner_cells = cv2.erode(cells.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        inner_ring = cv2.erode(ring.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert inner_ring.sum() > 50 and inner_cells.sum() > 50
        assert mask[inner_cells].all() and not mask[inner_ring].any()
        assert (mask.astype(bool) == cells).mean() > 0.97
    assert not leftovers(tmp_path)


def test_convert_png_pairs(tmp_path, ihc, h_threshold):
    thesis = tmp_path / "thesis"
    truth = write_thesis(thesis, ihc, h_threshold, n=2, suffix=".png")
    assert run("convert", thesis, "--out", tmp_path / "out").exit_code == 0
    for item in open_dataset(tmp_path / "out").items:
        crop, cells, _ = truth[item.stem]
        image, mask = read_pair(item)
        assert np.array_equal(image, crop) and np.array_equal(mask.astype(bool), cells)  # lossless: exact


def test_convert_errors(tmp_path, ihc, h_threshold):
    out = tmp_path / "out"
    message = error_of("convert", tmp_path / "nope", "--out", out)
    assert "thesis folder" in message and "does not exist" in message

    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "image.jpg"), crops(ihc, 1)[0])
    message = error_of("convert", other, "--out", out)
    assert "no <id>_x.jpg" in message and "<id>_y.jpg" in message

    lonely = tmp_path / "lonely"
    write_thesis(lonely, ihc, h_threshold, n=3)
    (lonely / "2_y.jpg").unlink()
    message = error_of("convert", lonely, "--out", out)
    assert "2_x.jpg has no mask" in message and "2_y.jpg" in message

    sizes = tmp_path / "sizes"
    write_thesis(sizes, ihc, h_threshold, n=2)
    cv2.imwrite(str(sizes / "2_y.jpg"), np.zeros((50, 70, 3), np.uint8))
    message = error_of("convert", sizes, "--out", out)
    assert "2_y.jpg is 70x50" in message and "2_x.jpg is 128x96" in message

    existing = tmp_path / "existing"
    existing.mkdir()
    assert "existing already exists" in error_of("convert", sizes, "--out", existing)
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_convert_corrupt_jpeg_leaves_nothing(tmp_path, ihc, h_threshold, damage):
    thesis = tmp_path / "thesis"
    write_thesis(thesis, ihc, h_threshold, n=5)
    middle = thesis / "3_x.jpg"  # pairs 1 and 2 are written before it fails
    raw = middle.read_bytes()
    middle.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"not a jpeg at all" * 10)
    out = tmp_path / "out"
    message = error_of("convert", thesis, "--out", out)
    assert "3_x.jpg cannot be decoded" in message
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


# ---------------------------------------------------------------- the real process

def _subprocess(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "cydata.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


def test_subprocess_error_is_one_line_exit_2(tmp_path, ihc, h_threshold):
    thesis = tmp_path / "thesis"
    write_thesis(thesis, ihc, h_threshold, n=2)
    (thesis / "2_x.jpg").write_bytes(b"\xff\xd8 broken")
    proc = _subprocess("convert", thesis, "--out", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cydata: error: ")]
    assert len(errors) == 1 and "2_x.jpg cannot be decoded" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)

    proc = _subprocess("-q", "split", tmp_path / "missing")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"cydata: error: dataset folder {tmp_path / 'missing'} does not exist; "
                                                "give a folder holding images/ and masks/"]
    assert proc.stdout == ""


def test_subprocess_success(tmp_path, ihc, h_threshold):
    src = make_dataset(tmp_path / "ds", ihc, h_threshold, [2, 2])
    proc = _subprocess("split", src, "--train", "0.5", "--by-slide")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "ds_train"), str(tmp_path / "ds_test")]
    assert "splitting 4 items" in proc.stderr  # logging goes to stderr


# ---------------------------------------------------------------- real data

@pytest.mark.skipif(not MICCAI.is_dir(), reason=f"real data {MICCAI} absent (shared MICCAI 2015 nucleus set)")
def test_miccai15_convert_and_split(tmp_path):
    """The MICCAI 2015 H&E tiles, written in the thesis layout (JPEG x and y), converted back and split by slide."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    reference = open_dataset(MICCAI)
    assert len(reference) == 15
    for k, item in enumerate(reference.items, start=1):
        image, mask = read_pair(item)
        cv2.imwrite(str(thesis / f"{k}_x.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(thesis / f"{k}_y.jpg"), mask * 255)
    out = tmp_path / "miccai"
    assert run("convert", thesis, "--out", out).exit_code == 0
    converted = open_dataset(out)
    assert sorted(i.stem for i in converted.items) == sorted(str(k) for k in range(1, 16))
    for item in converted.items:
        ref = reference.items[int(item.stem) - 1]
        image, mask = read_pair(item)
        ref_image, ref_mask = read_pair(ref)
        assert image.shape == ref_image.shape
        assert (mask == ref_mask).mean() > 0.99
        assert np.abs(image.astype(int) - ref_image).mean() < 6

    # split a copy by slide: 20x tiles and 40x tiles come from different slides (recorded per item)
    copy = tmp_path / "miccai15"
    shutil.copytree(MICCAI, copy, ignore=shutil.ignore_patterns("*.txt"))
    for path in copy.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    items = {item.stem: {"slide": item.stem, "magnification": "20x" if int(item.stem[5:]) <= 7 else "40x"}
             for item in reference.items}
    (copy / "dataset.json").write_text(json.dumps({"format": "cyseg-dataset/1", "items": items}))
    assert run("split", copy, "--by-slide", "--train", "0.8", "--seed", "1").exit_code == 0
    train, test = open_dataset(tmp_path / "miccai15_train"), open_dataset(tmp_path / "miccai15_test")
    assert len(train) == 12 and len(test) == 3
    assert {i.slide for i in train.items}.isdisjoint({i.slide for i in test.items})
    for item in train.items + test.items:
        assert item.mask.read_bytes() == (MICCAI / "masks" / item.mask.name).read_bytes()
        read_mask(item.mask, read_image(item.image).shape[:2])
