"""The `cyseg` command line (DESIGN §7): train, evaluate, segment, demo.

A thin layer over `cyseg.*_cmd` modules. Errors caused by the user's input are printed as one
line, `cyseg: error: <message>`, with exit status 2.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from segmenter.allocator import freeze_loaded_objects, keep_freed_memory
from segmenter.base import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE
from segmenter.console import ErrorReportingGroup, run_main, setup_logging, verbosity
from segmenter.cytomine.generations import CHOICES as GENERATION_CHOICES
from segmenter.errors import CysegError
from segmenter.planning import DEFAULT_CROP

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEVICE_HELP = "Where to compute: auto (CUDA GPU when available, else CPU), cpu, cuda or cuda:N."
API_HELP = ("Cytomine: the server's generation -- legacy (Grails core), spring (Community Edition 2023-2025) or "
            "current (monorepo core, 2025-12 on); auto: found when connecting.")
TTA_HELP = "Test-time augmentation: average each tile over its 8 rotations/reflections (8x the compute)."
AMP_HELP = ("Run the network in the device's native reduced precision: float16 on CUDA, bfloat16 on CPUs with "
            "AVX512-BF16 or AMX (about 2x faster), float32 elsewhere. --no-amp: float32 everywhere.")


def _load(model: str, device: str, tta: bool | None = None):
    """The model MODEL names; with `tta` (how it will predict), a note when its settings were chosen otherwise."""
    from cyseg.models import resolve_model
    from segmenter.recalibrate import note_settings_view
    from unet import load_segmenter

    seg = load_segmenter(resolve_model(model), device=device)
    freeze_loaded_objects()
    if tta is not None:
        note_settings_view(seg, tta)
    return seg


def _threshold(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    # a CysegError, not click.BadParameter: reported as one line like every other input error
    if value is not None and not 0.0 <= value <= 1.0:
        raise CysegError(f"--threshold {value} is outside [0, 1]; choose e.g. 0.5")
    return value


def _train_threshold(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """A number in [0, 1], or None for 'auto' (calibrated on --val)."""
    if value == "auto":
        return None
    try:
        number = float(value)
    except ValueError as exc:
        raise CysegError(f"--threshold {value!r} must be a number in [0, 1] or auto") from exc
    return _threshold(ctx, param, number)


def _at_least_one(name: str, number: int) -> int:
    if number < 1:
        raise CysegError(f"--{name} must be >= 1 or auto (got {number})")
    return number


def _not_negative(name: str, number: float) -> float:
    if number < 0:
        raise CysegError(f"--{name.replace('_', '-')} must be >= 0 or auto (got {number:g})")
    return number


def _working_resolution(name: str, number: float) -> float:
    from segmenter.resolution import check_resolution

    return check_resolution(number)


def _auto_or(kind: type, check: Callable[[str, Any], Any]):
    """A click callback for options that take a number or 'auto' (planned from the data): None for
    auto, else the number of type `kind` passed through `check(option name, number)`."""

    def convert(ctx: click.Context, param: click.Parameter, value: str):
        if value == "auto":
            return None
        try:
            number = kind(value)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise CysegError(f"--{param.name} {value!r} must be {what} or auto") from None
        return check(param.name, number)

    return convert


def _training_loop_options(command: Callable) -> Callable:
    """The options `train` and `improve` share, declared once: the optimiser loop (steps, batch,
    learning rate) and the augmentation added to the method's flips, rotations and translations."""
    options = [
        click.option("--steps-per-epoch", type=int, default=20, show_default=True, help="Optimiser steps per epoch."),
        click.option("--batch", type=int, default=8, show_default=True, help="Random crops per step."),
        click.option("--lr", type=float, default=1e-3, show_default=True,
                     help="Adam learning rate (cosine decay to 1%)."),
        click.option("--colour/--no-colour", default=False, show_default=True,
                     help="Add stain/colour jitter to the method's flips, rotations and translations."),
        click.option("--zoom", type=float, default=0.0, show_default=True,
                     help="Scale augmentation: each crop is magnified by a factor drawn log-uniformly in "
                          "[1/(1+Z), 1+Z] (0.4: 0.71-1.4x), so the model meets objects at other scanning "
                          "magnifications. 0: off, as in the method."),
        click.option("--elastic/--no-elastic", default=False, show_default=True,
                     help="Add smooth random warps (elastic deformation, a few pixels at the working "
                          "resolution) to the method's flips, rotations and translations; off: as in the method."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _cytomine_client_options(command: Callable) -> Callable:
    """The options `segment` and `suggest` share to reach a Cytomine server and upload to it."""
    options = [
        click.option("--cytomine-config", type=click.Path(path_type=Path), default=None, metavar="FILE",
                     help="Cytomine: JSON file with host, public_key, private_key. [default: the environment "
                          "variables]"),
        click.option("--insecure", is_flag=True,
                     help="Cytomine: do not verify the server's HTTPS certificate (unsafe)."),
        click.option("--cytomine-timeout", type=float, default=60.0, show_default=True,
                     help="Cytomine: seconds to wait for each answer (requests are retried with back-off)."),
        click.option("--upload-batch", type=int, default=100, show_default=True,
                     help="Cytomine: annotations per POST."),
        click.option("--cytomine-api", type=click.Choice(GENERATION_CHOICES), default="auto", show_default=True,
                     help=API_HELP),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _progress() -> bool:
    """Progress bars are shown unless -q asked for warnings and errors only."""
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


@click.group(cls=ErrorReportingGroup, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.version_option(package_name="cyseg", prog_name="cyseg", message="%(prog)s %(version)s")
def cli(verbose: bool, quiet: bool) -> None:
    """Cell segmentation in cytology images: train a U-Net on annotated crops, evaluate it, and
    segment crops (masks + GeoJSON polygons)."""
    setup_logging("cyseg", verbosity(verbose, quiet))
    keep_freed_memory()


@cli.command("train")
@click.argument("data", metavar="DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Model file to write (.pt); metrics go beside it (<out>.history.csv/.json, <out>.curves.png).")
@click.option("--val", type=click.Path(path_type=Path), multiple=True,
              help="Validation dataset folder (repeatable): IoU measured every epoch (per class, on the folders that "
                   "annotate it), the best epoch's model is kept. [default: none, the last epoch is kept]")
@click.option("--epochs", default="auto", show_default=True,
              callback=_auto_or(int, _at_least_one), metavar="N|auto",
              help="Training epochs; auto: 30 at the default 256-px crop, more when the crop is smaller (small "
                   "images, lower --resolution), so every run sees as many pixels and costs about the same time.")
@_training_loop_options
@click.option("--translate", type=float, default=0.15, show_default=True,
              help="Random translation, fraction of the crop.")
@click.option("--balance/--no-balance", default=False, show_default=True,
              help="Draw training crops from every DIR equally often (within a DIR, by image area), so a small "
                   "data set weighs as much as a large one; off: every image by its area.")
@click.option("--crop", type=int, default=DEFAULT_CROP, show_default=True,
              help="Side of the random training crops (lowered to the largest image's shorter side when all "
                   "images are smaller; smaller images are mirror-padded).")
@click.option("--n", type=int, default=16, show_default=True, help="U-Net filters at the first level.")
@click.option("--depth", type=int, default=5, show_default=True, help="U-Net levels (depth-1 down-samplings).")
@click.option("--upsampling", type=click.Choice(["transpose", "bilinear"]), default="transpose", show_default=True,
              help="Decoder up-sampling: transposed convolution or bilinear + 1x1 convolution.")
@click.option("--classes", default=None, metavar="NAMES",
              help="Classes the model predicts, comma-separated: cell (whole cell or cell group) and/or nucleus; "
                   "each DIR must declare some of them in its dataset.json (\"classes\"), and a class a DIR does not "
                   "declare is unknown there, not background. [default: every class the DIRs declare; none "
                   "declared: one unnamed foreground, 0/255 masks]")
@click.option("--class-weights", default=None,
              help="Comma-separated loss weight per class, in the order cell, nucleus. [default: equal]")
@click.option("--instances", is_flag=True,
              help="Also learn to separate touching objects: one output channel per class with instance labels "
                   "(masks_instance/ in the DIRs) regresses the distance to the object's boundary, and segment "
                   "splits touching objects around the cores it marks (core level chosen on --val). [default: off, "
                   "objects are the masks' connected regions]")
@click.option("--contours", is_flag=True,
              help="With --instances: also learn each such class's contour band (DCAN, Chen et al. 2016), one more "
                   "output channel per class; the markers that split touching objects may then be the cores the "
                   "contours cut instead of the distance's peaks (chosen on --val): cores do not split irregular "
                   "objects such as glands at their narrow waists, as peaks can. [default: off]")
@click.option("--gap-weight", type=float, default=0.0, show_default=True, metavar="W",
              help="With --instances: weigh the background between touching objects up to 1+W in the class loss "
                   "(U-Net's weight map, Ronneberger et al. 2015: W exp(-(d1+d2)^2 / 2 sigma^2), d1, d2 the distances "
                   "to the two nearest objects, sigma 5 px at the working resolution), so the narrow gaps that keep "
                   "touching objects apart are learnt. 0: unweighted, as in the method.")
@click.option("--distance-cap", type=float, default=0.0, show_default=True, metavar="PX",
              help="With --instances: the distance target (1 at an object's centre, 0 at its edge) saturates at "
                   "this many pixels from the edge, at the working resolution: an object wider than the network sees "
                   "(a large gland, a cell group) is then one plateau, not a centre the network cannot locate and "
                   "splits it around. A quarter of the receptive field (50 px at depth 5) fits. 0: off, every object "
                   "is scaled to its own centre.")
@click.option("--resolution", default="auto", show_default=True,
              callback=_auto_or(float, _working_resolution), metavar="R|auto",
              help="Resolution the network works at, as a fraction of the images' (0.5: images are halved for "
                   "training and prediction; masks, scores and polygons stay at the images' resolution), times the "
                   "read_scale a DIR's dataset.json declares for up-sampled crops. auto: 1, "
                   "or lower when the annotated objects are larger than half the network's receptive field "
                   "(GlaS glands: 0.4, test Dice 0.83 -> 0.89); nuclei and cells stay at 1.")
@click.option("--threshold", default="auto", show_default=True, callback=_train_threshold, metavar="T|auto",
              help="Probability threshold stored in the model; auto: after training, the value of the sweep "
                   "0.1..0.9 with the best mean IoU on --val (without --val: on up to 64 training images).")
@click.option("--settings-from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="MODEL",
              help="Adopt MODEL's thresholds, instance separation and least object areas (chosen on its --val "
                   "images) instead of choosing them: the final refit on every annotated image, validation images "
                   "included, with the settings chosen before. MODEL must have the same classes. [default: none, "
                   "chosen after training]")
@click.option("--erode-k", type=int, default=3, show_default=True, help="Post-processing erode-dilate kernel side.")
@click.option("--erode-iterations", type=int, default=1, show_default=True, help="Erode-dilate iterations (0: off).")
@click.option("--smoothing-k", type=int, default=3, show_default=True,
              help="Post-processing mean-filter side (1: off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights, crops and augmentation.")
@click.option("--workers", type=int, default=1, show_default=True, help="DataLoader worker processes (0: in-process).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--name", default=None, help="A name and description stored in the model file. [default: the file stem]")
@click.option("--resume", is_flag=True,
              help="Continue from <out>.ckpt, the checkpoint written after every epoch, with the same options.")
@click.option("--resume-with-new-options", is_flag=True,
              help="Continue from <out>.ckpt although epochs, steps, batch, crop, learning rate or augmentation "
                   "differ from the interrupted run's (--resume refuses that).")
@click.option("--amp/--no-amp", default=True, show_default=True, help=AMP_HELP)
@click.pass_context
def train_command(ctx: click.Context, data: tuple[Path, ...], out: Path, val: tuple[Path, ...], amp: bool,
                  resume: bool, resume_with_new_options: bool, **kwargs) -> None:
    """Train a U-Net on the dataset folders DIR... (images/, masks/, dataset.json); several folders
    train one model, each class learnt from the folders that annotate it."""
    from cyseg.train_cmd import interrupted_message, run_train

    try:
        run_train(list(data), out, list(val), amp=amp, progress=_progress(), resume=resume or resume_with_new_options,
                  resume_with_new_options=resume_with_new_options, **kwargs)
    except KeyboardInterrupt:
        click.echo(f"cyseg: {interrupted_message(out)}", err=True)
        ctx.exit(130)
    click.echo(str(out))


def _prediction_options(command):
    """The tiling, precision and device options of the commands that predict annotated crops."""
    options = [click.option("--tile", type=int, default=DEFAULT_TILE, show_default=True,
                            help="Images larger than this run tile by tile."),
               click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True,
                            help="Minimum overlap between tiles (blended)."),
               click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True,
                            help="Tiles per forward pass."),
               click.option("--amp/--no-amp", default=True, show_default=True, help=AMP_HELP),
               click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)]
    for option in reversed(options):
        command = option(command)
    return command


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
@click.option("--tta", is_flag=True, help=TTA_HELP)
@_prediction_options
def evaluate_command(model: str, data: Path, out: Path | None, threshold: float | None, sweep: bool,
                     overlays: bool, tile: int, overlap: int, batch: int, tta: bool, amp: bool, device: str) -> None:
    """Score MODEL on the annotated dataset folder DIR: per-image IoU and Dice, mean and std."""
    from cyseg.evaluate_cmd import run_evaluate, summary_lines

    seg = _load(model, device, tta)
    seg.inference.update(tile=tile, overlap=overlap, batch=batch, tta=tta, amp=amp)
    out = out or Path(f"eval-{data.resolve().name}")
    report = run_evaluate(seg, data, out, threshold, sweep, overlays, progress=_progress())
    for line in summary_lines(report):
        click.echo(line)
    click.echo(str(out))


@cli.command("calibrate")
@click.argument("model")
@click.argument("data", metavar="DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Model file to write (.pt): MODEL's weights with the settings chosen on DIR.")
@click.option("--tta", is_flag=True,
              help="Choose the settings on predictions with test-time augmentation (the mean over the 8 "
                   "rotations/reflections, 8x the compute), for a model you will run with --tta: its smoother "
                   "probabilities want other thresholds and separation than the plain ones.")
@_prediction_options
def calibrate_command(model: str, data: tuple[Path, ...], out: Path, tta: bool, tile: int, overlap: int, batch: int,
                      amp: bool, device: str) -> None:
    """Choose MODEL's thresholds (best mean IoU of the sweep 0.1..0.9) and, for a model with instances, its
    separation and least object areas (best object F1, then PQ) on the annotated dataset folders DIR...,
    as 'cyseg train --val' does after training, without training: for a model run with --tta, or on
    images of your own lab. Give validation images, never the ones you will report scores on."""
    from cyseg.calibrate_cmd import run_calibrate, summary_lines

    seg = _load(model, device)
    seg.inference.update(tile=tile, overlap=overlap, batch=batch, amp=amp)
    record = run_calibrate(seg, data, out, tta)
    for line in summary_lines(seg, record):
        click.echo(line)
    click.echo(str(out))


@cli.command("segment")
@click.argument("model")
@click.argument("sources", metavar="INPUT...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Crops: output folder (masks/, geojson/, overlays/), required. Slides: the GeoJSON file for "
                   "one slide, or a folder for several. [default: <slide name>.geojson for slides]")
@click.option("--threshold", type=float, default=None, callback=_threshold, help="[default: the model's]")
@click.option("--tile", type=int, default=DEFAULT_TILE, show_default=True,
              help="Inference tile side; larger inputs run tile by tile.")
@click.option("--overlap", type=int, default=DEFAULT_OVERLAP, show_default=True,
              help="Minimum overlap between tiles (blended, so no seams).")
@click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True, help="Tiles per forward pass.")
@click.option("--tta", is_flag=True, help=TTA_HELP)
@click.option("--amp/--no-amp", default=True, show_default=True, help=AMP_HELP)
@click.option("--simplify", type=float, default=0.5, show_default=True,
              help="Polygon simplification tolerance in pixels, applied after merging (0: exact pixel outlines).")
@click.option("--min-area", default="auto", show_default=True, callback=_auto_or(float, _not_negative),
              metavar="AREA|auto",
              help="Drop polygons smaller than this (px², level-0 pixels for slides); auto: specks narrower than a "
                   "fifth of the typical object the model was trained on (0 when the model does not record it).")
@click.option("--overlays/--no-overlays", default=True, show_default=True,
              help="Crops: also write the masks drawn over the images.")
@click.option("--instances/--no-instances", default=True, show_default=True,
              help="Slides: with a model trained with --instances, one object per cell and nucleus (touching ones "
                   "separated, each kept whole by one window); --no-instances: each class's connected regions.")
@click.option("--allow-mismatch", is_flag=True,
              help="Segment inputs unlike the model's training images (another modality, e.g. a dark-background "
                   "fluorescence slide for a brightfield model, or a resolution far outside the trained range), "
                   "which are otherwise refused.")
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
@click.option("--magnification", type=float, default=None,
              help="Slides: process at this objective power, e.g. 20. [default: level 0]")
@click.option("--skip-background/--no-skip-background", default=True, show_default=True,
              help="Slides: segment only boxes around the tissue/cells of a tissue mask (Otsu on saturation "
                   "and optical density, learned on the slide's overview, 8 level-0 px per mask pixel).")
@click.option("--tissue-margin", type=int, default=64, show_default=True,
              help="Slides: background within this many pixels of detected tissue is segmented too, as the context "
                   "the network needs to predict the tissue's edge as it would inside the slide.")
@click.option("--mask-out", type=click.Path(path_type=Path), default=None,
              help="Slides: also write a low-resolution mask PNG (1/16 of level 0); a folder for several slides. "
                   "[default: none]")
@click.option("--workers", type=int, default=0, show_default=True,
              help="Slides: start a Dask LocalCluster with this many worker processes (0: in-process).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Slides: send windows to the Dask cluster at this address (e.g. tcp://host:8786); workers need "
                   "cyseg and the same model and slide paths. [default: none]")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Slides: folder of finished windows; a rerun skips them. [default: .cyseg-cache beside --out]")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--cytomine-image", type=int, default=None, metavar="ID",
              help="Segment this Cytomine image instance (read over HTTP) instead of INPUT; credentials from "
                   "--cytomine-config or CYTOMINE_HOST / CYTOMINE_PUBLIC_KEY / CYTOMINE_PRIVATE_KEY. "
                   "[default: none, INPUT is read]")
@click.option("--upload", is_flag=True,
              help="Cytomine: upload the polygons as annotations of the image (batches of --upload-batch; an "
                   "interrupted upload resumes without duplicates when rerun).")
@click.option("--term", "terms", multiple=True, metavar="ID|CLASS=ID",
              help="Cytomine: term given to uploaded annotations; for a model of several classes one CLASS=ID per "
                   "class (e.g. --term cell=12 --term nucleus=13; a cell's nucleus goes under the nucleus term). "
                   "[default: no term]")
@_cytomine_client_options
def segment_command(model: str, sources: tuple[Path, ...], out: Path | None, threshold: float | None, tile: int,
                    overlap: int, batch: int, tta: bool, amp: bool, simplify: float, min_area: float | None,
                    overlays: bool, instances: bool, allow_mismatch: bool,
                    as_slide: bool,
                    window: str | None, window_size: int, window_overlap: int, mpp: float | None,
                    magnification: float | None, skip_background: bool, tissue_margin: int, mask_out: Path | None,
                    workers: int, scheduler: str | None, cache: Path | None, device: str,
                    cytomine_image: int | None = None, upload: bool = False, terms: tuple[str, ...] = (),
                    cytomine_config: Path | None = None, insecure: bool = False, cytomine_timeout: float = 60.0,
                    upload_batch: int = 100, cytomine_api: str = "auto") -> None:
    """Segment INPUT with MODEL ('default' for the model shipped with cyseg).

    INPUT is a folder of crops (or a dataset folder), a single crop (PNG/JPEG), or one or more
    whole-slide files (SVS, NDPI, MRXS, SCN, DICOM, tiled TIFF; plain images with --as-slide).
    Crops give masks and GeoJSON per image; slides give one GeoJSON per slide in level-0 pixel
    coordinates (QuPath opens it), with polygons merged across tiles and windows. With
    --cytomine-image ID (and no INPUT) the slide is a Cytomine image read over HTTP, and --upload
    sends the polygons back as annotations of it.
    """
    from cyseg.models import resolve_model
    from cyseg.segment_cmd import is_slide, run_segment_crops

    tiling = {"tile": tile, "overlap": overlap, "batch": batch, "tta": tta, "amp": amp}
    slide_opts = {**tiling, "window_size": window_size, "window_overlap": window_overlap,
                  "skip_background": skip_background, "tissue_margin": tissue_margin, "threshold": threshold,
                  "simplify": simplify, "min_area": min_area, "instances": instances}
    if cytomine_image is not None:
        _segment_cytomine(model, sources, out, window, mpp, magnification, workers, scheduler, device, cache, mask_out,
                          cytomine_image, upload, terms, cytomine_config, insecure, cytomine_timeout, upload_batch,
                          slide_opts, cytomine_api, allow_mismatch)
        return
    if upload or terms:
        raise CysegError("--upload and --term need --cytomine-image ID (uploads go to a Cytomine image)")
    if not sources:
        raise CysegError("give INPUT (crops, a folder or slide files) or --cytomine-image ID")
    slides = [p for p in sources if is_slide(p, as_slide or window is not None)]
    if slides and len(slides) != len(sources):
        raise CysegError("mix of crop and slide inputs; segment folders of crops and slides in separate calls")
    seg = _load(model, device, tta)
    if slides:
        from cyseg.slide_cmd import run_segment_slides

        for summary in run_segment_slides(seg, resolve_model(model), slides, out, window, slide_opts, mpp,
                                          magnification, workers, scheduler, device, cache, mask_out,
                                          progress=_progress(), allow_mismatch=allow_mismatch):
            click.echo(_slide_line(summary))
        return
    if len(sources) != 1:
        raise CysegError("give one folder or crop at a time (several inputs are for slides)")
    if out is None:
        raise CysegError("--out is required for crops: give the output folder")
    run_segment_crops(seg, resolve_model(model), sources[0], out, threshold, simplify, min_area, overlays, tiling,
                      slide_opts, progress=_progress(), allow_mismatch=allow_mismatch)
    click.echo(str(out))


def _segment_cytomine(model: str, sources: tuple[Path, ...], out: Path | None, window: str | None,
                      mpp: float | None, magnification: float | None, workers: int, scheduler: str | None, device: str,
                      cache: Path | None, mask_out: Path | None, image: int, upload: bool, terms: tuple[str, ...],
                      config: Path | None, insecure: bool, timeout: float, upload_batch: int, opts: dict,
                      api: str = "auto", allow_mismatch: bool = False) -> None:
    """`segment --cytomine-image ID`: the whole-slide engine over HTTP, then the optional upload."""
    from cyseg.job import run_segment_cytomine
    from cyseg.models import resolve_model

    if sources:
        raise CysegError("give either INPUT files or --cytomine-image ID, not both")
    if terms and not upload:
        raise CysegError("--term applies to uploaded annotations; add --upload")
    seg = _load(model, device, opts["tta"])
    summary, results = run_segment_cytomine(seg, resolve_model(model), image, out, window, opts, mpp, magnification,
                                            workers, scheduler, device, cache, mask_out, upload, terms, config,
                                            insecure, timeout, upload_batch, progress=_progress(), api=api,
                                            allow_mismatch=allow_mismatch)
    click.echo(_slide_line(summary))
    for result in results:
        if not result.complete:
            raise CysegError(f"{result.summary()}; rerun the same command to resume")
        click.echo(result.summary())


def _slide_line(summary: dict[str, Any]) -> str:
    """The one line a whole-slide run prints."""
    objects = summary.get("objects") or {}
    found = f"{summary['polygons']} polygons" if len(objects) < 2 else \
        ", ".join(f"{n} {name} objects" for name, n in objects.items())
    kind = "instances" if summary.get("instances") else "regions"
    return (f"{summary['slide']}: {summary['tiles']} tiles, {summary['tiles_skipped']} skipped, "
            f"{found} ({kind}) covering {100 * summary['foreground_fraction']:.1f} % of the region, "
            f"{summary['seconds']:.1f} s, {summary['mp_per_s']:.2f} MP/s")


def _number(kind: type):
    """A click callback for descriptor values: '' (an input left empty) -> None; '512.0' -> 512."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None or str(value).strip() == "":
            return None
        try:
            number = float(value)
        except ValueError:
            raise CysegError(f"--{param.name} {value!r} must be a number") from None
        if kind is int:
            if number != int(number):
                raise CysegError(f"--{param.name} {value!r} must be a whole number")
            return int(number)
        return number

    return convert


def _boolean(ctx: click.Context, param: click.Parameter, value: str | None) -> bool:
    """A Cytomine Boolean input: true/false, yes/no or 1/0 in any case; empty is false."""
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "false", "no", "0"):
        return False
    if text in ("true", "yes", "1"):
        return True
    raise CysegError(f"--{param.name} {value!r} must be true or false")


@cli.command("job", context_settings={"ignore_unknown_options": False})
@click.argument("words", nargs=-1, metavar="[ENTRY WORDS]")
@click.option("--cytomine_host", metavar="URL", default=None,
              help="Cytomine URL (set by the server). [default: CYTOMINE_HOST]")
@click.option("--cytomine_public_key", metavar="KEY", default=None,
              help="Job user's public key (set by the server). [default: CYTOMINE_PUBLIC_KEY]")
@click.option("--cytomine_private_key", metavar="KEY", default=None,
              help="Job user's private key (set by the server). [default: CYTOMINE_PRIVATE_KEY]")
@click.option("--cytomine_id_project", metavar="ID", required=True, callback=_number(int),
              help="Project id (set by the server).")
@click.option("--cytomine_id_software", metavar="ID", default=None, callback=_number(int),
              help="Software id (set by the server; needed to create a job when run by a human user). [default: none]")
@click.option("--cytomine_id_images", metavar="IDS", default=None,
              help="Comma-separated image instance ids. [default: all images of the project]")
@click.option("--cytomine_id_roi_term", metavar="ID", default=None, callback=_number(int),
              help="Segment only the bounding boxes of the ROI annotations with this term. [default: whole images]")
@click.option("--cytomine_id_predicted_term", metavar="ID", default=None, callback=_number(int),
              help="Term given to the uploaded cell annotations. [default: no term]")
@click.option("--threshold", default=None, callback=_number(float), metavar="T",
              help="Probability threshold in [0, 1]. [default: the model's]")
@click.option("--tile_size", metavar="N", default=str(DEFAULT_TILE), show_default=True, callback=_number(int),
              help="Inference tile side.")
@click.option("--tile_overlap", metavar="N", default=str(DEFAULT_OVERLAP), show_default=True, callback=_number(int),
              help="Overlap between tiles (blended).")
@click.option("--batch_size", metavar="N", default=str(DEFAULT_BATCH), show_default=True, callback=_number(int),
              help="Tiles per forward pass.")
@click.option("--min_area", metavar="AREA", default=None, callback=_number(float),
              help="Drop polygons smaller than this (level-0 px²). [default: specks narrower than a fifth of the "
                   "typical object the model was trained on]")
@click.option("--window_size", metavar="N", default="4096", show_default=True, callback=_number(int),
              help="Side of the windows read from the server and cached (level-0 px).")
@click.option("--tta", metavar="true|false", default="false", show_default=True, callback=_boolean,
              help=TTA_HELP)
@click.option("--model_path", "--model", "model_path", default="default", metavar="FILE", show_default=True,
              help="Model file; 'default': $CYSEG_MODEL if set, else the model shipped with cyseg.")
@click.option("--cytomine-config", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="JSON file with host, public_key, private_key (instead of the flags). [default: the environment]")
@click.option("--insecure", is_flag=True, help="Do not verify the server's HTTPS certificate (unsafe).")
@click.option("--work_dir", type=click.Path(path_type=Path), default=None,
              help="Folder for GeoJSON outputs, window cache and upload journals; rerunning with the same folder "
                   "resumes. [default: $CYSEG_WORK_DIR, else ~/cyseg-job-<job id>]")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--timeout", "cytomine_timeout", default=60.0, type=float, show_default=True,
              help="Seconds to wait for each Cytomine answer.")
@click.option("--cytomine-api", type=click.Choice(GENERATION_CHOICES), default="auto", show_default=True,
              help=API_HELP + " The job API exists only on legacy cores.")
def job_command(words: tuple[str, ...], cytomine_host: str | None, cytomine_public_key: str | None,
                cytomine_private_key: str | None, cytomine_id_project: int | None, cytomine_id_software: int | None,
                cytomine_id_images: str | None, cytomine_id_roi_term: int | None,
                cytomine_id_predicted_term: int | None, threshold: float | None, tile_size: int, tile_overlap: int,
                batch_size: int, min_area: float | None, window_size: int, tta: bool, model_path: str,
                cytomine_config: Path | None, insecure: bool, work_dir: Path | None, device: str,
                cytomine_timeout: float, cytomine_api: str) -> None:
    """Entry point of the Cytomine software (descriptor.json): segment the project's images (or
    the given ones, or their ROIs) and upload the cells as annotations, reporting the job's
    status and progress to Cytomine. Leading words of the descriptor's command line (`cyseg
    job`) and placeholders of inputs left empty are ignored."""
    from cyseg.job import JobSettings, ignored_positionals, parse_ids, run_job

    ignored_positionals(words)
    if cytomine_id_project is None:
        raise CysegError("--cytomine_id_project is required")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise CysegError(f"--threshold {threshold} is outside [0, 1]; choose e.g. 0.5")
    if min_area is not None and min_area < 0:
        raise CysegError(f"--min_area {min_area:g} is not valid; give an area >= 0 or leave it empty")
    for name, value in (("tile_size", tile_size), ("tile_overlap", tile_overlap), ("batch_size", batch_size),
                        ("window_size", window_size)):
        if value is None or value < (0 if name == "tile_overlap" else 1):
            raise CysegError(f"--{name} {value} is not valid; give a positive whole number")
    raw = {"cytomine_id_images": cytomine_id_images, "cytomine_id_roi_term": cytomine_id_roi_term,
           "cytomine_id_predicted_term": cytomine_id_predicted_term, "threshold": threshold,
           "tile_size": tile_size, "tile_overlap": tile_overlap, "batch_size": batch_size, "min_area": min_area,
           "window_size": window_size, "model_path": model_path, "tta": tta}
    settings = JobSettings(cytomine_host, cytomine_public_key, cytomine_private_key, cytomine_id_project,
                           cytomine_id_software, parse_ids(cytomine_id_images, "--cytomine_id_images"),
                           cytomine_id_roi_term, cytomine_id_predicted_term, model_path, threshold, tile_size,
                           tile_overlap, batch_size, min_area, window_size, cytomine_config, insecure, work_dir,
                           device, cytomine_timeout, tta=tta, api=cytomine_api, raw=raw)
    click.echo(run_job(settings, progress_bar=_progress()))


@cli.command("info")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info_command(model: str, as_json: bool) -> None:
    """Describe MODEL ('default' for the shipped one): what it finds, what it was made for (modality,
    resolution, stains, data), its thresholds and how it separates touching objects."""
    import json

    from cyseg.info_cmd import card_lines, model_card
    from cyseg.models import resolve_model

    path = resolve_model(model)
    card = model_card(_load(model, "cpu"), path)
    click.echo(json.dumps(card, indent=2) if as_json else "\n".join(card_lines(card)))


@cli.command("export")
@click.argument("model")
@click.option("--onnx", "onnx_out", type=click.Path(path_type=Path), required=True,
              help="Write the model as ONNX here: RGB image (float 0-255, NCHW) in, probabilities out; checked "
                   "against the torch model with ONNX Runtime before it is written.")
def export_command(model: str, onnx_out: Path) -> None:
    """Export MODEL ('default' for the shipped one) to run outside cyseg (ONNX Runtime, other languages);
    its classes, thresholds and working resolution go in the file's metadata."""
    from skimage import data

    from cyseg.export_cmd import export_onnx
    from cyseg.models import resolve_model

    figures = export_onnx(_load(model, "cpu"), resolve_model(model), onnx_out, data.immunohistochemistry())
    click.echo(f"{onnx_out}: ONNX Runtime matches torch within {figures['max_abs_difference']:.1g} on a "
               f"{figures['checked_on'][0]}x{figures['checked_on'][1]} image")


@cli.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True,
              help="Folder for the demo's masks, GeoJSON and overlay figure.")
@click.option("--model", default="default", show_default=True, help="Model file, or 'default' for the shipped one.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
def demo_command(out: Path, model: str, device: str) -> None:
    """Segment real microscopy images shipped with scikit-image using the shipped model, end to end."""
    from cyseg.demo import run_demo
    from cyseg.models import resolve_model

    for line in run_demo(_load(model, device), resolve_model(model), out, progress=_progress()):
        click.echo(line)


@cli.command("improve")
@click.argument("data", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--iterations", type=int, required=True, help="IDI iterations K (train, predict, grow the masks).")
@click.option("--epochs", default="auto", show_default=True,
              callback=_auto_or(int, _at_least_one), metavar="N|auto",
              help="Training epochs per iteration; auto: as `cyseg train` (30 at a 256-px crop).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Run folder: iter<k>/ dataset versions (with added/ overlays), models/iter<k>.pt, "
                   "report.json, report.csv. Rerunning the same command continues it.")
@click.option("--model", "start", default=None,
              help="Model to start iteration 1 from ('default' for the shipped one). [default: fresh weights]")
@click.option("--val", type=click.Path(path_type=Path), default=None,
              help="Validation dataset: best epoch kept, IoU/Dice per iteration reported. [default: none]")
@click.option("--only-kind", type=click.Choice(["pattern", "cell", "roi"]), multiple=True,
              help="Grow only the masks of items of this dataset.json kind (repeatable); others are copied "
                   "unchanged. [default: all items]")
@click.option("--threshold", type=float, default=0.5, show_default=True, callback=_threshold,
              help="Threshold of the IDI post-processing (and of the models' own).")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Rescale each probability map min-max to [0, 1] before the chain and threshold, as the method "
                   "(fixed: a cut at min + t*(max - min), never below --min-probability).")
@click.option("--min-probability", type=float, default=None,
              help="With --normalize, the lowest probability level a map may be cut at. [default: threshold/2]")
@click.option("--mode", type=click.Choice(["objects", "or"]), default="objects", show_default=True,
              help="How predictions join the expert masks: objects, only predicted objects away from every "
                   "expert annotation, confident (--confidence) and within 1/32..32 times the expert objects' median "
                   "area (touching objects merge in a prediction); or, the method's "
                   "expert mask OR prediction (its false positives join the labels).")
@click.option("--confidence", default="auto", show_default=True, callback=_auto_or(float, lambda _name, number: number),
              metavar="P|auto",
              help="--mode objects: the least mean probability of an added object; auto: the model's own level on "
                   "the expert's objects (the lower quartile of their mean probabilities), as a model trained on "
                   "incomplete masks doubts every object.")
@click.option("--unsure", type=click.Choice(["background", "unknown"]), default="background", show_default=True,
              help="--mode objects: what the model predicted away from the expert annotations but the rule did not "
                   "add (not confident enough, outside the size range) is, for the next model, background; or "
                   "unknown, left out of its loss (written as unknown/ maps in the dataset version).")
@click.option("--early-stop/--no-early-stop", default=True, show_default=True,
              help="With --val: run the next iteration only while the validation IoU (objects the rule would add "
                   "there counted as unknown, not as false positives) is still rising.")
@click.option("--warm-start/--from-scratch", default=True, show_default=True,
              help="Start iteration k>1 from the previous iteration's model (the method), or from --model / fresh "
                   "weights.")
@_training_loop_options
@click.option("--crop", type=int, default=DEFAULT_CROP, show_default=True, help="Side of the random training crops.")
@click.option("--resolution", default="auto", show_default=True,
              callback=_auto_or(float, _working_resolution), metavar="R|auto",
              help="Working resolution of the network, as `cyseg train`; auto: the starting model's (--model, "
                   "or the previous iteration's with --warm-start), else planned from the annotated objects.")
@click.option("--n", type=int, default=None, help="U-Net filters at the first level. [default: 16, or --model's]")
@click.option("--depth", type=int, default=None, help="U-Net levels. [default: 5, or --model's]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of weights and crops (iteration k: seed+k-1).")
@click.option("--workers", type=int, default=1, show_default=True, help="DataLoader worker processes (0: in-process).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--amp/--no-amp", default=True, show_default=True, help=AMP_HELP)
def improve_command(data: Path, out: Path, start: str | None, val: Path | None, only_kind: tuple[str, ...],
                    amp: bool, **kwargs) -> None:
    """Iterative data improvement of the incompletely annotated dataset DIR: each iteration trains a
    U-Net on the current version, predicts every crop and writes a new version whose masks are the
    original annotation grown by the prediction (--mode; annotated pixels are never removed). Prints
    the best version's folder (by validation IoU with --val, else the last)."""
    from cyseg.improve import ImproveOptions, best_iteration, run_improve, stopped_early
    from cyseg.models import resolve_model

    opts = ImproveOptions(model=None if start is None else str(resolve_model(start)),
                          val=None if val is None else str(val), only_kind=only_kind, amp=amp,
                          progress=_progress(), **kwargs)
    rows = run_improve(data, out, opts)
    for row in rows:
        scores = "" if row["val_iou"] is None else f"  val IoU {row['val_iou']:.4f} Dice {row['val_dice']:.4f}"
        click.echo(f"iteration {row['iteration']}: foreground {row['fg_before']:.4f} -> {row['fg_after']:.4f}, "
                   f"{row['pixels_added']} px added to the annotation, {row['masks_changed']} masks changed{scores}")
    best = best_iteration(rows)
    if stopped_early(rows, opts):
        click.echo(f"stopped after iteration {len(rows)}: the validation IoU stopped rising; best iteration {best}")
    click.echo(str(out / f"iter{best}"))


@cli.command("suggest")
@click.argument("model")
@click.argument("source", required=False, type=click.Path(path_type=Path), metavar="[INPUT]")
@click.option("--count", type=int, required=True, help="How many images or tiles to suggest.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("suggestions"), show_default=True,
              help="Prefix of the outputs: <out>.csv (rank, box, scores) and <out>.geojson (the boxes; QuPath opens "
                   "it over the slide).")
@click.option("--size", type=int, default=1024, show_default=True,
              help="Slides: side of the square tiles suggested (level-0 pixels), on a grid over the tissue.")
@click.option("--max-candidates", "limit", type=int, default=300, show_default=True,
              help="Slides: score at most this many tissue tiles (a seeded sample of them when there are more); "
                   "slides and folders: describe at most this many of the annotated tiles or images.")
@click.option("--views", type=int, default=4, show_default=True,
              help="Symmetries of the square (2-8) each candidate is predicted under; the cost is one prediction "
                   "per view.")
@click.option("--measure", type=click.Choice(["tta", "entropy"]), default="tta", show_default=True,
              help="Uncertainty: tta, how much the views' probabilities disagree (their standard deviation); "
                   "entropy, the binary entropy of their mean.")
@click.option("--uncertainty-weight", type=float, default=1.0, show_default=True,
              help="How much uncertainty steers the choice: each candidate counts, in the coverage the picks "
                   "maximise, as its uncertainty to this power (0: every candidate alike, the picks most typical of "
                   "the pool and unlike each other and the annotated images; 1: the pool's uncertainty covered).")
@click.option("--density-weight", type=float, default=0.0, show_default=True,
              help="How much typicality steers the choice: each candidate also counts as its mean likeness to every "
                   "image to this power (0: however typical; higher: the pool's crowded regions before its sparse "
                   "fringe).")
@click.option("--annotated", type=click.Path(path_type=Path), default=None,
              help="Local slides: GeoJSON of the regions annotated already; tiles touching them are not suggested. "
                   "[default: none; in a dataset folder the images with a mask are the annotated ones]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the candidate sample.")
@click.option("--mpp", type=float, default=None,
              help="Slides: process at this resolution (microns per pixel). [default: level 0]")
@click.option("--magnification", type=float, default=None,
              help="Slides: process at this objective power, e.g. 20. [default: level 0]")
@click.option("--allow-mismatch", is_flag=True,
              help="Score inputs unlike the model's training images (another modality or resolution).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--cytomine-image", type=int, default=None, metavar="ID",
              help="Suggest tiles of this Cytomine image instead of INPUT, away from its existing annotations; "
                   "credentials as for segment. [default: none, INPUT is read]")
@click.option("--upload", is_flag=True,
              help="Cytomine: add the suggested boxes to the image as ROI annotations with --term (journalled: a "
                   "rerun resumes without duplicates); `cydata download --json` then fetches what experts draw.")
@click.option("--term", type=int, default=None, metavar="ID",
              help="Cytomine: the ROI term of uploaded suggestions. [default: none; required with --upload]")
@_cytomine_client_options
def suggest_command(model: str, source: Path | None, count: int, out: Path, size: int, limit: int, views: int,
                    measure: str, uncertainty_weight: float, density_weight: float, annotated: Path | None, seed: int,
                    mpp: float | None, magnification: float | None, allow_mismatch: bool, device: str,
                    cytomine_image: int | None, upload: bool, term: int | None, cytomine_config: Path | None,
                    insecure: bool, cytomine_timeout: float, upload_batch: int, cytomine_api: str) -> None:
    """Suggest what to annotate next: the COUNT images of INPUT (a folder; in a dataset folder those
    without a mask) or tissue tiles of a slide (INPUT, or --cytomine-image ID) that together resemble
    most of the others not yet annotated, each counted by the model's uncertainty there (typical of
    what is left, unlike each other and unlike the images annotated already)."""
    from cyseg.models import resolve_model
    from cyseg.suggest_cmd import SuggestOptions, run_suggest_cytomine, run_suggest_local

    opts = SuggestOptions(count, size, limit, views, measure, seed, mpp, magnification, allow_mismatch,
                          uncertainty_weight, density_weight).check()
    if cytomine_image is not None:
        if source is not None:
            raise CysegError("give either INPUT or --cytomine-image ID, not both")
        chosen, csv_path, geojson_path, result = run_suggest_cytomine(
            _load(model, device), resolve_model(model), cytomine_image, out, opts, upload, term, cytomine_config,
            insecure, cytomine_timeout, upload_batch, cytomine_api, progress=_progress())
        if result is not None:
            click.echo(result.summary())
    else:
        if upload or term is not None:
            raise CysegError("--upload and --term need --cytomine-image ID (ROIs go to a Cytomine image)")
        if source is None:
            raise CysegError("give INPUT (a folder of images or a slide file) or --cytomine-image ID")
        chosen, csv_path, geojson_path = run_suggest_local(_load(model, device), source, out, opts, annotated,
                                                           progress=_progress())
    click.echo(f"{len(chosen)} suggestion(s): {csv_path}, {geojson_path}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    run_main(cli, "cyseg", argv)


if __name__ == "__main__":
    main()
