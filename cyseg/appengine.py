"""`python -m cyseg.appengine`: cyseg as a Cytomine App Engine task (descriptor.yml,
appengine.Dockerfile).

The App Engine runs the image's entry point with no arguments, no network and no credentials: the
slide and the parameters are files in /inputs, the results are expected in /outputs. The slide is
segmented by the whole-slide engine as `cyseg segment MODEL SLIDE` does (same options, same
defaults; an input left out means what leaving out the option means there), and each cell is
written as one GeoJSON geometry in Cytomine's frame of the image (origin bottom-left, y up: the
core stores task geometries as they come, and the official tasks flip y), with the cells' mean
probabilities in a second array, item for item. A missing or malformed input stops the run before
any work, with one line and exit status 2, and leaves /outputs untouched.
"""
from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cyseg.appengine_io import Bounds, image_file, read_boolean, read_number, write_arrays
from segmenter.base import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE
from segmenter.console import run_main, setup_logging
from segmenter.errors import CysegError

PROG = "cyseg-appengine"
INPUT_FOLDER = Path("/inputs")
OUTPUT_FOLDER = Path("/outputs")
CGROUP = Path("/sys/fs/cgroup")
PROBE = 256  # side of the region read to check that the slide decodes
IMAGE = "image"
NUMBERS = {"threshold": Bounds(geq=0, leq=1), "mpp": Bounds(gt=0), "min_area": Bounds(geq=0)}
BOOLEANS = ("tta",)
CELLS, PROBABILITIES = "cells", "probabilities"


@dataclass(frozen=True)
class TaskInputs:
    """The task's inputs, checked: the slide (a path `open_slide` reads) and its height (for the
    y flip), and the parameters (None: not given, so `cyseg segment`'s default)."""

    slide: Path
    height: int
    threshold: float | None
    tta: bool
    mpp: float | None
    min_area: float | None


def read_inputs(folder: Path, work: Path) -> TaskInputs:
    """Read and check every input, so that a bad one fails the run before any work: the slide is
    opened and a corner of its smallest level decoded, the resolution asked for checked against it."""
    from segmenter.wsi.readers import open_slide

    numbers = {name: read_number(folder, name, bounds) for name, bounds in NUMBERS.items()}
    flags = {name: read_boolean(folder, name) for name in BOOLEANS}
    slide = image_file(folder, IMAGE, work)
    try:
        with open_slide(slide) as reader:
            if numbers["mpp"] is not None:
                reader.downsample_for(mpp=numbers["mpp"])
            smallest = reader.level_count - 1  # a truncated file most often lacks its last level
            level_width, level_height = reader.level_dimensions[smallest]
            reader.read(0, 0, min(level_width, PROBE), min(level_height, PROBE), smallest)
            height = reader.height
    except CysegError as exc:  # named by the input, not by the link made for the reader
        raise CysegError(f"input {IMAGE}: {str(exc).replace(str(slide), str(folder / IMAGE))}") from None
    return TaskInputs(slide, height, numbers["threshold"], bool(flags["tta"]), numbers["mpp"], numbers["min_area"])


def slide_options(inputs: TaskInputs) -> dict[str, Any]:
    """The whole-slide engine's options: `cyseg segment`'s defaults, with the task's threshold,
    TTA and minimum area (None: the model's threshold, and its smallest object)."""
    return {"tile": DEFAULT_TILE, "overlap": DEFAULT_OVERLAP, "batch": DEFAULT_BATCH, "tta": inputs.tta, "amp": True,
            "window_size": 4096, "window_overlap": 256, "skip_background": True, "tissue_margin": 64,
            "threshold": inputs.threshold, "simplify": 0.5, "min_area": inputs.min_area}


def cytomine_cells(geojson: Path, height: int) -> tuple[list[str], list[str]]:
    """The cells of the engine's GeoJSON (top-left origin) as App Engine array items: one GeoJSON
    geometry each, y flipped into Cytomine's bottom-left frame, and their mean probabilities."""
    from shapely.geometry import mapping, shape

    from segmenter.cytomine.geometry import flip_y

    features = json.loads(geojson.read_text())["features"]
    cells = [json.dumps(mapping(flip_y(shape(f["geometry"]), height))) for f in features]
    probabilities = [repr(float(f["properties"]["mean_probability"])) for f in features]
    return cells, probabilities


def run_task(inputs_folder: Path, outputs_folder: Path, model: str = "default", device: str = "auto",
             progress: bool = False) -> dict[str, Any]:
    """Read the inputs, segment the slide, write the outputs; returns the engine's summary."""
    with tempfile.TemporaryDirectory(prefix="cyseg-task-") as tmp:
        work = Path(tmp)
        inputs = read_inputs(inputs_folder, work)
        geojson, summary = segment(inputs, work, model, device, progress)
        cells, probabilities = cytomine_cells(geojson, inputs.height)
        write_arrays(outputs_folder, {CELLS: cells, PROBABILITIES: probabilities})
    return summary


def segment(inputs: TaskInputs, work: Path, model: str, device: str, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Segment the slide as `cyseg segment MODEL SLIDE --out work/cells.geojson` does; returns the
    GeoJSON and the engine's summary. torch and the model load only here, after the inputs passed."""
    from cyseg.models import resolve_model
    from cyseg.slide_cmd import run_segment_slides
    from segmenter.allocator import freeze_loaded_objects
    from unet import load_segmenter

    fit_threads_to_cpu_limit()
    model_path = resolve_model(model)
    seg = load_segmenter(model_path, device=device)
    freeze_loaded_objects()
    geojson = work / "cells.geojson"
    [summary] = run_segment_slides(seg, model_path, [inputs.slide], geojson, None, slide_options(inputs), inputs.mpp,
                                   None, 0, None, device, work / "cache", None, progress=progress)
    return geojson, summary


def cpu_limit(root: Path = CGROUP) -> int | None:
    """Whole CPUs the container's cgroup allows (cgroup v2 `cpu.max`, else v1 CFS quota), or None
    when unlimited or unknown. The App Engine turns `resources.cpus` into a Kubernetes CPU limit,
    which torch does not see: it sizes its thread pool by the host's cores, and a pool larger than
    the quota spends its time throttled."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return max(1, math.floor(int(quota) / int(period)))


def fit_threads_to_cpu_limit(root: Path = CGROUP) -> None:
    """Use at most as many torch threads as the container may run on CPUs at once."""
    import torch

    limit = cpu_limit(root)
    if limit is not None and limit < torch.get_num_threads():
        torch.set_num_threads(limit)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--inputs", "inputs_folder", type=click.Path(path_type=Path), default=INPUT_FOLDER,
              show_default=True, help="The App Engine's input folder (descriptor: configuration.input_folder).")
@click.option("--outputs", "outputs_folder", type=click.Path(path_type=Path), default=OUTPUT_FOLDER,
              show_default=True, help="The App Engine's output folder (descriptor: configuration.output_folder).")
@click.option("--model", default="default", envvar="CYSEG_MODEL", show_default=True,
              help="Model file; 'default' is the model shipped with cyseg (also read from $CYSEG_MODEL).")
@click.option("--device", default="auto", show_default=True,
              help="Where to compute: auto (CUDA GPU when available, else CPU), cpu, cuda or cuda:N.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.version_option(package_name="cyseg", prog_name=PROG, message="%(prog)s %(version)s")
def task_command(inputs_folder: Path, outputs_folder: Path, model: str, device: str, quiet: bool) -> None:
    """Segment the slide of a Cytomine App Engine task run: read INPUTS/image and the optional
    parameters (threshold, tta, mpp, min_area), write OUTPUTS/cells and OUTPUTS/probabilities."""
    setup_logging(PROG, logging.WARNING if quiet else logging.INFO)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # a damaged TIFF's complaints: the error line says it
    summary = run_task(inputs_folder, outputs_folder, model, device, progress=sys.stderr.isatty())
    click.echo(f"{summary['polygons']} cells, {summary['tiles']} tiles ({summary['tiles_skipped']} skipped as "
               f"background), {summary['seconds']:.1f} s -> {outputs_folder}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the App Engine image: bad inputs are reported as one line, exit status 2."""
    run_main(task_command, PROG, argv)


if __name__ == "__main__":
    main()
