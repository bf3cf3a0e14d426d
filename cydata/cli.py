"""The `cydata` command line: dataset preparation (DESIGN §7).

A thin layer: one click command per module function. Errors caused by the user's input
(`CysegError`) are printed as one line, `cydata: error: <message>`, with exit status 2.
"""
from __future__ import annotations

import click

from segmenter.cli_support import ErrorReportingGroup, run_main, setup_logging, verbosity

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group("cydata", cls=ErrorReportingGroup, context_settings=CONTEXT)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
def cli(verbose: bool, quiet: bool) -> None:
    """Prepare cell-segmentation datasets: folders of images/<name>.png, masks/<name>.png and dataset.json.

    Every command writes a NEW folder (built under a temporary name and renamed into place when
    complete); inputs are never modified and existing folders are never overwritten.
    """
    setup_logging("cydata", verbosity(verbose, quiet))


@cli.command("split")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=str))
@click.option("--train", "train", type=float, default=0.8, show_default=True,
              help="Fraction of the items that go to the training side; round(train*N) items, strictly between 0 and 1.")
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    run_main(cli, "cydata", argv)


if __name__ == "__main__":
    main()
