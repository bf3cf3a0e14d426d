"""How the IDI growth rule's settings are chosen: the masks each variant of `cyseg improve`'s
objects rule would grow, against the complete annotation of the training images.

For each data set and seed, bench/idi.py's split (the same validation images carved from the
training images, the same objects removed at random with probability p) and its iteration-1 model
(`cyseg train` on the incomplete masks, the same budget and seed). The model predicts the training
images once (`cyseg improve`'s normalised post-processing); every variant of `idi_rules.GrowthRule`
(one setting changed from the default at a time, and the method's OR) grows the incomplete masks
from those predictions as `cyseg improve` does (the level taken over all the expert objects), and
the grown masks are compared with the complete masks, all images pooled: IoU, precision (how much
of the mask is real foreground) and recall. The test images play no part. A rule's settings are
chosen on the mean IoU over seeds and data sets at p = 0.5; precision is watched because a rule
that adds the model's false positives teaches the next model them.

    python bench/idi_rules.py [--datasets miccai15,glas] [--p 0.5] [--seeds 3] [--jobs 2]
    python bench/idi_rules.py --quick [--out /tmp/idi_rules_quick.json]   # the pipeline on a tiny budget
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RunClock, apply_quick, fresh_dir, write_results  # noqa: E402
from bench.idi import (  # noqa: E402
    _cli,
    _ms,
    add_budget_options,
    carve_validation,
    incomplete_split,
    pooled_agreement,
    run,
    splits,
    train_args,
)

RESULTS = ROOT / "bench" / "results" / "idi_rules.json"
QUICK = {"datasets": "miccai15", "p": "0.5", "seeds": 1, "epochs": 1, "steps_per_epoch": 2, "batch": 2, "crop": 64}
#: name -> the GrowthRule fields it changes from the default
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "size_range 8": {"size_range": 8.0}, "size_range 16": {"size_range": 16.0},
    "size_range 64": {"size_range": 64.0}, "no size bound": {"size_range": 1e9},
    "quantile 0.1": {"quantile": 0.1}, "quantile 0.5": {"quantile": 0.5},
    "opening 0.2": {"opening": 0.2}, "opening 0.6": {"opening": 0.6},
    "margin 0": {"margin": 0}, "margin 5": {"margin": 5},
    "or (the method)": {"mode": "or"},
}


def train_incomplete(dataset: str, train: Path, seed: int, p: float, args: argparse.Namespace,
                     work: Path) -> tuple[Path, Path, Path, float]:
    """(incomplete training folder, complete training folder, iteration-1 model, its training CPU s)."""
    split = carve_validation(train, work / "data" / dataset / f"seed{seed}", args.val_fraction, seed)
    incomplete, _ = incomplete_split(split, work / "data" / dataset / "incomplete" / f"p{p:g}" / f"seed{seed}", p, seed)
    model = work / "models" / dataset / f"seed{seed}_p{p:g}.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    cpu = run([*_cli("cyseg"), "-q", "train", str(incomplete / "train"), "--val", str(incomplete / "val"),
               "--out", str(model), *train_args(args, seed)], work / "logs" / f"{model.stem}_{dataset}.log")
    return incomplete / "train", split[0], model, cpu


def predictions(model: Path, incomplete: Path, complete: Path) -> list[tuple[np.ndarray, ...]]:
    """Per training image: (incomplete mask, complete mask, probabilities, `cyseg improve`'s post-processed mask)."""
    from cyseg.improve import ImproveOptions, idi_prediction
    from segmenter.io.dataset import open_dataset, read_mask
    from unet import load_segmenter

    seg, opts = load_segmenter(model, device="cpu"), ImproveOptions(iterations=1)
    out = []
    for item in open_dataset(incomplete).items:
        gt = read_mask(item.mask).astype(bool)
        mask, probs, _ = idi_prediction(seg, item.image, opts)
        out.append((gt, read_mask(complete / "masks" / item.mask.name, gt.shape) > 0, probs, mask))
    return out


def grown_quality(images: list[tuple[np.ndarray, ...]], changes: dict[str, Any]) -> dict[str, float]:
    """Pooled IoU / precision / recall against the complete masks of the masks one rule variant grows."""
    from cyseg.idi_rules import GrowthRule, addable, expert_means, typical_area

    rule = dataclasses.replace(GrowthRule(), **changes).check()
    area = typical_area([gt for gt, *_ in images])
    found = [addable(gt, pred, probs, rule, area) for gt, _, probs, pred in images]
    level = rule.level(np.concatenate([expert_means(gt, probs) for gt, _, probs, _ in images]))
    agreement = pooled_agreement((gt | cand.added(gt.shape, level), full)
                                 for (gt, full, _, _), cand in zip(images, found, strict=True))
    return {**agreement, "level": level}


def one_run(dataset: str, train: Path, seed: int, p: float, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One data set, seed and p: the iteration-1 model and every variant's grown masks."""
    incomplete, complete, model, train_cpu = train_incomplete(dataset, train, seed, p, args, work)
    images = predictions(model, incomplete, complete)
    variants = {name: grown_quality(images, changes) for name, changes in VARIANTS.items()}
    print(f"{dataset:9s} seed {seed} p{p:g}  " + "  ".join(
        f"{name} {v['iou']:.3f}" for name, v in variants.items() if name in ("default", "size_range 8")), flush=True)
    return {"dataset": dataset, "seed": seed, "p": p, "train_cpu_s": train_cpu, "images": len(images),
            "variants": variants}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """data set -> p -> variant -> mean ± std over seeds of IoU, precision and recall."""
    out: dict[str, Any] = {}
    for r in runs:
        out.setdefault(r["dataset"], {}).setdefault(f"p{r['p']:g}", []).append(r["variants"])
    return {dataset: {p: {name: {m: _ms([s[name][m] for s in seeds]) for m in ("iou", "precision", "recall")}
                          for name in VARIANTS} for p, seeds in by_p.items()} for dataset, by_p in out.items()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="miccai15,glas")
    parser.add_argument("--p", default="0.5", help="fractions of objects removed, comma-separated")
    parser.add_argument("--seeds", type=int, default=3)
    add_budget_options(parser, epochs=12, crop=128)  # the budget of bench/idi.py's recorded run
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (OMP_NUM_THREADS each)")
    parser.add_argument("--work", type=Path, default=None, help="[default: bench/work/idi_rules] emptied first")
    parser.add_argument("--out", type=Path, default=None, help="[default: bench/results/idi_rules.json]")
    parser.add_argument("--quick", action="store_true", help="tiny budget on miccai15, p=0.5, one seed")
    args = parser.parse_args()
    if args.quick:
        apply_quick(args, QUICK, sys.argv[1:])
    args.p = [float(v) for v in str(args.p).split(",")]
    args.workers, args.device = 1, "cpu"
    return args


def main() -> None:
    args = parse_args()
    work = fresh_dir(args.work or (Path(tempfile.mkdtemp(prefix="idi_rules_")) if args.quick
                                   else ROOT / "bench" / "work" / "idi_rules"))
    out_path = args.out or (work / "idi_rules.json" if args.quick else RESULTS)
    (work / "logs").mkdir()
    clock = RunClock()
    trains = {dataset: splits(dataset, work / "data")[0] for dataset in args.datasets.split(",")}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda job: one_run(*job, args, work),
                             [(d, t, s, p) for d, t in trains.items() for s in range(args.seeds) for p in args.p]))
    results = {"benchmark": "idi_rules", "quick": args.quick,
               "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out")},
               "variants": VARIANTS, "summary": summarise(runs), "runs": runs,
               "run": clock.record()}
    write_results(out_path, results)
    for dataset, by_p in results["summary"].items():
        for p, variants in by_p.items():
            print(f"\n{dataset} {p}: grown training masks against the complete ones (mean over seeds)")
            for name, v in variants.items():
                print(f"  {name:16s} IoU {v['iou']['mean']:.3f} ± {v['iou']['std']:.3f}  precision "
                      f"{v['precision']['mean']:.3f}  recall {v['recall']['mean']:.3f}")
    print(f"results: {out_path}")


if __name__ == "__main__":
    main()
