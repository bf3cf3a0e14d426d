"""Rebuild the shipped model (`cyseg/models/default.pt`) from the real data in ../shared/data with
the real `cyseg train`, choosing its recipe on validation images and scoring it on test images
that played no part in training, epoch, threshold or recipe choice.

    python bench/default_model.py [--install]

Data, split three ways per source (fixed, seeded):
- miccai15 (nuclei in H&E tissue): 8 training tiles; validation image03 (20x) and image11 (40x);
  test the accuracy benchmark's five test tiles (bench.common.MICCAI_TEST), so the two compare.
- wbc/dataset1 (white blood cells in smear cytology): a seeded shuffle of the 300 images, every
  10th (from the first) is test, every 10th from the second is validation, the other 240 train.

Each candidate recipe (`CANDIDATES`, on top of `BASE`) is trained once (seed 0) on the training
images with `--val` on the validation images, which pick its best epoch and its threshold; the
recipe with the best validation Dice (the mean of the two sources' means) is the model; only it is
scored on the test images, once. Results: bench/results/default_model.json (written whole by
each run). `--install` copies the chosen model over the shipped one (atomically) and its training
curves over docs/default_model_curves.png. Every run starts from an empty work folder.
"""
from __future__ import annotations

import argparse
import random
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    MICCAI_TEST,
    SHARED_DATA,
    children_cpu,
    cli_evaluate,
    cli_train,
    code_version,
    fresh_dir,
    link_dataset,
    run_record,
    scores,
    stems_of,
    write_results,
)
from cyseg.models import SHIPPED  # noqa: E402
from segmenter.io.atomic import atomic_path  # noqa: E402

MICCAI_VAL = ("image03", "image11")  # one 20x and one 40x tile: pick epoch, threshold and recipe
BASE = ["--epochs", "40"]  # the training length every candidate gets
CANDIDATES = {"defaults": [], "colour_zoom0.5": ["--colour", "--zoom", "0.5"]}
SEED = 0
RESULTS = ROOT / "bench" / "results" / "default_model.json"
NAME = ("cyseg default: nuclei (MICCAI 2015 H&E, 8 tiles) + white blood cells (Zheng 2018 smear cytology, "
        "240 images); U-Net n=16 depth 5, cyseg train {args}; best epoch, threshold and recipe chosen on 2 MICCAI "
        "tiles + 30 smear images; tested on 5 MICCAI tiles + 30 smear images used for nothing else "
        "(bench/default_model.py)")


class Split(NamedTuple):
    """One source's folder and its training, validation and test stems."""

    folder: Path
    train: list[str]
    val: list[str]
    test: list[str]


def source_items() -> dict[str, Split]:
    """source name -> its three-way split (the same every time)."""
    miccai = SHARED_DATA / "miccai15"
    wbc = SHARED_DATA / "wbc" / "dataset1"
    for folder in (miccai, wbc):
        if not (folder / "images").is_dir():
            raise SystemExit(f"{folder} is missing; the shipped model is built from ../shared/data (see its README)")
    smears = stems_of(wbc)
    random.Random(0).shuffle(smears)
    test, val = sorted(smears[::10]), sorted(smears[1::10])
    held = set(MICCAI_VAL) | set(MICCAI_TEST)
    return {
        "miccai15": Split(miccai, [s for s in stems_of(miccai) if s not in held], list(MICCAI_VAL), list(MICCAI_TEST)),
        "wbc": Split(wbc, sorted(set(smears) - set(test) - set(val)), val, test),
    }


def link_split(items: dict[str, Split], work: Path) -> None:
    """work/train and work/val: all sources together (what `cyseg train` reads); work/<part>_by_source/<source>:
    the validation and test images of each source, scored apart."""
    for source, split in items.items():
        prefix = f"{source}_"
        link_dataset(work / "train", split.folder, split.train, prefix)
        link_dataset(work / "val", split.folder, split.val, prefix)
        link_dataset(work / "val_by_source" / source, split.folder, split.val, prefix)
        link_dataset(work / "test_by_source" / source, split.folder, split.test, prefix)


def score_by_source(model: Path, work: Path, part: str, sources: list[str]) -> dict[str, Any]:
    """`cyseg evaluate` (at the model's threshold, no sweep) of each source's `part` images."""
    return {s: scores(cli_evaluate(model, work / f"{part}_by_source" / s, work / "eval" / model.stem / f"{part}_{s}",
                                   ["--no-sweep"])) for s in sources}


def train_candidate(label: str, work: Path, sources: list[str]) -> dict[str, Any]:
    """Train one candidate recipe (validation picks epoch and threshold) and score its validation images."""
    options = [*BASE, *CANDIDATES[label]]
    model = work / f"{label}.pt"
    name = NAME.format(args=shlex.join(options))
    cpu, wall = cli_train(work / "train", model, SEED, options, val=work / "val", name=name)
    val = score_by_source(model, work, "val", sources)
    best_epoch = torch.load(model, map_location="cpu", weights_only=True)["training"]["best_epoch"]
    entry = {"train_args": shlex.join(options), "train_cpu_s": cpu, "train_wall_s": wall, "best_epoch": best_epoch,
             "val": val,
             "val_dice": sum(v["dice_mean"] for v in val.values()) / len(val)}
    print(f"{label:16s} validation Dice {entry['val_dice']:.4f} ("
          + ", ".join(f"{s} {v['dice_mean']:.4f}" for s, v in val.items()) + f"), {cpu / 60:.1f} CPU-min", flush=True)
    return entry


def install(model: Path) -> None:
    """Put the model and its training curves in place of the shipped ones."""
    with atomic_path(SHIPPED["default"]) as tmp:
        shutil.copyfile(model, tmp)
    shutil.copyfile(model.with_suffix(".curves.png"), ROOT / "docs" / "default_model_curves.png")
    print(f"installed {SHIPPED['default']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "default_model")
    parser.add_argument("--install", action="store_true", help="copy the chosen model over cyseg/models/default.pt")
    args = parser.parse_args()
    code, cpu0, t0 = code_version(), time.process_time() + children_cpu(), time.perf_counter()
    work = fresh_dir(args.work)
    items = source_items()
    link_split(items, work)
    sources = list(items)
    candidates = {label: train_candidate(label, work, sources) for label in CANDIDATES}
    chosen = max(candidates, key=lambda label: candidates[label]["val_dice"])
    model = work / f"{chosen}.pt"
    test = score_by_source(model, work, "test", sources)
    print(f"chosen {chosen}: test " + ", ".join(f"{s} Dice {v['dice_mean']:.4f}" for s, v in test.items()), flush=True)
    result = {
        "benchmark": "default_model",
        "protocol": "per source a fixed train / validation / test split; each candidate recipe trained once (seed "
                    f"{SEED}) with --val on the validation images (best epoch and threshold); the recipe with the "
                    "best validation Dice (mean of the sources' means) is chosen and only it is scored on the test "
                    "images, at its threshold, without a sweep",
        "seed": SEED,
        "split": {s: split._asdict() | {"folder": str(split.folder.relative_to(SHARED_DATA))}
                  for s, split in items.items()},
        "candidates": candidates, "chosen": chosen, "test": test,
        "model_bytes": model.stat().st_size, "installed": args.install,
    }
    result["run"] = run_record(code, time.process_time() + children_cpu() - cpu0, time.perf_counter() - t0)
    write_results(RESULTS, result)
    if args.install:
        install(model)


if __name__ == "__main__":
    main()
