"""Accuracy benchmark on the real data in ../shared/data: trains with `cyseg train` (the real CLI,
its own defaults unless --train-args says otherwise) and scores the test images at full resolution
with `cyseg evaluate`, over several seeds or folds.

    python bench/accuracy.py [--datasets miccai15,glas,wbc] [--seeds 3] [--label defaults]
                             [--train-args="--colour --epochs 60"] [--eval-args=--tta]
                             [--models-from LABEL]   # evaluate LABEL's trained models (e.g. with --tta)

miccai15_mag (not in the default list) measures generalisation to unseen slides and magnification:
it trains on miccai15's five 40x training tiles and tests on the seven 20x tiles.

Results are merged into bench/results/accuracy.json under dataset -> label.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    MICCAI_40X,
    MICCAI_TEST,
    SHARED_DATA,
    children_cpu,
    cli_evaluate,
    link_dataset,
    stems_of,
    write_results,
)

RESULTS = ROOT / "bench" / "results" / "accuracy.json"


def splits(dataset: str, work: Path, seeds: int) -> list[tuple[str, Path, Path, int]]:
    """(run name, train dir, test dir, seed) for every run of a dataset."""
    if dataset == "miccai15":
        src = SHARED_DATA / "miccai15"
        all_stems = stems_of(src)
        train = link_dataset(work / "miccai15" / "train", src, [s for s in all_stems if s not in MICCAI_TEST])
        test = link_dataset(work / "miccai15" / "test", src, list(MICCAI_TEST))
        return [(f"seed{s}", train, test, s) for s in range(seeds)]
    if dataset == "miccai15_mag":  # generalisation: train on 40x slides, test on the 20x slides never seen
        src = SHARED_DATA / "miccai15"
        train = link_dataset(work / "miccai15_mag" / "train", src, [s for s in MICCAI_40X if s not in MICCAI_TEST])
        test = link_dataset(work / "miccai15_mag" / "test", src, [s for s in stems_of(src) if s not in MICCAI_40X])
        return [(f"seed{s}", train, test, s) for s in range(seeds)]
    if dataset == "glas":
        train = link_dataset(work / "glas" / "train", SHARED_DATA / "glas" / "train", stems_of(SHARED_DATA / "glas" / "train"))
        test = link_dataset(work / "glas" / "test", SHARED_DATA / "glas" / "test", stems_of(SHARED_DATA / "glas" / "test"))
        return [(f"seed{s}", train, test, s) for s in range(seeds)]
    if dataset == "wbc":
        src = SHARED_DATA / "wbc" / "dataset1"
        all_stems = stems_of(src)
        random.Random(0).shuffle(all_stems)
        folds = [all_stems[i::5] for i in range(5)]
        runs = []
        for k in range(5):
            train = link_dataset(work / "wbc" / f"fold{k}" / "train", src, [s for j, f in enumerate(folds) if j != k for s in f])
            test = link_dataset(work / "wbc" / f"fold{k}" / "test", src, folds[k])
            runs.append((f"fold{k}", train, test, 0))
        return runs
    raise SystemExit(f"unknown dataset {dataset}; use miccai15, miccai15_mag, glas or wbc")


def run_one(name: str, train: Path, test: Path, seed: int, out: Path, train_args: list[str],
            eval_args: list[str], trained: tuple[Path, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train and evaluate once through the real CLI; returns scores and costs. With `trained`
    (a model file and its run's record), that model is evaluated instead and its costs reported."""
    out.mkdir(parents=True, exist_ok=True)
    if trained is not None:
        model, record = trained
        cpu_train, wall_train = record["train_cpu_s"], record["train_wall_s"]
    else:
        model = out / "model.pt"
        cpu0, t0 = children_cpu(), time.perf_counter()
        if not model.exists():
            subprocess.run(["cyseg", "-q", "train", str(train), "--out", str(model), "--seed", str(seed), *train_args],
                           check=True, stdout=subprocess.DEVNULL, stderr=sys.stderr if os.isatty(2) else subprocess.DEVNULL)
        cpu_train, wall_train = children_cpu() - cpu0, time.perf_counter() - t0
    summary = cli_evaluate(model, test, out / "eval", eval_args)
    precision = torch.load(model, map_location="cpu", weights_only=True)["training"].get("precision", "float32")
    return {"run": name, "seed": seed, "n_test": summary["n_images"], "iou": summary["iou_mean"], "dice": summary["dice_mean"],
            "iou_std_images": summary["iou_std"], "dice_std_images": summary["dice_std"],
            "threshold": summary["model_threshold"], "best_sweep_threshold": summary.get("best_threshold"),
            "train_precision": precision, "train_cpu_s": cpu_train, "train_wall_s": wall_train}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    iou = np.array([r["iou"] for r in runs])
    dice = np.array([r["dice"] for r in runs])
    return {"iou_mean": float(iou.mean()), "iou_std": float(iou.std()), "dice_mean": float(dice.mean()),
            "dice_std": float(dice.std()), "n_runs": len(runs),
            "train_cpu_s_mean": float(np.mean([r["train_cpu_s"] for r in runs])),
            "train_wall_s_mean": float(np.mean([r["train_wall_s"] for r in runs]))}


def _results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="miccai15,glas,wbc")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--label", default="defaults", help="name of this configuration in the results")
    parser.add_argument("--train-args", default="", help="extra `cyseg train` options (default: none, the CLI defaults)")
    parser.add_argument("--eval-args", default="", help="extra `cyseg evaluate` options, e.g. --eval-args=--tta (default: none)")
    parser.add_argument("--models-from", default=None, metavar="LABEL",
                        help="evaluate the models trained for LABEL (with --eval-args) instead of training")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "accuracy")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"{SHARED_DATA} not found: the accuracy benchmark needs the real data sets")

    for dataset in args.datasets.split(","):
        runs = []
        source = None
        if args.models_from:
            source = _results().get(dataset, {}).get(args.models_from)
            if source is None:
                raise SystemExit(f"no results labelled {args.models_from!r} for {dataset} in {RESULTS}")
        for name, train, test, seed in splits(dataset, args.work / "data", args.seeds):
            trained = None
            if source is not None:
                record = next(r for r in source["runs"] if r["run"] == name)
                trained = (args.work / "runs" / dataset / args.models_from / name / "model.pt", record)
            run = run_one(name, train, test, seed, args.work / "runs" / dataset / args.label / name,
                          shlex.split(args.train_args), shlex.split(args.eval_args), trained)
            runs.append(run)
            print(f"{dataset:9s} {args.label:10s} {name:6s} IoU {run['iou']:.4f} Dice {run['dice']:.4f} "
                  f"train {run['train_cpu_s'] / 60:.1f} CPU-min ({run['train_wall_s'] / 60:.1f} min wall)", flush=True)
        train_args = source["train_args"] if source is not None else args.train_args or "(cyseg train defaults)"
        entry = {"train_args": train_args, "eval_args": args.eval_args or "(cyseg evaluate defaults)",
                 **({"models_from": args.models_from} if source is not None else {}), **aggregate(runs), "runs": runs,
                 "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
        results = _results()  # re-read: another run may have written its data sets meanwhile
        results.setdefault(dataset, {})[args.label] = entry
        write_results(RESULTS, results)
        print(f"{dataset:9s} {args.label:10s} IoU {entry['iou_mean']:.4f} ± {entry['iou_std']:.4f}  "
              f"Dice {entry['dice_mean']:.4f} ± {entry['dice_std']:.4f}  ({entry['n_runs']} runs, "
              f"{entry['train_cpu_s_mean'] / 60:.1f} CPU-min per training)", flush=True)
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
