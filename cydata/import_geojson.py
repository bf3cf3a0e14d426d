"""`cydata import`: a dataset folder from local images or slides and their GeoJSON annotations.

The local counterpart of `cydata download`, for annotations made in QuPath (File > Export objects
as GeoJSON, one file per image) or any tool that writes GeoJSON in full-resolution pixels. Crops
are placed as `cydata download --json` places them (`cydata.crops`):
  * an image with annotations of a ROI class (QuPath's "Region*" by default) gives crops of `size`
    covering each ROI's bounding box (a larger ROI is tiled, a smaller one padded around its centre);
  * an image without ROIs whose longer side is at most `max_image_side` is one item, the whole image;
  * on a larger slide without ROIs, one crop of `size` is centred on each foreground annotation.
Masks are the foreground polygons (every class but the ROI classes, or the classes asked for)
rasterised at pixel centres, 0/255, one unnamed foreground (the QuPath classes drawn are listed
under "qupath_classes", not "classes": those name cyseg's classes). Annotations outside their image,
and points or lines (which draw nothing), are skipped with a warning and listed under "skipped" in
dataset.json.
Everything is checked before anything is written; the folder is built under a temporary name.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shapely import STRtree
from shapely.geometry import box as shapely_box
from tqdm import tqdm

from cydata.crops import Sized, centre, centred_box, rasterise, report_skipped, span
from cydata.qupath import Annotation, read_geojson
from segmenter.errors import CysegError
from segmenter.io.dataset import DatasetWriter
from segmenter.wsi.readers import IMAGE_SUFFIXES, OPENSLIDE_SUFFIXES, TIFF_SUFFIXES, open_slide

log = logging.getLogger(__name__)

# A DICOM slide is a folder of .dcm files, one per level: it is given by one of its files, never listed.
LISTED_SUFFIXES = (IMAGE_SUFFIXES | TIFF_SUFFIXES | OPENSLIDE_SUFFIXES) - {".dcm"}


@dataclass
class Options:
    """How to turn annotations into crops and masks (the command's options)."""

    size: int = 512
    roi_classes: tuple[str, ...] = ("Region*",)
    classes: tuple[str, ...] = ()          # foreground classes; empty: every class but the ROI classes
    max_image_side: int = 4096
    roi_classes_given: bool = False        # a --roi-class that matches nothing is then an error

    def is_foreground(self, annotation: Annotation) -> bool:
        """True when the annotation's polygons are drawn in the masks."""
        if self.classes:
            return annotation.class_name in self.classes
        return annotation.class_name not in self.roi_classes


@dataclass
class Source:
    """One image or slide with its annotations file and what it holds."""

    image: Path
    geojson: Path
    annotations: list[Annotation]

    @property
    def stem(self) -> str:
        return self.image.stem


@dataclass
class Crop:
    """One item to write: a box of the image (level-0 pixels) and why it was made."""

    stem: str
    source: Source
    box: list[int]
    kind: str
    features: list[int]
    roi: list[float] | None = None
    tile: list[int] | None = None


@dataclass
class Plan:
    """The crops to write and the annotations skipped, with why."""

    crops: list[Crop] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, source: Source, annotation: Annotation, reason: str) -> None:
        self.skipped.append({"what": f"{source.geojson.name} feature {annotation.index}", "reason": reason,
                             "image": source.stem, "feature": annotation.index})


# ---------------------------------------------------------------------------- inputs ----------
def list_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image and slide files named, or found (not recursively) in the folders named."""
    images: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in LISTED_SUFFIXES)
            if not found:
                raise CysegError(f"folder {path} holds no images or slides ({', '.join(sorted(LISTED_SUFFIXES))}); "
                                 "give image files or the folder that holds them")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise CysegError(f"image {path} does not exist; check the path")
    stems: dict[str, Path] = {}
    for image in images:
        if image.stem in stems and stems[image.stem] != image:
            raise CysegError(f"two images are named '{image.stem}' ({stems[image.stem]}, {image}); the item names "
                             "come from the file names: rename one")
        stems[image.stem] = image
    return list(stems.values())


def annotation_file(image: Path, annotations: Path, n_images: int) -> Path:
    """The GeoJSON of `image`: `annotations` itself when it is a file (one image only), else
    <stem>.geojson or <name>.geojson in that folder."""
    if annotations.is_file():
        if n_images > 1:
            raise CysegError(f"--annotations {annotations} is one file but {n_images} images were given; give a "
                             "folder holding <image name>.geojson for each image")
        return annotations
    candidates = [annotations / f"{image.stem}.geojson", annotations / f"{image.name}.geojson"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CysegError(f"image {image} has no annotations file (looked for {candidates[0]} and "
                     f"{candidates[1].name}); export it from QuPath (File > Export objects as GeoJSON) or leave the "
                     "image out")


def read_sources(inputs: Sequence[str | os.PathLike], annotations: str | os.PathLike) -> list[Source]:
    """Every image with its annotations file, read and checked."""
    folder = Path(annotations)
    if not folder.exists():
        raise CysegError(f"--annotations {folder} does not exist; give the GeoJSON file or the folder of them")
    images = list_images(inputs)
    sources = []
    for image in images:
        geojson = annotation_file(image, folder, len(images))
        sources.append(Source(image, geojson, read_geojson(geojson)))
    if folder.is_dir():
        used = {s.geojson.name for s in sources}
        unused = sorted(p.name for p in folder.glob("*.geojson") if p.name not in used)
        if unused:
            log.warning("%d annotations file(s) in %s match no image given, e.g. %s", len(unused), folder, unused[0])
    return sources


def check_classes(sources: list[Source], options: Options) -> None:
    """Every class asked for exists in the annotations; a class is not both ROI and foreground."""
    found = sorted({a.class_name for s in sources for a in s.annotations})
    shown = ", ".join(found) if found else "none (the files hold no objects)"
    both = sorted(set(options.classes) & set(options.roi_classes))
    if both:
        raise CysegError(f"--class {both[0]} is also a --roi-class; a class is either drawn or a region of interest")
    asked = [("--class", name) for name in options.classes]
    asked += [("--roi-class", name) for name in options.roi_classes if options.roi_classes_given]
    for option, name in asked:
        if name not in found:
            raise CysegError(f"{option} {name}: no annotation has this class; the classes found are: {shown}")


# ---------------------------------------------------------------------------- plan ------------
def plan_crops(sources: list[Source], options: Options) -> Plan:
    """The crops of every image (see the module docstring) and the annotations skipped."""
    plan = Plan()
    for source in sources:
        slide = open_slide(source.image)
        try:
            _plan_image(plan, source, slide, options)
        finally:
            slide.close()
    return plan


def _inside(plan: Plan, source: Source, image: Sized, annotation: Annotation) -> bool:
    """True when the annotation has area inside the image; else it is recorded as skipped."""
    if annotation.geometry is None:
        kind = annotation.geometry_type
        plan.skip(source, annotation, f"a {kind} draws nothing in a mask" if kind else "it has no geometry")
        return False
    if annotation.geometry.intersection(shapely_box(0, 0, image.width, image.height)).area <= 0:
        plan.skip(source, annotation, f"it lies outside the {image.width}x{image.height} image")
        return False
    return True


def _plan_image(plan: Plan, source: Source, image: Sized, options: Options) -> None:
    """Crops of one image: over its ROIs, else the whole image, else one per foreground annotation."""
    rois = [a for a in source.annotations if a.class_name in options.roi_classes and _inside(plan, source, image, a)]
    foreground = [a for a in source.annotations if options.is_foreground(a) and _inside(plan, source, image, a)]
    if rois:
        for roi in rois:
            _cover_roi(plan, source, image, roi, options.size)
    elif max(image.width, image.height) <= options.max_image_side:
        if not foreground:
            log.warning("%s has no foreground annotation: imported whole with an empty mask", source.image)
        plan.crops.append(Crop(source.stem, source, [0, 0, image.width, image.height], "roi",
                               [a.index for a in foreground]))
    elif not foreground:
        log.warning("%s (%dx%d) has neither ROI nor foreground annotation: nothing imported from it",
                    source.image, image.width, image.height)
    else:
        for annotation in foreground:
            cx, cy = centre(annotation.geometry, image)
            plan.crops.append(Crop(f"{source.stem}_a{annotation.index}", source,
                                   centred_box(cx, cy, options.size, image), "cell", [annotation.index]))


def _cover_roi(plan: Plan, source: Source, image: Sized, roi: Annotation, size: int) -> None:
    """Crops of `size` covering the ROI's bounding box inside the image."""
    x0, y0, x1, y1 = roi.geometry.intersection(shapely_box(0, 0, image.width, image.height)).bounds
    columns = span(x0, x1, size, image.width)
    rows = span(y0, y1, size, image.height)
    for r, (y, h) in enumerate(rows):
        for c, (x, w) in enumerate(columns):
            plan.crops.append(Crop(f"{source.stem}_roi{roi.index}_r{r}c{c}", source, [x, y, w, h], "roi",
                                   [roi.index], [x0, y0, x1, y1], [r, c]))


# ---------------------------------------------------------------------------- the command -----
def import_geojson(inputs: Sequence[str | os.PathLike], annotations: str | os.PathLike, out: str | os.PathLike,
                   options: Options, progress: bool | None = None) -> Path:
    """Build the dataset `out` from images and their GeoJSON; returns its path. See the module docstring."""
    out = Path(out)
    if options.size < 1:
        raise CysegError(f"--size {options.size} must be at least 1 pixel")
    if options.max_image_side < 1:
        raise CysegError(f"--max-image-side {options.max_image_side} must be at least 1 pixel")
    if out.exists():
        raise CysegError(f"output folder {out} already exists; choose a new --out or remove it")
    sources = read_sources(inputs, annotations)
    check_classes(sources, options)
    plan = plan_crops(sources, options)
    report_skipped(plan.skipped, "annotation", log)
    if not plan.crops:
        first = f" (first skipped: {plan.skipped[0]['what']}: {plan.skipped[0]['reason']})" if plan.skipped else ""
        raise CysegError(f"nothing to import from {len(sources)} image(s): no ROI, no image small enough to take "
                         f"whole and no foreground annotation{first}; check --class, --roi-class and "
                         "--max-image-side")
    write_dataset(plan, out, options, progress)
    log.info("imported %d item(s) from %d image(s) into %s%s", len(plan.crops), len(sources), out,
             f" ({len(plan.skipped)} annotation(s) skipped, listed in dataset.json)" if plan.skipped else "")
    return out


def write_dataset(plan: Plan, out: Path, options: Options, progress: bool | None = None) -> None:
    """Read every crop, draw its mask and write the dataset folder (renamed into place when complete)."""
    sources = list({id(c.source): c.source for c in plan.crops}.values())
    drawn_classes = sorted({a.class_name for s in sources for a in s.annotations if options.is_foreground(a)})
    settings = {"tool": "cydata import", "size": options.size, "roi_classes": list(options.roi_classes),
                "classes": list(options.classes) or "every class but the ROI classes",
                "max_image_side": options.max_image_side}
    extra = {"qupath_classes": drawn_classes, "skipped": plan.skipped}
    quiet = None if progress is None else not progress
    with DatasetWriter(out, source={"geojson": settings}, extra=extra) as writer, \
            tqdm(total=len(plan.crops), desc="import", unit="crop", disable=quiet) as bar:
        for source in sources:
            _write_source(writer, source, [c for c in plan.crops if c.source is source], options, bar)


def _write_source(writer: DatasetWriter, source: Source, crops: list[Crop], options: Options, bar: tqdm) -> None:
    """The crops of one image: pixels from its reader, masks from the foreground polygons that meet each box."""
    drawn = [a for a in source.annotations if options.is_foreground(a) and a.geometry is not None]
    tree = STRtree([a.geometry for a in drawn])
    slide = open_slide(source.image)
    try:
        for crop in crops:
            x, y, w, h = crop.box
            rgb = slide.read(x, y, w, h, 0)
            hits = sorted(int(i) for i in tree.query(shapely_box(x, y, x + w, y + h), predicate="intersects"))
            mask = rasterise([drawn[i].geometry for i in hits], crop.box, rgb.shape[:2])
            meta = {"kind": crop.kind, "slide": source.stem, "source": str(source.image.resolve()),
                    "annotations": str(source.geojson.resolve()), "crop": crop.box, "size": [w, h],
                    "features": crop.features, "mask_features": [drawn[i].index for i in hits],
                    "roi": None if crop.roi is None else [round(v, 3) for v in crop.roi], "tile": crop.tile}
            writer.add(crop.stem, rgb, mask, meta=meta)
            bar.update()
    finally:
        slide.close()
