"""Rebuild the shipped model (`cyseg/models/default.pt`) from the real data in ../shared/data with
the real `cyseg train`, and score it on its held-out images, per source.

    python bench/default_model.py [--train-args="--colour --zoom 0.5"] [--install]

Data: nuclei in H&E tissue (miccai15, 13 tiles; image03 at 20x and image11 at 40x held out) and
white blood cells in smear cytology (wbc/dataset1, 270 images; every 10th of a seeded shuffle held
out). The held-out images pick the best epoch (`--val`) and give the figures written to
bench/results/default_model.json (one entry per `--train-args`). `--install` copies the model over
the shipped one (atomically).
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    SHARED_DATA,
    children_cpu,
    cli_evaluate,
    link_dataset,
    stems_of,
    write_results,
)
from cyseg.models import SHIPPED  # noqa: E402
from segmenter.io.atomic import atomic_path  # noqa: E402

MICCAI_VAL = ("image03", "image11")  # one 20x and one 40x tile, never trained on
RECIPE = ["--epochs", "40", "--colour", "--zoom", "0.5"]
RESULTS = ROOT / "bench" / "results" / "default_model.json"  # `--train-args` -> that recipe's run
NAME = ("cyseg default: nuclei (MICCAI 2015 H&E, 13 tiles) + white blood cells (Zheng 2018 smear cytology, "
        "270 images); U-Net n=16 depth 5, cyseg train {args}; best epoch by IoU on 2 held-out MICCAI tiles + "
        "30 held-out smear images (bench/default_model.py)")


def source_items() -> dict[str, tuple[Path, list[str], list[str]]]:
    """source name -> (folder, training stems, held-out stems)."""
    miccai = SHARED_DATA / "miccai15"
    wbc = SHARED_DATA / "wbc" / "dataset1"
    for folder in (miccai, wbc):
        if not (folder / "images").is_dir():
            raise SystemExit(f"{folder} is missing; the shipped model is built from ../shared/data (see its README)")
    smears = stems_of(wbc)
    random.Random(0).shuffle(smears)
    held = sorted(smears[::10])
    return {
        "miccai15": (miccai, [s for s in stems_of(miccai) if s not in MICCAI_VAL], list(MICCAI_VAL)),
        "wbc": (wbc, sorted(set(smears) - set(held)), held),
    }


def evaluate(model: Path, data: Path, report: Path) -> dict[str, Any]:
    """`cyseg evaluate` scores of one held-out folder."""
    summary = cli_evaluate(model, data, report)
    return {k: summary[k] for k in ("n_images", "threshold", "iou_mean", "iou_std", "dice_mean", "dice_std")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-args", default=shlex.join(RECIPE),
                        help=f"`cyseg train` options besides --val/--seed/--name (default: {shlex.join(RECIPE)!r})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "default_model")
    parser.add_argument("--install", action="store_true", help="copy the new model over cyseg/models/default.pt")
    args = parser.parse_args()

    for links in ("train", "val", "val_by_source"):  # symbolic links only: rebuilt from scratch each run
        shutil.rmtree(args.work / links, ignore_errors=True)
    items = source_items()
    for source, (folder, train, held) in items.items():
        link_dataset(args.work / "train", folder, train, prefix=f"{source}_")
        link_dataset(args.work / "val", folder, held, prefix=f"{source}_")
        link_dataset(args.work / "val_by_source" / source, folder, held, prefix=f"{source}_")
    model = args.work / "default.pt"
    cpu0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(["cyseg", "train", str(args.work / "train"), "--val", str(args.work / "val"), "--out", str(model),
                    "--seed", str(args.seed), "--name", NAME.format(args=args.train_args), *shlex.split(args.train_args)], check=True)
    cpu, wall = children_cpu() - cpu0, time.perf_counter() - t0
    result = {
        "benchmark": "default_model", "train_args": args.train_args, "seed": args.seed,
        "train_images": {s: len(train) for s, (_, train, _) in items.items()},
        "held_out": {s: held for s, (_, _, held) in items.items()},
        "train_cpu_s": cpu, "train_wall_s": wall,
        "held_out_scores": {s: evaluate(model, args.work / "val_by_source" / s, args.work / f"eval_{s}") for s in items},
        "model_bytes": model.stat().st_size,
    }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    write_results(RESULTS, {**results, args.train_args: result})
    print(json.dumps(result["held_out_scores"], indent=1))
    if args.install:
        with atomic_path(SHIPPED["default"]) as tmp:
            shutil.copyfile(model, tmp)
        shutil.copyfile(model.with_suffix(".curves.png"), ROOT / "docs" / "default_model_curves.png")
        print(f"installed {SHIPPED['default']}")


if __name__ == "__main__":
    main()
