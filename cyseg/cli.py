"""The `cyseg` command line (DESIGN §7): train, evaluate, segment, demo.

A thin layer over `cyseg.*_cmd` modules. Errors caused by the user's input are printed as one
line, `cyseg: error: <message>`, with exit status 2.
"""
from __future__ import annotations

import logging
from pathlib import Path

import click

from segmenter.base import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE
from segmenter.cli_support import ErrorReportingGroup, run_main, setup_logging, verbosity
from segmenter.errors import CysegError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEVICE_HELP = "Where to compute: auto (CUDA GPU when available, else CPU), cpu, cuda or cuda:N."


def _load(model: str, device: str):
    import unet  # noqa: F401  (registers the U-Net architecture)
    from segmenter.base import Segmenter
    from cyseg.models import resolve_model

    return Segmenter.load(resolve_model(model), device=device)


def _threshold(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # a CysegError, not click.BadParameter: reported as one line like every other input error
    if value is not None and not 0.0 <= value <= 1.0:
        raise CysegError(f"--threshold {value} is outside [0, 1]; choose e.g. 0.5")
    return value


def _progress() -> bool:
    """Progress bars are shown unless -q asked for warnings and errors only."""
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


@click.group(cls=ErrorReportingGroup, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
def cli(verbose: bool, quiet: bool) -> None:
    """Cell segmentation in cytology images: train a U-Net on annotated crops, evaluate it, and
    segment crops (masks + GeoJSON polygons)."""
    setup_logging("cyseg", verbosity(verbose, quiet))


@cli.command("train")
@click.argument("data", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Model file to write (.pt); metrics go beside it (<out>.history.csv/.json, <out>.curves.png).")
@click.option("--val", type=click.Path(path_type=Path), default=None,
              help="Validation dataset folder: IoU measured every epoch, the best epoch's model is kept. "
                   "[default: none, the last epoch is kept]")
@click.option("--epochs", type=int, default=30, show_default=True, help="Training epochs.")
@click.option("--steps-per-epoch", type=int, default=20, show_default=True, help="Optimiser steps per epoch.")
@click.option("--batch", type=int, default=8, show_default=True, help="Random crops per step.")
@click.option("--crop", type=int, default=256, show_default=True,
              help="Side of the random training crops (lowered to fit the smallest image).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate (cosine decay to 1%).")
@click.option("--n", type=int, default=16, show_default=True, help="U-Net filters at the first level.")
@click.option("--depth", type=int, default=5, show_default=True, help="U-Net levels (depth-1 down-samplings).")
@click.option("--upsampling", type=click.Choice(["transpose", "bilinear"]), default="transpose", show_default=True,
              help="Decoder up-sampling: transposed convolution or bilinear + 1x1 convolution.")
@click.option("--classes", type=int, default=1, show_default=True,
              help="1: binary masks (0/255); N>1: masks hold class indices 0..N-1.")
@click.option("--class-weights", default=None, help="Comma-separated loss weight per class. [default: equal]")
@click.option("--colour/--no-colour", default=False, show_default=True,
              help="Add stain/colour jitter to the method's flips, rotations and translations.")
@click.option("--translate", type=float, default=0.15, show_default=True, help="Random translation, fraction of the crop.")
@click.option("--threshold", type=float, default=0.5, show_default=True, callback=_threshold,
              help="Probability threshold stored in the model.")
@click.option("--erode-k", type=int, default=3, show_default=True, help="Post-processing erode-dilate kernel side.")
@click.option("--erode-iterations", type=int, default=1, show_default=True, help="Erode-dilate iterations (0: off).")
@click.option("--smoothing-k", type=int, default=3, show_default=True, help="Post-processing mean-filter side (1: off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, crops and augmentation.")
@click.option("--workers", type=int, default=1, show_default=True, help="DataLoader worker processes (0: in-process).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--name", default=None, help="A name and description stored in the model file. [default: the file stem]")
@click.option("--resume", is_flag=True, help="Continue from <out>.ckpt, the checkpoint written after every epoch.")
@click.option("--no-amp", is_flag=True, help="Disable mixed precision on CUDA.")
def train_command(data: Path, out: Path, val: Path | None, no_amp: bool, **kwargs) -> None:
    """Train a U-Net on the dataset folder DIR (images/, masks/)."""
    from cyseg.train_cmd import run_train

    run_train(data, out, val, amp=not no_amp, progress=_progress(), **kwargs)
    click.echo(str(out))


@cli.command("evaluate")
@click.argument("model")
@click.argument("data", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report folder (per_image.csv, summary.json, sweep.csv, sweep.png, overlays/). "
                   "[default: eval-<DIR name> in the current folder]")
@click.option("--threshold", type=float, default=None, callback=_threshold,
              help="Threshold to report. [default: the model's]")
@click.option("--sweep/--no-sweep", default=True, show_default=True, help="Also score thresholds 0.1 to 0.9.")
@click.option("--overlays", is_flag=True,
              help="Write one figure per crop: crop | crop+truth | crop+prediction | truth | errors "
                   "(false positives red, false negatives blue).")
@click.option("--tile", type=int, default=DEFAULT_TILE, show_default=True,
              help="Images larger than this run tile by tile.")
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True,
              help="Minimum overlap between tiles (blended).")
@click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True, help="Tiles per forward pass.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def evaluate_command(model: str, data: Path, out: Path | None, threshold: float | None, sweep: bool,
                     overlays: bool, tile: int, overlap: int, batch: int, device: str) -> None:
    """Score MODEL on the annotated dataset folder DIR: per-image IoU and Dice, mean and std."""
    from cyseg.evaluate_cmd import run_evaluate

    seg = _load(model, device)
    seg.inference.update(tile=tile, overlap=overlap, batch=batch)
    out = out or Path(f"eval-{data.resolve().name}")
    report = run_evaluate(seg, data, out, threshold, sweep, overlays, progress=_progress())
    click.echo(f"IoU {report['iou_mean']:.4f} ± {report['iou_std']:.4f}  Dice {report['dice_mean']:.4f} ± "
               f"{report['dice_std']:.4f}  ({report['n_images']} images, threshold {report['model_threshold']})")
    click.echo(str(out))


@cli.command("segment")
@click.argument("model")
@click.argument("sources", metavar="INPUT...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Crops: output folder (masks/, geojson/, overlays/), required. Slides: the GeoJSON file for "
                   "one slide, or a folder for several. [default: <slide name>.geojson for slides]")
@click.option("--threshold", type=float, default=None, callback=_threshold, help="[default: the model's]")
@click.option("--tile", type=int, default=DEFAULT_TILE, show_default=True,
              help="Inference tile side; larger inputs run tile by tile.")
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True,
              help="Minimum overlap between tiles (blended, so no seams).")
@click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True, help="Tiles per forward pass.")
@click.option("--simplify", type=float, default=0.5, show_default=True,
              help="Polygon simplification tolerance in pixels, applied after merging (0: exact pixel outlines).")
@click.option("--min-area", type=float, default=0.0, show_default=True, help="Drop polygons smaller than this (px²).")
@click.option("--overlays/--no-overlays", default=True, show_default=True,
              help="Crops: also write the masks drawn over the images.")
@click.option("--as-slide", is_flag=True,
              help="Treat plain PNG/JPEG/TIFF inputs as slides (whole-slide engine, one GeoJSON each).")
@click.option("--window", default=None, metavar="X,Y,W,H",
              help="Slides: segment only this box (level-0 pixels, top-left origin). [default: whole slide]")
@click.option("--window-size", type=int, default=4096, show_default=True,
              help="Slides: side of the windows, the unit of work cached and sent to Dask workers.")
@click.option("--window-overlap", type=int, default=256, show_default=True,
              help="Slides: overlap between windows; polygons meeting across windows are merged (SLDC).")
@click.option("--mpp", type=float, default=None,
              help="Slides: process at this resolution (microns per pixel), read from the nearest pyramid level. "
                   "[default: level 0]")
@click.option("--magnification", type=float, default=None, help="Slides: process at this objective power, e.g. 20. [default: level 0]")
@click.option("--skip-background/--no-skip-background", default=True, show_default=True,
              help="Slides: segment only tiles with tissue/cells in a low-resolution mask (Otsu on saturation "
                   "and optical density).")
@click.option("--tissue-margin", type=int, default=32, show_default=True,
              help="Slides: tiles within this many pixels of detected tissue are segmented too.")
@click.option("--mask-out", type=click.Path(path_type=Path), default=None,
              help="Slides: also write a low-resolution mask PNG (1/16 of level 0); a folder for several slides. [default: none]")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Slides: start a Dask LocalCluster with this many worker processes (0: in-process).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Slides: send windows to the Dask cluster at this address (e.g. tcp://host:8786); workers need "
                   "cyseg and the same model and slide paths. [default: none]")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Slides: folder of finished windows; a rerun skips them. [default: .cyseg-cache beside --out]")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def segment_command(model: str, sources: tuple[Path, ...], out: Path | None, threshold: float | None, tile: int,
                    overlap: int, batch: int, simplify: float, min_area: float, overlays: bool, as_slide: bool,
                    window: str | None, window_size: int, window_overlap: int, mpp: float | None,
                    magnification: float | None, skip_background: bool, tissue_margin: int, mask_out: Path | None,
                    workers: int, scheduler: str | None, cache: Path | None, device: str) -> None:
    """Segment INPUT with MODEL ('default' for the model shipped with cyseg).

    INPUT is a folder of crops (or a dataset folder), a single crop (PNG/JPEG), or one or more
    whole-slide files (SVS, NDPI, MRXS, SCN, DICOM, tiled TIFF; plain images with --as-slide).
    Crops give masks and GeoJSON per image; slides give one GeoJSON per slide in level-0 pixel
    coordinates (QuPath opens it), with polygons merged across tiles and windows.
    """
    from cyseg.models import resolve_model
    from cyseg.segment_cmd import is_slide, run_segment_crops

    slides = [p for p in sources if is_slide(p, as_slide or window is not None)]
    if slides and len(slides) != len(sources):
        raise CysegError("mix of crop and slide inputs; segment folders of crops and slides in separate calls")
    seg = _load(model, device)
    if slides:
        from cyseg.slide_cmd import run_segment_slides

        opts = {"tile": tile, "overlap": overlap, "batch": batch, "window_size": window_size,
                "window_overlap": window_overlap, "skip_background": skip_background,
                "tissue_margin": tissue_margin, "threshold": threshold, "simplify": simplify, "min_area": min_area}
        for summary in run_segment_slides(seg, resolve_model(model), slides, out, window, opts, mpp, magnification,
                                          workers, scheduler, device, cache, mask_out, progress=_progress()):
            click.echo(f"{summary['slide']}: {summary['tiles']} tiles, {summary['tiles_skipped']} skipped, "
                       f"{summary['polygons']} polygons, {summary['seconds']:.1f} s, {summary['mp_per_s']:.2f} MP/s")
        return
    if len(sources) != 1:
        raise CysegError("give one folder or crop at a time (several inputs are for slides)")
    if out is None:
        raise CysegError("--out is required for crops: give the output folder")
    run_segment_crops(seg, sources[0], out, threshold, simplify, min_area, overlays,
                      {"tile": tile, "overlap": overlap, "batch": batch}, progress=_progress())
    click.echo(str(out))


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True,
              help="Folder for the demo's masks, GeoJSON and overlay figure.")
@click.option("--model", default="default", show_default=True, help="Model file, or 'default' for the shipped one.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def demo_command(out: Path, model: str, device: str) -> None:
    """Segment real microscopy images shipped with scikit-image using the shipped model, end to end."""
    from cyseg.demo import run_demo

    for line in run_demo(_load(model, device), out, progress=_progress()):
        click.echo(line)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    run_main(cli, "cyseg", argv)


if __name__ == "__main__":
    main()
