"""Active-learning benchmark: does annotating what `cyseg suggest` picks beat annotating at random?

Pool-based simulation, per data set and seed s: the pool is the training images (their masks are
the expert's answers, revealed only for the images "annotated" so far); the test images are scored
after every round.

  round 1   a seeded random `--start` fraction of the pool is labelled; a model is trained on it
            (one model, the same for every strategy);
  round r   `--step` more of the pool is labelled, chosen either
              random   at random (seeded by s and r), or
              suggest  by `cyseg suggest --uncertainty-weight W --density-weight D` with round r-1's
                       model on the pool (labelled images have a mask: left out of the candidates, as an
                       annotator's folder would be, and covering their look-alikes); one strategy per
                       `--weights` entry W or W:D (`suggest_w<W>`, `suggest_w<W>_d<D>` when there are
                       several),
            and a fresh model is trained on all labelled images with the same budget as every
            other round (same epochs, steps, batch and crop: only the labels differ);
  full      one model trained on the whole pool with that budget: the reference.

Each model is scored with `cyseg evaluate` on the test images (IoU at the model's threshold), or with
`--holdout F` on a seeded fraction F of the pool held out from it (validation images carved from the
training images: where the suggest settings are chosen, `bench/results/active_validation.json`); with
`--holdout-by appearance` the held-out images are, per seed, those that look most like a seeded pool image,
a new patient's look that the pool lacks, as the test images' may be (`active_validation_appearance.json`).
`--score-unlabelled` also scores every round's models on the pool images that no strategy has labelled by
then: validation images from the training images that each round's models all meet unseen. With
`--replicates N` every strategy's labelled set of a round after the first is trained N times, replicate k
with training seed s + 100k (the same k in every strategy, so the pairs stay paired), and the round's scores
are their means: what the choice of images does, apart from one training's luck. The
summary gives per strategy and round the mean ± std test IoU over seeds, whether suggest beats
random at every round on the mean, and the labelled fraction at which each strategy first reaches
98 % of the full-data IoU (mean over seeds). A PNG of the curves goes beside the JSON. The data sets
of an earlier results file measured with the same settings stay in it beside this run's, each with
its own run record. `--resume` continues a run interrupted in the same --work folder (a session's end):
finished trainings are kept, the others continue from their checkpoints, every suggestion and score runs
again, and each data set's `resumed` names the trainings taken over.

    python bench/active.py [--datasets glas,wbc] [--seeds 3] [--start 0.1] [--step 0.1] [--rounds 5]
                           [--epochs 15] [--steps-per-epoch 20] [--views 4] [--score-unlabelled]
                           [--weights W[:D],...] [--replicates 1] [--jobs 1] [--work DIR] [--out JSON]
    python bench/active.py --quick          # the whole pipeline on a tiny budget (not a result)

Data: glas = GlaS official train (pool, 85 images) / test (80); wbc = wbc/dataset1, a seeded 60
images held out for test, the other 240 the pool. Every run but a `--resume` starts from an empty work
folder; each writes its results file whole.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    SHARED_DATA,
    RunClock,
    apply_quick,
    cli_evaluate,
    fresh_dir,
    interrupted_run,
    link_dataset,
    mark_started,
    resumable_train,
    stems_of,
    write_results,
)
from bench.report import strategy_names  # noqa: E402

TARGET = 0.98  # fraction of the full-data IoU a strategy must reach
REPLICATE_SEED_STEP = 100  # replicate k of a round trains with the seed's training seed + this x k
QUICK = {"datasets": "wbc", "seeds": 1, "rounds": 2, "epochs": 1, "steps_per_epoch": 2, "batch": 2, "crop": 96,
         "views": 2, "start": 0.05, "step": 0.05}


def pools(dataset: str) -> tuple[Path, list[str], Path, list[str]]:
    """(pool folder, pool stems, test folder, test stems) of a data set."""
    if dataset == "glas":
        root = SHARED_DATA / "glas"
        return root / "train", stems_of(root / "train"), root / "test", stems_of(root / "test")
    if dataset == "wbc":
        root = SHARED_DATA / "wbc" / "dataset1"
        stems = stems_of(root)
        test = sorted(random.Random(0).sample(stems, 60))
        return root, [s for s in stems if s not in test], root, test
    raise SystemExit(f"unknown data set {dataset!r}; use glas or wbc")


def pool_folder(out: Path, source: Path, pool: list[str], labelled: list[str]) -> Path:
    """The annotator's folder (written anew): every pool image, masks only for the labelled ones (so
    `cyseg suggest` leaves them out)."""
    (fresh_dir(out) / "images").mkdir()
    (out / "masks").mkdir()
    for stem in pool:
        (out / "images" / f"{stem}.png").symlink_to((source / "images" / f"{stem}.png").resolve())
    for stem in labelled:
        (out / "masks" / f"{stem}.png").symlink_to((source / "masks" / f"{stem}.png").resolve())
    return out


def suggested(model: Path, pool: Path, count: int, views: int, weights: tuple[float, float], out: Path) -> list[str]:
    """The stems `cyseg suggest` picks from the pool folder with `weights` (its uncertainty and density weights)."""
    subprocess.run(["cyseg", "-q", "suggest", str(model), str(pool), "--count", str(count), "--views", str(views),
                    "--uncertainty-weight", f"{weights[0]:g}", "--density-weight", f"{weights[1]:g}", "--out",
                    str(out)], check=True, stdout=subprocess.DEVNULL)
    with open(out.with_suffix(".csv"), newline="") as handle:
        return [Path(row["source"]).stem for row in csv.DictReader(handle)]


def train_and_score(source: Path, stems: list[str], test: Path, work: Path, seed: int, options: list[str],
                    resume: bool = False) -> dict[str, Any]:
    """A fresh model on `stems` of `source`, linked anew into `work`/data (the round budget; with `resume`,
    an interrupted run's model kept or continued), scored on the test images."""
    model = work / "model.pt"
    run = resumable_train(link_dataset(fresh_dir(work / "data"), source, stems), model, seed, options, resume=resume)
    summary = cli_evaluate(model, test, work / "eval", ["--no-sweep"])
    return {"model": model, "iou": summary["iou_mean"], "dice": summary["dice_mean"],
            "train_cpu_s": run["train_cpu_s"], **({"resumed": run["resumed"]} if "resumed" in run else {})}


def train_replicates(source: Path, stems: list[str], test: Path, work: Path, seed: int, options: list[str],
                     replicates: int, resume: bool = False) -> dict[str, Any]:
    """`train_and_score` `replicates` times on the same labelled `stems`: replicate 0 in `work`, replicate k in
    `work`/replicate<k> with training seed `seed` + REPLICATE_SEED_STEP x k. IoU and Dice are the replicates'
    means (each one's IoU in `iou_replicates` when several), `models` their model files (the first suggests the
    next round), `resumed` the taken-over trainings by replicate folder ("" for the first)."""
    runs = [train_and_score(source, stems, test, replicate_dir(work, k), seed + REPLICATE_SEED_STEP * k, options,
                            resume) for k in range(replicates)]
    out: dict[str, Any] = {"model": runs[0]["model"], "models": [run["model"] for run in runs],
                           **replicated("iou", [run["iou"] for run in runs]),
                           "dice": float(np.mean([run["dice"] for run in runs])),
                           "train_cpu_s": sum(run["train_cpu_s"] for run in runs)}
    resumed = {f"/replicate{k}" if k else "": run["resumed"] for k, run in enumerate(runs) if "resumed" in run}
    return out | ({"resumed": resumed} if resumed else {})


def replicate_dir(work: Path, k: int) -> Path:
    """Where replicate k of a round's training, or of its scoring, goes: `work` itself for the first."""
    return work / f"replicate{k}" if k else work


def replicated(key: str, scores: list[float]) -> dict[str, Any]:
    """`key`: the replicates' mean score, and `key`_replicates: each one's, when there are several."""
    return {key: float(np.mean(scores)), **({f"{key}_replicates": scores} if len(scores) > 1 else {})}


def strategies(weights: list[float], density_weights: list[float] | None = None
               ) -> dict[str, tuple[float, float] | None]:
    """Each strategy's `cyseg suggest --uncertainty-weight` and `--density-weight` (None: random): `suggest` for
    one pair, `suggest_w<weight>` (`_d<density weight>` unless 0) for each of several."""
    pairs = list(zip(weights, density_weights or [0.0] * len(weights), strict=True))
    if len(pairs) == 1:
        return {"random": None, "suggest": pairs[0]}
    return {"random": None, **{f"suggest_w{w:g}" + (f"_d{d:g}" if d else ""): (w, d) for w, d in pairs}}


def holdout(pool: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(pool, held-out) with a seeded `fraction` of the pool held out: the validation images on which
    `--holdout` scores every round instead of the test images."""
    held = sorted(random.Random(12345).sample(pool, max(1, round(fraction * len(pool)))))
    return [s for s in pool if s not in held], held


def appearance_holdout(source: Path, pool: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(pool, held-out) with the `fraction` of the pool that looks most like one pool image held out (its
    nearest neighbours in Lab colour mean and spread, standardised): a stand-in for a new patient's slide, whose
    stain and look the pool lacks, where a random held-out set shares patients with the pool (GlaS's images come
    from 16 patients). Seed s centres on the first image of a seeded order held out by none of seeds 0..s-1, so
    the seeds hold out different looks."""
    from segmenter.io.images import read_image
    from segmenter.suggest import description

    looks = np.stack([description(read_image(source / "images" / f"{stem}.png"), []) for stem in pool])
    spread = looks.std(axis=0)
    looks = (looks - looks.mean(axis=0)) / np.where(spread > 0, spread, 1)
    order = random.Random(12345).sample(range(len(pool)), len(pool))
    taken: set[int] = set()
    for _ in range(seed % len(pool) + 1):
        centre = next((i for i in order if i not in taken), order[0])
        nearest = np.argsort(np.linalg.norm(looks - looks[centre], axis=1), kind="stable")
        held = {int(i) for i in nearest[:max(1, round(fraction * len(pool)))]}
        taken |= held
        taken = taken if len(taken) < len(pool) else set()
    return [s for i, s in enumerate(pool) if i not in held], sorted(pool[i] for i in held)


def one_seed(dataset: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every strategy's rounds and the full-data reference for one seed."""
    source, pool, test_source, test_stems = pools(dataset)
    if args.holdout:
        pool, test_stems = (appearance_holdout(source, pool, args.holdout, seed) if args.holdout_by == "appearance"
                            else holdout(pool, args.holdout))
        test_source = source
    test = link_dataset(fresh_dir(work / "test"), test_source, test_stems)
    options = train_options(args)
    n_start, n_step = max(1, round(args.start * len(pool))), max(1, round(args.step * len(pool)))
    start = sorted(random.Random(seed).sample(pool, n_start))
    full = train_and_score(source, pool, test, work / "full", seed, options, args.resume)
    out: dict[str, Any] = {"full": {"iou": full["iou"], "dice": full["dice"], "train_cpu_s": full["train_cpu_s"]}}
    if args.holdout:
        out["held_out"] = test_stems
    first = train_and_score(source, start, test, work / "round1", seed, options, args.resume)
    resumed = {name: run["resumed"] for name, run in (("full", full), ("round1", first)) if "resumed" in run}
    labelled_at: dict[str, list[tuple[list[str], list[Path]]]] = {}
    for strategy, weights in strategies(args.weights, args.density_weights).items():
        labelled, rounds, previous = list(start), [], None
        labelled_at[strategy] = []
        for r in range(1, args.rounds + 1):
            here = work / strategy / f"round{r}"
            if r > 1:
                rest = [s for s in pool if s not in labelled]
                if weights is None:
                    labelled += sorted(random.Random(seed * 1000 + r).sample(rest, min(n_step, len(rest))))
                else:
                    pool_dir = pool_folder(here / "pool", source, pool, labelled)
                    labelled += suggested(previous, pool_dir, min(n_step, len(rest)), args.views, weights,
                                          here / "suggested")
            scored = first if r == 1 else train_replicates(source, labelled, test, here, seed, options,
                                                           args.replicates, args.resume)
            if r > 1:
                resumed |= {f"{strategy}/round{r}{k}": v for k, v in scored.get("resumed", {}).items()}
            previous = scored["model"]
            labelled_at[strategy].append((list(labelled), scored.get("models", [previous])))
            rounds.append({"round": r, "labelled": len(labelled), "fraction": len(labelled) / len(pool),
                           "iou": scored["iou"], "dice": scored["dice"], "train_cpu_s": scored["train_cpu_s"],
                           **({"iou_replicates": scored["iou_replicates"]} if "iou_replicates" in scored else {})})
            print(f"{dataset} seed {seed} {strategy:8s} round {r}: {len(labelled)}/{len(pool)} labelled, "
                  f"test IoU {scored['iou']:.4f}", flush=True)
        out[strategy] = rounds
    if args.score_unlabelled:
        score_unlabelled(source, pool, labelled_at, out, work / "unlabelled")
    if resumed:
        out["resumed"] = resumed
    return out


def score_unlabelled(source: Path, pool: list[str], labelled_at: dict[str, list[tuple[list[str], list[Path]]]],
                     out: dict[str, Any], work: Path) -> None:
    """Each strategy's models of the rounds after the first (`labelled_at`: per strategy and round, the labelled
    stems and the models trained on them, one per replicate) scored again on the pool images that no strategy has
    labelled by that round (`unlabelled_iou`, the replicates' mean, each one's in `unlabelled_iou_replicates` when
    several; `unlabelled_images` in `out`'s round entries): validation images carved from the training images that
    none of the models compared has seen."""
    for r in range(1, len(next(iter(labelled_at.values())))):
        seen = {stem for rounds in labelled_at.values() for stem in rounds[r][0]}
        rest = [stem for stem in pool if stem not in seen]
        if not rest:
            continue
        data = link_dataset(fresh_dir(work / f"round{r + 1}" / "data"), source, rest)
        for strategy, rounds in labelled_at.items():
            here = work / f"round{r + 1}" / strategy
            ious = [cli_evaluate(model, data, replicate_dir(here, k), ["--no-sweep"])["iou_mean"]
                    for k, model in enumerate(rounds[r][1])]
            out[strategy][r] |= {**replicated("unlabelled_iou", ious), "unlabelled_images": len(rest)}


def train_options(args: argparse.Namespace) -> list[str]:
    """The budget every model gets."""
    return ["--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch), "--batch", str(args.batch),
            "--crop", str(args.crop), "--workers", "0"]


def summarise(per_seed: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Mean ± std IoU per strategy and round, each suggest strategy vs random per round, the labelled
    fraction at which each strategy reaches TARGET x the full-data IoU (on the means), and the suggest
    strategy with the best mean IoU over the rounds after the first."""
    full = float(np.mean([s["full"]["iou"] for s in per_seed]))
    out: dict[str, Any] = {"full_iou_mean": full, "target_iou": TARGET * full}
    for strategy in names:
        curve = []
        for i, first in enumerate(per_seed[0][strategy]):
            ious = [s[strategy][i]["iou"] for s in per_seed]
            curve.append({"round": first["round"], "fraction": first["fraction"], "iou_mean": float(np.mean(ious)),
                          "iou_std": float(np.std(ious))})
        reached = next((c["fraction"] for c in curve if c["iou_mean"] >= TARGET * full), None)
        out[strategy] = {"curve": curve, "fraction_reaching_target": reached,
                         "mean_iou_after_round_1": float(np.mean([c["iou_mean"] for c in curve[1:]]))}
    suggests = [n for n in names if n != "random"]
    for name in suggests:
        pairs = list(zip(out[name]["curve"], out["random"]["curve"], strict=True))[1:]
        out[f"{name}_beats_random_every_round"] = all(s["iou_mean"] > r["iou_mean"] for s, r in pairs)
        out[f"{name}_minus_random"] = paired_differences(per_seed, name)
        if any("unlabelled_iou" in r for r in per_seed[0][name]):
            out[f"{name}_minus_random_unlabelled"] = paired_differences(per_seed, name, "unlabelled_iou")
    out["best_suggest"] = max(suggests, key=lambda n: out[n]["mean_iou_after_round_1"])
    return out


def paired_differences(per_seed: list[dict[str, Any]], name: str, key: str = "iou") -> list[dict[str, Any]]:
    """Per round, strategy `name`'s test IoU (or another score, `key`; rounds some seed lacks it in left out) minus
    random's in the same seed (same round-1 labels, same training seed): the mean over the seeds, its standard error
    (None with one seed) and how many seeds `name` led in; whether a lead or a lag is more than the seeds' noise."""
    out = []
    for i, first in enumerate(per_seed[0][name]):
        if any(key not in s[name][i] for s in per_seed):
            continue
        gaps = np.array([s[name][i][key] - s["random"][i][key] for s in per_seed], np.float64)
        se = float(gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None
        out.append({"round": first["round"], "mean": float(gaps.mean()), "se": se,
                    "seeds_ahead": int((gaps > 0).sum()), "seeds": len(gaps)})
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    """The test IoU curves per data set (mean ± std over seeds) and the full-data target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(results["datasets"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        summary = results["datasets"][dataset]["summary"]
        for strategy in strategy_names(summary):
            curve = summary[strategy]["curve"]
            x = [c["fraction"] for c in curve]
            ax.errorbar(x, [c["iou_mean"] for c in curve], yerr=[c["iou_std"] for c in curve], label=strategy,
                        marker="o", capsize=3)
        ax.axhline(summary["target_iou"], color="grey", linestyle="--", label=f"{TARGET:.0%} of full data")
        ax.set(title=dataset, xlabel="labelled fraction of the pool", ylabel="test IoU")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="glas,wbc")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--start", type=float, default=0.1, help="labelled fraction of the pool at round 1")
    parser.add_argument("--step", type=float, default=0.1, help="fraction of the pool labelled per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--views", type=int, default=4, help="`cyseg suggest --views`")
    parser.add_argument("--weights", default="1",
                        help="`cyseg suggest --uncertainty-weight` of each suggest strategy (comma-separated), each "
                             "W or W:D with D its `--density-weight` (default 0)")
    parser.add_argument("--holdout", type=float, default=0.0,
                        help="score every round on this seeded fraction of the pool, held out, instead of the test "
                             "images (choosing the suggest settings without the test images)")
    parser.add_argument("--holdout-by", choices=("random", "appearance"), default="random",
                        help="which images --holdout holds out: a seeded random sample (the same for every seed), or "
                             "per seed the images that look most like a seeded one (Lab colour), a new patient's look "
                             "the pool lacks")
    parser.add_argument("--score-unlabelled", action="store_true",
                        help="also score each round's models on the pool images no strategy has labelled by then "
                             "(validation images carved from the training images, unseen by every model compared)")
    parser.add_argument("--replicates", type=int, default=1,
                        help="trainings per strategy and round after the first, on the same labelled images, "
                             f"replicate k with training seed + {REPLICATE_SEED_STEP}k; a round's scores are their "
                             "means")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds run at a time; give each its threads with OMP_NUM_THREADS")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "active")
    parser.add_argument("--out", type=Path, default=None,
                        help="[default: bench/results/active.json; --quick: active_quick.json in --work]")
    parser.add_argument("--quick", action="store_true", help="tiny budget, one seed, two rounds: a smoke run")
    parser.add_argument("--resume", action="store_true", help="continue a run interrupted in --work (the same "
                        "options): its finished trainings are kept, the others continue from their checkpoints, "
                        "every suggestion and score runs again; the results record what was taken over")
    args = parser.parse_args()
    if args.quick:
        apply_quick(args, QUICK, sys.argv[1:])
    if args.replicates < 1:
        raise SystemExit(f"--replicates {args.replicates} must be at least 1 (one training per labelled set)")
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"{SHARED_DATA} not found: the active-learning benchmark needs the real data sets")
    args.weights, args.density_weights = weight_pairs(str(args.weights))
    if args.out is None:
        name = ("active.json" if not args.holdout else "active_validation.json" if args.holdout_by == "random"
                else "active_validation_appearance.json")
        args.out = args.work / "active_quick.json" if args.quick else ROOT / "bench" / "results" / name
    return args


def weight_pairs(text: str) -> tuple[list[float], list[float]]:
    """The uncertainty and density weights of `--weights` entries W or W:D (D 0 when not given)."""
    try:
        pairs = [[float(x) for x in entry.split(":")] for entry in text.split(",") if entry.strip()]
        if not pairs or any(len(pair) > 2 for pair in pairs):
            raise ValueError("one or two numbers per entry")
    except ValueError as error:
        raise SystemExit(f"--weights {text}: give entries W or W:D, comma-separated ({error})") from None
    return [pair[0] for pair in pairs], [pair[1] if len(pair) == 2 else 0.0 for pair in pairs]


#: the settings two runs must share for their data sets to sit in one results file (with their defaults
#: for files written before the setting existed)
COMPARABLE = {"seeds": None, "start": None, "step": None, "rounds": None, "epochs": None, "steps_per_epoch": None,
              "batch": None, "crop": None, "views": None, "target": None, "weights": [1.0], "holdout": 0.0,
              "holdout_by": "random", "score_unlabelled": False, "density_weights": None, "replicates": 1}


def earlier_datasets(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The data sets of an earlier results file measured with the same settings (each with its own
    run record), kept beside this run's; none when the settings differ or there is no such file."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier.get("quick") or any(earlier["settings"].get(k, default) != settings.get(k, default)
                                   for k, default in COMPARABLE.items()):
        return {}
    return {name: {**entry, "run": entry.get("run", earlier["run"])} for name, entry in earlier["datasets"].items()}


def main() -> None:
    args = parse_args()
    clock = RunClock()
    work = args.work
    if args.resume:
        interrupted = interrupted_run(work)
    else:
        mark_started(fresh_dir(work), clock)
    unset = ("work", "out", "resume", *(() if any(args.density_weights) else ("density_weights",)))
    settings = {k: v for k, v in vars(args).items() if k not in unset} | {"target": TARGET}
    results: dict[str, Any] = {"benchmark": "active", "quick": args.quick, "settings": settings,
                               "datasets": earlier_datasets(args.out, settings)}
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        d_clock = RunClock(clock.code)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # the work runs in child processes
            runs = [pool.submit(one_seed, dataset, seed, args, work / dataset / f"seed{seed}")
                    for seed in range(args.seeds)]
            per_seed = [run.result() for run in runs]
        taken = {f"seed{s}/{name}": record for s, run in enumerate(per_seed) for name, record in
                 run.pop("resumed", {}).items()}
        names = list(strategies(args.weights, args.density_weights))
        summary = summarise(per_seed, names)
        results["datasets"][dataset] = {"per_seed": per_seed, "summary": summary, "run": d_clock.record()}
        if args.resume:
            results["datasets"][dataset]["resumed"] = {"interrupted_run": interrupted, "trainings": taken}
        print(f"{dataset}: full-data IoU {summary['full_iou_mean']:.4f}; 98 % reached at "
              + ", ".join(f"{s} {summary[s]['fraction_reaching_target']}" for s in names)
              + f"; best suggest strategy: {summary['best_suggest']}", flush=True)
    results["run"] = clock.record()
    write_results(args.out, results)
    plot(results, args.out.with_suffix(".png"))
    print(f"results in {args.out}")


if __name__ == "__main__":
    main()
