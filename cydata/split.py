"""`cydata split`: divide a dataset into a training and a test dataset, at random or by slide.

Files are copied unchanged; each output's dataset.json names its parent folder and the split
(ratio, seed, side) so that the division can be reproduced and audited.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from segmenter.errors import CysegError, DatasetError
from segmenter.io.dataset import Dataset, DatasetWriter, Item, image_declarations, open_dataset

log = logging.getLogger(__name__)


def default_outputs(src: str | os.PathLike) -> tuple[Path, Path]:
    """`<DIR>_train` and `<DIR>_test` beside DIR."""
    root = Path(src).resolve()
    return root.with_name(root.name + "_train"), root.with_name(root.name + "_test")


def _random_split(items: list[Item], train: float, seed: int) -> tuple[list[Item], list[Item]]:
    order = list(items)
    random.Random(seed).shuffle(order)
    n_train = round(train * len(order))
    return order[:n_train], order[n_train:]


def _slide_split(items: list[Item], train: float, seed: int) -> tuple[list[Item], list[Item]]:
    missing = [item.stem for item in items if item.slide is None]
    if missing:
        raise DatasetError(
            f"item '{missing[0]}'" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
            + " has no slide id; --by-slide needs dataset.json to record 'slide' (or 'image_id') for every item"
            " under \"items\"; add it or split without --by-slide"
        )
    by_slide: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_slide[item.slide].append(item)
    slides = sorted(by_slide)
    if len(slides) < 2:
        raise CysegError(
            f"all {len(items)} items come from one slide ({slides[0]}); --by-slide needs at least two slides:"
            " add data from another slide or split without --by-slide"
        )
    random.Random(seed).shuffle(slides)
    target = round(train * len(items))
    train_items: list[Item] = []
    test_items: list[Item] = []
    for slide in slides:
        side = train_items if len(train_items) < target else test_items
        side.extend(by_slide[slide])
    return train_items, test_items


def split_dataset(src: str | os.PathLike, train: float = 0.8, seed: int = 0, by_slide: bool = False,
                  out_train: str | os.PathLike | None = None, out_test: str | os.PathLike | None = None,
                  progress: bool | None = None) -> tuple[Path, Path]:
    """Split the dataset at `src` into two new datasets; returns (train folder, test folder).

    `round(train * N)` items go to the training side. With `by_slide`, whole slides are shuffled
    with `seed` and given to the training side until it reaches that count, the rest to the test side.
    """
    if not 0.0 < train < 1.0:
        raise CysegError(f"--train {train} is not a fraction strictly between 0 and 1 (e.g. 0.8)")
    src = Path(src)
    out_train, out_test = _outputs(src, out_train, out_test)
    dataset = open_dataset(src)
    for out in (out_train, out_test):
        if out.exists():
            raise CysegError(f"output folder {out} already exists; remove it or choose another --out-train/--out-test")
    train_items, test_items = _divide(dataset.items, train, seed, by_slide)
    log.info("splitting %d items of %s: %d train, %d test%s (seed %d)", len(dataset.items), src, len(train_items),
             len(test_items), " by slide" if by_slide else "", seed)
    sides = (("train", out_train, train_items), ("test", out_test, test_items))
    writers = _fill(src, dataset, sides, {"ratio": train, "seed": seed, "by_slide": by_slide}, progress)
    _close_both(writers)
    log.info("wrote %s (%d items) and %s (%d items)", out_train, len(train_items), out_test, len(test_items))
    return out_train, out_test


def _outputs(src: Path, out_train: str | os.PathLike | None, out_test: str | os.PathLike | None) -> tuple[Path, Path]:
    """The two output folders: the ones given, else `default_outputs`; never the same one."""
    default_train, default_test = default_outputs(src)
    out_train = Path(out_train) if out_train is not None else default_train
    out_test = Path(out_test) if out_test is not None else default_test
    if out_train.resolve() == out_test.resolve():
        raise CysegError(f"--out-train and --out-test are the same folder ({out_train}); give two different folders")
    return out_train, out_test


def _divide(items: list[Item], train: float, seed: int, by_slide: bool) -> tuple[list[Item], list[Item]]:
    """(training items, test items), refusing a division that leaves a side empty."""
    train_items, test_items = (_slide_split if by_slide else _random_split)(items, train, seed)
    if not train_items or not test_items:
        empty = "training" if not train_items else "test"
        raise CysegError(
            f"splitting {len(items)} item(s)" + (f" from {len({i.slide for i in items})} slides" if by_slide else "")
            + f" with --train {train} leaves the {empty} side empty; change --train or add data"
        )
    return train_items, test_items


def _fill(src: Path, dataset: Dataset, sides: tuple[tuple[str, Path, list[Item]], ...], split: dict[str, Any],
          progress: bool | None) -> list[DatasetWriter]:
    """A writer per side (name, folder, items) holding its items, not yet moved into place; on any
    failure both are removed."""
    source = dataset.manifest.get("source") or {}
    iteration = dataset.manifest.get("iteration")
    writers = []
    try:
        for side, out, _ in sides:
            declared = image_declarations(dataset.manifest)
            writers.append(DatasetWriter(out, source=source, parent=str(src.resolve()), iteration=iteration,
                                         extra={**declared, "split": {"side": side, **split}}, classes=dataset.classes))
        with tqdm(total=len(dataset.items), desc="split", unit="item",
                  disable=None if progress is None else not progress) as bar:
            for writer, (_, _, side_items) in zip(writers, sides, strict=True):
                for item in sorted(side_items, key=lambda i: i.stem):
                    writer.copy(item)
                    bar.update()
                if split["by_slide"]:
                    writer.manifest["split"]["slides"] = sorted({i.slide for i in side_items})
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return writers


def _close_both(writers: list[DatasetWriter]) -> None:
    """Move both sides into place, or neither: never leave one side without the other."""
    done: list[Path] = []
    try:
        for writer in writers:
            done.append(writer.close())
    except BaseException:
        for path in done:
            shutil.rmtree(path, ignore_errors=True)
        for writer in writers:
            writer.abort()
        raise
