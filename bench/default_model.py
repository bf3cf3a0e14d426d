"""Rebuild the shipped model (`cyseg/models/default.pt`): cells and nuclei as instances, from every
data set in ../shared/data that annotates either, with the real `cyseg train`; its recipe, epoch,
thresholds and separation chosen on validation images carved from the training images, and scored
per source and class on test images that played no part in any choice.

    python bench/default_model.py [--install] [--resume]

Sources and their splits (bench/instances.py's, fixed and seeded, so the figures compare):
- miccai15 (nuclei in H&E tissue, 20x and 40x): 8 training tiles (one folder per magnification, each
  with its nominal µm/px), 2 validation tiles, the accuracy benchmark's 5 test tiles.
- wbc/dataset1 (white blood cells in smears, cell + nucleus): 192 / 48 / 60.
- urothelial (urine cytology, cell + nucleus): 128 / 32 / 40.
- isbi2014 (synthetic Pap smears, cell + nucleus instances): 27 / 9 / 9.
GlaS is left out: a gland is neither a cell nor a nucleus, so it would blur what `cell` means.

Each candidate recipe (`CANDIDATES`, on top of `BASE`: stain/colour jitter and scale augmentation
for every one; `READ_SCALES`: a source whose folders declare a dataset.json read_scale, in training,
validation and test alike) is trained once (seed 0) on all training folders at once with `--val` on every
validation folder; both run side by side, one CPU thread each, in the CPU's native precision
(bfloat16 on CPUs with AVX512-BF16 or AMX, float32 elsewhere). Training is then a pure function of its
seed, so the rebuild is bit-identical on CPUs of the same instruction set (the convolution kernels'
summation order and precision follow it; the results record the CPU). The recipes weighed in earlier
runs and their validation scores are in the git history of the results. The recipe with the best validation
score (the mean over sources and classes of pixel Dice and object F1) is the model; only it is
scored on the test images, once. Results: bench/results/default_model.json. `--install` copies the
chosen model over the shipped one (atomically) and its training curves over
docs/default_model_curves.png. `--rebuild` trains the shipped model's recorded recipe once more and
compares the weights, bit for bit (bench/results/default_model_rebuild.json). `--recalibrate` keeps
the weights and chooses the separation again on the validation images with the current grid (then
`--rescore-float32`). Every run starts from an empty work folder, except `--resume`, which continues a run
interrupted in it (a session's end): finished trainings are kept, the others continue from their
checkpoints, everything else runs again, and the results say what was taken over.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    MICCAI_40X,
    SHARED_DATA,
    RunClock,
    best_epoch,
    cli_evaluate,
    cpu_record,
    fresh_dir,
    interrupted_run,
    mark_started,
    resumable_train,
    resumed_data,
    write_results,
)
from bench.instances import SPLITS, Source, class_scores, write_dataset  # noqa: E402
from bench.instances import merit as class_merit  # noqa: E402
from cyseg.models import SHIPPED  # noqa: E402
from segmenter.instances import calibrate_separation  # noqa: E402
from segmenter.io.atomic import atomic_path  # noqa: E402
from segmenter.io.dataset import open_dataset  # noqa: E402
from unet import load_segmenter  # noqa: E402

SOURCES = ("miccai15", "wbc", "urothelial", "isbi2014")
STAINS = {"miccai15": "H&E", "wbc": "rapid Romanowsky-type (blood smear)", "urothelial": "Papanicolaou-like",
          "isbi2014": "Papanicolaou (greyscale EDF)"}
NAMES = {"miccai15": "MICCAI 2015 H&E nuclei", "wbc": "Zheng 2018 blood smears (wbc/dataset1)",
         "urothelial": "urothelial urine cytology", "isbi2014": "ISBI 2014 synthetic Pap smears"}
MICCAI_MPP = {"20x": 0.5, "40x": 0.25}  # nominal µm/px of TCGA scans at these magnifications
# crops from every training folder equally often (the miccai15 tiles make up two folders of five)
BASE = ["--instances", "--classes", "cell,nucleus", "--resolution", "1", "--colour", "--zoom", "0.4", "--balance"]
# one recipe, long (240 epochs beat 120 in the last build), as each source gets only a fifth of the crops a model
# of its own would: nuclei, the weaker class on every source, at twice the loss share, and each class's contours
# (touching nuclei are what it merges on H&E from other organs, and contour cores separated wbc's lobed nuclei,
# bench/instances.py); its two candidates differ only in how the urothelial crops are read (`READ_SCALES`)
CANDIDATES = {"240-epochs-nucleus-x2-contours": ["--epochs", "240", "--class-weights", "1,2", "--contours"],
              "240-epochs-nucleus-x2-contours-urothelial-half": ["--epochs", "240", "--class-weights", "1,2",
                                                                 "--contours"]}
# what a candidate's dataset folders declare in dataset.json beside their stain: the urothelial crops are
# up-sampled (nuclei about 125 px across, several times a 20-40x scan's), so one candidate reads them at half size
READ_SCALES: dict[str, dict[str, float]] = {"240-epochs-nucleus-x2-contours-urothelial-half": {"urothelial": 0.5}}
SEED = 0
THREADS = 1  # per candidate; the candidates run side by side
RESULTS = ROOT / "bench" / "results" / "default_model.json"
REBUILD = ROOT / "bench" / "results" / "default_model_rebuild.json"
NAME = ("cyseg default v2: cells and nuclei as instances (cell = whole cell, nucleus) in brightfield microscopy; "
        "trained on MICCAI 2015 H&E nuclei, Zheng 2018 blood smears, urothelial urine cytology, ISBI 2014 "
        "synthetic Pap smears; U-Net n=16 depth 5, cyseg train {args}; epoch, thresholds, separation and recipe "
        "chosen on validation images; tested on images used for nothing else (bench/default_model.py)")


class Parts(NamedTuple):
    """One source's training folders, validation folder, test folder and stems."""

    fit: list[Path]
    val: Path
    test: Path
    stems: dict[str, list[str]]


def declare(folder: Path, **fields: Any) -> Path:
    """Add `fields` (stain, mpp) to a dataset folder's dataset.json."""
    manifest = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**manifest, **fields}))
    return folder


def candidate_parts(data: Path) -> dict[str, dict[str, Parts]]:
    """candidate -> source -> its folders under `data`/<candidate> (`source_parts` with its `READ_SCALES`)."""
    return {label: source_parts(data / label, READ_SCALES.get(label, {})) for label in CANDIDATES}


def source_parts(work: Path, read_scales: dict[str, float] | None = None) -> dict[str, Parts]:
    """source -> its folders under `work` (bench/instances.py's splits), each declaring its stain and,
    where `read_scales` gives one, its read scale; the miccai15 training tiles in one folder per
    magnification, each declaring its µm/px."""
    if not SHARED_DATA.is_dir():
        raise SystemExit(f"{SHARED_DATA} is missing; the shipped model is built from ../shared/data (see its README)")
    parts = {}
    for source in SOURCES:
        split = SPLITS[source](work / source)
        scale = {"read_scale": read_scales[source]} if source in (read_scales or {}) else {}
        stain = STAINS[source]
        fit = ([declare(split.fit, stain=stain, name=f"{NAMES[source]}, training part", **scale)]
               if source != "miccai15" else miccai_by_magnification(split, work, scale))
        parts[source] = Parts(fit, declare(split.val, stain=stain, **scale), declare(split.test, stain=stain, **scale),
                              split.stems)
    return parts


def miccai_by_magnification(split: Any, work: Path, scale: dict[str, float]) -> list[Path]:
    """The miccai15 training tiles in one folder per magnification (in place of the split's one),
    each declaring its nominal µm/px (and `scale`, a read scale, when given)."""
    shutil.rmtree(split.fit)
    miccai = Source(SHARED_DATA / "miccai15", "masks", ["nucleus"], {})
    stems = {"20x": [s for s in split.stems["fit"] if s not in MICCAI_40X],
             "40x": [s for s in split.stems["fit"] if s in MICCAI_40X]}
    return [declare(write_dataset(work / "miccai15" / f"fit_{m}", miccai, stems[m]), stain=STAINS["miccai15"],
                    mpp=MICCAI_MPP[m], name=f"{NAMES['miccai15']}, {m} training tiles", **scale) for m in stems]


def score(model: Path, parts: dict[str, Parts], part: str, work: Path,
          extra: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """source -> class -> pixel and instance scores of `cyseg evaluate` (the model's thresholds, no sweep)."""
    return {source: class_scores(cli_evaluate(model, getattr(p, part), work / "eval" / model.stem / f"{part}_{source}",
                                              ["--no-sweep", *extra])) for source, p in parts.items()}


def shipped_record() -> dict[str, Any]:
    """The results of the run that built the shipped model; exits when they describe another model."""
    record = json.loads(RESULTS.read_text())
    if not record.get("installed") or record.get("model_bytes") != SHIPPED["default"].stat().st_size:
        sys.exit(f"{RESULTS} does not describe {SHIPPED['default']}: rebuild with --install first")
    return record


def recorded_read_scales(record: dict[str, Any]) -> dict[str, float]:
    """The read scales the recorded run's chosen recipe declared (none in records from before them)."""
    return record["candidates"][record["chosen"]].get("read_scales", {})


def recorded_parts(record: dict[str, Any], work: Path) -> dict[str, Parts]:
    """Every source's folders under `work` (emptied first), at the read scales the chosen recipe declared, once
    their test images are checked to be the ones `record` scored."""
    parts = source_parts(fresh_dir(work) / "data", recorded_read_scales(record))
    for source, p in parts.items():
        if p.stems["test"] != record["split"][source]["test_stems"]:
            sys.exit(f"the {source} test split differs from the recorded one")
    return parts


def rescore_float32(work: Path) -> None:
    """Score the shipped model on the recorded test images once more in float32 (`--no-amp`), beside
    the build's figures (computed in the build machine's precision), as `test_float32`: what a CPU
    without bfloat16 computes; the accuracy-floor test compares with the record of its own precision."""
    record = shipped_record()
    clock = RunClock()
    parts = recorded_parts(record, work)
    test = score(SHIPPED["default"], parts, "test", work, ("--no-amp",))
    report(test)
    record["test_float32"] = test
    record["rescore_float32_run"] = clock.record()
    write_results(RESULTS, record)


def recalibrate(work: Path) -> None:
    """Choose the shipped model's separation and least object areas once more on the recorded validation
    images, as its training's end does but with the current grid (weights and thresholds unchanged),
    score the test images once with them and install it: for a separation choice added after the build."""
    record = shipped_record()
    clock = RunClock()
    parts = recorded_parts(record, work)
    seg = load_segmenter(SHIPPED["default"])
    built = record.get("recalibration", {}).get("before") or {  # the build's own choice, however often recalibrated
        "separation": dict(seg.separation), "min_area": dict(seg.min_area),
        "val": record["candidates"][record["chosen"]]["val"], "test": record["test"]}
    chosen = calibrate_separation(seg, [open_dataset(p.val) for p in parts.values()])
    seg.training_info["separation"] = {**chosen,
                                       "chosen_on": "validation images (bench/default_model.py --recalibrate)"}
    model = seg.save(work / "recalibrated.pt")
    val, test = score(model, parts, "val", work), score(model, parts, "test", work)
    report(test)
    record["recalibration"] = {
        "protocol": "weights and thresholds unchanged; separation and least object areas chosen again on the "
                    "validation images with the current grid; test images scored once",
        "before": built,
        "separation": seg.separation, "min_area": seg.min_area, "val": val, "val_merit": merit(val),
        "run": clock.record()}
    record["test"], record["model_bytes"] = test, model.stat().st_size
    record.pop("test_float32", None)  # of the model before: rescore with --rescore-float32
    ship(model)
    write_results(RESULTS, record)
    print(f"installed {SHIPPED['default']} with separation {seg.separation}; rerun --rescore-float32", flush=True)


def install_recorded(work: Path) -> None:
    """Install the model the recorded run (made without --install) chose, from its work folder, once
    it is checked to be that model (size and best epoch); the results then say it is installed."""
    record = json.loads(RESULTS.read_text())
    model = work / f"{record['chosen']}.pt"
    if record.get("installed"):
        sys.exit(f"{RESULTS} is already installed")
    if not model.is_file() or model.stat().st_size != record["model_bytes"]:
        sys.exit(f"{model} is not the model {RESULTS} chose: rerun bench/default_model.py --install")
    if best_epoch(model) != record["candidates"][record["chosen"]]["best_epoch"]:
        sys.exit(f"{model} stopped at epoch {best_epoch(model)}, not the recorded one: rerun with --install")
    clock = RunClock()
    install(model)
    record["installed"] = True
    record["install_run"] = clock.record() | {"from": str(model)}
    write_results(RESULTS, record)


def weights_digest(model: Path) -> str:
    """sha256 over a model file's weights (names, dtypes, shapes and bytes, in order): what a rebuild must reproduce."""
    digest = hashlib.sha256()
    for name, tensor in torch.load(model, map_location="cpu", weights_only=True)["state_dict"].items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weight_difference(model: Path, reference: Path) -> float:
    """The largest absolute difference between two model files' floating-point weights (one architecture)."""
    ours, theirs = (torch.load(m, map_location="cpu", weights_only=True)["state_dict"] for m in (model, reference))
    return max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in theirs
               if theirs[k].is_floating_point())


def rebuild(work: Path) -> None:
    """Train the shipped model's recorded recipe once more, from an empty work folder, and compare its
    weights with the shipped model's: bench/results/default_model_rebuild.json (replaced when rerun)."""
    record = shipped_record()
    chosen = record["chosen"]
    recorded = record["candidates"][chosen]["train_args"]
    if (chosen not in CANDIDATES or shlex.join([*BASE, *CANDIDATES[chosen]]) != recorded
            or READ_SCALES.get(chosen, {}) != recorded_read_scales(record)):
        sys.exit(f"the recipe {chosen!r} changed since {RESULTS} was recorded: rerun bench/default_model.py --install")
    built_on, here = record["run"].get("cpu"), cpu_record()
    same_cpu = built_on is not None and all(here.get(k) == v for k, v in built_on.items())  # what it recorded
    if not same_cpu:
        print(f"built on {built_on}, rebuilding on {here}: bfloat16 kernels differ between CPUs, so the weights "
              "are not expected to be identical", file=sys.stderr, flush=True)
    clock = RunClock()
    work = fresh_dir(work)
    entry = train_candidate(chosen, work, source_parts(work / "data", READ_SCALES.get(chosen, {})), [])
    model = work / f"{chosen}.pt"
    shipped = weights_digest(SHIPPED["default"])
    result = {
        "benchmark": "default_model_rebuild",
        "protocol": f"the recorded recipe {chosen!r} trained once more from an empty work folder, as "
                    "bench/default_model.py trains it; its weights compared with the shipped model's",
        "recipe": chosen, "recorded_run": record["run"], "same_cpu": same_cpu, "candidate": entry,
        "recorded_best_epoch": record["candidates"][chosen]["best_epoch"],
        "recorded_val_merit": record["candidates"][chosen]["val_merit"],
        "weights_sha256": {"rebuilt": weights_digest(model), "shipped": shipped},
        "max_abs_weight_difference": weight_difference(model, SHIPPED["default"]),
    }
    result["identical"] = result["weights_sha256"]["rebuilt"] == shipped
    result["run"] = clock.record()
    write_results(REBUILD, result)
    print(f"rebuilt {chosen}: weights {'identical to' if result['identical'] else 'differ from'} the shipped "
          f"model's (largest difference {result['max_abs_weight_difference']:.3g})", flush=True)


def merit(scores: dict[str, dict[str, Any]]) -> float:
    """The recipe choice's figure: the mean over sources and classes of pixel Dice and object F1."""
    return class_merit({f"{source}/{name}": s for source, classes in scores.items() for name, s in classes.items()})


def train_candidate(label: str, work: Path, parts: dict[str, Parts], extra: list[str],
                    resume: bool = False) -> dict[str, Any]:
    """Train one candidate recipe (validation picks epoch, thresholds and separation; with `resume`, an
    interrupted run's training kept or continued); score its validation images."""
    options = [*BASE, *CANDIDATES[label], *extra]
    model = work / f"{label}.pt"
    name = NAME.format(args=shlex.join(options) + "".join(f"; {source} crops read at {scale:g}x their size"
                                                         for source, scale in READ_SCALES.get(label, {}).items()))
    run = resumable_train([f for p in parts.values() for f in p.fit], model, SEED, options, resume=resume,
                          val=[p.val for p in parts.values()], name=name, threads=THREADS)
    val = score(model, parts, "val", work)
    entry = {"train_args": shlex.join(options), "read_scales": READ_SCALES.get(label, {}), **run,
             "best_epoch": best_epoch(model), "val": val, "val_merit": merit(val)}
    print(f"{label:10s} validation merit {entry['val_merit']:.4f}, {run['train_cpu_s'] / 60:.1f} CPU-min", flush=True)
    return entry


def ship(model: Path) -> None:
    """Put the model file in place of the shipped one (atomically)."""
    with atomic_path(SHIPPED["default"]) as tmp:
        shutil.copyfile(model, tmp)


def install(model: Path) -> None:
    """Put the model and its training curves in place of the shipped ones."""
    ship(model)
    shutil.copyfile(model.with_suffix(".curves.png"), ROOT / "docs" / "default_model_curves.png")
    print(f"installed {SHIPPED['default']}")


def report(test: dict[str, dict[str, Any]]) -> None:
    """Print the test figures per source and class."""
    for source, classes in test.items():
        for name, s in classes.items():
            print(f"test {source:10s} {name:8s} Dice {s['dice']:.4f}  object F1 {s['object_f1']:.4f}  "
                  f"AJI {s['aji']:.4f}  PQ {s['pq']:.4f}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "default_model")
    parser.add_argument("--install", action="store_true", help="copy the chosen model over cyseg/models/default.pt")
    parser.add_argument("--train-options", default="", help="extra `cyseg train` options after each recipe's (a "
                        "smoke run: '--epochs 1 --steps-per-epoch 2'); recorded in the results")
    parser.add_argument("--rescore-float32", action="store_true", help="train nothing: score the shipped model on "
                        "the recorded test images in float32 and add them to the results as test_float32")
    parser.add_argument("--install-recorded", action="store_true", help="train nothing: install the model the "
                        "recorded run (made without --install) chose, from its --work folder")
    parser.add_argument("--recalibrate", action="store_true", help="train nothing: choose the shipped model's "
                        "separation and least areas again on the recorded validation images with the current grid, "
                        "score the test images once and install it (weights unchanged)")
    parser.add_argument("--resume", action="store_true", help="continue a run interrupted in --work (the same "
                        "options): its finished trainings are kept, the others continue from their checkpoints, "
                        "everything else runs again; the results record what was taken over and from which code")
    parser.add_argument("--rebuild", action="store_true", help="train the shipped model's recorded recipe once more "
                        "and compare its weights with the shipped ones (bench/results/default_model_rebuild.json)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    modes = {"rebuild": rebuild, "recalibrate": recalibrate, "install_recorded": install_recorded,
             "rescore_float32": rescore_float32}
    mode = next((run for flag, run in modes.items() if getattr(args, flag)), None)
    if mode is not None:
        mode(args.work)
    else:
        build(args)


def build(args: argparse.Namespace) -> None:
    """Train every candidate recipe, choose one on the validation images, score it once on the test images,
    record the run (and install the model with --install)."""
    clock = RunClock()
    work = args.work
    if args.resume:
        interrupted = interrupted_run(work)
        parts = resumed_data(candidate_parts, work, "the shipped model's candidates")
    else:
        mark_started(fresh_dir(work), clock)
        parts = candidate_parts(work / "data")
    extra = shlex.split(args.train_options)
    with ThreadPoolExecutor(len(CANDIDATES)) as pool:
        futures = {label: pool.submit(train_candidate, label, work, parts[label], extra, args.resume)
                   for label in CANDIDATES}
        candidates = {label: future.result() for label, future in futures.items()}
    chosen = max(candidates, key=lambda label: candidates[label]["val_merit"])
    model = work / f"{chosen}.pt"
    test = score(model, parts[chosen], "test", work)
    report(test)
    result = {
        "benchmark": "default_model",
        "protocol": "per source a fixed train / validation / test split (bench/instances.py's); each candidate recipe "
                    f"trained once (seed {SEED}, {THREADS} CPU thread) on all training folders with --val on every "
                    "validation folder (best epoch, thresholds, separation); the recipe with the best validation "
                    "merit (mean over sources and classes of Dice and object F1) is chosen and only it is scored "
                    "on the test images, at its thresholds, without a sweep"
                    + ("; resumed (`--resume`) from an interrupted run of this benchmark: the trainings `resumed` "
                       "lists were kept or continued from their checkpoints (their `train_cpu_s` and "
                       "`train_wall_s` count this run's part), every evaluation, the choice and the test ran "
                       "in this run" if args.resume else ""),
        "seed": SEED, "threads": THREADS,
        "split": {s: {k: len(v) for k, v in p.stems.items()} | {"test_stems": p.stems["test"]}
                  for s, p in parts[chosen].items()},
        "candidates": candidates, "chosen": chosen, "test": test,
        "model_bytes": model.stat().st_size, "installed": args.install,
    }
    if args.resume:
        result["resumed"] = {"interrupted_run": interrupted,
                             "trainings": {label: c["resumed"] for label, c in candidates.items() if "resumed" in c}}
    result["run"] = clock.record()
    write_results(RESULTS, result)
    if args.install:
        install(model)


if __name__ == "__main__":
    main()
