"""Accuracy benchmark on the real data in ../shared/data, with settings chosen on validation images
carved from the training images and the test images scored once, with the chosen settings.

    python bench/accuracy.py [--datasets miccai15,glas,wbc,miccai15_mag] [--seeds 3]

Per data set:
1. Validation: a fixed, seeded part of the training images is held out (`plan`); every candidate
   recipe (`candidates`: the `cyseg train` defaults, which plan the working resolution from the
   masks; `--colour --zoom 0.5`; on GlaS also `--resolution 1`, the method's full resolution) is
   trained once (seed 0) on the rest with the real `cyseg train`, and scored on the validation
   images by `cyseg evaluate` with and without `--tta`. The (recipe, TTA) pair with the best
   validation Dice is chosen.
2. Test: the chosen recipe is trained on the whole training set (seeds 0..N-1; wbc: the five
   folds of a 5-fold cross-validation, seed 0) and each model scores the test images once, at the
   threshold it calibrated on its training images, with the chosen TTA setting. Its own training
   images are scored too (the fit the annotations allow).

Data sets: miccai15 (H&E nuclei; test image02/06/10/13/15; validation one 20x and one 40x training
tile), glas (official 85 train / 80 test; validation 17 training images), wbc (smear cytology,
5-fold CV; validation a fifth of fold 0's training images), miccai15_mag (generalisation to other
slides at another magnification: trained on the five 40x training tiles, tested on the seven 20x
tiles; validation two 40x training tiles downscaled 2x, which mimics that shift).

Every run starts from an empty work folder (no model or report is reused). Results: one entry per
data set in bench/results/accuracy.json (an entry is replaced when its data set is rerun).
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    MICCAI_40X,
    MICCAI_TEST,
    SHARED_DATA,
    RunClock,
    cli_evaluate,
    cli_train,
    fresh_dir,
    link_dataset,
    scores,
    stems_of,
    write_results,
)

RESULTS = ROOT / "bench" / "results" / "accuracy.json"
DATASETS = ("miccai15", "glas", "wbc", "miccai15_mag")
SPLIT_SEED = 0  # seeds every validation carve and the wbc folds
VAL_FRACTION = 0.2  # glas and wbc: the share of the training images held out for validation
RECIPES = {"defaults": [], "colour_zoom0.5": ["--colour", "--zoom", "0.5"]}
EXTRA_RECIPES = {"glas": {"resolution1": ["--resolution", "1"]}}
EVAL_OPTIONS = {"plain": [], "tta": ["--tta"]}


class Plan(NamedTuple):
    """A data set's validation split (candidates train on `fit`, are scored on `val`) and its test
    runs (name, whole training set, test images, seed)."""

    fit: Path
    val: Path
    tests: list[tuple[str, Path, Path, int]]
    split: dict[str, Any]


# ---------------------------------------------------------------- the splits

def carve(stems: list[str], n: int) -> tuple[list[str], list[str]]:
    """(rest, held out): `n` of `stems` drawn with the fixed split seed."""
    held = sorted(random.Random(SPLIT_SEED).sample(sorted(stems), n))
    return [s for s in stems if s not in held], held


def downscaled_dataset(out: Path, source: Path, stems: list[str], factor: float = 0.5) -> Path:
    """Write `stems` of `source` scaled by `factor`: images by area averaging, masks by nearest
    neighbour (still 0/255). A 40x tile halved looks like a 20x scan."""
    import cv2

    from segmenter.io.images import read_image, write_png

    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image = read_image(source / "images" / f"{stem}.png")
        mask = cv2.imread(str(source / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
        write_png(out / "images" / f"{stem}.png", cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        write_png(out / "masks" / f"{stem}.png", cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST))
    return out


def plan_miccai15(work: Path, seeds: int) -> Plan:
    """Test: the five test tiles; validation: one 20x and one 40x of the ten training tiles."""
    src = SHARED_DATA / "miccai15"
    train = [s for s in stems_of(src) if s not in MICCAI_TEST]
    _, val_40x = carve([s for s in train if s in MICCAI_40X], 1)
    _, val_20x = carve([s for s in train if s not in MICCAI_40X], 1)
    val = sorted(val_20x + val_40x)
    whole = link_dataset(work / "train", src, train)
    test = link_dataset(work / "test", src, list(MICCAI_TEST))
    fit = link_dataset(work / "fit", src, [s for s in train if s not in val])
    return Plan(fit, link_dataset(work / "val", src, val),
                [(f"seed{s}", whole, test, s) for s in range(seeds)],
                {"train": train, "val": val, "test": list(MICCAI_TEST)})


def plan_miccai15_mag(work: Path, seeds: int) -> Plan:
    """Train on the 40x training tiles, test on the 20x tiles (other slides); validation: two 40x
    training tiles halved, so the recipe is chosen on a shift like the test's."""
    src = SHARED_DATA / "miccai15"
    train = [s for s in MICCAI_40X if s not in MICCAI_TEST]
    fit, val = carve(train, 2)
    test_stems = [s for s in stems_of(src) if s not in MICCAI_40X]
    whole = link_dataset(work / "train", src, train)
    test = link_dataset(work / "test", src, test_stems)
    return Plan(link_dataset(work / "fit", src, fit), downscaled_dataset(work / "val", src, val),
                [(f"seed{s}", whole, test, s) for s in range(seeds)],
                {"train": train, "val": val, "val_scale": 0.5, "test": test_stems})


def plan_glas(work: Path, seeds: int) -> Plan:
    """The official split; validation: a fifth of the 85 training images."""
    train_src, test_src = SHARED_DATA / "glas" / "train", SHARED_DATA / "glas" / "test"
    train = stems_of(train_src)
    fit, val = carve(train, round(VAL_FRACTION * len(train)))
    whole = link_dataset(work / "train", train_src, train)
    test = link_dataset(work / "test", test_src, stems_of(test_src))
    return Plan(link_dataset(work / "fit", train_src, fit), link_dataset(work / "val", train_src, val),
                [(f"seed{s}", whole, test, s) for s in range(seeds)],
                {"train": len(train), "val": val, "test": len(stems_of(test_src))})


def plan_wbc(work: Path, seeds: int) -> Plan:
    """5-fold cross-validation of a seeded shuffle; validation: a fifth of fold 0's training part.
    (`seeds` is unused: the folds are the repetitions.)"""
    src = SHARED_DATA / "wbc" / "dataset1"
    stems = stems_of(src)
    random.Random(SPLIT_SEED).shuffle(stems)
    folds = [sorted(stems[i::5]) for i in range(5)]
    tests = []
    for k in range(5):
        train = sorted(s for j, fold in enumerate(folds) if j != k for s in fold)
        tests.append((f"fold{k}", link_dataset(work / f"fold{k}" / "train", src, train),
                      link_dataset(work / f"fold{k}" / "test", src, folds[k]), 0))
    fold0_train = stems_of(tests[0][1])
    fit, val = carve(fold0_train, round(VAL_FRACTION * len(fold0_train)))
    return Plan(link_dataset(work / "fit", src, fit), link_dataset(work / "val", src, val), tests,
                {"folds": folds, "val_from": "fold0 training part", "val": val})


PLANS = {"miccai15": plan_miccai15, "miccai15_mag": plan_miccai15_mag, "glas": plan_glas, "wbc": plan_wbc}


# ---------------------------------------------------------------- validation and test

def candidates(dataset: str) -> dict[str, list[str]]:
    """The recipes (extra `cyseg train` options) compared on a data set's validation images."""
    return {**RECIPES, **EXTRA_RECIPES.get(dataset, {})}


def validate(dataset: str, plan: Plan, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every candidate on `plan.fit` (seed 0) and score `plan.val` with each evaluation option:
    (the table of every candidate, the chosen recipe and evaluation option)."""
    table: dict[str, Any] = {}
    for label, options in candidates(dataset).items():
        model = work / "candidates" / label / "model.pt"
        model.parent.mkdir(parents=True)
        cpu, wall = cli_train(plan.fit, model, 0, options)
        val = {ev: scores(cli_evaluate(model, plan.val, model.parent / f"val_{ev}", ["--no-sweep", *extra]))
               for ev, extra in EVAL_OPTIONS.items()}
        table[label] = {"train_args": shlex.join(options), "train_cpu_s": cpu, "train_wall_s": wall, "val": val}
        print(f"{dataset:12s} validation {label:15s} " + "  ".join(
            f"{ev} Dice {v['dice_mean']:.4f}" for ev, v in val.items()) + f"  ({cpu / 60:.1f} CPU-min)", flush=True)
    label, ev = max(((lab, ev) for lab in table for ev in EVAL_OPTIONS),
                    key=lambda pair: table[pair[0]]["val"][pair[1]]["dice_mean"])
    chosen = {"recipe": label, "train_args": table[label]["train_args"], "eval": ev,
              "eval_args": shlex.join(EVAL_OPTIONS[ev]), "val_dice": table[label]["val"][ev]["dice_mean"]}
    return table, chosen


def per_image_dice(report: Path) -> dict[str, float]:
    """Dice of each image of a `cyseg evaluate` report (its per_image.csv)."""
    with open(report / "per_image.csv", newline="") as fh:
        return {row["image"]: float(row["dice"]) for row in csv.DictReader(fh)}


def test_run(name: str, train: Path, test: Path, seed: int, chosen: dict[str, Any], work: Path) -> dict[str, Any]:
    """Train the chosen recipe on the whole training set; score the test images once and, for the
    record, the training images themselves."""
    out = work / "tests" / name
    out.mkdir(parents=True)
    model = out / "model.pt"
    cpu, wall = cli_train(train, model, seed, shlex.split(chosen["train_args"]))
    eval_args = ["--no-sweep", *shlex.split(chosen["eval_args"])]
    result = scores(cli_evaluate(model, test, out / "test", eval_args))
    on_train = scores(cli_evaluate(model, train, out / "train", eval_args))
    return {"run": name, "seed": seed, **{k: result[k] for k in ("n_images", "threshold")},
            "iou": result["iou_mean"], "dice": result["dice_mean"], "iou_std_images": result["iou_std"],
            "dice_std_images": result["dice_std"], "per_image_dice": per_image_dice(out / "test"),
            "train_images": {"n_images": on_train["n_images"], "iou": on_train["iou_mean"],
                             "dice": on_train["dice_mean"]},
            "train_cpu_s": cpu, "train_wall_s": wall}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over the runs (seeds or folds)."""
    def ms(key: str) -> tuple[float, float]:
        values = np.array([r[key] for r in runs])
        return float(values.mean()), float(values.std())

    (iou, iou_sd), (dice, dice_sd) = ms("iou"), ms("dice")
    return {"iou_mean": iou, "iou_std": iou_sd, "dice_mean": dice, "dice_std": dice_sd, "n_runs": len(runs),
            "train_dice_mean": float(np.mean([r["train_images"]["dice"] for r in runs])),
            "train_cpu_s_mean": float(np.mean([r["train_cpu_s"] for r in runs])),
            "train_wall_s_mean": float(np.mean([r["train_wall_s"] for r in runs]))}


def benchmark(dataset: str, seeds: int, work: Path) -> dict[str, Any]:
    """Validation, choice and test of one data set, from an empty work folder; its results entry."""
    clock = RunClock()
    work = fresh_dir(work / dataset)
    plan = PLANS[dataset](work / "data", seeds)
    table, chosen = validate(dataset, plan, work)
    print(f"{dataset:12s} chosen {chosen['recipe']} ({chosen['eval']}), validation Dice {chosen['val_dice']:.4f}",
          flush=True)
    runs = []
    for name, train, test, seed in plan.tests:
        runs.append(test_run(name, train, test, seed, chosen, work))
        print(f"{dataset:12s} test {name:6s} Dice {runs[-1]['dice']:.4f} IoU {runs[-1]['iou']:.4f}", flush=True)
    entry = {"protocol": "recipe and TTA chosen by validation Dice (one seed) on images carved from the training "
                         "set; the chosen recipe retrained on the whole training set and the test images scored once",
             "split": plan.split, "validation": table, "chosen": chosen, "test": {**aggregate(runs), "runs": runs}}
    entry["run"] = clock.record()
    test = entry["test"]
    print(f"{dataset:12s} test Dice {test['dice_mean']:.4f} ± {test['dice_std']:.4f}  IoU {test['iou_mean']:.4f} ± "
          f"{test['iou_std']:.4f}  ({test['n_runs']} runs)", flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=3, help="test runs of the chosen recipe (wbc: the five folds)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "accuracy")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"{SHARED_DATA} not found: the accuracy benchmark needs the real data sets")
    unknown = set(args.datasets.split(",")) - set(DATASETS)
    if unknown:
        raise SystemExit(f"unknown data set(s) {', '.join(sorted(unknown))}; use {', '.join(DATASETS)}")
    for dataset in args.datasets.split(","):
        entry = benchmark(dataset, args.seeds, args.work)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # re-read: others may have written
        write_results(RESULTS, {**results, dataset: entry})
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
