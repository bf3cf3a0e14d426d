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

from tqdm import tqdm

from segmenter.errors import CysegError, DatasetError
from segmenter.io.dataset import DatasetWriter, Item, open_dataset

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
    default_train, default_test = default_outputs(src)
    out_train = Path(out_train) if out_train is not None else default_train
    out_test = Path(out_test) if out_test is not None else default_test
    if out_train.resolve() == out_test.resolve():
        raise CysegError(f"--out-train and --out-test are the same folder ({out_train}); give two different folders")
    dataset = open_dataset(src)
    for out in (out_train, out_test):
        if out.exists():
            raise CysegError(f"output folder {out} already exists; remove it or choose another --out-train/--out-test")
    items = dataset.items
    train_items, test_items = (_slide_split if by_slide else _random_split)(items, train, seed)
    if not train_items or not test_items:
        empty = "training" if not train_items else "test"
        raise CysegError(
            f"splitting {len(items)} item(s)" + (f" from {len({i.slide for i in items})} slides" if by_slide else "")
            + f" with --train {train} leaves the {empty} side empty; change --train or add data"
        )
    log.info("splitting %d items of %s: %d train, %d test%s (seed %d)", len(items), src, len(train_items),
             len(test_items), " by slide" if by_slide else "", seed)
    source = dataset.manifest.get("source") or {}
    iteration = dataset.manifest.get("iteration")
    sides = (("train", out_train, train_items), ("test", out_test, test_items))
    writers = []
    try:
        for side, out, _ in sides:
            info = {"side": side, "ratio": train, "seed": seed, "by_slide": by_slide}
            writers.append(DatasetWriter(out, source=source, parent=str(src.resolve()), iteration=iteration,
                                         extra={"split": info}))
        with tqdm(total=len(items), desc="split", unit="item", disable=None if progress is None else not progress) as bar:
            for writer, (_, _, side_items) in zip(writers, sides):
                for item in sorted(side_items, key=lambda i: i.stem):
                    writer.copy(item)
                    bar.update()
                if by_slide:
                    writer.manifest["split"]["slides"] = sorted({i.slide for i in side_items})
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    done: list[Path] = []
    try:
        for writer in writers:
            done.append(writer.close())
    except BaseException:
        for path in done:  # never leave one side without the other
            shutil.rmtree(path, ignore_errors=True)
        for writer in writers:
            writer.abort()
        raise
    log.info("wrote %s (%d items) and %s (%d items)", out_train, len(train_items), out_test, len(test_items))
    return out_train, out_test
