"""`cyseg segment` on crops: a mask (PNG), an instance label image (16-bit PNG) and polygons
(GeoJSON) for every image of a folder.

A model with named classes gives one 0/255 mask per class, masks/<stem>_<class>.png, one label image
per class, labels/<stem>_<class>.png, and one GeoJSON per image holding every class's objects, each
classified by its class (QuPath's `properties.classification.name`); a model without gives
masks/<stem>.png, labels/<stem>.png and `cell` polygons. A model trained with instances separates
touching objects (segmenter.instances) and writes QuPath cell objects (segmenter.cells); the others'
objects are the masks' connected regions, written as annotations as before."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from segmenter.base import Segmenter
from segmenter.cells import cell_features
from segmenter.classes import COLOURS
from segmenter.errors import CysegError
from segmenter.instances import instance_labels
from segmenter.io.atomic import atomic_dir
from segmenter.io.dataset import folder_read_scale
from segmenter.io.images import IMAGE_SUFFIXES, read_image, write_png
from segmenter.overlays import GREEN, overlay, overlay_objects
from segmenter.pipeline import BackgroundWriter, read_ahead
from segmenter.polygons import classified_collection, mask_to_polygons
from segmenter.scope import check_input, image_modality
from segmenter.wsi.readers import open_slide
from segmenter.wsi.scaleout import InProcess
from segmenter.wsi.segment import low_resolution_labels, segment_slide
from segmenter.wsi.slide import SlideReader
from segmenter.wsi.windows import Region, WsiOptions

log = logging.getLogger(__name__)


CROP_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SCOPE_SAMPLE = 16  # crops whose modality is checked against the model's before segmenting
OVERLAY_SIDE = 4096  # overlays of images segmented as slides are drawn at most this long


def is_slide(path: Path, plain_images_too: bool = False) -> bool:
    """Whether an input goes to the whole-slide engine: any file but a plain crop image (unless
    asked), i.e. SVS, NDPI, MRXS, SCN, DICOM, TIFF..."""
    if path.is_dir() or not path.exists():
        return False
    return plain_images_too or path.suffix.lower() not in CROP_SUFFIXES


def list_images(source: Path) -> list[Path]:
    """The images to segment: a file, a dataset folder's images/, or the image files of a folder."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise CysegError(f"input {source} does not exist; give an image file or a folder of images")
    folder = source / "images" if (source / "images").is_dir() else source
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise CysegError(f"{folder} holds no images (.png, .jpg, .tif); give a folder of crops")
    seen: dict[str, Path] = {}
    for path in files:  # outputs are named by stem: a.png and a.jpg would overwrite each other's mask
        if path.stem in seen:
            raise CysegError(f"{folder} holds two images named '{path.stem}' ({seen[path.stem].name}, {path.name}); "
                             "rename or remove one")
        seen[path.stem] = path
    return files


def run_segment_crops(seg: Segmenter, model_path: Path, source: Path, out: Path, threshold: float | None,
                      simplify: float, min_area: float | None, overlays: bool, tiling: dict[str, Any],
                      slide_opts: dict[str, Any] | None = None, progress: bool = True,
                      allow_mismatch: bool = False) -> dict[str, Any]:
    """Segment every image; write masks/, geojson/ (and overlays/) under `out`, atomically. The next
    image is read and the last one's outputs written in background threads (segmenter.pipeline).
    An image larger than one slide window goes through the whole-slide engine instead, window by
    window, so that memory stays bounded whatever its size (`slide_opts`: the engine's options)."""
    read_scale = folder_read_scale(source)
    opts = WsiOptions(**{**tiling, "threshold": threshold, "simplify": simplify, "min_area": min_area,
                         **(slide_opts or {})})
    opts = dataclasses.replace(opts, downsample=opts.downsample / read_scale)
    tiling = {**tiling, "read_scale": read_scale}
    small, large = _by_size(list_images(source), opts.window_size)
    _check_crops(seg, small, large, opts, allow_mismatch)
    min_areas = seg.min_areas(min_area)
    stats = {"images": 0, "polygons": 0, "pixels": 0}
    start = time.perf_counter()
    with atomic_dir(out, overwrite=True) as tmp:
        for sub in ("masks", "labels", "geojson") + (("overlays",) if overlays else ()):
            (tmp / sub).mkdir()
        _segment_in_memory(seg, small, tmp, threshold, simplify, min_areas, overlays, tiling, stats, progress)
        for reader in large:
            _segment_as_slide(seg, model_path, reader, tmp, opts, overlays, stats, progress)
    stats["seconds"] = time.perf_counter() - start
    log.info("%d images, %d polygons, %.1f s; masks in %s, GeoJSON in %s", stats["images"], stats["polygons"],
             stats["seconds"], out / "masks", out / "geojson")
    return stats


def check_crop_sample(seg: Segmenter, crops: list[Path], allow_mismatch: bool) -> None:
    """Refuse crops unlike the model's training images (`segmenter.scope`), judged on up to SCOPE_SAMPLE
    of them spread over the list; a damaged crop is skipped here and reported where it is read."""
    step = max(1, len(crops) // SCOPE_SAMPLE)
    for path in crops[::step][:SCOPE_SAMPLE]:
        try:
            image = read_image(path)
        except CysegError:
            continue
        check_input(seg, f"image {path.name}", image_modality(image), None, allow_mismatch)


def _check_crops(seg: Segmenter, small: list[Path], large: list[SlideReader], opts: WsiOptions,
                 allow_mismatch: bool) -> None:
    """Refuse crops unlike the model's training images (`segmenter.scope`), judged on up to SCOPE_SAMPLE
    of them, and large images as slides; nothing is written before."""
    from cyseg.slide_cmd import check_slide

    try:
        check_crop_sample(seg, small, allow_mismatch)
        for reader in large:
            check_slide(seg, reader, opts.downsample, allow_mismatch)
    except CysegError:
        for reader in large:
            reader.close()
        raise


def _by_size(files: list[Path], window_size: int) -> tuple[list[Path], list[SlideReader]]:
    """The images that fit in memory as crops, and readers (header read, pixels not decoded) of
    those with more pixels than one slide window."""
    small, large = [], []
    for path in files:
        try:
            reader = open_slide(path)
        except CysegError:  # a damaged crop: reading it as a crop reports it in the crops' words
            small.append(path)
            continue
        if reader.width * reader.height > window_size * window_size:
            large.append(reader)
        else:
            reader.close()
            small.append(path)
    return small, large


def _mask_name(seg: Segmenter, stem: str, label: str) -> str:
    """The mask file's name: the image's stem, with its class for a model of named classes."""
    return f"{stem}_{label}" if seg.classes else stem


def _segment_in_memory(seg: Segmenter, files: list[Path], folder: Path, threshold: float | None, simplify: float,
                       min_areas: dict[str, float], overlays: bool, tiling: dict[str, Any], stats: dict[str, Any],
                       progress: bool) -> None:
    """Each image predicted whole (tiled and blended by the segmenter), its outputs written behind."""

    def write_outputs(path: Path, image: np.ndarray, masks: np.ndarray, probs: np.ndarray) -> None:
        by_class, shown = {}, image
        objects = instance_labels(seg, masks, probs, min_areas=min_areas)
        for c, label in enumerate(seg.labels):
            write_png(folder / "masks" / f"{_mask_name(seg, path.stem, label)}.png", masks[c] * 255)
            write_png(folder / "labels" / f"{_mask_name(seg, path.stem, label)}.png",
                      label_png(objects[seg.channels[c]], path))
            if not seg.instance_classes:
                by_class[label] = mask_to_polygons(masks[c], probs[c], simplify=simplify, min_area=min_areas[label])
            if overlays:
                colour = np.array(COLOURS[label] if seg.classes else GREEN, np.float32)
                shown = (overlay_objects(shown, objects[seg.channels[c]], colour) if seg.instance_classes
                         else overlay(shown, masks[c], colour))
        extra = {"image": path.name, "width": image.shape[1], "height": image.shape[0]}
        if seg.instance_classes:
            collection = {"type": "FeatureCollection", "features": _cells(objects, probs), "properties": extra}
        else:
            collection = classified_collection(by_class, extra=extra)
        (folder / "geojson" / f"{path.stem}.geojson").write_text(json.dumps(collection))
        if overlays:
            write_png(folder / "overlays" / f"{path.stem}.png", shown)
        stats["polygons"] += len(collection["features"])  # only the writer thread counts polygons

    def _cells(objects: dict[str, np.ndarray], probs: np.ndarray) -> list[dict[str, Any]]:
        """The QuPath objects of an instance model's label images."""
        channel = dict(zip(seg.channels, probs, strict=False))
        cells = next((c for c in seg.channels if c != "nucleus"), None)
        areas = dict(zip(seg.channels, min_areas.values(), strict=True))
        return cell_features(objects.get(cells), objects.get("nucleus"), channel.get(cells), channel.get("nucleus"),
                             simplify, (areas.get(cells, 0.0), areas.get("nucleus", 0.0)), label=seg.labels[0])

    with BackgroundWriter() as writer, closing(read_ahead(files, read_image)) as images:
        for path, image in tqdm(images, total=len(files), desc="segmenting", unit="image", disable=not progress):
            probs = seg.predict(image, **tiling)
            with torch.inference_mode():
                masks = seg.class_masks(probs, threshold).cpu().numpy()
                probs_np = probs.cpu().numpy()
            writer.submit(write_outputs, path, image, masks, probs_np)
            stats["images"] += 1
            stats["pixels"] += image.shape[0] * image.shape[1]


def label_png(labels: np.ndarray, path: Path) -> np.ndarray:
    """Instance labels as the uint16 a PNG stores; a CysegError naming the image past 65535 objects."""
    if labels.max(initial=0) > np.iinfo(np.uint16).max:
        raise CysegError(f"{path} holds more than 65535 objects, more than a 16-bit label image stores; "
                         "segment it as a slide (--as-slide) or in smaller crops")
    return labels.astype(np.uint16)


def _segment_as_slide(seg: Segmenter, model_path: Path, reader: SlideReader, folder: Path, opts: WsiOptions,
                      overlays: bool, stats: dict[str, Any], progress: bool) -> None:
    """A large image through the whole-slide engine (as `--as-slide` does): its GeoJSON, its mask
    rasterised from the polygons, and an overlay at most OVERLAY_SIDE pixels long."""
    stem, (w, h) = Path(reader.path).stem, (reader.width, reader.height)
    log.info("%s is %dx%d px, more than one %d-px window: segmented window by window with the whole-slide "
             "engine (as --as-slide), so memory stays bounded", reader.path, w, h, opts.window_size)
    geojson = folder / "geojson" / f"{stem}.geojson"
    try:
        summary = segment_slide(seg, model_path, reader, geojson, opts, InProcess(seg),
                                mask_out=folder / "masks" / f"{stem}.png",
                                mask_downsample=1, progress=progress)
        if overlays:
            write_png(folder / "overlays" / f"{stem}.png", _small_overlay(seg, reader, geojson))
    finally:
        reader.close()
    stats["images"] += 1
    stats["pixels"] += w * h
    stats["polygons"] += summary["polygons"]


def _small_overlay(seg: Segmenter, reader: SlideReader, geojson: Path) -> np.ndarray:
    """The image, at most OVERLAY_SIDE pixels long, with each class's objects outlined in its colour."""
    from shapely.geometry import shape

    thumb, downsample = reader.thumbnail(OVERLAY_SIDE)
    by_class: dict[str, list] = {}
    for feature in json.loads(geojson.read_text())["features"]:
        properties = feature.get("properties") or {}
        name = (properties.get("classification") or {}).get("name", "cell")
        by_class.setdefault(name, []).append(shape(feature["geometry"]))
        if feature.get("nucleusGeometry"):
            by_class.setdefault("nucleus", []).append(shape(feature["nucleusGeometry"]))
    shown = thumb
    for name in sorted(by_class, key=lambda n: n == "nucleus"):  # nuclei drawn over their cells
        labels = low_resolution_labels(by_class[name], Region(0, 0, reader.width, reader.height), downsample)
        labels = cv2.resize(labels, (thumb.shape[1], thumb.shape[0]), interpolation=cv2.INTER_NEAREST)
        colour = np.array(COLOURS.get(name, GREEN) if seg.classes else GREEN, np.float32)
        shown = overlay_objects(shown, labels, colour)
    return shown
