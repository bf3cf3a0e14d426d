"""Instance benchmark: touching glands, cells and nuclei as separate objects, on the real data in
../shared/data, with every setting chosen on validation images carved from the training images and
the test images scored once.

    python bench/instances.py [--datasets glas,isbi2014,wbc,urothelial,miccai15] [--refit] [--seeds N] [--resume]

Per data set, one `cyseg train --instances` run per recipe (`RECIPES`; the training defaults where a
data set has none) and seed (0..N-1), side by side at one thread each when there are several, on the
fit part with `--val` on the validation part: the validation images choose the epoch, each class's
threshold and the separation's parameters (object F1, then PQ; seed 0's are kept) and the recipe
(the mean of pixel Dice and object F1, averaged over the seeds, each recipe with test-time
augmentation where that raises its merit, as it will meet the test images, its thresholds and
separation then chosen anew on the validation images predicted with it, `cyseg calibrate --tta`; the incumbent, listed
first, stays unless a challenger leads it by more than LEAD_IN_SE paired standard errors image by image).
With `--refit`, the chosen recipe is then trained once more on the fit and validation images together,
taking the thresholds, separation and least object areas validation chose (`cyseg train
--settings-from`), and only that model meets the test images (decided before the run, whatever it scores).
Then `cyseg evaluate` scores the test images once with the chosen model,
with the pixel Dice per class and the instance scores (object F1 at IoU > 0.5, AJI, PQ, GlaS object
Dice and Hausdorff; on GlaS also the challenge's own F1, a prediction counting when it covers more
than half of its gland, pooled over the test images as published). The CPU budget (`run.cpu_s`)
limits the seeds.

Data sets and their splits:
- glas: the official split (85 train, of which 17 validate; 80 test = test A + test B, not
  separable in this copy), one class, masks_instance/ (one id per gland).
- isbi2014: ISBI 2014 Pap smears (45 images): cell + nucleus instances; 27 fit / 9 val / 9 test.
  Some 12 source cells make up most cells, so this split does not test generalisation.
- wbc: wbc/dataset1 blood smears, cell + nucleus (masks_3class), one white cell per image; 192 fit /
  48 val / 60 test. Instances: the masks' connected regions (no instance masks exist).
- urothelial: urine cytology, cell + nucleus (masks_3class); 128 fit / 32 val / 40 test; instances:
  connected regions (touching cells share one region in its masks).
- miccai15: H&E nuclei (one class), the accuracy benchmark's test tiles and validation tiles;
  instances: connected regions of the binary masks (touching nuclei merged in the truth).

Results: one entry per data set in bench/results/instances.json (replaced when rerun), with the
published GlaS figures beside ours.

`--resume` continues a run that was interrupted (a session's end, Ctrl-C) in the same --work folder: its
finished trainings are kept and the others continue from their checkpoints (`cyseg train --resume`, which
reaches the weights of an uninterrupted run); every evaluation, the choice and the test run again, and the
entry's `resumed` names what was taken over and the code the interrupted run started with.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    MICCAI_40X,
    MICCAI_TEST,
    SHARED_DATA,
    RunClock,
    best_epoch,
    cli_calibrate,
    cli_evaluate,
    fresh_dir,
    interrupted_run,
    mark_started,
    resumable_train,
    resumed_data,
    stems_of,
    write_results,
)

RESULTS = ROOT / "bench" / "results" / "instances.json"
DATASETS = ("glas", "isbi2014", "wbc", "urothelial", "miccai15")
SPLIT_SEED = 0
# published GlaS test figures (test A / test B) and their 60/20 weighting for our 80 mixed images
PUBLISHED = {
    "DCAN": {"a": {"object_f1": 0.912, "object_dice": 0.897}, "b": {"object_f1": 0.716, "object_dice": 0.781}},
    "MILD-Net": {"a": {"object_f1": 0.914, "object_dice": 0.913}, "b": {"object_f1": 0.844, "object_dice": 0.836}},
}
TEST_A, TEST_B = 60, 20
# the recipes tried per data set (`cyseg train` options beside --instances; elsewhere the training
# defaults alone), the incumbent first: on GlaS, the longer training the earlier runs chose, and a
# U-Net twice as wide (four times the weights) that also learns the glands' contours, as DCAN's
# larger network does (the contours alone led within noise over two seeds), and the incumbent with
# its distance targets capped at 50 px, a quarter of the receptive field (`--distance-cap`: glands
# wider than the network sees are one plateau, not split around centres it cannot locate); on wbc, the defaults
# and the same with contours (white cells' lobed nuclei have a distance peak per lobe); the recipes
# weighed in earlier runs and their validation scores are in the git history of
# bench/results/instances.json
RECIPES = {"glas": {"120-epochs": ["--epochs", "120"],
                    "120-epochs-n32-contours": ["--epochs", "120", "--n", "32", "--contours"],
                    "120-epochs-cap50": ["--epochs", "120", "--distance-cap", "50"]},
           "wbc": {"defaults": [], "contours": ["--contours"]}}
# a challenger replaces the incumbent recipe only when its paired lead in validation merit, image by
# image, exceeds this many standard errors: on a few validation images a smaller lead is noise
LEAD_IN_SE = 2.0


class Split(NamedTuple):
    """A data set's three dataset folders and their stems."""

    fit: Path
    val: Path
    test: Path
    stems: dict[str, list[str]]


class Source(NamedTuple):
    """Where a data set's images, class masks and instance labels are, and its classes."""

    root: Path
    masks: str  # folder of the class masks
    classes: list[str] | None  # None: one unnamed foreground
    instances: dict[str, str]  # class (or "") -> folder of its instance labels; missing: connected regions


def write_dataset(out: Path, source: Source, stems: list[str]) -> Path:
    """A dataset folder for `stems` of `source`: links to its images and class masks, its instance
    labels (linked, or the connected regions of each class's mask), and dataset.json."""
    for sub in ("images", "masks", "masks_instance"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    channels = source.classes or [""]
    for stem in stems:
        (out / "images" / f"{stem}.png").symlink_to((source.root / "images" / f"{stem}.png").resolve())
        mask_path = (source.root / source.masks / f"{stem}.png").resolve()
        (out / "masks" / f"{stem}.png").symlink_to(mask_path)
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        for index, channel in enumerate(channels):
            name = f"{stem}.png" if len(channels) == 1 else f"{stem}_{channel}.png"
            if channel in source.instances:
                (out / "masks_instance" / name).symlink_to(
                    (source.root / source.instances[channel] / f"{stem}.png").resolve())
                continue
            inside = mask > 0 if len(channels) == 1 else mask >= index + 1
            _, labels = cv2.connectedComponents(inside.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            cv2.imwrite(str(out / "masks_instance" / name), labels.astype(np.uint16))
    manifest: dict[str, Any] = {"instances": True}
    if source.classes:
        manifest["classes"] = source.classes
    (out / "dataset.json").write_text(json.dumps(manifest))
    return out


def carve(stems: list[str], n: int) -> tuple[list[str], list[str]]:
    """(rest, held out): `n` of `stems` drawn with the fixed split seed."""
    held = sorted(random.Random(SPLIT_SEED).sample(sorted(stems), n))
    return [s for s in stems if s not in held], held


def three_way(work: Path, source: Source, n_val: int, n_test: int) -> Split:
    """Seeded test and validation parts of one folder of images; the rest fits."""
    rest, test = carve(stems_of(source.root), n_test)
    fit, val = carve(rest, n_val)
    return Split(*(write_dataset(work / part, source, stems) for part, stems in
                   (("fit", fit), ("val", val), ("test", test))), {"fit": fit, "val": val, "test": test})


def split_glas(work: Path) -> Split:
    train = Source(SHARED_DATA / "glas" / "train", "masks", None, {"": "masks_instance"})
    test = Source(SHARED_DATA / "glas" / "test", "masks", None, {"": "masks_instance"})
    fit, val = carve(stems_of(train.root), 17)
    test_stems = stems_of(test.root)
    return Split(write_dataset(work / "fit", train, fit), write_dataset(work / "val", train, val),
                 write_dataset(work / "test", test, test_stems), {"fit": fit, "val": val, "test": test_stems})


def split_isbi(work: Path) -> Split:
    source = Source(SHARED_DATA / "isbi2014_synthetic", "masks_3class", ["cell", "nucleus"],
                    {"cell": "cells_instance", "nucleus": "nuclei_instance"})
    return three_way(work, source, 9, 9)


def split_wbc(work: Path) -> Split:
    return three_way(work, Source(SHARED_DATA / "wbc" / "dataset1", "masks_3class", ["cell", "nucleus"], {}), 48, 60)


def split_urothelial(work: Path) -> Split:
    return three_way(work, Source(SHARED_DATA / "urothelial", "masks_3class", ["cell", "nucleus"], {}), 32, 40)


def split_miccai15(work: Path) -> Split:
    """The accuracy benchmark's split: five test tiles; one 20x and one 40x training tile validate."""
    source = Source(SHARED_DATA / "miccai15", "masks", ["nucleus"], {})
    train = [s for s in stems_of(source.root) if s not in MICCAI_TEST]
    _, val_40x = carve([s for s in train if s in MICCAI_40X], 1)
    _, val_20x = carve([s for s in train if s not in MICCAI_40X], 1)
    val = sorted(val_20x + val_40x)
    fit = [s for s in train if s not in val]
    return Split(write_dataset(work / "fit", source, fit), write_dataset(work / "val", source, val),
                 write_dataset(work / "test", source, list(MICCAI_TEST)),
                 {"fit": fit, "val": val, "test": list(MICCAI_TEST)})


SPLITS: dict[str, Callable[[Path], Split]] = {"glas": split_glas, "isbi2014": split_isbi, "wbc": split_wbc,
                                              "urothelial": split_urothelial, "miccai15": split_miccai15}
KEPT = ("object_f1_mean", "object_f1_pooled", "object_f1_glas", "aji_mean", "pq_mean", "dq_mean", "sq_mean",
        "object_dice_mean", "object_hausdorff_mean", "objects_tp", "objects_fp", "objects_fn")


def class_scores(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{class: pixel Dice and IoU, threshold and the instance scores} of a `cyseg evaluate` summary."""
    per_class = summary.get("classes") or {"foreground": summary}
    out = {}
    for name, scores in per_class.items():
        objects = scores.get("instances") or {}
        out[name] = {"n_images": scores["n_images"], "threshold": scores["threshold"], "dice": scores["dice_mean"],
                     "iou": scores["iou_mean"], **{k.removesuffix("_mean"): objects.get(k) for k in KEPT}}
    return out


def published_weighted() -> dict[str, dict[str, float]]:
    """The published GlaS figures weighted 60/20 (test A / test B), as our 80 test images mix them."""
    return {method: {key: round((TEST_A * parts["a"][key] + TEST_B * parts["b"][key]) / (TEST_A + TEST_B), 4)
                     for key in parts["a"]} for method, parts in PUBLISHED.items()}


def merit(scores: dict[str, dict[str, Any]]) -> float:
    """A recipe's figure on validation images ({class or source/class: scores}): the mean of pixel
    Dice and object F1 over them."""
    values = [(s["dice"] + s["object_f1"]) / 2 for s in scores.values()]
    return sum(values) / len(values)


def trained(split: Split, work: Path, label: str, options: list[str], threads: int | None,
            seed: int, resume: bool = False) -> dict[str, Any]:
    """Train one recipe with one seed on the fit images (validation picks epoch, thresholds, separation;
    with `resume`, an interrupted run's training kept or continued); score the validation images without
    and with test-time augmentation (`--tta`: the mean over the 8 rotations and reflections), each with
    settings chosen on them as they are predicted in that view: with TTA, `cyseg calibrate --tta` chooses
    them anew into `<name>-tta.pt` (its smoother probabilities want other thresholds and separation).
    Seed 0's model is `<label>.pt`, the others' `<label>-s<seed>.pt`."""
    name = label if seed == 0 else f"{label}-s{seed}"
    model = work / f"{name}.pt"
    run = resumable_train(split.fit, model, seed, ["--instances", *options], resume=resume, val=split.val,
                          threads=threads)
    with_tta = cli_calibrate(model, split.val, work / f"{name}-tta.pt", ["--tta"])
    run["tta_settings"] = _settings(with_tta)
    for view, scored, folder, extra in (("", model, f"val-{name}", []),
                                        ("_tta", with_tta, f"val-tta-{name}", ["--tta"])):
        val = class_scores(cli_evaluate(scored, split.val, work / folder, ["--no-sweep", *extra]))
        run |= {f"val{view}": val, f"val_merit{view}": merit(val),
                f"val_merit_per_image{view}": image_merits(work / folder / "per_image.csv")}
    return run


def candidate(options: list[str], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One recipe's record from its runs (seeds 0, 1, ...): whether it is used with test-time
    augmentation (when that raises its merit averaged over the seeds), seed 0's validation scores
    without and with it, and in the view used the merit and each image's merit averaged over the
    seeds (a recipe is chosen on them, as it would meet the test images), and with several seeds each
    seed's merit."""
    tta = bool(np.mean([r["val_merit_tta"] for r in runs]) > np.mean([r["val_merit"] for r in runs]))
    view = "_tta" if tta else ""
    merits = [run[f"val_merit_per_image{view}"] for run in runs]
    entry = {"train_args": ["--instances", *options], "train_cpu_s": sum(r["train_cpu_s"] for r in runs),
             "train_wall_s": max(r["train_wall_s"] for r in runs), "tta": tta, "val": runs[0]["val"],
             "val_tta": runs[0]["val_tta"], "tta_settings": runs[0]["tta_settings"],
             "val_merit": float(np.mean([r[f"val_merit{view}"] for r in runs])),
             "val_merit_per_image": {image: float(np.mean([m[image] for m in merits])) for image in merits[0]}}
    if len(runs) > 1:
        entry["val_merit_per_seed"] = [r[f"val_merit{view}"] for r in runs]
    return entry


def image_merits(per_image: Path) -> dict[str, float]:
    """{image: merit} from a `cyseg evaluate` per_image.csv: per image, the mean over its classes of
    the mean of pixel Dice and object F1 (the images a recipe choice pairs)."""
    by_image: dict[str, list[float]] = {}
    with per_image.open(newline="") as fh:
        for row in csv.DictReader(fh):
            by_image.setdefault(row["image"], []).append((float(row["dice"]) + float(row["object_f1"])) / 2)
    return {image: sum(values) / len(values) for image, values in by_image.items()}


def paired_lead(challenger: dict[str, float], incumbent: dict[str, float]) -> dict[str, float]:
    """The challenger's mean lead in merit over the incumbent on the images both were scored on, and its
    standard error (the paired differences' standard deviation over the square root of their count)."""
    diffs = np.array([challenger[i] - incumbent[i] for i in sorted(set(challenger) & set(incumbent))])
    se = float(diffs.std(ddof=1) / np.sqrt(diffs.size)) if diffs.size > 1 else float("inf")
    return {"lead": float(diffs.mean()) if diffs.size else 0.0, "se": se, "images": int(diffs.size)}


def choose_recipe(candidates: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The recipe kept: the first (the incumbent) unless challengers lead it by more than LEAD_IN_SE
    paired standard errors, then the one of those with the best validation merit; and the leads."""
    incumbent, *challengers = candidates
    leads = {label: paired_lead(candidates[label]["val_merit_per_image"],
                                candidates[incumbent]["val_merit_per_image"]) for label in challengers}
    winners = [label for label in challengers if leads[label]["lead"] > LEAD_IN_SE * leads[label]["se"]]
    chosen = max(winners, key=lambda label: candidates[label]["val_merit"]) if winners else incumbent
    return chosen, {"incumbent": incumbent, "lead_in_se": LEAD_IN_SE, "leads": leads}


def refit(split: Split, work: Path, train_args: list[str], validated: Path,
          resume: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train the chosen recipe once more on the fit and validation images together (its epochs, the last
    one kept), with the thresholds, separation and least areas the validated model chose (`--settings-from`).
    The refit is named after the recipe (`<label>-refit.pt`): a resumed run keeps only the chosen recipe's."""
    model = work / f"{validated.stem}-refit.pt"
    run = resumable_train([split.fit, split.val], model, 0, [*train_args, "--settings-from", str(validated)],
                          resume=resume)
    return model, {"train_args": [*train_args, "--settings-from", validated.name], "images": "fit + val",
                   "validated_best_epoch": best_epoch(validated), **run}


def resumed_split(dataset: str, work: Path) -> Split:
    """The split an interrupted run wrote to `work`/data, checked against the one this code draws."""
    return resumed_data(SPLITS[dataset], work, dataset)


def resumed_record(interrupted: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
                   refitted: dict[str, Any] | None) -> dict[str, Any]:
    """What a `--resume` took over from the interrupted run: its start (code, time, CPU) and, per
    training kept or continued, the epochs and wall seconds that ran before."""
    trainings = {label if seed == 0 else f"{label}-s{seed}": record["resumed"]
                 for label, records in runs.items() for seed, record in enumerate(records) if "resumed" in record}
    if refitted and "resumed" in refitted:
        trainings["refit"] = refitted["resumed"]
    return {"interrupted_run": interrupted, "trainings": trainings}


def protocol(seeds: int, refitted: bool, resumed: bool) -> str:
    """The entry's protocol, in words: how the recipe and settings were chosen, what was scored."""
    return (f"`cyseg train --instances` runs (seeds 0..{seeds - 1}) per recipe on the fit images; recipe "
            "(validation merit: mean of Dice and object F1, averaged over the seeds, each recipe with "
            "test-time augmentation where that raises its merit, as it would meet the test images, its "
            "thresholds and separation then chosen on the validation images predicted with it (`cyseg "
            "calibrate --tta`); the "
            f"incumbent, listed first, kept unless a challenger leads it by more than {LEAD_IN_SE:g} paired "
            "standard errors), seed 0's epoch, thresholds and separation parameters chosen on the "
            "validation images; "
            + ("the chosen recipe then retrained on the fit and validation images together with those "
               "settings (`--settings-from`), and only that model scored; " if refitted else "")
            + "test images scored once"
            + ("; resumed (`--resume`) from an interrupted run of this benchmark: the trainings `resumed` "
               "lists were kept or continued from their checkpoints (their `train_cpu_s` and "
               "`train_wall_s` count this run's part), every evaluation, the choice and the test ran "
               "in this run" if resumed else ""))


def benchmark(dataset: str, work: Path, train_options: list[str], with_refit: bool = False,
              seeds: int = 1, resume: bool = False) -> dict[str, Any]:
    """Split, train each recipe with instances (validation-chosen settings) with `seeds` seeds, keep
    the recipe `choose_recipe` names on the validation merits (with `with_refit`, seed 0's model
    retrained on fit + validation images with its settings), score its test images once. With `resume`,
    continue the run interrupted in `work`: its finished trainings kept, the others continued."""
    clock = RunClock()
    work = work / dataset
    if resume:
        interrupted, split = interrupted_run(work), resumed_split(dataset, work)
    else:
        mark_started(fresh_dir(work), clock)
        split = SPLITS[dataset](work / "data")
    recipes = {label: [*options, *train_options] for label, options in RECIPES.get(dataset, {"defaults": []}).items()}
    jobs = [(label, seed) for label in recipes for seed in range(seeds)]
    threads = 1 if len(jobs) > 1 else None  # side by side, one thread each, as many as there are cores
    with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
        futures = {job: pool.submit(trained, split, work, job[0], recipes[job[0]], threads, job[1], resume)
                   for job in jobs}
        runs = {label: [futures[label, seed].result() for seed in range(seeds)] for label in recipes}
    candidates = {label: candidate(recipes[label], runs[label]) for label in recipes}
    chosen, choice = choose_recipe(candidates)
    tta = candidates[chosen]["tta"]
    model = work / f"{chosen}{'-tta' * tta}.pt"
    refitted = refit(split, work, candidates[chosen]["train_args"], model, resume) if with_refit else None
    final = refitted[0] if refitted else model
    test = class_scores(cli_evaluate(final, split.test, work / "test", ["--no-sweep", *["--tta"] * tta]))
    for name, scores in test.items():
        print(f"{dataset:10s} {name:10s} test Dice {scores['dice']:.4f}  object F1 {scores['object_f1']:.4f}  "
              f"AJI {scores['aji']:.4f}  PQ {scores['pq']:.4f}  (recipe {chosen}{', TTA' * tta})", flush=True)
    refit_cpu = refitted[1]["train_cpu_s"] if refitted else 0.0
    entry: dict[str, Any] = {
        "protocol": protocol(seeds, refitted is not None, resume),
        "split": {**{part: len(stems) for part, stems in split.stems.items()}, "val_stems": split.stems["val"]},
        "candidates": candidates, "chosen": chosen, "choice": choice, "train_args": candidates[chosen]["train_args"],
        "separation": _separation(model), "val": candidates[chosen]["val"], "tta": tta,
        "val_tta": candidates[chosen]["val_tta"], "test": test,
        "train_cpu_s": sum(c["train_cpu_s"] for c in candidates.values()) + refit_cpu,
        "train_wall_s": max(c["train_wall_s"] for c in candidates.values())}
    if refitted:
        entry["refit"] = refitted[1]
    if resume:
        entry["resumed"] = resumed_record(interrupted, runs, refitted[1] if refitted else None)
    if dataset == "glas":
        scores = test["foreground"]
        entry["glas"] = {"object_f1": scores["object_f1_glas"], "object_f1_iou_0.5": scores["object_f1"],
                         "object_dice": scores["object_dice"],
                         "object_hausdorff": scores["object_hausdorff"],
                         "published_weighted_60_20": published_weighted()}
    entry["run"] = clock.record()
    return entry


def _separation(model: Path) -> dict[str, Any]:
    """The watershed parameters the validation images chose, as stored in the model file."""
    return _settings(model)["separation"]


def _settings(model: Path) -> dict[str, Any]:
    """The thresholds, separation and least object areas stored in a model file."""
    from segmenter.recalibrate import settings_of
    from unet import load_segmenter

    return settings_of(load_segmenter(model, device="cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--train-options", default="", help="extra `cyseg train` options (e.g. a short smoke run: "
                        "'--epochs 1 --steps-per-epoch 2'); recorded in the results")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "instances")
    parser.add_argument("--seeds", type=int, default=1, help="train each recipe with this many seeds (0, 1, ...) "
                        "and choose the recipe on the merits averaged over them; the settings and the refit are "
                        "seed 0's")
    parser.add_argument("--refit", action="store_true", help="retrain the chosen recipe on the fit and validation "
                        "images with the settings validation chose, and score that model on the test images")
    parser.add_argument("--resume", action="store_true", help="continue a run interrupted in --work (the same "
                        "options): its finished trainings are kept, the others continue from their checkpoints, "
                        "everything else runs again; the results record what was taken over and from which code")
    args = parser.parse_args()
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"{SHARED_DATA} not found: the instance benchmark needs the real data sets")
    chosen = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in chosen if d not in SPLITS]
    if unknown:
        raise SystemExit(f"unknown data set {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for dataset in chosen:
        results[dataset] = benchmark(dataset, args.work, shlex.split(args.train_options), args.refit, args.seeds,
                                     args.resume)
        write_results(RESULTS, results)
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
