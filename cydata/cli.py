"""The `cydata` command line: dataset preparation (DESIGN §7).

A thin layer: one click command per module function. Errors caused by the user's input
(`CysegError`) are printed as one line, `cydata: error: <message>`, with exit status 2.
"""
from __future__ import annotations

import click

from segmenter.console import ErrorReportingGroup, run_main, setup_logging, verbosity
from segmenter.cytomine.generations import CHOICES as GENERATION_CHOICES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("cydata", cls=ErrorReportingGroup, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.version_option(package_name="cyseg", prog_name="cydata", message="%(prog)s %(version)s")
def cli(verbose: bool, quiet: bool) -> None:
    """Prepare cell-segmentation datasets: folders of images/<name>.png, masks/<name>.png and dataset.json.

    Every command writes a NEW folder (built under a temporary name and renamed into place when
    complete); inputs are never modified and existing folders are never overwritten.
    """
    setup_logging("cydata", verbosity(verbose, quiet))


@cli.command("split")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=str))
@click.option("--train", "train", type=float, default=0.8, show_default=True,
              help="Fraction of the items that go to the training side; round(train*N) items, strictly between 0 "
                   "and 1.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random shuffle; the same seed and data give the same split.")
@click.option("--by-slide", is_flag=True, default=False, show_default=True,
              help="Keep every slide on one side only (slide id = 'slide' or 'image_id' of each item in dataset.json); "
                   "whole slides are added to the training side until it reaches the ratio.")
@click.option("--out-train", type=click.Path(path_type=str), default=None, show_default="<DIR>_train beside DIR",
              help="Training dataset folder to create; must not exist.")
@click.option("--out-test", type=click.Path(path_type=str), default=None, show_default="<DIR>_test beside DIR",
              help="Test dataset folder to create; must not exist.")
def split_command(directory: str, train: float, seed: int, by_slide: bool, out_train: str | None,
                  out_test: str | None) -> None:
    """Split the dataset DIR into new training and test datasets (files copied unchanged)."""
    from cydata.split import split_dataset

    train_dir, test_dir = split_dataset(directory, train=train, seed=seed, by_slide=by_slide,
                                        out_train=out_train, out_test=out_test)
    click.echo(f"{train_dir}\n{test_dir}")


@cli.command("augment")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=str))
@click.option("--steps", type=int, required=True,
              help="Augmented copies to make of every item (>= 1); the output holds N*(steps+1) items.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the augmenter; the same seed and data give the same copies.")
@click.option("--colour/--no-colour", default=False, show_default=True,
              help="Also vary stain and colour (H&E stain, brightness/contrast/saturation/hue jitter, blur) "
                   "besides the method's flips, 90-degree rotations and +-15% translations.")
@click.option("--out", type=click.Path(path_type=str), default=None, show_default="<DIR>_aug beside DIR",
              help="Dataset folder to create; must not exist.")
def augment_command(directory: str, steps: int, seed: int, colour: bool, out: str | None) -> None:
    """Write a new dataset with the items of DIR plus STEPS augmented copies of each (<name>_aug1 ...).

    Masks stay binary 0/255 and aligned with their images; each copy records its source item and
    keeps the source's slide and kind, so 'cydata split --by-slide' still works on the result.
    """
    from cydata.augment import augment_dataset

    click.echo(augment_dataset(directory, steps=steps, seed=seed, colour=colour, out=out))


@cli.command("convert")
@click.argument("thesis_dir", metavar="THESIS_DIR", type=click.Path(file_okay=False, path_type=str))
@click.option("--out", type=click.Path(path_type=str), required=True,
              help="Dataset folder to create; must not exist.")
def convert_command(thesis_dir: str, out: str) -> None:
    """Convert the thesis layout into a dataset folder.

    THESIS_DIR is one flat folder of pairs <id>_x.jpg (RGB crop) and <id>_y.jpg (mask; .png pairs
    also work). Mask colours: white = cell (foreground); black and red (cell borders) = background;
    as the masks are JPEG, a pixel is foreground when its green channel is >= 128. Writes
    images/<id>.png and masks/<id>.png (0/255).
    """
    from cydata.convert import convert_thesis

    click.echo(convert_thesis(thesis_dir, out))


@cli.command("import")
@click.argument("inputs", metavar="IMAGE_OR_FOLDER...", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--annotations", required=True, type=click.Path(path_type=str),
              help="GeoJSON exported from QuPath (File > Export objects as GeoJSON), pixel coordinates of the full "
                   "resolution: one file when one image is given, else a folder holding <stem>.geojson (or "
                   "<name>.geojson, e.g. slide.svs.geojson) for every image.")
@click.option("--out", type=click.Path(path_type=str), required=True,
              help="Dataset folder to create; must not exist.")
@click.option("--size", type=int, default=512, show_default=True,
              help="Side of the crops over ROIs and around annotations, in full-resolution pixels.")
@click.option("--roi-class", "roi_classes", multiple=True, show_default="Region*",
              help="Class of the annotations that are regions of interest, every cell inside them annotated "
                   "(repeatable); each ROI is covered by crops of --size and gives no mask pixels.")
@click.option("--class", "classes", multiple=True, show_default="every class but the ROI classes",
              help="Class whose polygons are drawn (255) in the masks (repeatable); objects without a class are "
                   "'Unclassified'.")
@click.option("--max-image-side", type=int, default=4096, show_default=True,
              help="An image without ROIs whose longer side is at most this is one item, taken whole; on a "
                   "larger slide without ROIs one --size crop is centred on each foreground annotation.")
def import_command(inputs: tuple[str, ...], annotations: str, out: str, size: int, roi_classes: tuple[str, ...],
                   classes: tuple[str, ...], max_image_side: int) -> None:
    """Build a dataset from local images or slides and their annotations exported from QuPath as GeoJSON.

    IMAGE_OR_FOLDER: image files (PNG, JPEG, TIFF), slides (SVS, NDPI, MRXS, SCN, DICOM, tiled
    TIFF...) or folders of them. Crops: over each ROI, else the whole image, else centred on each
    annotation of a large slide. Masks: the foreground polygons rasterised at pixel centres, 0/255.
    dataset.json records, per item, the image file, the GeoJSON file, the crop box (full-resolution
    pixels, top-left origin), the kind (roi or cell) and the slide (the image's name, for 'cydata
    split --by-slide'); annotations outside their image, points and lines are skipped and listed.
    """
    from cydata.import_geojson import Options, import_geojson

    options = Options(size=size, roi_classes=roi_classes or Options.roi_classes, classes=classes,
                      max_image_side=max_image_side, roi_classes_given=bool(roi_classes))
    click.echo(import_geojson(inputs, annotations, out, options))


def cytomine_options(command):
    """The connection options shared by the commands that talk to Cytomine. The keys come only from
    the environment or the config file, never from the command line (where `ps` would show them)."""
    options = [
        click.option("--cytomine-config", type=click.Path(dir_okay=False, path_type=str), default=None,
                     show_default="CYTOMINE_HOST, CYTOMINE_PUBLIC_KEY, CYTOMINE_PRIVATE_KEY from the environment",
                     help="JSON file with host, public_key and private_key (values missing from it are taken "
                          "from the environment variables). The keys are never printed or logged."),
        click.option("--insecure", is_flag=True, default=False, show_default=True,
                     help="Do not verify the server's HTTPS certificate (self-signed test servers only)."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
                     help="Seconds to wait for each answer of the server before the request counts as failed "
                          "(and is retried)."),
        click.option("--retries", type=click.IntRange(min=0), default=4, show_default=True,
                     help="Retries of a failed request (server error, timeout, dropped connection), with "
                          "exponential back-off; new annotations are never re-sent."),
        click.option("--cytomine-api", type=click.Choice(GENERATION_CHOICES), default="auto",
                     show_default=True,
                     help="The server's generation: legacy (Grails core), spring (Community Edition 2023-2025) or "
                          "current (monorepo core, 2025-12 on); auto: found when connecting (or the config file's "
                          "\"api\")."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command("download")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Cytomine annotation report (CSV export, ';'-separated, header row): one crop centred on each "
                   "row's X, Y (Cytomine frame). Columns are found by name: Id, X, Y, Image Id.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help='Descriptor {"images": [ids], "user": id, "project": id, "roi": term, '
                   '"foreground": term or [terms]}: crops cover every annotation of the roi term '
                   "(tiled when larger than --size); without images: every image of the project, without user: "
                   "anyone's ROIs.")
@click.option("--project", type=int, default=None,
              help="Project whose annotations (narrowed by --image, --term, --user) each give one crop "
                   "centred on them.")
@click.option("--term", "terms", type=int, multiple=True,
              help="With --project: only annotations with this term (repeatable: any of them).")
@click.option("--user", type=int, default=None, help="With --project: only annotations made by this user.")
@click.option("--image", "images", type=int, multiple=True,
              help="With --project: only this image (repeatable); default: every image of the project.")
@click.option("--out", type=click.Path(path_type=str), required=True,
              help="Dataset folder to create; must not exist. Built in <out>.partial/ first (kept if anything "
                   "fails: rerun the same command to resume).")
@click.option("--size", type=int, default=512, show_default=True,
              help="Side of the crops in output pixels (a crop covers size*2**zoom slide pixels).")
@click.option("--zoom", type=int, default=0, show_default=True,
              help="Resolution: 0 = full resolution, each step halves it (downsample 2**zoom).")
@click.option("--foreground-term", "foreground", type=int, multiple=True,
              show_default="the annotation's own term(s) / --term / the descriptor's foreground",
              help="Term whose polygons are drawn (255) in the masks (repeatable).")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Crops downloaded in parallel (threads).")
@cytomine_options
def download_command(csv_file: str | None, json_file: str | None, project: int | None, terms: tuple[int, ...],
                     user: int | None, images: tuple[int, ...], out: str, size: int, zoom: int,
                     foreground: tuple[int, ...], workers: int, cytomine_config: str | None, insecure: bool,
                     timeout: float, retries: int, cytomine_api: str) -> None:
    """Download a dataset of crops and masks from annotations on a Cytomine server.

    Choose the crops with exactly one of --csv, --json or --project. Images come from the image
    window endpoint; masks are drawn here from the foreground polygons that intersect each crop and
    stored as PNG 0/255. dataset.json records, per item, the server (a digest of its address, never
    the address), project, image, annotation(s), term(s), zoom and crop box (slide pixels, top-left
    origin), and lists the skipped annotations with their reasons. Exit status 2 if any crop still
    fails after the retries (then <out> is not created and <out>.partial/ keeps what was done).
    """
    from cydata.download import Spec, download

    chosen = [name for name, value in (("--csv", csv_file), ("--json", json_file), ("--project", project))
              if value is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --csv, --json or --project"
                               + (f" (got {', '.join(chosen)})" if chosen else ""))
    if project is None:
        extra = [name for name, value in (("--term", terms), ("--user", user), ("--image", images)) if value]
        if extra:
            raise click.UsageError(f"{', '.join(extra)} only apply with --project")
    spec = Spec(csv=csv_file, descriptor=json_file, project=project, terms=terms, user=user, images=images,
                size=size, zoom=zoom, foreground=foreground)
    click.echo(download(spec, out, workers=workers, retries=retries, config=cytomine_config, insecure=insecure,
                        timeout=timeout, api=cytomine_api))


@cli.command("roi")
@click.option("--project", type=int, required=True, help="Project of the image.")
@click.option("--image", type=int, required=True, help="Image instance to add the ROI(s) to.")
@click.option("--size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Side of the square ROI(s) in slide pixels (full resolution).")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of ROIs, placed at random inside the image without overlapping each other or the "
                   "image's ROIs of the same term.")
@click.option("--at", "at", default=None, metavar="X,Y",
              help="Top-left corner of one ROI in slide pixels (origin top-left, y down) instead of a random place.")
@click.option("--term", type=int, default=None, show_default="the project's term named 'roi', if any",
              help="Term given to the ROI(s); 'cydata download --json' selects ROIs by this term.")
@click.option("--seed", type=int, default=None, show_default="random (logged)",
              help="Seed of the random positions; the same seed, image and existing ROIs give the same places.")
@cytomine_options
def roi_command(project: int, image: int, size: int, count: int, at: str | None, term: int | None,
                seed: int | None, cytomine_config: str | None, insecure: bool, timeout: float, retries: int,
                cytomine_api: str) -> None:
    """Add square ROI annotations to a Cytomine image (to build validation/test sets); prints their ids."""
    from cydata.roi import add_rois, parse_at

    ids = add_rois(project, image, size=size, count=count, at=parse_at(at), term=term, seed=seed,
                   config=cytomine_config, insecure=insecure, timeout=timeout, retries=retries, api=cytomine_api)
    click.echo("\n".join(str(i) for i in ids))


@cli.command("select")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=str))
@click.option("--model", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Model file (.pt written by 'cyseg train') that predicts the foreground.")
@click.option("--min-completeness", type=float, default=0.5, show_default=True,
              help="Keep crops whose annotation covers at least this fraction of the predicted foreground "
                   "(|prediction AND annotation| / |prediction|; 1.0 when nothing is predicted).")
@click.option("--per-slide", type=int, default=None,
              help="Keep at most this many crops per slide, best first. [default: no cap]")
@click.option("--threshold", type=float, default=None, help="Prediction threshold. [default: the model's]")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the scores of all crops here (written even when none is kept). "
                   "[default: only <OUT>/scores.csv]")
@click.option("--device", default="auto", show_default=True,
              help="Where to compute: auto (CUDA GPU when available, else CPU), cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(path_type=str), required=True, help="Dataset folder to create; must not exist.")
def select_command(directory: str, model: str, min_completeness: float, per_slide: int | None,
                   threshold: float | None, csv_path: str | None, device: str, out: str) -> None:
    """Score how completely each crop of DIR is annotated, with a model, and write a new dataset of
    the crops scoring at least --min-completeness (copies; scores in dataset.json and scores.csv)."""
    import logging

    from cydata.select import select_dataset

    progress = logging.getLogger().getEffectiveLevel() <= logging.INFO
    folder, rows = select_dataset(directory, model, out, min_completeness=min_completeness, per_slide=per_slide,
                                  threshold=threshold, device=device, csv_path=csv_path, progress=progress)
    kept = sum(r["selected"] for r in rows)
    click.echo(f"kept {kept} of {len(rows)} crops; scores in {folder}/scores.csv")
    click.echo(str(folder))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    run_main(cli, "cydata", argv)


if __name__ == "__main__":
    main()
