"""Benchmark documentation generated from the results, so that no figure can drift from the run
that measured it: writes docs/benchmarks.md from bench/results/*.json, and the README's generated
blocks (the shipped model's line and the short results table) between their HTML comment markers.

    python bench/report.py           # rewrite docs/benchmarks.md and the README's blocks
    python bench/report.py --check   # exit 1 when either file differs from what would be written

One function per benchmark section; each takes its results file (None when the benchmark has not
been run) and returns Markdown lines.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"

Results = dict[str, Any]
Lines = list[str]

DATASETS = {
    "miccai15": "MICCAI 2015 nuclei in H&E tissue",
    "glas": "GlaS glands in H&E colon tissue",
    "wbc": "white blood cells in smear cytology (Zheng et al. 2018, dataset1)",
    "miccai15_mag": "MICCAI 2015, trained on the 40x tiles, tested on the unseen 20x tiles",
}
GENERALISATION = ("miccai15_mag",)


# ---------------------------------------------------------------------------- reading and formatting
def strategy_names(summary: Results) -> list[str]:
    """The strategies of an active-learning summary (bench/active.py): its entries holding a curve."""
    return [k for k in summary if isinstance(summary[k], dict) and "curve" in summary[k]]


def measured(data: Results | None) -> Results | None:
    """A results file's contents unless absent or a `--quick` smoke run (whose figures are no result)."""
    return None if data is None or data.get("quick") else data


def load(name: str) -> Results | None:
    """A results file of bench/results, or None when that benchmark has not been run."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def table(header: list[str], rows: Iterable[list[str]]) -> Lines:
    """A Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def pm(mean: float, std: float, digits: int = 3) -> str:
    """mean ± std."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def pct(fraction: float, digits: int = 0) -> str:
    """A fraction as a percentage."""
    return f"{fraction * 100:.{digits}f} %"


def minutes(seconds: float) -> str:
    """Seconds as whole minutes."""
    return f"{seconds / 60:.0f} min"


def thread_count(threads: int) -> str:
    """'1 thread', '2 threads'."""
    return f"{threads} thread{'s' * (threads != 1)}"


def machine(threads: int | None, device: str = "cpu") -> str:
    """The machine a result was measured on, as its JSON records it."""
    where = "the CPU, no GPU" if device == "cpu" else device
    return f"{where}, {thread_count(threads)}" if threads else where


def kernel_name(run: Results) -> str | None:
    """The instruction set torch's CPU kernels used (e.g. AVX2, AVX512) and the CPU's maker and line,
    when the run recorded them: timings and training precision move with them (bfloat16 is native with
    AVX512-BF16 or AMX and emulated, so not used, with AVX2; AMD's and Intel's bfloat16 kernels sum in
    different orders, so the same training gives other weights on each)."""
    cpu = run.get("cpu") or {}
    if not cpu.get("kernels"):
        return None
    model = " ".join((cpu.get("model") or "").replace("(R)", "").split()[:2])
    return ", ".join([f"{cpu['kernels']} kernels", *filter(None, [model, cpu.get("precision")])])


def kernels(run: Results) -> str:
    """The run's CPU kernels as a parenthesis after the machine, or nothing when not recorded."""
    name = kernel_name(run)
    return f" ({name})" if name else ""


def measured_on(run: Results) -> str:
    """The CPU machine a run record names: its threads and, where recorded, its kernels and precision."""
    return f"{machine(run.get('cpu_threads'))}{kernels(run)}"


def entries_by(data: Results, key: Callable[[Results], Any]) -> dict[Any, list[str]]:
    """The entries' names grouped by `key` of their run record, in the entries' order."""
    found: dict[Any, list[str]] = {}
    for name, entry in data.items():
        found.setdefault(key(entry["run"]), []).append(name)
    return found


def run_kernels(data: Results) -> str:
    """Which entries' runs used which CPU kernels, when they differ (runs that did not record it: '?')."""
    found = entries_by(data, lambda run: kernel_name(run) or "?")
    if len(found) < 2:
        return kernels(next(iter(data.values()))["run"])
    return " (" + "; ".join(f"{kind}: {', '.join(names)}" for kind, names in found.items()) + ")"


def run_machine(data: Results) -> str:
    """The machine of every entry's run, naming which entries used how many threads when they differ."""
    found = entries_by(data, lambda run: run.get("cpu_threads"))
    if len(found) < 2:
        return machine(next(iter(found)))
    return machine(None) + ", " + "; ".join(f"{thread_count(threads)}: {', '.join(names)}"
                                           for threads, names in found.items())


def not_run(title: str, command: str) -> Lines:
    """The section of a benchmark whose results file is absent."""
    return [f"## {title}", "", f"Not measured yet: `{command}` writes its results.", ""]


def args_cell(args: str | None, defaults: str) -> str:
    """A configuration's command-line options as a table cell: `defaults` for none, the options in
    code and any note the benchmark recorded after them in plain text."""
    if not args or args.startswith("(cyseg"):
        return defaults
    options, _, note = args.partition(" (")
    return f"`{options}`" + (f" ({note}" if note else "")


# ---------------------------------------------------------------------------- accuracy.json
def repetitions(test: Results) -> str:
    """How the test runs were repeated: seeds or folds, and the test images of each."""
    runs = test["runs"]
    kind = "folds" if runs[0]["run"].startswith("fold") else "seeds"
    return f"{test['n_runs']} {kind}, {runs[0]['n_images']} test images each"


def recipe_cell(chosen: Results) -> str:
    """The chosen recipe: its `cyseg train` options, and the `cyseg evaluate` options it is scored with."""
    train = f"`{chosen['train_args']}`" if chosen["train_args"] else "`cyseg train` defaults"
    return train + (f", evaluated with `{chosen['eval_args']}`" if chosen["eval_args"] else "")


def validation_rows(entry: Results) -> list[list[str]]:
    """One row per candidate recipe: its validation Dice without and with TTA, and its cost."""
    chosen = entry["chosen"]
    rows = []
    for label, candidate in entry["validation"].items():
        dice = [f"{v['dice_mean']:.4f}" + (" (chosen)" if (label, ev) == (chosen["recipe"], chosen["eval"]) else "")
                for ev, v in candidate["val"].items()]
        rows.append([f"`{label}`", args_cell(candidate["train_args"], "defaults"), *dice,
                     minutes(candidate["train_cpu_s"])])
    return rows


def dataset_lines(dataset: str, entry: Results) -> Lines:
    """A data set's validation table and the chosen recipe's test score."""
    test, split = entry["test"], entry["split"]
    n_val = len(split["val"])
    return [f"**{dataset}** ({DATASETS.get(dataset, dataset)}): validation on {n_val} images carved from the "
            "training set, one training (seed 0) per recipe.", "",
            *table(["recipe", "`cyseg train`", "validation Dice", "with `--tta`", "CPU per training"],
                   validation_rows(entry)), "",
            f"Test, chosen recipe ({recipe_cell(entry['chosen'])}) trained on the whole training set, "
            f"{repetitions(test)}: Dice **{pm(test['dice_mean'], test['dice_std'])}**, IoU "
            f"{pm(test['iou_mean'], test['iou_std'])}; Dice on its own training images "
            f"{test['train_dice_mean']:.3f}; {minutes(test['train_cpu_s_mean'])} CPU per training "
            f"({minutes(test['train_wall_s_mean'])} wall).", ""]


def accuracy_lines(data: Results, datasets: Iterable[str]) -> Lines:
    """Every listed data set's validation and test."""
    return [line for dataset in datasets for line in dataset_lines(dataset, data[dataset])]


def accuracy_section(data: Results | None) -> Lines:
    """accuracy.json: recipes compared on validation images, the chosen one scored on test images."""
    datasets = [d for d in (data or {}) if d not in GENERALISATION]
    if not datasets:
        return not_run("Accuracy", "python bench/accuracy.py")
    threads = data[datasets[0]]["run"].get("cpu_threads")
    return ["## Accuracy", "",
            "`bench/accuracy.py` compares recipes (`cyseg train` options, and `cyseg evaluate` with or without "
            "`--tta`) on validation images carved from each training set, keeps the one with the best validation "
            "Dice, retrains it on the whole training set and scores the test images once at full resolution "
            "(mean ± std over seeds or folds). The test images choose nothing. "
            f"Measured on {machine(threads)}, data from ../shared/data; every run starts from an empty work folder. "
            "Source: `bench/results/accuracy.json`; reproduce with `python bench/accuracy.py --datasets DATASET`.",
            "", *accuracy_lines(data, datasets), *missing_datasets(data)]


def missing_datasets(data: Results) -> Lines:
    """The line naming the data sets of bench/accuracy.py that the results file does not hold yet."""
    missing = [d for d in DATASETS if d not in data and d not in GENERALISATION]
    if not missing:
        return []
    return [f"Not measured yet with this protocol: {', '.join(missing)} "
            f"(`python bench/accuracy.py --datasets {','.join(missing)}`).", ""]


def generalisation_section(data: Results | None) -> Lines:
    """accuracy.json: generalisation to unseen slides and magnification."""
    if data is None or not any(d in data for d in GENERALISATION):
        return not_run("Generalisation to unseen slides", "python bench/accuracy.py --datasets miccai15_mag")
    return ["## Generalisation to unseen slides", "",
            "`bench/accuracy.py --datasets miccai15_mag` trains on miccai15's 40x training tiles and tests on "
            "its 20x tiles: other slides at another magnification, never seen in training. The recipe is chosen "
            "on two 40x training tiles downscaled twofold, a shift like the test's; it measures what the "
            "augmentation options (`--colour`: stain and colour jitter; `--zoom`: scale) buy when the slides to "
            "segment come from elsewhere than the annotated ones. Source: `bench/results/accuracy.json`.", "",
            *accuracy_lines(data, [d for d in GENERALISATION if d in data])]


#: what a resumed run ran again, in the words of `resumed_line`
RERAN_INSTANCES = ("Every evaluation, the choice and the test ran in the resumed run; its training column counts the "
                   "resumed run's CPU only.")
RERAN_ACTIVE = "Every suggestion and score ran in the resumed run."

# ---------------------------------------------------------------------------- default_model.json
def default_model_results(data: Results | None) -> Results | None:
    """default_model.json when it holds a run of the current protocol (cells and nuclei, a recipe
    chosen on validation images by its merit, scored once on test images), else None."""
    if data is None or "chosen" not in data or "val_merit" not in data["candidates"][data["chosen"]]:
        return None
    return data


def candidate_row(label: str, entry: Results, chosen: str) -> list[str]:
    """One candidate recipe of the shipped model's validation."""
    val = "; ".join(f"{source} {name} {s['dice']:.3f}/{s['object_f1']:.3f}"
                    for source, classes in entry["val"].items() for name, s in classes.items())
    return [f"`{label}`" + (" (chosen)" if label == chosen else ""),
            args_cell(entry["train_args"], "defaults") + read_scales_words(entry),
            str(entry["best_epoch"]), val, f"{entry['val_merit']:.3f}", minutes(entry["train_cpu_s"])]


def read_scales_words(entry: Results) -> str:
    """'; urothelial read at 0.5x' for the sources a candidate's folders declare a read scale for, else ''."""
    return "".join(f"; {source} read at {scale:g}x" for source, scale in entry.get("read_scales", {}).items())


def final_scores_rows(source: str, classes: Results, split: Results) -> list[list[str]]:
    """One source's test scores per class, with the size of each part of its split."""
    return [[source, name, str(split["fit"]), str(split["val"]), str(s["n_images"]), f"{s['threshold']:g}",
             f"{s['dice']:.3f}", _score(s["object_f1"]), _score(s["aji"]), _score(s["pq"])]
            for name, s in classes.items()]


def candidates_table(data: Results) -> Lines:
    """A default_model.py run's candidate recipes with their validation scores, the chosen one marked."""
    return table(["recipe", "`cyseg train`", "best epoch", "validation Dice / object F1", "merit", "CPU"],
                 (candidate_row(label, e, data["chosen"]) for label, e in data["candidates"].items()))


def compact_scores(scores: Results) -> str:
    """source class Dice / object F1, for every source and class of a scores record."""
    return "; ".join(f"{source} {name} {s['dice']:.3f}/{_score(s['object_f1'])}"
                     for source, classes in scores.items() for name, s in classes.items())


def described(separation: dict[str, Any]) -> str:
    """A model file's separation parameters as `Separation.describe` words them."""
    from transforms.instances import Separation

    return Separation(**separation).describe()


def recalibration_lines(data: Results) -> Lines:
    """The shipped model's separation chosen again after its build (`--recalibrate`), when it was."""
    again = data.get("recalibration")
    if not again:
        return []
    run, before, built = again["run"], again["before"], data["candidates"][data["chosen"]]["val_merit"]
    chosen = "; ".join(f"{c}: {described(p)}, objects from {again['min_area'][c]:g} px²"
                       for c, p in again["separation"].items())
    return [f"Its separation was then chosen again (`python bench/default_model.py --recalibrate`, commit "
            f"{run['code']['commit'][:7]}, on {measured_on(run)}): "
            f"{again['protocol']}. Chosen: {chosen}. Validation merit {built:.4f} → "
            f"{again['val_merit']:.4f} (Dice / object F1: {compact_scores(again['val'])}). The test table below is "
            f"this model's; before it: {compact_scores(before['test'])}.", ""]


def threads_of(data: Results) -> str:
    """How many CPU threads the shipped model's trainings and its scoring used (each training runs in a
    process of its own, with the record's `threads`)."""
    trained, scored = data.get("threads"), data["run"].get("cpu_threads")
    if trained is None or trained == scored:
        return f"{thread_count(scored)} throughout" if scored else "threads not recorded"
    return f"each training on {thread_count(trained)}, the scoring on {thread_count(scored)}"


def default_model_section(data: Results | None) -> Lines:
    """default_model.json: the shipped model's recipe chosen on validation images, scored on test images."""
    data = default_model_results(data)
    if data is None:
        return not_run("The shipped model", "python bench/default_model.py")
    chosen = data["chosen"]
    return ["## The shipped model", "",
            f"`bench/default_model.py` builds the shipped model (`cyseg/models/default.pt`) from ../shared/data with "
            f"the real `cyseg train`: {data['protocol']}. Measured on {machine(None)}, {threads_of(data)}. "
            f"{'This run was installed as the shipped model. ' if data['installed'] else ''}"
            "Reproduce with `python bench/default_model.py` (`--install` ships the result). "
            "Source: `bench/results/default_model.json`.", "",
            "Candidates, scored on the validation images (pixel Dice / object F1 per source and class; merit: "
            "their mean):", "",
            *candidates_table(data), "",
            *(resumed_line("This run", data["resumed"]) if data.get("resumed") else []),
            *recalibration_lines(data),
            f"The chosen recipe, `{chosen}`, on the test images (scored once, at the thresholds and separation "
            "chosen on validation):", "",
            *table(["source", "class", "training images", "validation images", "test images", "threshold", "Dice",
                    "object F1", "AJI", "PQ"],
                   (row for source, classes in data["test"].items()
                    for row in final_scores_rows(source, classes, data["split"][source]))), ""]


def shipped_weights() -> str:
    """The SHA-256 of the shipped model's weights (as a rebuild records them)."""
    from bench.default_model import weights_digest
    from cyseg.models import SHIPPED

    return weights_digest(SHIPPED["default"])


def rebuild_section(data: Results | None) -> Lines:
    """default_model_rebuild.json: whether the shipped model's recipe, trained once more, gave its weights
    bit for bit; a rebuild of other weights than the shipped ones says nothing about them (nor does a file
    of the earlier format, which compared candidates instead)."""
    if not data or data.get("benchmark") != "default_model_rebuild":
        return []
    if data["weights_sha256"]["shipped"] != shipped_weights():
        return ["### Rebuilding it", "", "Not measured for the shipped weights yet (the last rebuild checked an "
                "earlier model): `python bench/default_model.py --rebuild`.", ""]
    run = data["run"]
    verdict = "equal the shipped model's bit for bit" if data["identical"] else "differ from the shipped model's"
    return ["### Rebuilding it", "",
            f"`python bench/default_model.py --rebuild` trained the shipped recipe `{data['recipe']}` once more "
            f"from an empty work folder, on {machine(run['cpu_threads'])}{kernels(run)}: its weights {verdict} "
            f"(SHA-256 of the weights {data['weights_sha256']['rebuilt'][:16]}…, largest difference "
            f"{data['max_abs_weight_difference']:g}); best epoch {data['candidate']['best_epoch']} (recorded "
            f"{data['recorded_best_epoch']}), validation merit {data['candidate']['val_merit']:.4f} (recorded "
            f"{data['recorded_val_merit']:.4f}), {minutes(run['wall_s'])} of wall time. Bit-identity needs the "
            "instruction set and precision the build used (the convolutions' summation order follows them). "
            "Source: `bench/results/default_model_rebuild.json`.", ""]


# ---------------------------------------------------------------------------- throughput_cpu.json
def default_tiling() -> tuple[int, int]:
    """The tile side and overlap cyseg uses unless told otherwise."""
    from segmenter.base import DEFAULT_OVERLAP, DEFAULT_TILE

    return DEFAULT_TILE, DEFAULT_OVERLAP


def inference_row(row: Results, default: tuple[int, int]) -> list[str]:
    """One tiling of the throughput table."""
    tiling = f"{row['tile']} / {row['overlap']}" + (" (default)" if (row["tile"], row["overlap"]) == default else "")
    return [str(row["n"]), tiling, str(row["batch"]), f"{row['bare_forward_mp_s']:.2f}",
            f"{row['predict_path_mp_s']:.2f}", pct(row["ratio_image_area"]), f"{row['overlap_redundancy']:.2f}×",
            pct(row["ratio_same_work"]), f"{row['bare_forward_float32_mp_s']:.2f}"]


def training_row(row: Results) -> list[str]:
    """One network width of the training-throughput table."""
    return [str(row["n"]), f"{row['crop']}²", str(row["batch"]), f"{row['bare_train_img_s']:.1f}",
            f"{row['train_loop_img_s']:.1f}", pct(row["ratio"])]


def throughput_section(data: Results | None) -> Lines:
    """throughput_cpu.json: the predict path and the training loop beside the bare network."""
    if data is None:
        return not_run("Throughput", "python bench/throughput.py")
    default = default_tiling()
    rows = sorted(data["inference"], key=lambda r: (r["n"], r["tile"], r["overlap"]))
    return ["## Throughput", "",
            f"`bench/throughput.py` times cyseg's whole predict path (read, normalise, tile, infer, blend, "
            f"post-process) on a {data['image']}, beside the bare `model(x)` loop of the same network in the "
            f"same run (interleaved, best of two rounds each), in {data['precision']} (the default here) with "
            f"the float32 bare forward for reference. Measured on {machine(data['cpu_threads'], data['device'])} "
            f"(torch {data['torch']}); one run, so the ratios carry the machine's minute-to-minute drift. "
            "\"ratio\" is the predict path's MP/s of image over the bare forward's; \"ratio on computed pixels\" "
            "counts the pixels the network really computes (overlaps twice), which leaves the pipeline's own "
            f"overhead. The benchmark's target: {data['target']}. Reproduce with `python bench/throughput.py`. "
            "Source: `bench/results/throughput_cpu.json`.", "",
            *table(["U-Net n", "tile / overlap", "batch", "bare forward (MP/s)", "cyseg predict (MP/s of image)",
                    "ratio", "pixels computed per image pixel", "ratio on computed pixels", "bare forward, float32"],
                   (inference_row(r, default) for r in rows)), "",
            "Training, on random 256² crops: the bare forward + loss + backward + Adam step on random tensors, "
            "beside `fit`'s whole loop (crop sampling, augmentation, loader; its start-up included).", "",
            *table(["U-Net n", "crop", "batch", "bare step (images/s)", "`fit` loop (images/s)", "ratio"],
                   (training_row(r) for r in data["training"])), ""]


# ---------------------------------------------------------------------------- wsi_cpu.json
def wsi_rows(data: Results) -> list[list[str]]:
    """The whole-slide measures, each with the target the benchmark records."""
    targets, skip, noskip = data["targets"], data["whole_slide_skip"], data["whole_slide_no_skip"]
    agreement, lost = data["skip_vs_no_skip_masks"], data["skipping"]
    monai = "not installed" if data["monai_region_mp_s"] is None else f"{data['monai_region_mp_s']:.2f} MP/s"
    return [
        ["bare forward of the folded network (default tiles)",
         f"{data['bare_forward_mp_s']:.2f} MP/s (unfolded {data['bare_forward_unfolded_mp_s']:.2f}; "
         f"float32 {data['bare_forward_float32_mp_s']:.2f})", ""],
        ["cyseg engine on the region, skipping off, polygons included",
         f"{data['cyseg_no_skip_region_mp_s']:.2f} MP/s ({pct(data['cyseg_vs_bare'])} of bare)",
         targets["cyseg_vs_bare"]],
        ["MONAI `sliding_window_inference`, same network, precision, tiles and region (mask only)",
         f"{monai} (cyseg {data['cyseg_vs_monai']:.2f}×)" if data["cyseg_vs_monai"] else monai,
         targets["cyseg_vs_monai"]],
        ["whole slide, `cyseg segment`, skipping off / on",
         f"{noskip['seconds']:.0f} s / {skip['seconds']:.0f} s ({data['skip_speedup']:.1f}×)", targets["skip_speedup"]],
        ["tiles skipped; slide area inferred",
         f"{lost['tiles_skipped']} of {lost['tiles']}; {pct(lost['area_inferred_fraction'])}", ""],
        ["ground-truth foreground outside the inferred boxes", pct(lost["gt_foreground_lost_fraction"], 2),
         targets["gt_foreground_lost_fraction"]],
        ["masks with vs without skipping differ on (share of the foreground)",
         f"{pct(agreement['differing_fraction_of_fg'], 2)} (Dice {agreement['dice']:.4f})", ""],
        ["peak memory of the `cyseg segment` process, skipping off / on",
         f"{noskip['peak_rss_mb']:.0f} MB / {skip['peak_rss_mb']:.0f} MB", targets["peak_rss_mb"] + " MB"],
    ]


def wsi_section(data: Results | None) -> Lines:
    """wsi_cpu.json: the whole-slide engine against the bare network and MONAI, background skipping."""
    if data is None:
        return not_run("Whole slides", "python bench/wsi.py")
    size, region = data["slide"]["size"], data["region"]
    return ["## Whole slides", "",
            f"`bench/wsi.py` builds a slide from real annotated tiles ({data['slide']['description']}), so the "
            "foreground that background skipping loses can be counted, and segments it with "
            f"`{Path(data['model']).name}` in {data['precision']}: the engine and MONAI on its densest "
            f"{region['w']}×{region['h']} region (interleaved, best of two each), then the whole slide with and "
            "without skipping, each in its own `cyseg segment` process. "
            f"Measured on {machine(data['cpu_threads'], data['device'])}{kernels(data['run'])}, one run. "
            f"Reproduce with `python bench/wsi.py --size {size[0]} --fill {data['slide']['fill']}`. "
            "Source: `bench/results/wsi_cpu.json`.", "",
            *table(["measure", "result", "target"], wsi_rows(data)), "", *cytology_lines(data.get("cytology"))]


def cytology_row(fill: str, entry: Results) -> list[str]:
    """One cytology-shaped slide: how much skipping infers against its floor, and what it costs."""
    skip, noskip = entry["whole_slide_skip"], entry["whole_slide_no_skip"]
    return [pct(float(fill.removeprefix("fill_"))), str(entry["cells"]), f"{entry['context']['context_px']} px",
            f"{pct(entry['floor_area_fraction'], 1)} ({entry['floor_bare_seconds']:.0f} s)",
            f"{pct(entry['area_inferred_fraction'], 1)} / {pct(entry['pixels_computed_fraction'], 1)} "
            f"({entry['inferred_vs_floor']:.1f}× floor)",
            f"{noskip['seconds']:.0f} s / {skip['seconds']:.0f} s ({entry['skip_speedup']:.1f}×)",
            pct(entry["gt_foreground_lost_fraction"], 2), masks_differ(entry),
            f"{entry['peak_rss_mb_no_skip']:.0f} / {entry['peak_rss_mb']:.0f} MB",
            f"{entry['full_slide_minutes']:.0f} min (floor {floor_minutes(entry):.0f})"]


def masks_differ(entry: Results) -> str:
    """How far the skipping run's masks are from the unskipped run's, and both runs' Dice with the
    true cells when the run measured it."""
    text = pct(entry["masks_differ_fraction_of_fg"], 2)
    truth = entry.get("dice_vs_truth")
    return text if truth is None else f"{text} (Dice with truth {truth['no_skip']:.4f} / {truth['skip']:.4f})"


def floor_minutes(entry: Results) -> float:
    """The floor's bare-network time scaled to a 100,000 x 170,000-pixel slide."""
    slide_mp = entry["whole_slide_skip"]["summary"]["megapixels"]
    return entry["floor_bare_seconds"] * 100_000 * 170_000 / 1e6 / slide_mp / 60


def cytology_lines(data: Results | None) -> Lines:
    """The cytology-shaped slides of wsi_cpu.json, when the run measured them."""
    if not data:
        return []
    targets = data["targets"].get("fill_0.05", {})
    return ["### Slides shaped like cytology", "",
            "The same slide size, built from real cells cut out by their masks (wbc, urothelial, ISBI 2014) and "
            "scattered on glass, single and in small clusters (`bench/cytology.py`). Context: the least margin of "
            "real surroundings at which 95 % of 24 sampled cells keep their mask (within 0.5 % of their "
            "foreground); floor: the cells dilated by it, with the bare network's time on exactly those pixels; "
            "inferred: the share of the slide the tissue boxes cover / the pixels the network computes on them "
            "(small boxes as the sheets their shapes are packed on, boxes that overlap twice), against the floor; "
            "lost: true foreground where no prediction is kept (outside the packed boxes' cores). "
            "Masks differ: pixels where the two runs' masks differ, as a share of the foreground (Dice of each "
            "run, off / on, with the true cells). The last column is the arithmetic for a 100,000 × 170,000-pixel "
            "slide at the measured throughput with skipping (the floor: the bare network on the cells and their "
            "context only). Targets at 5 %: " + ", ".join(f"{k} {v}" for k, v in targets.items()) + ".", "",
            *table(["cells", "placed", "context", "floor (bare time)", "inferred", "skipping off / on", "lost",
                    "masks differ", "peak off / on", "100k × 170k slide"],
                   (cytology_row(fill, entry) for fill, entry in data.items() if fill.startswith("fill_"))), "",
            *full_size_lines(data), *time_split_lines(data)]


def time_split_row(fill: str, entry: Results) -> list[str]:
    """One cytology-shaped slide: each run's seconds by part, and the speed-up the floor allows."""
    split = entry["time_split"]

    def parts(run: Results) -> str:
        return f"{run['inference_s']:.0f} / {run['objects_s']:.0f} / {run['rest_s']:.0f} s"

    return [pct(float(fill.removeprefix("fill_"))), parts(split["no_skip"]), parts(split["skip"]),
            f"{entry['inference_speedup']:.1f}×", f"{entry['skip_speedup']:.1f}×",
            f"{entry['skip_speedup_at_floor']:.1f}×", f"{entry['full_slide_minutes_at_floor']:.0f} min"]


def time_split_lines(data: Results) -> Lines:
    """Where the cytology runs' time went, when the run split it (windows in-process)."""
    entries = {fill: e for fill, e in data.items() if fill.startswith("fill_") and "skip_speedup_at_floor" in e}
    if not entries:
        return []
    return ["Where the time went: each run's seconds reading pixels and running the network / separating, "
            "tracing and keeping the objects / the rest (process start, tissue detection, joining windows, "
            "writing). Skipping shrinks the first only; the objects cost the same with it or without, since they "
            "are the cells. At the floor: the skipping run with its reading and network replaced by the bare "
            "network on the floor's pixels alone, everything else as measured: the most skipping can give here "
            "(and the arithmetic for a 100,000 × 170,000-pixel slide).", "",
            *table(["cells", "skipping off", "skipping on", "reading + network", "whole run", "at the floor",
                    "100k × 170k at the floor"], (time_split_row(fill, e) for fill, e in entries.items())), ""]


def full_size_lines(data: Results) -> Lines:
    """Whether the per-slide arithmetic holds on a full-size slide, whose overview mask is coarse."""
    entries = {fill: e["full_size_overview"] for fill, e in data.items()
               if fill.startswith("fill_") and "full_size_overview" in e}
    if not entries:
        return []
    d = next(iter(entries.values()))["overview_downsample"]
    return ["A 100,000 × 170,000-pixel slide's overview tissue mask has one pixel per "
            f"{d:.0f} level-0 pixels, far coarser than a cell; the boxes are fitted on window masks at 8 px "
            "instead (`SlideTissue.window_mask`). Built through such an overview, the boxes cover " +
            ", ".join(f"{pct(e['area_inferred_fraction'], 1)} at {pct(float(fill.removeprefix('fill_')))}"
                      for fill, e in entries.items()) +
            " of these slides (as above), where boxes fitted on the overview itself would cover " +
            ", ".join(pct(e["overview_only_area_inferred_fraction"], 1) for e in entries.values()) +
            ": that is what lets the last column's arithmetic hold for a full-size slide.", ""]


# ---------------------------------------------------------------------------- wsi_cuda*.json
GPU_RUNS = ("wsi_cuda.json", "wsi_cuda_workers.json")  # in-process windows; windows over Dask worker processes


def gpu_run_rows(data: Results) -> list[list[str]]:
    """One GPU run of bench/wsi.py: the network against the engine, then each slide's time with skipping."""
    how = (f"{data['segment_workers']} Dask worker processes" if data.get("segment_workers")
           else "windows in-process")
    rows = [[how, "bare forward (default tiles)", f"{data['bare_forward_mp_s']:.0f} MP/s ({data['precision']})", ""],
            [how, "engine on the region, skipping off, polygons included",
             f"{data['cyseg_no_skip_region_mp_s']:.1f} MP/s ({pct(data['cyseg_vs_bare'], 1)} of bare)", ""]]
    for fill, entry in data.get("cytology", {}).items():
        if fill.startswith("fill_"):
            skip = entry["whole_slide_skip"]
            rows.append([how, f"cells at {pct(float(fill.removeprefix('fill_')))}, skipping off / on",
                         f"{entry['whole_slide_no_skip']['seconds']:.0f} s / {skip['seconds']:.0f} s "
                         f"({skip['mp_per_s']:.1f} MP/s with skipping; masks differ "
                         f"{pct(entry['masks_differ_fraction_of_fg'], 2)})",
                         f"{entry['full_slide_minutes']:.0f} min"])
    return rows


def wsi_gpu_section(data: Results | None) -> Lines:
    """wsi_cuda*.json: bench/wsi.py on a lent GPU, in-process and over Dask workers."""
    if data is None:
        return not_run("Whole slides on a GPU", "python bench/wsi.py (on a CUDA machine)")
    runs = {name: run for name in GPU_RUNS if (run := load(name)) is not None}
    return ["### Whole slides on a GPU", "",
            f"`bench/wsi.py` run on a lent {data['gpu']} ({data['cpu_threads']} CPU threads), one run each, on "
            "cytology slides built from the same cells as above. The network is far faster there than the engine "
            "around it: reading the slide, separating instances and tracing polygons run on the CPU, window after "
            "window in-process, or spread over processes with `cyseg segment --workers N`. The last column is the "
            "arithmetic for a 100,000 × 170,000-pixel slide at the throughput measured with skipping. "
            "Reproduce with `python bench/wsi.py --out bench/results/wsi_cuda.json` on a CUDA machine (add "
            "`--workers 8 --out bench/results/wsi_cuda_workers.json`). Sources: "
            + ", ".join(f"`bench/results/{name}`" for name in runs) + ".", "",
            *table(["run", "measure", "result", "100k × 170k slide"],
                   (row for run in runs.values() for row in gpu_run_rows(run))), ""]


# ---------------------------------------------------------------------------- instances.json
def _score(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def instance_rows(data: Results) -> list[list[str]]:
    """One row per data set and class: its split, recipe, pixel Dice and instance scores on the test images."""
    rows = []
    for dataset, entry in data.items():
        split, tried = entry["split"], entry.get("candidates", {})
        recipe = (entry.get("chosen", "defaults") + (f" (of {len(tried)})" if len(tried) > 1 else "")
                  + {True: ", TTA", False: ", no TTA"}.get(entry.get("tta"), "")
                  + (", refit on fit + val" if "refit" in entry else ""))
        for name, scores in entry["test"].items():
            rows.append([dataset, name, f"{split['fit']} / {split['val']} / {split['test']}", recipe,
                         _score(scores["dice"]),
                         _score(scores["object_f1"]), _score(scores["aji"]), _score(scores["pq"]),
                         _score(scores["object_dice"]), _score(scores["object_hausdorff"], 1),
                         minutes(entry["train_cpu_s"])])
    return rows


def glas_rows(data: Results) -> list[list[str]]:
    """Our GlaS object figures beside the published ones weighted 60/20 (test A / test B)."""
    glas = data["glas"]["glas"]
    rows = [["cyseg (this run)", _score(glas.get("object_f1")), _score(glas["object_dice"]),
             _score(glas["object_hausdorff"], 1)]]
    rows += [[f"{method} (published, 60/20-weighted)", _score(v["object_f1"]), _score(v["object_dice"]), "—"]
             for method, v in glas["published_weighted_60_20"].items()]
    return rows


def recipe_choice_lines(data: Results) -> Lines:
    """Per data set whose run records a choice rule: each recipe's validation merit, the challengers'
    paired leads over the incumbent (each recipe's merit "with TTA" where it was weighed with test-time
    augmentation), and which was kept (the incumbent) or chosen (a challenger)."""
    lines = []
    for dataset, entry in data.items():
        choice = entry.get("choice")
        if not choice:
            continue
        merits = {label: f"{c['val_merit']:.4f}{' with TTA' * bool(c.get('tta'))}"
                  for label, c in entry["candidates"].items()}
        seeds = len(next(iter(entry["candidates"].values())).get("val_merit_per_seed", [0]))
        over_seeds = f"averaged over {seeds} seeds" if seeds > 1 else ""
        incumbent = f"`{choice['incumbent']}` {merits[choice['incumbent']]}"
        if not choice["leads"]:
            lines += [f"Validation merit on {dataset}{', ' * bool(over_seeds)}{over_seeds}: {incumbent}, the only "
                      "recipe listed.", ""]
            continue
        leads = "; ".join(f"`{label}` {merits[label]}, lead {lead['lead']:+.4f} ± {lead['se']:.4f} "
                          f"({lead['images']} images)" for label, lead in choice["leads"].items())
        lines += [f"Recipe choice on {dataset} (validation merit{', each ' * bool(over_seeds)}{over_seeds}; lead over "
                  f"the incumbent ± its paired standard error): {incumbent} (incumbent); {leads}. "
                  f"A challenger needs a lead above {choice['lead_in_se']:g} standard errors; "
                  f"{'kept' if entry['chosen'] == choice['incumbent'] else 'chosen'}: `{entry['chosen']}`.", ""]
    return lines


def uncalibrated_tta_lines(data: Results) -> Lines:
    """The data sets whose TTA view was scored with the settings chosen without TTA (runs before `cyseg calibrate`)."""
    older = [dataset for dataset, entry in data.items() if entry.get("tta") is not None
             and not all("tta_settings" in c for c in entry.get("candidates", {}).values())]
    return [f"Measured before `cyseg calibrate`: {', '.join(older)} scored the TTA view with the thresholds and "
            "separation chosen without TTA.", ""] if older else []


def resumed_lines(data: Results, reran: str = RERAN_INSTANCES) -> Lines:
    """Per data set whose run continued an interrupted one (`--resume`), what it took over."""
    return [line for dataset, entry in data.items() if entry.get("resumed")
            for line in resumed_line(f"The {dataset} run", entry["resumed"], reran)]


def resumed_line(run: str, resumed: Results, reran: str = RERAN_INSTANCES) -> Lines:
    """`run` continued an interrupted run (`--resume`): the interrupted run's code and start, each
    training it kept or continued, with the epochs and wall time that ran before, and what ran again."""
    before = resumed["interrupted_run"]
    took = "; ".join(f"`{name}` {'kept' if t['kept'] else 'continued'} ({t['epochs']} epochs, "
                     f"{minutes(t['wall_s'])} wall before)" for name, t in resumed["trainings"].items())
    noted = f" Noted by hand in the record: {before['noted_by_hand']}." if before.get("noted_by_hand") else ""
    return [f"{run} continued (`--resume`) a run interrupted at `{before['code']['commit'][:7]}` "
            f"(started {before['started']}, {before['cpu']['model']}): {took or 'no training'}. {reran}{noted}", ""]


def refit_command(data: Results) -> str:
    """' (--refit for ...)' naming the data sets whose test model was a refit on fit + val, else ''."""
    refitted = [dataset for dataset, entry in data.items() if "refit" in entry]
    return f" (`--datasets {','.join(refitted)} --refit` for {', '.join(refitted)})" if refitted else ""


def instances_section(data: Results | None) -> Lines:
    """instances.json: object F1, AJI, PQ and the GlaS object figures per data set and class."""
    if not data:
        return not_run("Instances", "python bench/instances.py")
    runs = [entry["run"] for entry in data.values()]
    lines = ["## Instances", "",
             "`bench/instances.py` trains one `cyseg train --instances` model per data set, recipe and seed (seed 0, "
             "or more where a recipe-choice line below says so; the recipes `bench/instances.py` lists for a data "
             "set, elsewhere the training defaults) on the fit images; "
             "the validation images choose the recipe (mean of Dice and object F1; where the run records a choice "
             "rule, the first recipe listed stays unless another leads it by more than the rule's paired standard "
             "errors, image by image), the epoch, each class's threshold, the separation's parameters (markers: "
             "the distance's peaks, or the contour cores of models trained with `--contours`; growth), the least "
             "object area and, where the recipe column says "
             "so, whether test-time augmentation (`--tta`) is used (its view scored with thresholds and separation "
             "chosen again on the validation images predicted with it, `cyseg calibrate --tta`); where it says "
             "\"refit\", the chosen recipe "
             "was then trained once more on the fit and validation images together, with the settings validation "
             "chose (`cyseg train --settings-from`), and only that model met the test images; the test images are "
             "scored once by `cyseg evaluate`; training counts the CPU of every recipe tried. Object F1 counts a "
             "match at IoU > 0.5 (stricter than GlaS's own 50 %-overlap rule); data sets without instance masks "
             "(wbc, urothelial, miccai15) take the masks' connected regions as objects. "
             f"Measured on {run_machine(data)}{run_kernels(data)} (a data set's several trainings side by side, "
             f"one thread each), {minutes(sum(r['cpu_s'] for r in runs))} of CPU in all. "
             f"Reproduce with `python bench/instances.py`{refit_command(data)}. "
             "Source: `bench/results/instances.json`.", "",
             *table(["data", "class", "fit / val / test", "recipe", "Dice", "object F1", "AJI", "PQ", "object Dice",
                     "object Hausdorff", "training"], instance_rows(data)), ""]
    lines += recipe_choice_lines(data) + resumed_lines(data) + uncalibrated_tta_lines(data)
    if "glas" in data:
        lines += ["GlaS test (80 images: test A and B together), against the published figures weighted as our "
                  "images mix them; F1 as the challenge counts it (a prediction covering more than half of its "
                  "gland, pooled over the images):", "",
                  *table(["method", "object F1", "object Dice", "object Hausdorff"], glas_rows(data)), ""]
    earlier = [d for d, entry in data.items() if "candidates" not in entry]
    if earlier:
        lines += [f"Measured with the earlier protocol (one recipe, no least object area chosen, specks scored as "
                  f"objects): {', '.join(earlier)} (`python bench/instances.py --datasets {','.join(earlier)}`).", ""]
    missing = [d for d in ("glas", "isbi2014", "wbc", "urothelial", "miccai15") if d not in data]
    if missing:
        lines += [f"Not measured yet: {', '.join(missing)} (`python bench/instances.py --datasets "
                  f"{','.join(missing)}`).", ""]
    return lines


def wsi_instances_row(label: str, data: Results) -> list[str]:
    """One instance model's cost on the region: MP/s with and without separation, memory."""
    mps, rss, growth = data["mp_per_s"], data["peak_rss_mb"], data["model"].get("separation", {})
    how = "; ".join(f"{c}: {described(p)}" for c, p in growth.items())
    return [label, how, str(data["cpu_threads"]), f"{mps['instances']:.2f} / {mps['regions']:.2f} MP/s",
            pct(data["instances_vs_regions"]), f"{counts(data['objects']['instances'])} / "
            f"{counts(data['objects']['regions'])}", f"{rss['instances']:.0f} / {rss['regions']:.0f} MB"]


def counts(objects: dict[str, int]) -> str:
    """Objects per class, e.g. 'cell 68, nucleus 1288'."""
    return ", ".join(f"{c} {n}" for c, n in objects.items())


def wsi_instances_section(data: Results | None) -> Lines:
    """wsi_instances_cpu.json: the engine with and without instance separation on the wsi region."""
    if not data:
        return not_run("Instances on whole slides", "python bench/wsi_instances.py --model MODEL --label NAME")
    first = next(iter(data.values()))
    region, targets = first["region"], first["targets"]
    return ["## Instances on whole slides", "",
            "`bench/wsi_instances.py` runs an instance model (one per row: `bench/instances.py`'s, or the shipped "
            "`default`) on "
            f"`bench/wsi.py`'s densest {region['w']}×{region['h']} region with background skipping off, separating "
            "instances (objects kept whole across windows) and not (connected regions), interleaved, best of two "
            f"each; peak memory of a `cyseg segment` process on the region. Targets: instances at "
            f"{targets['instances_vs_regions']} of the regions' throughput, memory {targets['peak_rss_mb']} MB. "
            f"Measured on {machine(None, first['device'])}, one run each, with the CPU threads shown. "
            "Source: `bench/results/wsi_instances_cpu.json`.", "",
            *table(["model", "separation", "threads", "instances / regions", "ratio", "objects", "peak memory"],
                   (wsi_instances_row(label, entry) for label, entry in data.items())), ""]


# ---------------------------------------------------------------------------- idi.json
def idi_command(settings: Results) -> str:
    """The bench/idi.py command line of a run's settings."""
    return (f"python bench/idi.py --datasets {settings['datasets']} --p {','.join(f'{p:g}' for p in settings['p'])} "
            f"--seeds {settings['seeds']} --iterations {settings['iterations']} --epochs {settings['epochs']} "
            f"--steps-per-epoch {settings['steps_per_epoch']} --batch {settings['batch']} --crop {settings['crop']}"
            + (f" --idi-args '{' '.join(settings['idi_args'])}'" if settings.get("idi_args") else ""))


def _ran(s: Results, key: str) -> str:
    """mean ± std test IoU of one IDI stage, with the number of seeds when not every seed ran it."""
    if key not in s:
        return "–"
    iou = s[key]["iou"]
    n = iou["n"]
    return pm(iou["mean"], iou["std"]) + ("" if n == len(s["chosen_K"]) else f" ({n} seed{'s' * (n != 1)})")


def loss_within_noise(full: Results, incomplete: Results) -> bool:
    """Whether the IoU the removal cost, (a) − (b), is under two standard errors of that difference over the
    seeds: a share of it recovered is then mostly the seeds' noise."""
    lost = full["mean"] - incomplete["mean"]
    se = (full["std"] ** 2 / full["n"] + incomplete["std"] ** 2 / incomplete["n"]) ** 0.5
    return lost < 2 * se


def recovered_cell(share: float | None, full: Results, incomplete: Results, metric: str) -> str:
    """A recovered share of `metric` (from the (a) and (b) records), marked † where the loss it divides is
    within noise; the records are read only when there is a share, as runs without one may lack the metric."""
    if share is None:
        return "–"
    return pct(share) + ("†" if loss_within_noise(full[metric], incomplete[metric]) else "")


def idi_rows(dataset: str, summary: Results, iterations: int) -> list[list[str]]:
    """Test IoU of one dataset per fraction p of objects removed."""
    full = summary["full"]["iou"]
    rows = []
    for p, s in summary["p"].items():
        recovered, on_val = s["recovery"].get("idi"), s.get("val_recovery", {}).get("idi")
        rows.append([dataset, p.removeprefix("p"), pct(s["fraction_objects_removed"]["mean"]),
                     pm(full["mean"], full["std"]), pm(s["incomplete"]["iou"]["mean"], s["incomplete"]["iou"]["std"]),
                     *(_ran(s, f"idi_K{k}") for k in range(1, iterations + 1)),
                     f"{_ran(s, 'idi')} (K = {', '.join(map(str, s['chosen_K']))})",
                     recovered_cell(recovered, summary["full"], s["incomplete"], "iou"),
                     recovered_cell(on_val, summary["full"], s["incomplete"], "val_iou"),
                     "yes" if s["never_below"] else "**no**",
                     str(s["collapsed_models"])])
    return rows


def mask_agreement_rows(dataset: str, summary: Results) -> list[list[str]]:
    """The training masks of every dataset version every seed made against the complete annotation,
    mean over seeds."""
    rows = []
    for p in summary["p"]:
        versions = list(zip(*(run["p"][p]["training_masks_vs_complete"] for run in summary["runs"]), strict=False))
        cells = [" / ".join(f"{sum(v[m] for v in version) / len(version):.2f}" for m in ("iou", "precision", "recall"))
                 for version in versions]
        rows.append([dataset, p.removeprefix("p"), *cells])
    return rows


def idi_section(data: Results | None) -> Lines:
    """idi.json: iterative data improvement on masks with a fraction of the objects removed."""
    if data is None:
        return not_run("Iterative data improvement", "python bench/idi.py")
    return idi_lines(data, "Iterative data improvement", "idi.json")


def idi_unsure_section(data: Results | None) -> Lines:
    """idi_unsure.json: the same with `cyseg improve --unsure unknown`, a rule that lost on validation."""
    if data is None:
        return []
    return ["### IDI with the unsure pixels unknown (not the default)", "",
            "`cyseg improve --unsure unknown` leaves what the model predicted away from the expert annotations but "
            "did not add out of the next model's loss instead of teaching it as background. It was to become the "
            "default if, on the validation images' complete masks, the chosen IDI never ended below (b) and "
            "recovered at least half of the lost IoU at p = 0.5 on both data sets (rule fixed before the run); it "
            "recovers less than half on GlaS there, so the default stays background. Its test figures, read after "
            f"that choice (commit {data['run']['code']['commit'][:7]}, before the rule's size range was widened to "
            "the one chosen above):", "",
            *idi_lines(data, None, "idi_unsure.json")]


def idi_seeds_section(data: Results | None) -> Lines:
    """idi_miccai15_seeds6.json: the default rule on miccai15 again, over twice the seeds."""
    if data is None:
        return []
    return ["### miccai15 over six seeds", "",
            "A three-seed run (commit a0a12ab) missed \"not below\" on miccai15 at p = 0.25 by less than its "
            "seeds' spread, so the same protocol ran again on miccai15 alone, over "
            f"{data['settings']['seeds']} seeds of its own (commit {data['run']['code']['commit'][:7]}; nothing in "
            "it was chosen on the test images):", "",
            *idi_lines(data, None, "idi_miccai15_seeds6.json")]


def idi_rules_section(data: Results | None) -> Lines:
    """idi_rules.json: the masks each variant of the growth rule grows, against the complete annotation."""
    if data is None:
        return []
    settings = data["settings"]
    rows = [[dataset, p.removeprefix("p"), name, pm(v["iou"]["mean"], v["iou"]["std"]),
             f"{v['precision']['mean']:.3f}", f"{v['recall']['mean']:.3f}"]
            for dataset, by_p in data["summary"].items() for p, variants in by_p.items()
            for name, v in variants.items()]
    return ["### How the growth rule's settings are chosen", "",
            "`bench/idi_rules.py` trains the iteration-1 model of `bench/idi.py` (same split, removal, budget "
            f"and seed; {settings['seeds']} seeds), predicts the training images once and grows their incomplete "
            "masks by every variant of the `--mode objects` rule (one setting changed from the default at a time, "
            "and the method's OR), as `cyseg improve` grows them. The grown masks are compared with the complete "
            "annotation of the same training images, pooled: IoU (mean ± std over seeds), precision (how much of "
            "the mask is real foreground) and recall. The test images play no part. Settings are chosen on the "
            "IoU at p = 0.5, watching the precision: a rule that adds the model's false positives teaches the "
            f"next model them. Measured on {machine(data.get('cpu_threads'))}. Reproduce with "
            f"`python bench/idi_rules.py --datasets {settings['datasets']} --p "
            f"{','.join(f'{p:g}' for p in settings['p'])} --seeds {settings['seeds']}`. "
            "Source: `bench/results/idi_rules.json`.", "",
            *table(["data", "p", "rule", "IoU", "precision", "recall"], rows), "",
            *(idi_rules_outcome(dataset, p, variants, data["run"]["code"]["commit"])
              for dataset, by_p in data["summary"].items() for p, variants in by_p.items()), ""]


def idi_rules_outcome(dataset: str, p: str, variants: Results, commit: str) -> str:
    """One line: the default rule's IoU beside the best variant's."""
    name, best = max(variants.items(), key=lambda kv: kv[1]["iou"]["mean"])
    default = variants["default"]
    return (f"- {dataset}, p = {p.removeprefix('p')}: the default (the rule at commit {commit[:7]}) "
            f"{default['iou']['mean']:.3f}, precision {default['precision']['mean']:.3f}; the best variant, "
            f"{name}, {best['iou']['mean']:.3f}, precision {best['precision']['mean']:.3f}")


def idi_lines(data: Results, title: str | None, source: str) -> Lines:
    """The protocol, the test IoU table and the training masks' agreement of one bench/idi.py run."""
    settings, k = data["settings"], data["settings"]["iterations"]
    datasets = data["datasets"]
    steps = settings["epochs"] * settings["steps_per_epoch"]
    agreement = [row for name, s in datasets.items() for row in mask_agreement_rows(name, s)]
    versions = max(len(row) for row in agreement) - 2
    rule = " ".join(settings["idi_args"]) or "the default rule, `--mode objects`"
    return [*([f"## {title}", ""] if title else []),
            "`bench/idi.py` removes a fraction p of the annotated objects at random from complete training masks "
            f"and compares: {data['protocol']}. IDI runs `cyseg improve` with {rule}. Test IoU, mean ± std over "
            f"{settings['seeds']} seeds; every model gets the same reduced budget ({steps} steps of "
            f"{settings['batch']} random {settings['crop']}² crops, fresh weights), so the full-mask models sit below "
            "the accuracy table. \"Recovered\" is the share of the IoU lost to the removal that the IDI model "
            "`cyseg improve` chose wins back, (IoU_IDI − IoU_b) / (IoU_a − IoU_b); negative when IDI loses more; "
            "\"on validation\" is the same share on the validation images' complete masks, the figure a change to "
            "the method is chosen on; † marks a share whose lost IoU is under two standard errors of (a) − (b) "
            "over the seeds, so that it is mostly noise. "
            "\"Not below\": the chosen model's mean is no lower than (b)'s mean minus (b)'s std over seeds. "
            f"\"Collapsed\": models of the row {data.get('collapsed_definition', 'with a test IoU below 0.001')}. "
            "IDI K columns average the seeds whose "
            f"run went that far. Measured on {machine(data.get('cpu_threads'))}. Reproduce with "
            f"`{idi_command(settings)}`. Source: `bench/results/{source}`.", "",
            *table(["data", "p", "objects removed", "full masks (a)", "incomplete (b)",
                    *(f"IDI K={i}" for i in range(1, k + 1)), "IDI chosen (K per seed)", "recovered", "on validation",
                    "not below", "collapsed"],
                   (row for name, s in datasets.items() for row in idi_rows(name, s, k))), "",
            "The training masks of each dataset version (0: the incomplete masks, then one per improvement that "
            "every seed ran) against the complete annotation: IoU / precision / recall, mean over seeds.",
            "",
            *table(["data", "p", *(f"version {i}" for i in range(versions))],
                   (row + ["–"] * (versions + 2 - len(row)) for row in agreement)), ""]


# ---------------------------------------------------------------------------- docs/benchmarks.md
# ---------------------------------------------------------------------------- active.json
def active_rows(dataset: str, entry: Results) -> list[list[str]]:
    """One row per round: the labelled fraction, each strategy's test IoU (mean ± std over seeds) and
    suggest's lead over random seed by seed (mean ± standard error, seeds ahead)."""
    from bench.active import paired_differences

    summary = entry["summary"]
    rounds = zip(summary["random"]["curve"], summary["suggest"]["curve"],
                 paired_differences(entry["per_seed"], "suggest"), strict=True)
    return [[dataset, str(r["round"]), pct(r["fraction"]), pm(r["iou_mean"], r["iou_std"]),
             pm(s["iou_mean"], s["iou_std"]), paired_words(gap)] for r, s, gap in rounds]


def paired_words(gap: Results) -> str:
    """'+0.012 ± 0.004 (3 of 3 seeds ahead)'; 'same model' where every seed scored the same (round 1)."""
    if gap["mean"] == 0 and gap["seeds_ahead"] == 0 and not gap["se"]:
        return "same model"
    spread = f" ± {gap['se']:.3f}" if gap["se"] is not None else ""
    return f"{gap['mean']:+.3f}{spread} ({gap['seeds_ahead']} of {gap['seeds']} seeds ahead)"


def active_outcome(dataset: str, summary: Results) -> str:
    """Where each strategy reached 98 % of the full-data IoU, and whether suggest led every round."""
    def reached(strategy: str) -> str:
        fraction = summary[strategy]["fraction_reaching_target"]
        return (f"{strategy} reached it with {pct(fraction)} of the pool labelled" if fraction is not None
                else f"{strategy} did not by the last round")

    lead = "yes" if summary["suggest_beats_random_every_round"] else "no"
    return (f"- {dataset}: full-data IoU {summary['full_iou_mean']:.3f}; 98 % of it: {reached('random')}, "
            f"{reached('suggest')}; suggest above random at every round: {lead}")


def active_section(data: Results | None) -> Lines:
    """active.json: labelling what `cyseg suggest` picks vs labelling at random, round by round."""
    if measured(data) is None:
        return not_run("Active learning", "python bench/active.py")
    settings, datasets = data["settings"], data["datasets"]
    return ["## Active learning", "",
            f"`bench/active.py`: pool-based simulation, {settings['seeds']} seeds, a fresh model per round with "
            f"the same budget ({settings['epochs']} epochs of {settings['steps_per_epoch']} steps); round 1 labels "
            f"{pct(settings['start'])} of the pool at random, each later round {pct(settings['step'])} more, chosen "
            "at random or by `cyseg suggest` with the previous round's model. Measured on "
            f"{measured_on(data['run'])}. "
            f"Reproduce with `{active_command(settings, 'active.json')}`. "
            "Source: `bench/results/active.json` (curves: `bench/results/active.png`).", "",
            *active_curve_lines(datasets)]


def active_command(settings: Results, source: str) -> str:
    """The bench/active.py command line that reproduces a run with `settings` into bench/results/`source`."""
    by = f" --holdout-by {settings['holdout_by']}" if settings.get("holdout_by", "random") != "random" else ""
    held_out = f" --holdout {settings['holdout']:g}{by}" if settings.get("holdout") else ""
    densities = settings.get("density_weights") or [0.0] * len(settings.get("weights", [1.0]))
    weights = (" --weights " + ",".join(f"{w:g}" + (f":{d:g}" if d else "") for w, d in
                                        zip(settings["weights"], densities, strict=True))
               if settings.get("weights", [1.0]) != [1.0] or any(densities) else "")
    unlabelled = " --score-unlabelled" if settings.get("score_unlabelled") else ""
    replicates = f" --replicates {settings['replicates']}" if settings.get("replicates", 1) > 1 else ""
    return (f"python bench/active.py --datasets {settings['datasets']} --seeds {settings['seeds']} --rounds "
            f"{settings['rounds']} --epochs {settings['epochs']} --crop {settings['crop']} --jobs {settings['jobs']}"
            f"{held_out}{weights}{unlabelled}{replicates} --out bench/results/{source}")


def active_curve_lines(datasets: Results) -> Lines:
    """Per data set and round, random's and suggest's test IoU; where each reached the target; what a resumed
    run took over."""
    return [*table(["data set", "round", "labelled", "random: test IoU", "suggest: test IoU",
                    "suggest − random, paired by seed (± s.e.)"],
                   (row for d, v in datasets.items() for row in active_rows(d, v))), "",
            *(active_outcome(d, v["summary"]) for d, v in datasets.items()), "",
            *resumed_lines(datasets, RERAN_ACTIVE)]


def active_validation_section(data: Results | None) -> Lines:
    """active_validation.json: the suggest settings compared on validation images held out of the pool."""
    return held_out_lines(data, "### Choosing how much uncertainty weighs", "active_validation.json", lambda settings: (
        f"The same simulation with {pct(settings['holdout'])} of each pool held out (seeded) and scored instead of "
        f"the test images, {settings['seeds']} seeds, {settings['rounds']} rounds, one suggest strategy per "
        "`cyseg suggest --uncertainty-weight` (0: coverage of the pool alone; 1: coverage of its uncertainty); the "
        "weight with the best mean validation IoU over the rounds after the first is the default."))


def active_validation_budget_section(data: Results | None) -> Lines:
    """active_validation_budget.json: the uncertainty weights compared on held-out pool images at the larger
    budget, as active_validation.json compares them at the base budget."""
    return held_out_lines(data, "#### The uncertainty weight at that budget, on validation",
                          "active_validation_budget.json", lambda settings: (
                              f"The held-out comparison above at {settings['epochs']} epochs per round: "
                              f"{pct(settings['holdout'])} of the pool held out, {settings['seeds']} seeds, "
                              f"{settings['rounds']} rounds."))


def active_validation_appearance_section(data: Results | None) -> Lines:
    """active_validation_appearance.json: the uncertainty weights compared on held-out pool images of one look
    per seed, a stand-in for a new patient's images, where a random held-out set shares patients with the pool."""
    return held_out_lines(data, "#### The uncertainty weight on a look the pool lacks",
                          "active_validation_appearance.json", lambda settings: (
                              f"The held-out comparison above at {settings['epochs']} epochs per round, with the "
                              f"held-out {pct(settings['holdout'])} chosen by look instead of at random: per seed "
                              "the pool images most like one pool image in Lab colour (mean and spread), another "
                              "look per seed, so that the model meets a stain and look it was not given, as it may "
                              "on the test images (a random held-out set shares GlaS's 16 patients with the pool); "
                              f"{settings['seeds']} seeds, {settings['rounds']} rounds."))


def active_float32_section(data: Results | None, budget: Results | None = None) -> Lines:
    """active_budget_float32.json: the larger-budget simulation on the test images again in float32, beside the
    same seeds of active_budget.json (`budget`): whether suggest's place against random holds across precisions."""
    if measured(data) is None:
        return []
    settings = data["settings"]
    budget = measured(budget if budget is not None else load("active_budget.json"))
    return ["#### The larger budget again, in another precision", "",
            f"The test-image simulation of `active_budget.json` again with the same settings, {settings['seeds']} of "
            f"its seeds and {settings['rounds']} rounds, on {measured_on(data['run'])}: each seed starts "
            "from the same labelled images and training seed, and only the arithmetic differs, so the models and "
            "therefore suggest's picks differ. Reproduce with "
            f"`{active_command(settings, 'active_budget_float32.json')}`. Source: "
            "`bench/results/active_budget_float32.json`.", "",
            *active_curve_lines(data["datasets"]), *precision_seed_lines(data, budget)]


def precision_seed_lines(data: Results, budget: Results | None) -> Lines:
    """Per data set and seed in both runs, each round's suggest − random in the larger-budget record and in `data`."""
    if budget is None:
        return []
    names = {"budget": kernel_name(budget["run"]) or "its machine", "here": kernel_name(data["run"]) or "this run"}
    lines = []
    for name, entry in data["datasets"].items():
        if name not in budget["datasets"]:
            continue
        before = budget["datasets"][name]["per_seed"]
        rows = (row for seed, pair in enumerate(zip(before, entry["per_seed"], strict=False))
                for row in seed_gap_row(name, seed, *pair))
        lines += [*table(["data set", "seed", "round", f"random: {names['budget']}", f"random: {names['here']}",
                          f"suggest − random: {names['budget']}", f"suggest − random: {names['here']}"], rows), "",
                  *precision_gap_lines(name, entry["per_seed"], before), ""]
    return lines


def precision_gap_lines(dataset: str, here: list[Results], budget: list[Results]) -> Lines:
    """Per round after the first, suggest's paired lead over random in this run and over all seeds of the
    larger-budget record."""
    from bench.active import paired_differences

    return [f"- {dataset}, round {now['round']}: suggest − random {paired_words(now)} here, {paired_words(before)} "
            "in `active_budget.json`."
            for now, before in zip(paired_differences(here, "suggest")[1:], paired_differences(budget, "suggest")[1:],
                                   strict=False)]


def seed_gap_row(dataset: str, seed: int, before: Results, now: Results) -> list[list[str]]:
    """One seed's rows after round 1: random's test IoU and suggest's lead over it in both runs."""
    return [[dataset, str(seed), str(b["round"]), f"{b['iou']:.3f}", f"{n['iou']:.3f}",
             f"{bs['iou'] - b['iou']:+.3f}", f"{ns['iou'] - n['iou']:+.3f}"]
            for b, n, bs, ns in zip(before["random"][1:], now["random"][1:], before["suggest"][1:], now["suggest"][1:],
                                    strict=False)]


def active_unlabelled_section(data: Results | None) -> Lines:
    """active_unlabelled.json: the uncertainty weights judged on the pool images that no strategy had labelled,
    beside their test IoU."""
    return held_out_lines(data, "#### The uncertainty weight judged on the pool images no strategy labelled",
                          "active_unlabelled.json", lambda settings: (
                              "The test-image simulation of `active_budget_float32.json` (its trainings kept) with "
                              "weight 0 (coverage alone) and weight 4 (uncertainty first) beside weight 1 and "
                              "`--score-unlabelled`: every round's "
                              "models also scored on the pool images that no strategy had labelled by then, "
                              "validation images from the training images that all of a round's models meet unseen "
                              "(leaning towards the pool's typical images, since no strategy picked them); "
                              f"{settings['seeds']} seeds, {settings['rounds']} rounds. The weight is judged on "
                              "those; the test IoU stands beside them, not chosen on."), scored="test IoU")


def active_unlabelled_wbc_section(data: Results | None) -> Lines:
    """active_unlabelled_wbc.json: the unlabelled pool images set beside the test images on wbc, where suggest
    led random on the test images in active.json: whether the two agree there too."""
    return held_out_lines(data, "#### The same check on wbc, where suggest led on the test images",
                          "active_unlabelled_wbc.json", lambda settings: (
                              "The simulation of `active.json` on wbc again at its budget "
                              f"({settings['epochs']} epochs per round), {settings['seeds']} seeds, "
                              f"{settings['rounds']} rounds, with `--score-unlabelled`: whether the pool images no "
                              "strategy had labelled agree with the test images on wbc too, where suggest led random "
                              "in `active.json`."), scored="test IoU")


def active_density_section(data: Results | None) -> Lines:
    """active_density.json: the density weight (typicality) beside the default, judged on the pool images that no
    strategy had labelled, beside their test IoU."""
    return held_out_lines(data, "#### A density weight judged on the pool images no strategy labelled",
                          "active_density.json", lambda settings: (
                              "The same simulation (its random, round-1 and weight-1 trainings kept) with a strategy "
                              "that also counts each candidate by its typicality, its mean likeness to every image, "
                              "to the power of the density weight (`--weights W:D`, `cyseg suggest "
                              "--density-weight D`): picks in the pool's crowded regions before its sparse fringe, "
                              "the regions the test images visit most if they are like the pool; "
                              f"{settings['seeds']} seeds, {settings['rounds']} rounds, judged on the pool images no "
                              "strategy had labelled; the test IoU stands beside them, not chosen on."),
                          scored="test IoU")


def active_typical_section(data: Results | None) -> Lines:
    """active_typical.json: typicality alone (no uncertainty) beside the default and the density weight, judged on
    the pool images that no strategy had labelled, beside their test IoU."""
    return held_out_lines(data, "#### Typicality without uncertainty, judged on the pool images no strategy labelled",
                          "active_typical.json", lambda settings: (
                              "The same simulation (its random, round-1, weight-1 and density-4 trainings kept) with "
                              "a strategy that weighs each candidate by its typicality alone (`--weights 0:4`: "
                              "uncertainty weight 0, density weight 4), the rule low-budget active learning favours "
                              "(typical images first, uncertain ones once many are labelled: Hacohen et al., ICML "
                              "2022), since the images a small model is unsure of are the ones unlike what it was "
                              f"given; {settings['seeds']} seeds, {settings['rounds']} rounds, judged on the pool "
                              "images no strategy had labelled; the test IoU stands beside them, not chosen on."),
                          scored="test IoU")


def active_replicates_section(data: Results | None) -> Lines:
    """active_replicates.json: random and the default suggest with two trainings per labelled set, so that the
    paired gap measures the choice of images apart from one training's luck."""
    return held_out_lines(data, "#### Two trainings per labelled set: the choice apart from the training's luck",
                           "active_replicates.json", lambda settings: (
                               "The same simulation (its random, round-1 and weight-1 trainings kept) with every "
                               f"labelled set of the rounds after the first trained {settings['replicates']} times, "
                               "replicate k with training seed s + 100k in both strategies; each round's IoU is the "
                               f"replicates' mean; {settings['seeds']} seeds, {settings['rounds']} rounds, beside "
                               "the pool images no strategy had labelled."), scored="test IoU",
                          extra=replicate_lines)


def replicate_lines(dataset: str, entry: Results) -> Lines:
    """How far the trainings of the same labelled images part (the range of their test IoU, mean over seeds, per
    strategy and round), and the paired gap that the first training alone would have shown."""
    from bench.active import paired_differences

    per_seed = entry["per_seed"]
    names = strategy_names(entry["summary"])

    def parting(k: str, i: int) -> float:
        return sum(max(s[k][i]["iou_replicates"]) - min(s[k][i]["iou_replicates"]) for s in per_seed) / len(per_seed)

    replicated = [(k, i, r) for k in names for i, r in enumerate(per_seed[0][k]) if "iou_replicates" in r]
    spread = "; ".join(f"{k} round {r['round']} {parting(k, i):.3f}" for k, i, r in replicated)
    count = len(replicated[0][2]["iou_replicates"]) if replicated else 1
    first = [{k: [{**r, "iou": r.get("iou_replicates", [r["iou"]])[0]} for r in s[k]] for k in names}
             for s in per_seed]
    return [f"- {dataset}: {count} trainings of the same labelled images part by (test IoU, largest − smallest, mean "
            f"over seeds) {spread}",
            *(f"- {dataset}: {k} − random with the first training alone: " + "; ".join(
                f"round {gap['round']} {paired_words(gap)}" for gap in paired_differences(first, k)[1:])
              for k in names if k != "random")]


def held_out_lines(data: Results | None, heading: str, source: str, intro: Callable[[Results], str],
                   scored: str = "validation IoU", extra: Callable[[str, Results], Lines] | None = None) -> Lines:
    """A run's section comparing suggest weights (none for an absent or quick one): `heading`, `intro` of its
    settings, where it was measured, and per data set each strategy's IoU (`scored`: on held-out or test images)
    per round, the best suggest weight, each one's paired lead over random and `extra`'s lines of the data set."""
    if measured(data) is None:
        return []
    lines = [heading, "", f"{intro(data['settings'])} Measured on {measured_on(data['run'])}. "
             f"Reproduce with `{active_command(data['settings'], source)}`. Source: `bench/results/{source}`.", ""]
    for name, v in data["datasets"].items():
        summary = v["summary"]
        names = strategy_names(summary)
        rounds = zip(*(summary[k]["curve"] for k in names), strict=True)
        lines += [*table(["data set", "round", "labelled", *(f"{k}: {scored}" for k in names)],
                         ([name, str(r[0]["round"]), pct(r[0]["fraction"]),
                           *(pm(c["iou_mean"], c["iou_std"]) for c in r)] for r in rounds)), "",
                  f"- {name}: best by {scored} {summary['best_suggest']} (mean after round 1: "
                  + ", ".join(f"{k} {summary[k]['mean_iou_after_round_1']:.3f}" for k in names) + "); above random "
                  "at every round: " + ", ".join(f"{k} {'yes' if summary[f'{k}_beats_random_every_round'] else 'no'}"
                                                 for k in names if k != "random"),
                  *paired_lines(v["per_seed"], [k for k in names if k != "random"]),
                  *unlabelled_lines(v["per_seed"], summary, [k for k in names if k != "random"]),
                  *(extra(name, v) if extra else []), ""]
    return [*lines, *resumed_lines(data["datasets"], RERAN_ACTIVE)]


def paired_lines(per_seed: list[Results], names: list[str]) -> Lines:
    """Per suggest strategy, its lead over random seed by seed in each round after the first."""
    from bench.active import paired_differences

    return [f"- {k} − random, paired by seed: " + "; ".join(
        f"round {gap['round']} {paired_words(gap)}" for gap in paired_differences(per_seed, k)[1:]) for k in names]


def unlabelled_lines(per_seed: list[Results], summary: Results, names: list[str]) -> Lines:
    """Per suggest strategy scored with `--score-unlabelled`, its lead over random seed by seed on the pool
    images that no strategy had labelled by each round (from the summary; how many images, in the first seed)."""
    return [f"- {k} − random on the pool images no strategy had labelled, paired by seed: " + "; ".join(
        f"round {gap['round']} ({per_seed[0][k][gap['round'] - 1]['unlabelled_images']} images) {paired_words(gap)}"
        for gap in summary[f"{k}_minus_random_unlabelled"]) for k in names
        if f"{k}_minus_random_unlabelled" in summary]


def active_budget_section(data: Results | None, base: Results | None = None) -> Lines:
    """active_budget.json: the simulation again with a larger training budget per round, beside what the
    budget of active.json (`base`) let the full-data model reach."""
    if measured(data) is None:
        return []
    settings, datasets = data["settings"], data["datasets"]
    base = measured(base if base is not None else load("active.json"))
    return ["### A larger training budget per round", "",
            f"The same simulation with {settings['epochs']} epochs of {settings['steps_per_epoch']} steps per round"
            f"{budget_ratio_words(settings, base)}, {settings['seeds']} seeds: whether the strategies part "
            "once the labels, more than the training steps, limit the model. Measured on "
            f"{measured_on(data['run'])}. Reproduce with "
            f"`{active_command(settings, 'active_budget.json')}`. Source: `bench/results/active_budget.json` (curves: "
            "`bench/results/active_budget.png`).", "",
            *base_budget_lines(datasets, base),
            *active_curve_lines(datasets)]


def budget_ratio_words(settings: Results, base: Results | None) -> str:
    """' (N× the budget above)' when the base run is known (and measured), else ''."""
    if base is None:
        return ""
    ratio = (settings["epochs"] * settings["steps_per_epoch"]) / (base["settings"]["epochs"]
                                                                   * base["settings"]["steps_per_epoch"])
    return f" ({ratio:g}× the budget above)"


def base_budget_lines(datasets: Results, base: Results | None) -> Lines:
    """Per data set of both runs, what the base budget's full-data model and last random round scored."""
    if base is None:
        return []
    lines = []
    for name in datasets:
        if name in base["datasets"]:
            summary = base["datasets"][name]["summary"]
            last = summary["random"]["curve"][-1]
            lines.append(f"- {name}, budget above: full-data IoU {summary['full_iou_mean']:.3f}; random labelling "
                         f"of {pct(last['fraction'])} of the pool {last['iou_mean']:.3f}.")
    return [*lines, ""] if lines else []


def active_results(data: Results | None, budget: Results | None = None) -> list[list[str]]:
    """README results row: per data set, the labelled share at which each strategy reaches the run's
    target share of the full-data IoU, and whether suggest led random at every round; from the
    larger-budget run (`budget`) for the data sets it measured, where labels rather than training
    steps limit the model."""
    if measured(data) is None:
        return []
    budget = measured(budget)
    parts = []
    for name in data["datasets"]:
        run = budget if budget is not None and name in budget["datasets"] else data
        summary, settings = run["datasets"][name]["summary"], run["settings"]
        last = pct(summary["random"]["curve"][-1]["fraction"])
        reached = {k: summary[k]["fraction_reaching_target"] for k in ("suggest", "random")}
        lead = "yes" if summary["suggest_beats_random_every_round"] else "no"
        parts.append(f"{name} ({settings['epochs']} epochs per round, {settings['seeds']} seeds): "
                     + ", ".join(f"{k} {f'not by {last}' if f is None else pct(f)}" for k, f in reached.items())
                     + f" (suggest above random at every round: {lead})")
    return [["active learning", f"labels needed for {pct(data['settings']['target'])} of the full-data IoU",
             "; ".join(parts)]]


SECTIONS: list[tuple[str, Callable[[Results | None], Lines]]] = [
    ("accuracy.json", accuracy_section),
    ("accuracy.json", generalisation_section),
    ("default_model.json", default_model_section),
    ("default_model_rebuild.json", rebuild_section),
    ("throughput_cpu.json", throughput_section),
    ("wsi_cpu.json", wsi_section),
    ("wsi_cuda.json", wsi_gpu_section),
    ("instances.json", instances_section),
    ("wsi_instances_cpu.json", wsi_instances_section),
    ("idi.json", idi_section),
    ("idi_miccai15_seeds6.json", idi_seeds_section),
    ("idi_rules.json", idi_rules_section),
    ("idi_unsure.json", idi_unsure_section),
    ("active.json", active_section),
    ("active_validation.json", active_validation_section),
    ("active_budget.json", active_budget_section),
    ("active_validation_budget.json", active_validation_budget_section),
    ("active_validation_appearance.json", active_validation_appearance_section),
    ("active_budget_float32.json", active_float32_section),
    ("active_unlabelled.json", active_unlabelled_section),
    ("active_unlabelled_wbc.json", active_unlabelled_wbc_section),
    ("active_density.json", active_density_section),
    ("active_replicates.json", active_replicates_section),
    ("active_typical.json", active_typical_section),
]


def benchmarks_md() -> str:
    """docs/benchmarks.md: every section, from the results files."""
    lines = ["# Benchmarks", "",
             "<!-- Generated by `python bench/report.py` from bench/results/*.json: edit the generator, not this "
             "file. -->", "",
             "Every figure here comes from a JSON file that a `bench/` script wrote; each section names the "
             "script, the command that reproduces it and its JSON. GPU figures come from a lent GPU and say so; the "
             "rest were measured on the CPU.", ""]
    for name, section in SECTIONS:
        lines += section(load(name))
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------- README blocks
def shipped_model_block(data: Results | None) -> Lines:
    """The README's line on what the shipped model was trained on and how it scores."""
    data = default_model_results(data)
    if data is None:
        return ["Its benchmark (`python bench/default_model.py`) has not been run with the current protocol yet."]
    split, chosen = data["split"], data["candidates"][data["chosen"]]
    sources = ", ".join(f"{split[s]['fit']} {s}" for s in data["test"])
    per_class = {name: ", ".join(f"{source} {classes[name]['dice']:.3f}" for source, classes in data["test"].items()
                                 if name in classes) for name in ("nucleus", "cell")}
    which = "The shipped model" if data["installed"] else "The last model of `bench/default_model.py` (not installed)"
    return [f"{which} was trained with `cyseg train {chosen['train_args']}` on {sources} images"
            f"{read_scales_words(chosen)}, the recipe chosen "
            "on validation images; on test images used for nothing else its Dice is, for nuclei, "
            f"{per_class['nucleus']}; for whole cells, {per_class['cell']} "
            "([details](docs/benchmarks.md#the-shipped-model))."]


def accuracy_results(data: Results | None) -> list[list[str]]:
    """README results rows: the chosen recipe's test Dice per data set, unseen slides last."""
    if data is None:
        return []
    ordered = [d for d in data if d not in GENERALISATION] + [d for d in GENERALISATION if d in data]
    return [[f"{'unseen slides' if d in GENERALISATION else 'accuracy'}, {d}",
             f"{recipe_cell(data[d]['chosen'])} (chosen on validation), {repetitions(data[d]['test'])}",
             f"Dice {pm(data[d]['test']['dice_mean'], data[d]['test']['dice_std'])}"] for d in ordered]


def throughput_results(data: Results | None) -> list[list[str]]:
    """README results row: the predict path at the default tiling, beside the bare network."""
    default = default_tiling()
    row = next((r for r in (data or {}).get("inference", []) if r["n"] == 16 and (r["tile"], r["overlap"]) == default),
               None)
    if row is None:
        return []
    return [["throughput, CPU", f"`cyseg` predict path, tiles {row['tile']} / {row['overlap']}",
             f"{row['predict_path_mp_s']:.2f} MP/s ({pct(row['ratio_image_area'])} of the bare network)"]]


def wsi_results(data: Results | None) -> list[list[str]]:
    """README results row: the whole mosaic slide with and without background skipping."""
    if data is None:
        return []
    size, skip, noskip = data["slide"]["size"], data["whole_slide_skip"], data["whole_slide_no_skip"]
    rows = [["whole slide, CPU", f"{size[0]}² mosaic, skipping off → on ({data['precision']})",
             f"{noskip['seconds']:.0f} s → {skip['seconds']:.0f} s ({data['skip_speedup']:.1f}×), "
             f"peak {skip['peak_rss_mb']:.0f} MB"]]
    cytology = (data.get("cytology") or {}).get("fill_0.05")
    if cytology:
        rows.append(["whole slide, CPU", f"{size[0]}² of scattered cells (5 % of the area), skipping off → on",
                     f"{cytology['skip_speedup']:.1f}× faster, {cytology['inferred_vs_floor']:.1f}× the pixels "
                     "the cells and their context need"])
    return rows


def idi_results(data: Results | None) -> list[list[str]]:
    """README results row: the share of lost IoU the chosen IDI model recovers, at p = 0.5."""
    if data is None:
        return []
    shares = [f"{name} {pct(half['recovery']['idi'])}"
              + (" of a loss within the seeds' noise" if loss_within_noise(s["full"]["iou"], half["incomplete"]["iou"])
                 else "")
              for name, s in data["datasets"].items()
              if (half := s["p"].get("p0.5")) and half["recovery"].get("idi") is not None]
    if not shares:
        return []
    return [["incomplete masks, IDI", "half the objects removed, stopped on validation",
             "recovers " + ", ".join(shares)]]


def glas_results(data: Results | None) -> list[list[str]]:
    """README results row: GlaS object F1 and object Dice beside DCAN's, weighted as our test images mix A and B."""
    if not data or "glas" not in data:
        return []
    glas, entry = data["glas"]["glas"], data["glas"]
    dcan = glas["published_weighted_60_20"]["DCAN"]
    how = "refit on fit + val" if "refit" in entry else "fit images"
    return [["instances, GlaS", f"80 test images (A + B), {entry['chosen']}, {how}",
             f"object F1 {glas['object_f1']:.3f}, object Dice {glas['object_dice']:.3f} (DCAN, 60/20-weighted: "
             f"{dcan['object_f1']:.3f} / {dcan['object_dice']:.3f})"]]


def results_block(results: dict[str, Results | None]) -> Lines:
    """The README's short results table."""
    rows = [*accuracy_results(results["accuracy.json"]), *glas_results(results["instances.json"]),
            *throughput_results(results["throughput_cpu.json"]),
            *wsi_results(results["wsi_cpu.json"]), *idi_results(results["idi.json"]),
            *active_results(results["active.json"], results["active_budget.json"])]
    return table(["benchmark", "setting", "result"], rows)


def replace_block(text: str, name: str, body: Lines) -> str:
    """`text` with the lines between `<!-- name:begin -->` and `<!-- name:end -->` replaced by `body`."""
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md lacks the <!-- {name}:begin --> / <!-- {name}:end --> markers")
    return pattern.sub(lambda m: m.group(1) + "".join(line + "\n" for line in body) + m.group(2), text, count=1)


def readme_text(current: str) -> str:
    """README.md with its generated blocks rewritten."""
    results = {name: load(name) for name in ("accuracy.json", "instances.json", "throughput_cpu.json", "wsi_cpu.json",
                                             "idi.json", "active.json", "active_budget.json")}
    text = replace_block(current, "shipped-model", shipped_model_block(load("default_model.json")))
    return replace_block(text, "results", results_block(results))


# ---------------------------------------------------------------------------- command line
def outputs() -> dict[Path, str]:
    """Each generated file and the text it should hold."""
    return {BENCHMARKS_MD: benchmarks_md(), README: readme_text(README.read_text())}


def stale(expected: dict[Path, str]) -> list[Path]:
    """The files whose text differs from what the generator writes."""
    return [path for path, text in expected.items() if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated file is stale")
    args = parser.parse_args(argv)
    expected = outputs()
    if args.check:
        out_of_date = stale(expected)
        for path in out_of_date:
            print(f"{path.relative_to(ROOT)} is out of date: run python bench/report.py", file=sys.stderr)
        return 1 if out_of_date else 0
    for path, text in expected.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
