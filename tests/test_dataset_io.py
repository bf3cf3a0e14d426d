"""Unit tests of `segmenter.io.dataset`: pairing images with masks, reading images of any depth and
channel count as RGB uint8, validating masks, and the all-or-nothing `DatasetWriter`."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import write_grey, write_rgb

from segmenter.errors import CysegError, DatasetError
from segmenter.io.dataset import (
    FORMAT,
    DatasetWriter,
    check_dataset,
    manifest_hash,
    open_dataset,
    read_mask,
    read_pair,
)
from segmenter.io.images import png_is_complete, read_image, write_png


@pytest.fixture
def crop(ihc_image) -> np.ndarray:
    """A 40x56 RGB crop of real IHC microscopy."""
    return ihc_image[100:140, 200:256].copy()


def message(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "user errors are one line"
    return text


# ---------------------------------------------------------------- open_dataset

def test_open_dataset_pairs_images_and_masks_by_stem(tmp_path, crop):
    for stem in ("b", "a", "c"):
        write_rgb(tmp_path / "images" / f"{stem}.png", crop)
        write_grey(tmp_path / "masks" / f"{stem}.png", np.zeros(crop.shape[:2], np.uint8))
    write_grey(tmp_path / "masks" / "orphan.png", np.zeros(crop.shape[:2], np.uint8))  # a mask without image
    (tmp_path / "images" / ".hidden.png").write_bytes(b"not read")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"format": FORMAT, "items": {"a": {"slide": 12, "kind": "cell"}, "b": {"image_id": 7}}}))
    dataset = open_dataset(tmp_path)
    assert [item.stem for item in dataset.items] == ["a", "b", "c"]
    assert all(item.mask == tmp_path / "masks" / f"{item.stem}.png" for item in dataset.items)
    a, b, c = dataset.items
    assert (a.slide, a.kind) == ("12", "cell") and b.slide == "7" and (c.slide, c.kind) == (None, None)
    assert len(dataset) == 3 and dataset.manifest["format"] == FORMAT


def test_open_dataset_without_masks_when_not_required(tmp_path, crop):
    write_rgb(tmp_path / "images" / "x.png", crop)
    dataset = open_dataset(tmp_path, require_masks=False)
    assert dataset.items[0].mask is None and dataset.manifest["items"] == {}
    with pytest.raises(DatasetError) as excinfo:
        open_dataset(tmp_path)
    assert "has no masks/ folder" in message(excinfo)
    with pytest.raises(DatasetError) as excinfo:
        read_pair(dataset.items[0])
    assert "masks/x.png" in message(excinfo)


def test_open_dataset_refuses_two_files_for_one_stem(tmp_path, crop):
    write_rgb(tmp_path / "images" / "x.png", crop)
    assert cv2.imwrite(str(tmp_path / "images" / "x.jpg"), crop)
    with pytest.raises(DatasetError) as excinfo:
        open_dataset(tmp_path, require_masks=False)
    assert "two files for 'x'" in message(excinfo) and "keep one" in message(excinfo)


def test_open_dataset_counts_the_missing_masks(tmp_path, crop):
    for stem in ("a", "b", "c"):
        write_rgb(tmp_path / "images" / f"{stem}.png", crop)
    (tmp_path / "masks").mkdir()
    write_grey(tmp_path / "masks" / "b.png", np.zeros(crop.shape[:2], np.uint8))
    with pytest.raises(DatasetError) as excinfo:
        open_dataset(tmp_path)
    assert "images/a.png has no mask" in message(excinfo) and "and 1 more" in message(excinfo)


def test_open_dataset_refuses_a_broken_manifest(tmp_path, crop):
    write_rgb(tmp_path / "images" / "x.png", crop)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset(tmp_path, require_masks=False)
    assert "dataset.json is not valid JSON" in message(excinfo)
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DatasetError) as excinfo:
        open_dataset(tmp_path, require_masks=False)
    assert "must hold a JSON object" in message(excinfo)


def test_manifest_hash_changes_with_any_byte(ihc_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ihc_dataset.train, copy)
    h0 = manifest_hash(open_dataset(ihc_dataset.train))
    assert manifest_hash(open_dataset(copy)) == h0  # the folder's location does not matter
    mask = cv2.imread(str(copy / "masks" / "tr00.png"), cv2.IMREAD_UNCHANGED)
    mask[0, 0] = 255 - mask[0, 0]
    write_grey(copy / "masks" / "tr00.png", mask)
    assert manifest_hash(open_dataset(copy)) != h0


def test_check_dataset_reads_every_pair(ihc_dataset):
    check_dataset(open_dataset(ihc_dataset.train))
    image, mask = read_pair(open_dataset(ihc_dataset.train).items[0])
    np.testing.assert_array_equal(image, ihc_dataset.images["tr00"])
    np.testing.assert_array_equal(mask, ihc_dataset.masks["tr00"])


# ---------------------------------------------------------------- read_image

def test_read_image_rgb_is_not_swapped(tmp_path, crop):
    write_rgb(tmp_path / "x.png", crop)
    out = read_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == crop.shape
    np.testing.assert_array_equal(out, crop)


def test_read_image_grey_is_replicated(tmp_path, crop):
    grey = crop[:, :, 1].copy()
    write_grey(tmp_path / "g.png", grey)
    out = read_image(tmp_path / "g.png")
    assert out.shape == crop.shape
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_read_image_composites_alpha_on_white_as_the_slide_reader_does(tmp_path, crop):
    from segmenter.wsi.readers import ImageReader

    alpha = np.full(crop.shape[:2], 90, np.uint8)
    alpha[:, : crop.shape[1] // 2] = 255  # left half opaque
    rgba = np.dstack([crop, alpha])
    assert cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    out = read_image(tmp_path / "a.png")
    assert out.shape == crop.shape
    np.testing.assert_array_equal(out[:, : crop.shape[1] // 2], crop[:, : crop.shape[1] // 2])
    blended = (crop[:, -1].astype(np.uint16) * 90 + 255 * 165 + 127) // 255
    np.testing.assert_array_equal(out[:, -1], blended)  # transparent pixels are glass, not black
    # one alpha policy: `cyseg segment DIR` and `--as-slide` give the network the same pixels
    slide = ImageReader(tmp_path / "a.png")
    np.testing.assert_array_equal(slide.read(0, 0, slide.width, slide.height), out)


@pytest.mark.parametrize("channels", [1, 3])
def test_read_image_16_bit_is_scaled_to_8_bit(tmp_path, crop, channels):
    # 8-bit values spread over 16 bits, plus less than half a step: they round back to themselves
    rgb16 = np.minimum(crop.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)
    image16 = rgb16[:, :, 0] if channels == 1 else cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR)
    write_grey(tmp_path / "w.png", image16)
    out = read_image(tmp_path / "w.png")
    assert out.dtype == np.uint8 and out.shape == crop.shape
    expected = crop if channels == 3 else np.repeat(crop[:, :, :1], 3, axis=2)
    np.testing.assert_array_equal(out, expected)


def test_read_image_refuses_float_images(tmp_path, crop):
    assert cv2.imwrite(str(tmp_path / "f.tif"), crop.astype(np.float32) / 255)
    with pytest.raises(DatasetError) as excinfo:
        read_image(tmp_path / "f.tif")
    assert "float32" in message(excinfo) and "8-bit RGB" in message(excinfo)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes", "bit flip", "text"])
def test_read_image_refuses_corrupt_files(tmp_path, crop, damage):
    write_rgb(tmp_path / "x.png", crop)
    data = bytearray((tmp_path / "x.png").read_bytes())
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "empty":
        data = bytearray()
    elif damage == "random bytes":
        data = bytearray(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    elif damage == "bit flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = bytearray(b"hello, not an image")
    (tmp_path / "x.png").write_bytes(bytes(data))
    with pytest.raises(DatasetError) as excinfo:
        read_image(tmp_path / "x.png")
    assert str(tmp_path / "x.png") in message(excinfo) and "cannot be decoded" in message(excinfo)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(DatasetError) as excinfo:
        read_image(tmp_path / "nope.png")
    assert "does not exist" in message(excinfo)


def test_png_completeness_check_accepts_what_opencv_writes(tmp_path, crop):
    write_rgb(tmp_path / "x.png", crop)
    data = (tmp_path / "x.png").read_bytes()
    assert png_is_complete(data)
    assert not png_is_complete(data[:-1]) and not png_is_complete(data[:8]) and not png_is_complete(b"")


# ---------------------------------------------------------------- read_mask

def test_read_mask_binary_0_255_becomes_0_1(tmp_path, ihc_dataset):
    truth = ihc_dataset.masks["tr00"]
    write_grey(tmp_path / "m.png", truth * 255)
    out = read_mask(tmp_path / "m.png", shape=truth.shape)
    assert out.dtype == np.uint8 and set(np.unique(out).tolist()) <= {0, 1}
    np.testing.assert_array_equal(out, truth)


def test_read_mask_accepts_grey_stored_as_rgb(tmp_path, ihc_dataset):
    truth = ihc_dataset.masks["tr00"]
    write_rgb(tmp_path / "m.png", np.repeat(truth[:, :, None] * 255, 3, axis=2))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), truth)


def test_read_mask_refuses_colour(tmp_path, crop):
    write_rgb(tmp_path / "m.png", crop)
    with pytest.raises(DatasetError) as excinfo:
        read_mask(tmp_path / "m.png")
    assert "is in colour" in message(excinfo) and "single-channel" in message(excinfo)


@pytest.mark.parametrize("values", [(0, 1), (0, 128, 255), (3,)])
def test_read_mask_refuses_non_binary(tmp_path, values):
    mask = np.array(values * 20, dtype=np.uint8).reshape(1, -1).repeat(4, axis=0)
    write_grey(tmp_path / "m.png", mask)
    with pytest.raises(DatasetError) as excinfo:
        read_mask(tmp_path / "m.png")
    text = message(excinfo)
    assert str(tmp_path / "m.png") in text and "not binary" in text and "255 for foreground" in text


def test_read_mask_refuses_a_size_mismatch(tmp_path):
    write_grey(tmp_path / "m.png", np.zeros((30, 40), np.uint8))
    with pytest.raises(DatasetError) as excinfo:
        read_mask(tmp_path / "m.png", shape=(30, 41))
    assert "is 40x30 but its image is 41x30" in message(excinfo)


def test_read_mask_refuses_16_bit(tmp_path):
    write_grey(tmp_path / "m.png", np.zeros((8, 8), np.uint16))
    with pytest.raises(DatasetError) as excinfo:
        read_mask(tmp_path / "m.png")
    assert "uint16" in message(excinfo) and "8-bit PNG" in message(excinfo)


def test_read_mask_cell_and_nucleus_labels(tmp_path):
    mask = np.array([[0, 1, 2, 2]], np.uint8).repeat(3, axis=0)
    write_grey(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", classes=("cell", "nucleus")), mask)
    with pytest.raises(DatasetError) as excinfo:
        read_mask(tmp_path / "m.png", classes=("nucleus",))
    assert "holds values [1, 2]" in message(excinfo) and "nucleus: 0 background, 255 nucleus" in message(excinfo)


def test_read_mask_refuses_a_truncated_png(tmp_path, ihc_dataset):
    write_grey(tmp_path / "m.png", ihc_dataset.masks["tr00"] * 255)
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "m.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as excinfo:
        read_mask(tmp_path / "m.png")
    assert "cannot be decoded" in message(excinfo) and "PNG" in message(excinfo)


# ---------------------------------------------------------------- DatasetWriter

def test_dataset_writer_round_trip(tmp_path, ihc_dataset):
    root = tmp_path / "out"
    with DatasetWriter(root, source={"file": "ihc"}, parent="p", iteration=2) as writer:
        for stem in ("tr00", "tr01"):
            writer.add(stem, ihc_dataset.images[stem], ihc_dataset.masks[stem], meta={"kind": "pattern", "slide": "s1",
                                                                                      "empty": None})
    dataset = open_dataset(root)
    assert [i.stem for i in dataset.items] == ["tr00", "tr01"]
    assert dataset.manifest["parent"] == "p" and dataset.manifest["iteration"] == 2
    assert dataset.items[0].meta == {"kind": "pattern", "slide": "s1"}
    for item in dataset.items:
        image, mask = read_pair(item)
        np.testing.assert_array_equal(image, ihc_dataset.images[item.stem])
        np.testing.assert_array_equal(mask, ihc_dataset.masks[item.stem])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_dataset_writer_copy_keeps_bytes(tmp_path, ihc_dataset):
    source = open_dataset(ihc_dataset.train)
    with DatasetWriter(tmp_path / "out") as writer:
        writer.copy(source.items[0], stem="renamed", meta={"split": "train"})
    item = open_dataset(tmp_path / "out").items[0]
    assert item.stem == "renamed" and item.meta["split"] == "train"
    assert item.meta["slide"] == source.items[0].meta["slide"]
    assert item.image.read_bytes() == source.items[0].image.read_bytes()
    assert item.mask.read_bytes() == source.items[0].mask.read_bytes()


def test_dataset_writer_exception_leaves_nothing(tmp_path, ihc_dataset):
    root = tmp_path / "out"
    with pytest.raises(RuntimeError), DatasetWriter(root) as writer:
        writer.add("tr00", ihc_dataset.images["tr00"], ihc_dataset.masks["tr00"])
        raise RuntimeError("crash half-way")
    assert list(tmp_path.iterdir()) == []


def test_dataset_writer_exception_keeps_the_previous_version(tmp_path, ihc_dataset):
    root = tmp_path / "out"
    with DatasetWriter(root) as writer:
        writer.add("tr00", ihc_dataset.images["tr00"], ihc_dataset.masks["tr00"])
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(CysegError), DatasetWriter(root, overwrite=True) as writer:
        writer.add("tr01", ihc_dataset.images["tr01"], ihc_dataset.masks["tr01"])
        writer.add("bad", ihc_dataset.images["tr01"], ihc_dataset.masks["tr01"][:-1])  # size mismatch
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_dataset_writer_without_items_writes_nothing(tmp_path):
    with pytest.raises(DatasetError) as excinfo, DatasetWriter(tmp_path / "out"):
        pass
    assert "no items" in message(excinfo)
    assert list(tmp_path.iterdir()) == []


def test_dataset_writer_refuses_an_existing_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(CysegError) as excinfo:
        DatasetWriter(tmp_path / "out")
    assert "already exists" in message(excinfo)
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]


def test_write_png_round_trip(tmp_path, crop):
    write_png(tmp_path / "x.png", crop)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), crop)
    write_png(tmp_path / "m.png", (crop[:, :, 0] > 128).astype(np.uint8) * 255)
    assert set(np.unique(cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED)).tolist()) <= {0, 255}
