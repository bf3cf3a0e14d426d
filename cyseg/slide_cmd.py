"""`cyseg segment MODEL SLIDE...`: whole slides (or a window of one) to GeoJSON polygons."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segmenter.base import Segmenter
from segmenter.errors import CysegError
from segmenter.scope import check_input, image_modality
from segmenter.wsi.scaleout import make_runner
from segmenter.wsi.segment import segment_slide
from segmenter.wsi.windows import WsiOptions
from unet import load_segmenter

if TYPE_CHECKING:
    from segmenter.wsi.slide import SlideReader

log = logging.getLogger(__name__)


def output_paths(slides: list[Path], out: Path | None) -> list[Path]:
    """One GeoJSON per slide: `out` itself for one slide (default <stem>.geojson), else <out>/<stem>.geojson."""
    if len(slides) == 1 and (out is None or not out.is_dir()):
        return [out or Path(f"{slides[0].stem}.geojson")]
    folder = out or Path(".")
    if folder.exists() and not folder.is_dir():
        raise CysegError(f"--out {folder} is a file but {len(slides)} slides were given; give a folder")
    stems = [s.stem for s in slides]
    if len(set(stems)) != len(stems):
        raise CysegError("two slides share a file name; segment them in separate calls with their own --out")
    folder.mkdir(parents=True, exist_ok=True)
    return [folder / f"{stem}.geojson" for stem in stems]


def resolution(reader, mpp: float | None, magnification: float | None) -> float:
    """The processing downsample from --mpp / --magnification (1 = level 0)."""
    if mpp is None and magnification is None:
        return 1.0
    return reader.downsample_for(mpp=mpp, magnification=magnification)


def check_slide(seg: Segmenter, reader: SlideReader, downsample: float, allow_mismatch: bool) -> None:
    """Refuse a slide unlike the model's training images (`segmenter.scope`): its modality from a
    thumbnail, its resolution as processed."""
    check_input(seg, f"slide {Path(reader.path).name}", image_modality(reader.preview),
                None if reader.mpp is None else reader.mpp * downsample, allow_mismatch)


def run_segment_slides(seg: Segmenter, model_path: Path, slides: list[Path], out: Path | None, window: str | None,
                       opts: dict[str, Any], mpp: float | None, magnification: float | None, workers: int,
                       scheduler: str | None, device: str, cache: Path | None, mask_out: Path | None,
                       progress: bool = True, allow_mismatch: bool = False) -> list[dict[str, Any]]:
    """Segment each slide in turn on one runner (Dask cluster started once); every slide is opened
    and checked against the model's scope before any work."""
    from segmenter.wsi.readers import open_slide

    if window and len(slides) > 1:
        raise CysegError("--window applies to one slide; give a single slide with --window")
    outputs = output_paths(slides, out)
    readers = [open_slide(path) for path in slides]  # fail on a bad slide before any work
    try:
        for reader in readers:
            check_slide(seg, reader, resolution(reader, mpp, magnification), allow_mismatch)
    except CysegError:
        for reader in readers:
            reader.close()
        raise
    runner = make_runner(seg, load_segmenter, workers, scheduler, None if device == "auto" else device)
    summaries = []
    try:
        for reader, target in zip(readers, outputs, strict=True):
            options = WsiOptions(downsample=resolution(reader, mpp, magnification), **opts)
            cache_root = cache if cache is not None else target.parent / ".cyseg-cache"
            mask_path = None
            if mask_out is not None:
                mask_path = mask_out if len(slides) == 1 else mask_out / f"{Path(reader.path).stem}.png"
            summaries.append(segment_slide(seg, model_path, reader, target, options, runner, window, cache_root,
                                           mask_path, progress=progress))
    finally:
        runner.close()
        for reader in readers:
            reader.close()
    return summaries
