"""The dataset folder (DESIGN §3): images/<stem>.png, masks/<stem>.png, dataset.json, optional
instance labels in masks_instance/ (`segmenter.io.instances`), and optional unknown/<stem>.png: 0/255
maps of the pixels nobody labelled (255), which are neither foreground nor background for any class:
training leaves them out of the loss and evaluation out of the scores (`cyseg improve --unsure unknown`
writes them for what its model found but was unsure of).

dataset.json's "classes" lists the classes the masks annotate (`segmenter.classes`): none (the key
absent) for 0/255 masks of one unnamed foreground; ["cell"] or ["nucleus"] for 0/255 masks of that
class; ["cell", "nucleus"] for class-index masks (0 background, 1 cell outside its nucleus, 2 nucleus).

Reading validates everything a user can get wrong (missing folders, unpaired files, corrupt
images, masks of the wrong size or values) and reports it in one line naming the file and the fix.
Writing goes through `DatasetWriter`, which builds the folder under a temporary name.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.classes import check_names, decode, encode
from segmenter.errors import CysegError, DatasetError
from segmenter.io.atomic import temporary_dir
from segmenter.io.images import IMAGE_SUFFIXES, decode_file, read_image, write_png
from segmenter.io.instances import instance_paths

FORMAT = "cyseg-dataset/1"
UNKNOWN_FOLDER = "unknown"
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
MAX_READ_SCALE = 4.0
#: the dataset.json fields that describe a folder's images, which a folder derived from it keeps
IMAGE_DECLARATIONS = ("stain", "mpp", "read_scale")


@dataclass
class Item:
    """One crop of a dataset: its image, its mask (None when absent), its manifest entry and the
    classes its dataset declares (empty: one unnamed foreground)."""

    stem: str
    image: Path
    mask: Path | None
    meta: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    instances: dict[str, Path] = field(default_factory=dict)  # channel (class or FOREGROUND) -> labels
    unknown: Path | None = None  # unknown/<stem>.png: the pixels nobody labelled

    @property
    def kind(self) -> str | None:
        """`pattern`, `cell` or `roi` when the manifest says so."""
        return self.meta.get("kind")

    @property
    def slide(self) -> str | None:
        """The slide the crop comes from (Cytomine image id or file name) when recorded."""
        slide = self.meta.get("slide", self.meta.get("image_id"))
        return None if slide is None else str(slide)


@dataclass
class Dataset:
    """A validated dataset folder and the classes its masks annotate (empty: one unnamed foreground)."""

    root: Path
    items: list[Item]
    manifest: dict[str, Any]
    classes: tuple[str, ...] = ()
    read_scale: float = 1.0  # the network reads these images at this fraction of their size (`declared_read_scale`)

    def __len__(self) -> int:
        return len(self.items)


def _index(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in files:
                raise DatasetError(f"{folder} holds two files for '{path.stem}' ({files[path.stem].name}, "
                                   f"{path.name}); keep one")
            files[path.stem] = path
    return files


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The folder's dataset.json, or an empty manifest when there is none."""
    path = Path(root) / "dataset.json"
    if not path.exists():
        return {"format": FORMAT, "items": {}}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} must hold a JSON object; fix or delete it")
    manifest.setdefault("items", {})
    return manifest


def declared_classes(manifest: dict[str, Any], root: Path) -> tuple[str, ...]:
    """The classes a manifest declares its masks annotate (empty when it declares none)."""
    if "classes" not in manifest:
        return ()
    return check_names(manifest["classes"], f'{root / "dataset.json"} "classes"')


def declared_read_scale(manifest: dict[str, Any], root: Path) -> float:
    """The manifest's "read_scale" (1 when absent): the fraction of their size at which the network reads
    the folder's images, on top of the model's working resolution, for crops up-sampled or scanned at a
    higher magnification than the model's other data (0.5: read at half size). Masks, scores and polygons
    stay at the images' size."""
    value = manifest.get("read_scale", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_READ_SCALE:
        raise DatasetError(f'{root / "dataset.json"} "read_scale" is {value!r}; give a number in (0, '
                           f'{MAX_READ_SCALE:g}] (0.5: the network reads the images at half their size)')
    return float(value)


def folder_read_scale(root: str | os.PathLike) -> float:
    """The read scale a dataset folder's dataset.json declares (`declared_read_scale`); 1 for an image
    file or a folder without a dataset.json."""
    return declared_read_scale(read_manifest(root), Path(root))


def image_declarations(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a manifest declares about its images (`IMAGE_DECLARATIONS`): for a derived folder to keep."""
    return {key: manifest[key] for key in IMAGE_DECLARATIONS if key in manifest}


def open_dataset(root: str | os.PathLike, require_masks: bool = True) -> Dataset:
    """List and pair the images and masks of a dataset folder; fail on anything unpaired."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; give a folder holding images/ and masks/")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DatasetError(
            f"{root} has no images/ folder; a dataset holds images/<name>.png and masks/<name>.png "
            "(use 'cydata convert' for the thesis N_x.jpg/N_y.jpg layout)"
        )
    images = _index(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise DatasetError(f"{images_dir} holds no images (.png, .jpg, .tif); add crops or choose another folder")
    masks: dict[str, Path] = {}
    masks_dir = root / "masks"
    if require_masks:
        if not masks_dir.is_dir():
            raise DatasetError(f"{root} has no masks/ folder; add masks/<name>.png for every image")
        masks = _index(masks_dir, (*MASK_SUFFIXES, ".jpg", ".jpeg"))  # JPEG listed only to be refused below
        missing = sorted(set(images) - set(masks))
        if missing:
            raise DatasetError(
                f"image {images[missing[0]]} has no mask (expected {masks_dir / (missing[0] + '.png')})"
                + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                + "; add the masks or remove those images"
            )
        jpeg = [m for m in masks.values() if m.suffix.lower() in (".jpg", ".jpeg")]
        if jpeg:
            raise DatasetError(f"mask {jpeg[0]} is JPEG (lossy); store masks as PNG")
    elif masks_dir.is_dir():
        masks = _index(masks_dir, MASK_SUFFIXES)
    manifest = read_manifest(root)
    classes = declared_classes(manifest, root)
    read_scale = declared_read_scale(manifest, root)
    entries = manifest.get("items", {})
    labelled = instance_paths(root, list(images), manifest, classes)
    unknown = _unknown_paths(root, images)
    items = [Item(stem, path, masks.get(stem), dict(entries.get(stem, {})), classes, labelled[stem],
                  unknown.get(stem)) for stem, path in images.items()]
    return Dataset(root, items, manifest, classes, read_scale)


def _unknown_paths(root: Path, images: dict[str, Path]) -> dict[str, Path]:
    """{stem: unknown/<stem>.png} of the images that have one; a DatasetError for a map without its image."""
    folder = root / UNKNOWN_FOLDER
    if not folder.is_dir():
        return {}
    maps = _index(folder, (".png",))
    stray = sorted(set(maps) - set(images))
    if stray:
        raise DatasetError(f"{maps[stray[0]]} has no image images/{stray[0]}.png; remove it or add the image")
    return maps


def read_unknown(item: Item, shape: tuple[int, int]) -> np.ndarray | None:
    """(H, W) bool: the item's pixels nobody labelled (unknown/<stem>.png: 255 unknown, 0 labelled);
    None when it has no such map. A map of another size or with other values is a DatasetError."""
    if item.unknown is None:
        return None
    values = decode_file(item.unknown, "unknown-pixel map", "re-export it as a 0/255 PNG")
    if values.ndim != 2 or values.dtype != np.uint8 or not np.isin(values, (0, 255)).all():
        raise DatasetError(f"{item.unknown} must be a single-channel 8-bit PNG of 0 (labelled) and 255 "
                           "(unknown); re-export it")
    if values.shape != tuple(shape):
        raise DatasetError(f"{item.unknown} is {values.shape[1]}x{values.shape[0]} but its image is "
                           f"{shape[1]}x{shape[0]}; export the map at the image's size")
    return values > 0


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None,
              classes: tuple[str, ...] = ()) -> np.ndarray:
    """Read a mask as uint8 (H, W) labels: 0/1 for 0/255 masks, 0/1/2 for cell + nucleus masks
    (`classes`: the classes its dataset declares; see `segmenter.classes`).

    `shape` is the (height, width) of the paired image; a mismatch is an error, never a silent resize.
    """
    path = Path(path)
    mask = decode_file(path, "mask", "re-export it as PNG")
    if mask.ndim == 3:
        channels = mask[:, :, :3]
        grey = channels[:, :, 0]
        if not (np.array_equal(grey, channels[:, :, 1]) and np.array_equal(grey, channels[:, :, 2])):
            raise DatasetError(f"mask {path} is in colour; store a single-channel mask (0 background, 255 foreground)")
        mask = channels[:, :, 0]
    if mask.dtype != np.uint8:
        raise DatasetError(f"mask {path} has pixel type {mask.dtype}; store it as 8-bit PNG")
    if shape is not None and mask.shape != tuple(shape):
        raise DatasetError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}; "
            "export the mask at the image's size"
        )
    return decode(mask, classes, path)


def read_pair(item: Item) -> tuple[np.ndarray, np.ndarray]:
    """Read an item's image and mask labels, checked against each other and its dataset's classes."""
    image = read_image(item.image)
    if item.mask is None:
        raise DatasetError(f"image {item.image} has no mask; add masks/{item.stem}.png")
    return image, read_mask(item.mask, image.shape[:2], item.classes)


def check_dataset(dataset: Dataset) -> None:
    """Read every pair once so that a bad file fails before hours of training, not during."""
    for item in dataset.items:
        read_pair(item)


def manifest_hash(dataset: Dataset) -> str:
    """SHA-256 over the manifest and the bytes of every image, mask and instance mask: identifies the
    training data."""
    digest = hashlib.sha256(json.dumps(dataset.manifest, sort_keys=True).encode())
    for item in dataset.items:
        for path in (item.image, item.mask, *item.instances.values(), item.unknown):
            if path is not None:
                digest.update(path.name.encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class DatasetWriter:
    """Build a dataset folder under a temporary name; `close()` writes dataset.json and renames it into place.

    Use as a context manager: on an exception the temporary folder is removed and nothing appears at `root`.
    `classes` are the classes the masks annotate (recorded in dataset.json; empty: one unnamed foreground).
    """

    def __init__(self, root: str | os.PathLike, source: dict[str, Any] | None = None, parent: str | None = None,
                 iteration: int | None = None, overwrite: bool = False, extra: dict[str, Any] | None = None,
                 classes: tuple[str, ...] = ()):
        self.root = Path(root)
        self.classes = tuple(classes)
        if self.root.exists() and not overwrite:
            raise CysegError(f"output folder {self.root} already exists; choose a new --out or remove it")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_dir(self.root)
        (self.tmp / "images").mkdir()
        (self.tmp / "masks").mkdir()
        self.manifest: dict[str, Any] = {
            "format": FORMAT,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source or {},
            "parent": parent,
            "iteration": iteration,
            **({"classes": list(self.classes)} if self.classes else {}),
            **(extra or {}),
            "items": {},
        }

    def add(self, stem: str, image: np.ndarray, mask: np.ndarray | None, meta: dict[str, Any] | None = None,
            unknown: np.ndarray | None = None) -> None:
        """Add one crop with its manifest entry; the mask (labels as `read_mask` gives them, or 0/255)
        is stored in the encoding of the dataset's classes (0/255 for one class), and the pixels
        nobody labelled (`unknown`, bool), when there are any, in unknown/."""
        if mask is not None and mask.shape[:2] != image.shape[:2]:
            raise CysegError(f"mask for {stem} is {mask.shape[1]}x{mask.shape[0]} but image is "
                             f"{image.shape[1]}x{image.shape[0]}")
        write_png(self.tmp / "images" / f"{stem}.png", image)
        if mask is not None:
            write_png(self.tmp / "masks" / f"{stem}.png", encode(mask, self.classes))
        self.write_unknown(stem, unknown)
        self.manifest["items"][stem] = {k: v for k, v in (meta or {}).items() if v is not None}

    def write_unknown(self, stem: str, unknown: np.ndarray | None) -> None:
        """Store an item's unknown pixels (bool (H, W)) as unknown/<stem>.png, replacing any copied
        map; an item with none gets no file."""
        path = self.tmp / UNKNOWN_FOLDER / f"{stem}.png"
        path.unlink(missing_ok=True)
        if unknown is not None and unknown.any():
            path.parent.mkdir(exist_ok=True)
            write_png(path, unknown.astype(np.uint8) * 255)

    def copy(self, item: Item, stem: str | None = None, meta: dict[str, Any] | None = None) -> None:
        """Copy an existing item's files unchanged (no re-encoding); `meta` adds to its manifest entry."""
        stem = stem or item.stem
        shutil.copyfile(item.image, self.tmp / "images" / f"{stem}{item.image.suffix.lower()}")
        if item.mask is not None:
            shutil.copyfile(item.mask, self.tmp / "masks" / f"{stem}{item.mask.suffix.lower()}")
        if item.unknown is not None:
            (self.tmp / UNKNOWN_FOLDER).mkdir(exist_ok=True)
            shutil.copyfile(item.unknown, self.tmp / UNKNOWN_FOLDER / f"{stem}.png")
        self.manifest["items"][stem] = {**item.meta, **{k: v for k, v in (meta or {}).items() if v is not None}}

    def close(self) -> Path:
        """Write the manifest and move the folder into place."""
        if not self.manifest["items"]:
            self.abort()
            raise DatasetError(f"no items were written to {self.root}; nothing to save")
        (self.tmp / "dataset.json").write_text(json.dumps(self.manifest, indent=2, sort_keys=False))
        if self.root.exists():
            shutil.rmtree(self.root)
        os.replace(self.tmp, self.root)
        return self.root

    def abort(self) -> None:
        """Remove the temporary folder."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
