"""Iterative data improvement (IDI) benchmark: does `cyseg improve` recover what incomplete
annotation costs?

For each data set (miccai15: train on the ten tiles that are not image02/06/10/13/15, test on
those five; glas: the official train/test split) and each seed s:

  (a) full        `cyseg train` on the complete masks;
  (b) incomplete  a fraction p of the annotated objects (8-connected components of each mask) is
                  removed at random (`remove_objects`, seeded by (s, p)), and a model is trained on
                  those masks: this is iteration 1 of (c), whose model is trained exactly like
                  `cyseg train` (fresh weights drawn with seed s, same options);
  (c) IDI K       `cyseg improve` on the incomplete masks with up to K+1 iterations; "IDI K" is the
                  model of iteration K+1, trained on the dataset version improved K times. Its default
                  rule (`--mode objects`); `--idi-args '--mode or'` measures the method's OR. It stops
                  when the validation IoU stops rising; "IDI" is the iteration it names best.

A share `--val-fraction` of the training images (drawn per seed) is held out as the validation set
of every model: complete masks for (a), the same removal as the training masks for (b) and (c).

All models are scored on the test split with `cyseg evaluate` (IoU and Dice at the model's
threshold, full resolution), and also on the validation images' complete masks (`val_iou`): the
figures a change to the IDI method is chosen on (`val_recovery`: the recovery on them). By default
every IDI iteration trains from fresh weights (`--from-scratch`), so (a), (b) and every IDI K get
the same training budget and only the data differ; `--warm-start` uses the method's continued
training instead. The summary gives mean ± std over seeds and, at p = 0.5, the fraction of the IoU
lost between (a) and (b) that IDI recovers, (IoU_IDI - IoU_b) / (IoU_a - IoU_b), whether it reaches
one half, whether IDI ends below (b) by more than (b)'s std over seeds, and how many models
collapsed (predicted on fewer than `segmenter.evaluation.NEAR_EMPTY` of the annotated test pixels, the
training's collapse guard's share). CPU time (this process and its children) is recorded per stage. Every
run starts from an empty work folder and writes its results file whole: no model, data set or
evaluation of an earlier run is reused, so every figure was measured by the code version the file
records.

    python bench/idi.py [--datasets miccai15,glas] [--p 0.25,0.5,0.75] [--seeds 3] [--iterations 3]
                        [--val-fraction 0.2] [--epochs 30] [--steps-per-epoch 20] [--batch 8] [--crop 256]
                        [--n 16] [--depth 5] [--warm-start] [--device auto] [--work bench/work/idi]
                        [--out bench/results/idi.json]
    python bench/idi.py --quick [--out /tmp/idi_quick.json]   # the whole pipeline on a tiny budget
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    MICCAI_TEST,
    SHARED_DATA,
    RunClock,
    apply_quick,
    fresh_dir,
    link_dataset,
    run_child,
    stems_of,
    write_results,
)
from segmenter.evaluation import NEAR_EMPTY  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "idi.json"
COLLAPSED = (f"predicted on fewer than {NEAR_EMPTY * 100:g} % of the annotated test pixels, as the collapse guard of "
             "`segmenter.evaluation` counts a class collapsed")
QUICK = {"datasets": "miccai15", "p": "0.5", "seeds": 1, "iterations": 1, "epochs": 1, "steps_per_epoch": 2,
         "batch": 2, "crop": 64, "n": 4, "depth": 3, "workers": 0, "device": "cpu"}


# ---------------------------------------------------------------- the tested part

def remove_objects(mask: np.ndarray, p: float, rng: np.random.Generator, connectivity: int = 8) -> np.ndarray:
    """A copy of `mask` with round(p * n) of its n connected foreground components (halves rounded
    up) set to background, chosen uniformly at random with `rng`. Never adds a pixel; the remaining
    components are unchanged."""
    import cv2

    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p} is outside [0, 1]")
    fg = (np.asarray(mask) > 0).astype(np.uint8)
    n_labels, labels = cv2.connectedComponents(fg, connectivity=connectivity)
    n = n_labels - 1
    k = int(np.floor(p * n + 0.5))
    out = np.array(mask, copy=True)
    if k:
        chosen = rng.choice(np.arange(1, n_labels), size=k, replace=False)
        out[np.isin(labels, chosen)] = 0
    return out


def count_objects(mask: np.ndarray, connectivity: int = 8) -> int:
    import cv2

    return cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=connectivity)[0] - 1


# ---------------------------------------------------------------- data

def splits(dataset: str, work: Path) -> tuple[Path, Path]:
    """(train, test) dataset folders of a data set."""
    if dataset == "miccai15":
        src = SHARED_DATA / "miccai15"
        stems = stems_of(src)
        return (link_dataset(work / "miccai15" / "train", src, [s for s in stems if s not in MICCAI_TEST]),
                link_dataset(work / "miccai15" / "test", src, list(MICCAI_TEST)))
    if dataset == "glas":
        glas = SHARED_DATA / "glas"
        return tuple(link_dataset(work / "glas" / side, glas / side, stems_of(glas / side))
                     for side in ("train", "test"))  # type: ignore[return-value]
    raise SystemExit(f"unknown dataset {dataset}; use miccai15 or glas")


def incomplete_dataset(train: Path, out: Path, p: float, seed: int) -> dict[str, Any]:
    """Write `out`: the images of `train` (links) and masks with a fraction p of the objects removed.
    Returns the removal statistics (also in its dataset.json)."""
    from segmenter.io.dataset import read_mask
    from segmenter.io.images import write_png

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    (tmp / "images").mkdir()
    (tmp / "masks").mkdir()
    rng = np.random.default_rng([seed, round(p * 1000)])
    objects = removed = px = px_removed = 0
    for stem in stems_of(train):
        (tmp / "images" / f"{stem}.png").symlink_to((train / "images" / f"{stem}.png").resolve())
        mask = read_mask(train / "masks" / f"{stem}.png")
        cut = remove_objects(mask, p, rng)
        n, m = count_objects(mask), count_objects(cut)
        objects, removed = objects + n, removed + n - m
        px, px_removed = px + int(mask.sum()), px_removed + int(mask.sum() - cut.sum())
        write_png(tmp / "masks" / f"{stem}.png", cut * 255)
    removal = {"p": p, "seed": seed, "objects": objects, "objects_removed": removed,
               "fraction_objects_removed": removed / max(objects, 1), "fg_pixels": px,
               "fraction_pixels_removed": px_removed / max(px, 1)}
    (tmp / "dataset.json").write_text(json.dumps({"format": "cyseg-dataset/1", "parent": str(train.resolve()),
                                                  "iteration": None, "removal": removal, "items": {}}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return removal


def incomplete_split(split: tuple[Path, Path], out: Path, p: float, seed: int) -> tuple[Path, dict[str, Any]]:
    """`out`/train and `out`/val: the (training, validation) folders of `split` with the same removal
    (`incomplete_dataset`); returns `out` and the training folder's removal statistics."""
    removal = incomplete_dataset(split[0], out / "train", p, seed)
    incomplete_dataset(split[1], out / "val", p, seed)
    return out, removal


def mask_quality(candidate: Path, truth: Path) -> dict[str, float]:
    """Pixel agreement of a dataset version's masks with the complete annotation (all images pooled):
    IoU, precision (how much of the mask is real foreground) and recall (how much of the real
    foreground the mask holds). Shows what each IDI iteration did to the training data."""
    from segmenter.io.dataset import read_mask

    return pooled_agreement((read_mask(candidate / "masks" / f"{stem}.png") > 0,
                             read_mask(truth / "masks" / f"{stem}.png") > 0) for stem in stems_of(truth))


def pooled_agreement(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """IoU, precision and recall of (mask, complete mask) bool pairs, all pixels pooled (1.0 where a
    denominator is empty)."""
    inter = cand = true = 0
    for mask, gt in pairs:
        inter, cand, true = inter + int((gt & mask).sum()), cand + int(mask.sum()), true + int(gt.sum())
    union = cand + true - inter
    return {"iou": inter / union if union else 1.0, "precision": inter / cand if cand else 1.0,
            "recall": inter / true if true else 1.0}


# ---------------------------------------------------------------- the real command lines

def _cli(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", f"{name}.cli"]


def run(cmd: list[str], log: Path) -> float:
    """Run a command (output appended to `log`); returns its own CPU seconds (right beside other runs too)."""
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        code, cpu = run_child(cmd, stdout=fh, stderr=fh)
    if code != 0:
        raise SystemExit(f"command failed (exit {code}), see {log}: {' '.join(cmd)}")
    return cpu


def train_args(args: argparse.Namespace, seed: int) -> list[str]:
    return ["--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch), "--batch", str(args.batch),
            "--crop", str(args.crop), "--n", str(args.n), "--depth", str(args.depth), "--seed", str(seed),
            "--workers", str(args.workers), "--device", args.device]


def evaluate(model: Path, test: Path, out: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    cpu = run([*_cli("cyseg"), "-q", "evaluate", str(model), str(test), "--out", str(out), "--no-sweep",
               "--device", args.device], log)
    s = json.loads((out / "summary.json").read_text())
    return {"iou": s["iou_mean"], "dice": s["dice_mean"], "n_test": s["n_images"], "eval_cpu_s": cpu,
            "predicted_share": (s["tp"] + s["fp"]) / max(s["tp"] + s["fn"], 1)}


def scored(model: Path, test: Path, val: Path, out: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """`evaluate` on the test images, with the IoU on the validation images' complete masks beside it
    (`val_iou`: what a change to the method is chosen on, never the test figures)."""
    result = evaluate(model, test, out, args, log)
    result["val_iou"] = evaluate(model, val, out.with_name(out.name + "_val"), args, log)["iou"]
    return result


def carve_validation(train: Path, out: Path, fraction: float, seed: int) -> tuple[Path, Path]:
    """(training, validation) folders of links under `out`: round(fraction * n) of the n items of
    `train` (at least one), drawn with `seed`, held out as the validation set."""
    stems = stems_of(train)
    n_val = min(len(stems) - 1, max(1, round(fraction * len(stems))))
    held = set(np.random.default_rng([seed, 7]).choice(stems, n_val, replace=False).tolist())
    return (link_dataset(out / "train", train, [s for s in stems if s not in held]),
            link_dataset(out / "val", train, sorted(held)))


def one_p(dataset: str, split: tuple[Path, Path], test: Path, seed: int, p: float, args: argparse.Namespace,
          work: Path, log: Path) -> dict[str, Any]:
    """One seed at one p: the incomplete masks (training and validation), `cyseg improve` on them
    (stopping when the validation IoU stops rising), and the test scores of its iteration-1 model
    (incomplete), of every IDI K it ran, and of the iteration it names best (`idi`)."""
    train, val = split
    tag = f"p{p:g}"
    runs = work / "runs" / dataset / f"seed{seed}" / tag
    incomplete, data = incomplete_split(split, work / "data" / dataset / "incomplete" / tag / f"seed{seed}", p, seed)
    idi_out = runs / "idi"
    cmd = [*_cli("cyseg"), "-q", "improve", str(incomplete / "train"), "--val", str(incomplete / "val"),
           "--iterations", str(args.iterations + 1), "--out", str(idi_out), *train_args(args, seed),
           "--warm-start" if args.warm_start else "--from-scratch", *args.idi_args]
    cpu = run(cmd, log)
    report = json.loads((idi_out / "report.json").read_text())
    ran = len(report["iterations"])
    entry: dict[str, Any] = {"removal": data, "improve_cpu_s": cpu, "iterations": report["iterations"],
                             "best_iteration": report["best_iteration"], "stopped_early": report["stopped_early"],
                             "training_masks_vs_complete": [mask_quality(incomplete / "train", train)] + [
                                 mask_quality(idi_out / f"iter{k}", train) for k in range(1, ran)]}
    for k in range(ran):
        entry["incomplete" if k == 0 else f"idi_K{k}"] = scored(idi_out / "models" / f"iter{k + 1}.pt", test, val,
                                                               runs / f"eval_iter{k + 1}", args, log)
    best = report["best_iteration"]
    entry["idi"] = {**(entry["incomplete"] if best == 1 else entry[f"idi_K{best - 1}"]), "K": best - 1}
    return entry


def one_seed(dataset: str, train: Path, test: Path, seed: int, args: argparse.Namespace, work: Path,
             log: Path) -> dict[str, Any]:
    """All runs of one data set and seed: full, and per p incomplete + IDI, all with the same
    validation images carved from the training images (complete masks for full, incomplete for the others)."""
    split = carve_validation(train, work / "data" / dataset / f"seed{seed}", args.val_fraction, seed)
    full_model = work / "runs" / dataset / f"seed{seed}" / "full" / "model.pt"
    full_model.parent.mkdir(parents=True)
    cpu = run([*_cli("cyseg"), "-q", "train", str(split[0]), "--val", str(split[1]), "--out", str(full_model),
               *train_args(args, seed)], log)
    out: dict[str, Any] = {"seed": seed, "full": {**scored(full_model, test, split[1], full_model.parent / "eval",
                                                           args, log), "train_cpu_s": cpu}, "p": {}}
    out["cpu_s"] = cpu + out["full"]["eval_cpu_s"]
    for p in args.p:
        entry = out["p"][f"p{p:g}"] = one_p(dataset, split, test, seed, p, args, work, log)
        out["cpu_s"] += entry["improve_cpu_s"] + sum(v["eval_cpu_s"] for k, v in entry.items()
                                                     if k == "incomplete" or k.startswith("idi_K"))
        print(f"{dataset:9s} seed {seed} p{p:g} full IoU {out['full']['iou']:.4f}  incomplete "
              f"{entry['incomplete']['iou']:.4f}  " + "  ".join(
                  f"IDI{k} {entry[f'idi_K{k}']['iou']:.4f}" for k in range(1, args.iterations + 1)
                  if f"idi_K{k}" in entry) + f"  chosen K={entry['idi']['K']} {entry['idi']['iou']:.4f}", flush=True)
    return out


def _ms(values: list[float]) -> dict[str, float]:
    a = np.array(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "n": len(values)}


def _recovery(full: dict[str, Any], incomplete: dict[str, Any], idi: dict[str, Any], metric: str) -> float | None:
    """The share of `metric` lost between (a) and (b) that `idi` recovers, (idi - b) / (a - b); None
    when it was not measured on all three, when nothing was lost, or when not every seed ran `idi`."""
    if not all(metric in x for x in (full, incomplete, idi)):
        return None
    lost = full[metric]["mean"] - incomplete[metric]["mean"]
    gained = idi[metric]["mean"] - incomplete[metric]["mean"]
    return gained / lost if lost > 0 and idi[metric]["n"] == incomplete[metric]["n"] else None


def aggregate(per_seed: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    full = {m: _ms([r["full"][m] for r in per_seed]) for m in ("iou", "dice", "val_iou")
            if all(m in r["full"] for r in per_seed)}
    result: dict[str, Any] = {"full": full, "p": {}}
    for p in args.p:
        tag = f"p{p:g}"
        entry: dict[str, Any] = {
            "fraction_objects_removed": _ms([r["p"][tag]["removal"]["fraction_objects_removed"] for r in per_seed]),
            "fraction_pixels_removed": _ms([r["p"][tag]["removal"]["fraction_pixels_removed"] for r in per_seed]),
            "incomplete": {m: _ms([r["p"][tag]["incomplete"][m] for r in per_seed]) for m in ("iou", "dice", "val_iou")
                           if all(m in r["p"][tag]["incomplete"] for r in per_seed)},
            "recovery": {}}
        lost = full["iou"]["mean"] - entry["incomplete"]["iou"]["mean"]
        entry["iou_lost"] = lost
        for key in ("idi", *(f"idi_K{k}" for k in range(1, args.iterations + 1))):
            ran = [r["p"][tag][key] for r in per_seed if key in r["p"][tag]]
            if not ran:
                continue
            entry[key] = {m: _ms([r[m] for r in ran]) for m in ("iou", "dice", "val_iou") if all(m in r for r in ran)}
            entry["recovery"][key] = _recovery(full, entry["incomplete"], entry[key], "iou")
            entry.setdefault("val_recovery", {})[key] = _recovery(full, entry["incomplete"], entry[key], "val_iou")
        entry["chosen_K"] = [r["p"][tag]["idi"]["K"] for r in per_seed]
        entry["recovers_half"] = None if entry["recovery"]["idi"] is None else entry["recovery"]["idi"] >= 0.5
        entry["never_below"] = (entry["idi"]["iou"]["mean"]
                                >= entry["incomplete"]["iou"]["mean"] - entry["incomplete"]["iou"]["std"])
        entry["collapsed_models"] = sum(1 for r in per_seed for key, v in r["p"][tag].items()
                                        if (key == "incomplete" or key.startswith("idi_K"))
                                        and v["predicted_share"] < NEAR_EMPTY)
        if lost <= 0:
            entry["note"] = "no IoU lost between full and incomplete masks: recovery undefined"
        result["p"][tag] = entry
    return result


def add_budget_options(parser: argparse.ArgumentParser, epochs: int, crop: int) -> None:
    """The options `train_args` and `carve_validation` read: every model's training budget and size,
    and the validation share."""
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=crop)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of the training images held out as validation (epoch, threshold, IDI stop)")


def parse_args() -> argparse.Namespace:
    """The command line, checked; --quick fills in the tiny budget for what was not given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="miccai15,glas")
    parser.add_argument("--p", default="0.25,0.5,0.75", help="fractions of objects removed, comma-separated")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3, help="IDI K evaluated for K = 1..this")
    add_budget_options(parser, epochs=30, crop=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1,
                        help="(data set, seed) runs at a time; give each its threads with OMP_NUM_THREADS")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warm-start", action="store_true",
                        help="IDI iterations continue the previous model (the method) instead of fresh weights")
    parser.add_argument("--idi-args", default="", help="extra `cyseg improve` options, e.g. '--no-normalize'")
    parser.add_argument("--work", type=Path, default=None,
                        help="[default: bench/work/idi; --quick: a temporary folder] emptied first")
    parser.add_argument("--out", type=Path, default=None, help="[default: bench/results/idi.json; --quick: in --work]")
    parser.add_argument("--quick", action="store_true", help="tiny budget on miccai15, p=0.5, one seed, K=1")
    args = parser.parse_args()
    if args.quick:
        apply_quick(args, QUICK, sys.argv[1:])
    args.idi_args = shlex.split(args.idi_args)
    args.p = [float(v) for v in str(args.p).split(",")]
    if any(not 0 < p < 1 for p in args.p):
        raise SystemExit("--p values must be in (0, 1)")
    if args.seeds < 1 or args.iterations < 1:
        raise SystemExit("--seeds and --iterations must be >= 1")
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"{SHARED_DATA} not found: the IDI benchmark needs the real data sets")
    return args


def run_all(args: argparse.Namespace, work: Path, out_path: Path) -> dict[str, Any]:
    """Every data set and seed from scratch in `work`, `--jobs` (data set, seed) runs at a time; the
    results file is rewritten as each finishes (with every data set all of whose seeds are done)."""
    clock = RunClock()
    results: dict[str, Any] = {
        "benchmark": "idi", "quick": args.quick,
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
        "protocol": "(a) full masks, (b) p of the objects removed (= IDI iteration 1), (c) IDI K = model of "
                    "iteration K+1, and IDI = the iteration `cyseg improve` names best when it stops (validation "
                    "IoU no longer rising); validation images carved from the training images (complete masks for "
                    "a, incomplete for b and c); test IoU at the model threshold via cyseg evaluate; val_iou: the "
                    "models on the validation images' complete masks (for choosing the method, not the test)",
        "collapsed_definition": COLLAPSED, "datasets": {}}
    datasets = args.datasets.split(",")
    data = {dataset: splits(dataset, work / "data") for dataset in datasets}
    (work / "logs").mkdir()
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # the work runs in child processes
        futures = {pool.submit(one_seed, dataset, *data[dataset], seed, args, work,
                               work / "logs" / f"{dataset}_seed{seed}.log"): (dataset, seed)
                   for dataset in datasets for seed in range(args.seeds)}
        for future in as_completed(futures):
            runs[futures[future]] = future.result()
            for dataset in datasets:
                if dataset not in results["datasets"] and all((dataset, s) in runs for s in range(args.seeds)):
                    per_seed = [runs[(dataset, s)] for s in range(args.seeds)]
                    results["datasets"][dataset] = {**aggregate(per_seed, args), "runs": per_seed,
                                                    "seeds": args.seeds, "p_values": args.p,
                                                    "iterations": args.iterations,
                                                    "cpu_s": sum(r["cpu_s"] for r in per_seed)}
            results["run"] = clock.record()
            write_results(out_path, {**results, "complete": len(runs) == len(futures)})
    return results


def print_summary(results: dict[str, Any], out_path: Path) -> None:
    """The test IoU table of every data set and p, and the recovery of the lost IoU."""
    quick = " (QUICK: tiny budget, numbers meaningless)" if results["quick"] else ""
    print(f"\nIDI benchmark{quick}: test IoU, mean ± std over {results['settings']['seeds']} seed(s)")
    for dataset, r in results["datasets"].items():
        print(f"{dataset}: full masks {r['full']['iou']['mean']:.4f} ± {r['full']['iou']['std']:.4f}")
        for tag, e in r["p"].items():
            idi = "  ".join(f"IDI{k[5:]} {e[k]['iou']['mean']:.4f} ± {e[k]['iou']['std']:.4f}"
                            for k in e if k.startswith("idi_K"))
            rec = "  ".join(f"{k}: {v:.2f}" if v is not None else f"{k}: n/a" for k, v in e["recovery"].items())
            print(f"  {tag:6s} ({e['fraction_objects_removed']['mean']:.2f} of objects removed) incomplete "
                  f"{e['incomplete']['iou']['mean']:.4f} ± {e['incomplete']['iou']['std']:.4f}  {idi}  "
                  f"chosen (K={e['chosen_K']}) {e['idi']['iou']['mean']:.4f} ± {e['idi']['iou']['std']:.4f}")
            print(f"         recovery of the lost IoU {rec}; >= half: {e['recovers_half']}; never below: "
                  f"{e['never_below']}; collapsed models: {e['collapsed_models']}"
                  + (f" ({e['note']})" if "note" in e else ""))
    run = results["run"]
    print(f"CPU {run['cpu_s'] / 60:.1f} min, wall {run['wall_s'] / 60:.1f} min; results in {out_path}")


def main() -> None:
    args = parse_args()
    work = args.work or (Path(tempfile.mkdtemp(prefix="idi_quick_")) if args.quick else ROOT / "bench" / "work" / "idi")
    out_path = args.out or (work / "idi.json" if args.quick else RESULTS)
    fresh_dir(work)
    results = run_all(args, work, out_path)
    print_summary(results, out_path)


if __name__ == "__main__":
    main()
