"""`cyseg improve`: iterative data improvement (IDI) of incompletely annotated masks (thesis §10).

Iteration k = 1..K:

1. **train** a U-Net on the current dataset version (version 0 is the input DIR, version k is
   OUT/iter<k>). Iteration 1 starts from `--model START` (fine-tuned) or, without it, from fresh
   weights drawn with `--seed`. Later iterations start from the previous iteration's model (as the
   method: the model keeps its weights between iterations), or with `--from-scratch` from the
   same starting point as iteration 1, so every iteration gets the same training budget. The crops
   of iteration k are drawn with seed `--seed + k - 1`. The model is kept as OUT/models/iter<k>.pt
   (with its metrics, OUT/models/iter<k>.history.csv/.json/.curves.png).
2. **predict** every selected training item (all items, or those whose dataset.json kind is one of
   `--only-kind`) and post-process the probabilities with the IDI chain (below).
3. **grow the labels** from the ORIGINAL ground truth by `--mode` (`cyseg.idi_rules`): `objects` (the
   default) adds only predicted objects away from every expert annotation, within 1/32..32 times the
   expert objects' median area, and as confident as the model is on the expert's own objects (the level
   is taken over all selected items, so every item is predicted before any is written); `or` is the
   method's ground truth OR prediction. With `--unsure unknown`, what the model predicted there but the
   rule did not add is marked unknown (unknown/ maps), left out of the next model's loss instead of
   taught as background. Annotated pixels are never removed; relative to the previous version, pixels a
   former iteration added may be withdrawn when the newer model no longer predicts them (the rule starts
   from the original masks, not from the previous version). Unselected items are copied byte for byte.
4. **write** the new version OUT/iter<k>/ (images copied unchanged, masks as PNG: never JPEG,
   whose artefacts would change the labels) through `DatasetWriter`, so it appears only when
   complete. Its dataset.json records the parent (previous version), the iteration, the model
   file, the post-processing and threshold, and this iteration's statistics; OUT/iter<k>/added/
   shows, for every item whose mask differs from the ground truth, the crop beside the crop with
   the ground truth in green and the added pixels in magenta.

Post-processing: where this departs from the method. The method z-scores each probability map and then thresholds
it at `t` as if it were still a probability: the cut becomes mean + t*std of that map (undefined
on a constant map). Here `--normalize` (the default, as the method) rescales each map min-max to
[0, 1], p' = (p - lo) / (hi - lo), before the model's erode-dilate and smoothing, and thresholds p'
at t, so t keeps its meaning of a fraction of the probability scale. Both operations commute with
an increasing affine map, so this is exactly thresholding the post-processed probabilities at the
per-map level tau = lo + t * (hi - lo): a crop on which the model is confident (hi near 1, lo near
0) is cut at ~t, and a crop of under-confident predictions (the cells the incomplete labels taught
the model to doubt) at a proportionally lower level. Two guards: a constant map (hi - lo < 1e-6)
has no structure and adds nothing, and tau never goes below `--min-probability` (default t/2), so
that stretching the noise of a crop without cells cannot paint it. tau is recorded per item.
`--no-normalize` uses the model's default chain (erode-dilate, smoothing, threshold t).

Resume: rerunning the same command skips the finished iterations (OUT/iter<k>/dataset.json and
OUT/models/iter<k>.pt both present), keeps a finished model whose dataset was not yet written,
continues an interrupted training from its checkpoint (OUT/models/iter<k>.ckpt), and redoes
everything after the first unfinished iteration. A larger K continues a finished run. The options
that change the results are stored in OUT/improve.json; a rerun with other options is refused.

Early stop: with `--val` (a validation set carved from the training images), an iteration runs only
while the validation IoU is still rising: once iteration k scores no higher than an earlier one,
k+1..K are not run. The validation masks are incomplete too, so a model that finds an object the
expert did not annotate there would be charged a false positive for it, and the improved models,
which find more, would look worse than they are. The validation IoU therefore counts the objects the
growth rule would add there (with the training images' confidence level) as unknown, neither right
nor wrong; `val_iou_strict` counts them as false positives. OUT/report.json names the best
iteration (`best_iteration`, `best`: its model and the dataset version it grew); without `--val`,
all K run and the last is named.

OUT/report.json and OUT/report.csv hold one row per iteration (see `ITERATION_FIELDS`).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cyseg.idi_rules import Candidates, GrowthRule, addable, candidates, expert_means, typical_area
from metrics import dice, jaccard
from segmenter.base import Segmenter
from segmenter.errors import CysegError, ModelFileError
from segmenter.io.atomic import atomic_path
from segmenter.io.dataset import (
    Dataset,
    DatasetWriter,
    Item,
    check_dataset,
    image_declarations,
    manifest_hash,
    open_dataset,
    read_mask,
    read_unknown,
)
from segmenter.io.digest import file_digest
from segmenter.io.images import read_image, write_png
from segmenter.overlays import overlay
from segmenter.planning import DEFAULT_CROP
from segmenter.training import TrainOptions, train
from transforms.chain import build_on, default_chain, with_threshold, without_threshold
from unet import UNetSegmenter, load_segmenter

log = logging.getLogger(__name__)

KINDS = ("pattern", "cell", "roi")
MAGENTA = np.array([255, 0, 255], dtype=np.float32)
GREEN = np.array([0, 200, 0], dtype=np.float32)
CONSTANT_RANGE = 1e-6
RULES = {"or": "mask = original ground truth OR post-processed prediction (selected items only)",
         "objects": "mask = original ground truth OR the predicted objects away from it that are confident and of "
                    "the expert objects' size (selected items only)"}
ITERATION_FIELDS = (
    "iteration", "trained_on", "model", "start", "items", "items_selected",
    "fg_before", "fg_after", "pixels_added", "pixels_added_vs_previous", "pixels_removed_vs_previous",
    "masks_changed", "masks_differing_from_gt", "pixels_unknown", "confidence_level", "val_iou", "val_dice",
    "val_iou_strict", "val_unknown_px", "train_seconds", "train_cpu_seconds",
)
DEFAULT_N, DEFAULT_DEPTH = 16, 5


@dataclass
class ImproveOptions:
    """Everything that defines an IDI run (see the module docstring)."""

    iterations: int
    epochs: int | None = None  # None: planned from the crop, as `cyseg train`
    resolution: float | None = None  # None: the starting model's, else planned from the objects
    model: str | None = None
    val: str | None = None
    only_kind: tuple[str, ...] = ()
    threshold: float = 0.5
    normalize: bool = True
    min_probability: float | None = None
    warm_start: bool = True
    steps_per_epoch: int = 20
    batch: int = 8
    crop: int = DEFAULT_CROP
    lr: float = 1e-3
    n: int | None = None
    depth: int | None = None
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    colour: bool = False
    zoom: float = 0.0
    elastic: bool = False
    mode: str = "objects"
    confidence: float | None = None  # None: the model's level on the expert's objects
    unsure: str = "background"  # or "unknown": predicted, not added, left out of the next loss
    early_stop: bool = True
    amp: bool = True
    progress: bool = True

    @property
    def rule(self) -> GrowthRule:
        """How the prediction joins the expert masks (`cyseg.idi_rules`)."""
        return GrowthRule(self.mode, self.confidence, unsure=self.unsure)

    @property
    def floor(self) -> float:
        """The lowest probability a normalised threshold may reach."""
        return self.threshold / 2 if self.min_probability is None else self.min_probability

    def check(self) -> None:
        if self.iterations < 1:
            raise CysegError(f"--iterations must be >= 1 (got {self.iterations})")
        if not 0.0 <= self.threshold <= 1.0:
            raise CysegError(f"--threshold {self.threshold} is outside [0, 1]; choose e.g. 0.5")
        if not 0.0 <= self.floor <= 1.0:
            raise CysegError(f"--min-probability {self.min_probability} is outside [0, 1]; choose e.g. 0.25")
        for kind in self.only_kind:
            if kind not in KINDS:
                raise CysegError(f"--only-kind {kind!r} is not a kind; use one of {', '.join(KINDS)}")
        for name in ("n", "depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CysegError(f"--{name} must be >= 1 (got {value})")
        self.rule.check()
        if self.mode == "or" and self.unsure != "background":
            raise CysegError("--unsure unknown needs --mode objects (--mode or adds every predicted pixel, so "
                             "none is left unsure); drop one of them")
        self.train_options(1, None).check()

    def train_options(self, iteration: int, out: Path | None, resume: bool = False,
                      resolution: float | None = None) -> TrainOptions:
        return TrainOptions(epochs=self.epochs, steps_per_epoch=self.steps_per_epoch, batch=self.batch, crop=self.crop,
                            resolution=self.resolution if self.resolution is not None else resolution,
                            lr=self.lr, seed=self.seed + iteration - 1, workers=self.workers, colour=self.colour,
                            zoom=self.zoom, elastic=self.elastic,
                            out=None if out is None else str(out), name=f"IDI iteration {iteration}", resume=resume,
                            amp=self.amp, progress=self.progress)

    def fingerprint(self, data: Path, data_hash: str, start_hash: str | None) -> dict[str, Any]:
        """What must be equal for a rerun to continue the same run (not iterations, workers, device)."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("iterations", "workers", "device", "progress", "amp", "model", "val", "early_stop")}
        keep["only_kind"] = sorted(self.only_kind)
        keep["min_probability"] = self.floor
        start = None if self.model is None else str(Path(self.model).resolve())
        return {"data": str(data.resolve()), "data_hash": data_hash, "start_model": start,
                "start_model_sha256": start_hash, "val": None if self.val is None else str(Path(self.val).resolve()),
                **keep}


# ---------------------------------------------------------------- post-processing (normalised threshold)

def idi_postprocess(seg: Segmenter, probs: torch.Tensor, threshold: float, normalize: bool,
                    floor: float) -> tuple[torch.Tensor, float | None]:
    """(1, H, W) probabilities -> ((H, W) bool mask, the probability level it was cut at).

    Without `normalize`: the model's chain (erode-dilate, smoothing) and threshold `threshold`.
    With it: min-max rescaling of the map to [0, 1] before that chain and the same threshold, i.e.
    the chain's output cut at tau = max(floor, lo + threshold * (hi - lo)); a constant map gives an
    empty mask (tau None)."""
    smoothed = build_on(probs.device, without_threshold(seg.postprocess))(probs[None].float())[0, 0]
    if not normalize:
        tau = float(threshold)
    else:
        lo, hi = float(probs.min()), float(probs.max())
        if hi - lo < CONSTANT_RANGE:
            return torch.zeros_like(smoothed, dtype=torch.bool), None
        tau = max(float(floor), lo + threshold * (hi - lo))
    return smoothed > tau, tau


def chain_description(seg: Segmenter, opts: ImproveOptions) -> dict[str, Any]:
    """The post-processing as recorded in each version's dataset.json."""
    chain = [*without_threshold(seg.postprocess), {"op": "threshold", "t": opts.threshold}]
    if opts.normalize:
        chain = [{"op": "normalize_minmax", "min_probability": opts.floor}, *chain]
        meaning = ("per map p' = (p - min p) / (max p - min p), then erode-dilate and smoothing, then p' > t; "
                   "equal to cutting the post-processed probabilities at tau = max(min_probability, "
                   "min p + t (max p - min p)); a constant map adds nothing")
    else:
        meaning = "the model's chain: erode-dilate, smoothing, probability > t"
    return {"chain": chain, "threshold": opts.threshold, "normalize": opts.normalize, "meaning": meaning}


# ---------------------------------------------------------------- helpers

def _model_path(out: Path, k: int) -> Path:
    return out / "models" / f"iter{k}.pt"


def _version(out: Path, k: int) -> Path:
    return out / f"iter{k}"


def _complete(out: Path, k: int) -> bool:
    return (_version(out, k) / "dataset.json").is_file() and _model_path(out, k).is_file()


def _remove_model(out: Path, k: int) -> None:
    base = out / "models" / f"iter{k}"
    for suffix in (".pt", ".ckpt", ".history.csv", ".history.json", ".curves.png"):
        Path(f"{base}{suffix}").unlink(missing_ok=True)


def _check_out(data: Path, out: Path) -> None:
    d, o = data.resolve(), out.resolve()
    if o == d or d in o.parents:
        raise CysegError(f"--out {out} is inside the input dataset {data}; choose a folder outside it "
                         "(the input is never modified)")
    if o in d.parents:
        raise CysegError(f"--out {out} contains the input dataset {data}; choose another folder")
    if out.exists() and not out.is_dir():
        raise CysegError(f"--out {out} is a file; give a folder for the dataset versions")


def _check_start(seg: Segmenter, opts: ImproveOptions, source: str) -> None:
    if seg.classes:
        raise ModelFileError(f"{source} predicts classes {', '.join(seg.classes)}; IDI grows the masks of one unnamed "
                             "foreground, give a model trained without --classes")
    if seg.in_channels != 3:
        raise ModelFileError(f"{source} expects {seg.in_channels} input channels; the crops are RGB")
    for name in ("n", "depth"):
        wanted = getattr(opts, name)
        if wanted is not None and seg.config.get(name) != wanted:
            raise ModelFileError(f"{source} has {name}={seg.config.get(name)} but --{name} {wanted} was given; "
                                 f"drop --{name} (the architecture comes from --model) or give another model")


def _fresh(opts: ImproveOptions) -> Segmenter:
    torch.manual_seed(opts.seed)  # the initial weights, as `cyseg train`
    return UNetSegmenter({"n_classes": 1, "depth": opts.depth or DEFAULT_DEPTH, "n": opts.n or DEFAULT_N},
                         device=opts.device, threshold=opts.threshold, postprocess=default_chain(opts.threshold))


def _starting_point(out: Path, k: int, opts: ImproveOptions) -> tuple[Segmenter, str, float | None]:
    """The segmenter iteration k trains from, a description of it, and the working resolution it
    learnt at (None for fresh weights, which have learnt none)."""
    if k > 1 and opts.warm_start:
        path = _model_path(out, k - 1)
        seg = load_segmenter(path, device=opts.device)
        return seg, str(path), seg.resolution
    if opts.model is not None:
        seg = load_segmenter(opts.model, device=opts.device)
        seg.threshold = float(opts.threshold)
        seg.postprocess = with_threshold(seg.postprocess, opts.threshold)
        return seg, str(opts.model), seg.resolution
    return _fresh(opts), f"fresh weights (seed {opts.seed})", None


def _idi_overlay(image: np.ndarray, gt: np.ndarray, added: np.ndarray, gap: int = 6) -> np.ndarray:
    """The crop beside the crop with the ground truth in green and the added pixels in magenta."""
    shown = overlay(overlay(image, gt, GREEN), added, MAGENTA)
    sep = np.full((image.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([image, sep, shown], axis=1)


def _write_report(out: Path, data: Path, rows: list[dict[str, Any]], opts: ImproveOptions) -> None:
    best = best_iteration(rows)
    report = {"input": str(data.resolve()), "out": str(out.resolve()), "iterations": rows,
              "best_iteration": best,
              "best": None if best is None else {"model": str(_model_path(out, best).resolve()),
                                                 "dataset": str(_version(out, best).resolve())},
              "stopped_early": stopped_early(rows, opts),
              "options": {**dataclasses.asdict(opts), "only_kind": list(opts.only_kind), "min_probability": opts.floor},
              "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_path(out / "report.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ITERATION_FIELDS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- the run

def run_improve(data: Path, out: Path, opts: ImproveOptions) -> list[dict[str, Any]]:
    """Run (or continue) K iterations; returns the report rows of iterations 1..K."""
    data, out = Path(data), Path(out)
    opts.check()
    dataset = open_dataset(data)
    selected, start_hash = _check_inputs(data, out, dataset, opts)
    _open_run(out, opts.fingerprint(data, manifest_hash(dataset), start_hash))
    first = _first_unfinished(out, opts.iterations)
    truth = {item.stem: read_mask(item.mask).astype(bool) for item in dataset.items}
    area = typical_area(list(truth.values()))
    for k in range(first, opts.iterations + 1):
        if opts.early_stop and stalled(_rows(out, k - 1)):
            log.info("iteration %d: not run, validation IoU stopped rising at iteration %d", k, k - 1)
            break
        _iterate(k, data, out, dataset, truth, selected, opts, area)
        _write_report(out, data, _rows(out, opts.iterations), opts)
    rows = _rows(out, opts.iterations)
    _write_report(out, data, rows, opts)
    return rows


def stalled(rows: list[dict[str, Any]]) -> bool:
    """Whether the last iteration's validation IoU is no higher than an earlier one's (False without
    validation scores or with fewer than two iterations)."""
    scores = [r["val_iou"] for r in rows]
    if len(scores) < 2 or any(s is None for s in scores):
        return False
    return scores[-1] <= max(scores[:-1])


def stopped_early(rows: list[dict[str, Any]], opts: ImproveOptions) -> bool:
    """Whether the early stop ended the run before its K iterations."""
    return opts.early_stop and stalled(rows) and len(rows) < opts.iterations


def best_iteration(rows: list[dict[str, Any]]) -> int | None:
    """The iteration whose model has the best validation IoU (the earliest among ties); the last
    one without validation scores; None before any."""
    if not rows:
        return None
    if any(r["val_iou"] is None for r in rows):
        return rows[-1]["iteration"]
    return max(rows, key=lambda r: (r["val_iou"], -r["iteration"]))["iteration"]


def _check_inputs(data: Path, out: Path, dataset: Dataset, opts: ImproveOptions) -> tuple[list[str], str | None]:
    """Refuse unusable inputs before anything is written; returns the stems of the selected items
    and the starting model's SHA-256 (None without --model)."""
    for checked in (dataset, *([open_dataset(opts.val)] if opts.val is not None else [])):
        if checked.classes:
            raise CysegError(f"{checked.root} declares classes {', '.join(checked.classes)}; IDI grows the masks of "
                             'one unnamed foreground, give a dataset without "classes" (0/255 masks)')
        check_dataset(checked)
    _check_out(data, out)
    selected = [item.stem for item in dataset.items if not opts.only_kind or item.kind in opts.only_kind]
    if not selected:
        kinds = sorted({str(item.kind) for item in dataset.items})
        raise CysegError(f"no item of {data} has kind {' or '.join(opts.only_kind)} in its dataset.json "
                         f"(kinds present: {', '.join(kinds)}); drop --only-kind or give another kind")
    if opts.model is None:
        return selected, None
    start = load_segmenter(opts.model, device="cpu")
    _check_start(start, opts, f"model file {opts.model}")
    return selected, file_digest(opts.model)


def _open_run(out: Path, fingerprint: dict[str, Any]) -> None:
    """Start a run in `out`, or continue the one there when it was made with the same inputs and
    options (an unfinished one made with others is discarded; a finished one is refused)."""
    config = out / "improve.json"
    if config.is_file():
        try:
            previous = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CysegError(f"{config} is damaged ({exc}); remove {out} or choose a new --out") from exc
        changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
        started = any((p / "dataset.json").is_file() for p in out.glob("iter*")) or any((out / "models").glob("*.pt"))
        if changed and not started:  # nothing finished yet: start afresh with the new options
            log.info("%s: discarding an unfinished run made with other options (%s)", out, ", ".join(changed))
            shutil.rmtree(out / "models", ignore_errors=True)
            _write_fingerprint(config, fingerprint)
        elif changed:
            raise CysegError(f"{out} holds an IDI run made with other inputs or options ({', '.join(changed)} "
                             "differ); rerun with the same ones to continue, or choose a new --out")
    elif out.exists() and any(out.iterdir()):
        raise CysegError(f"--out {out} exists and is not an IDI run (no improve.json); choose a new folder")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_fingerprint(config, fingerprint)


def _write_fingerprint(config: Path, fingerprint: dict[str, Any]) -> None:
    with atomic_path(config) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=2))


def _first_unfinished(out: Path, iterations: int) -> int:
    """The first iteration to run (iterations + 1 when all are finished), after removing what an
    interrupted run left of it and of the iterations after it."""
    for part in out.glob(".iter*.part"):  # a version whose writing was interrupted
        shutil.rmtree(part, ignore_errors=True)
    first = next(k for k in range(1, iterations + 2) if k > iterations or not _complete(out, k))
    if first <= iterations:
        stale = sorted(int(p.name[4:]) for p in out.glob("iter*") if p.name[4:].isdigit())
        stale += sorted(int(p.name[4:-3]) for p in (out / "models").glob("iter*.pt") if p.name[4:-3].isdigit())
        for k in sorted(set(stale)):
            if k >= first:
                shutil.rmtree(_version(out, k), ignore_errors=True)
            if k > first:  # trained on a version that is now redone
                _remove_model(out, k)
        if first > 1:
            log.info("%s: iterations 1..%d already finished; continuing with %d..%d", out, first - 1, first,
                     iterations)
    return first


def _rows(out: Path, iterations: int) -> list[dict[str, Any]]:
    rows = []
    for k in range(1, iterations + 1):
        if _complete(out, k):
            rows.append(json.loads((_version(out, k) / "dataset.json").read_text())["idi"]["stats"])
    return rows


# ---------------------------------------------------------------- one iteration

def _iterate(k: int, data: Path, out: Path, dataset: Dataset, truth: dict[str, np.ndarray], selected: list[str],
             opts: ImproveOptions, area: float) -> None:
    """Iteration k: train (or reuse) its model, grow the selected labels with it, write version k."""
    prev = data if k == 1 else _version(out, k - 1)
    model_path = _model_path(out, k)
    t0, cpu0 = time.perf_counter(), time.process_time()
    seg, start = _trained_model(k, prev, out, opts)
    train_seconds, train_cpu = time.perf_counter() - t0, time.process_time() - cpu0

    previous = {item.stem: item for item in open_dataset(prev).items}
    writer = DatasetWriter(
        _version(out, k), source=dataset.manifest.get("source"), parent=str(prev.resolve()), iteration=k,
        extra={"original": str(data.resolve()), "model": str(model_path.resolve()),
               "postprocess": chain_description(seg, opts), "threshold": opts.threshold,
               "rule": RULES[opts.mode], "growth": {**dataclasses.asdict(opts.rule), "expert_median_area_px": area},
               "only_kind": list(opts.only_kind) or None, **image_declarations(dataset.manifest)})
    with writer:
        (writer.tmp / "added").mkdir()
        stats, level = _grow_labels(k, seg, writer, dataset, truth, previous, set(selected), opts, area)
        writer.manifest["growth"]["confidence_level"] = level
        scores = None if opts.val is None else val_scores(seg, open_dataset(opts.val), opts.rule, area, level)
        row = {
            "iteration": k, "trained_on": str(prev.resolve()), "model": str(model_path.resolve()), "start": start,
            "items": len(dataset.items), "items_selected": len(selected),
            "fg_before": stats["before"] / stats["pixels"], "fg_after": stats["after"] / stats["pixels"],
            "pixels_added": stats["added"], "pixels_added_vs_previous": stats["added_prev"],
            "pixels_removed_vs_previous": stats["removed_prev"], "masks_changed": stats["changed"],
            "masks_differing_from_gt": stats["differ_gt"], "pixels_unknown": stats["unknown"],
            "confidence_level": level,
            **{f"val_{key}": None if scores is None else scores[key]
               for key in ("iou", "dice", "iou_strict", "unknown_px")},
            "train_seconds": train_seconds, "train_cpu_seconds": train_cpu,
        }
        writer.manifest["idi"] = {"stats": row}
    log.info("iteration %d: foreground %.4f -> %.4f, %d pixels added to the ground truth, %d masks changed%s; "
             "written to %s", k, row["fg_before"], row["fg_after"], row["pixels_added"], row["masks_changed"],
             "" if scores is None else f", validation IoU {scores['iou']:.4f} Dice {scores['dice']:.4f}",
             _version(out, k))


def _trained_model(k: int, prev: Path, out: Path, opts: ImproveOptions) -> tuple[Segmenter, str]:
    """Iteration k's model, trained on version `prev` (resumed from its checkpoint when one is
    there) unless an earlier run finished it; and a description of where its training started."""
    model_path = _model_path(out, k)
    if model_path.is_file():
        log.info("iteration %d: model %s already trained", k, model_path)
        seg = load_segmenter(model_path, device=opts.device)
        return seg, seg.training_info.get("idi_start", "(earlier run)")
    seg, start, learnt = _starting_point(out, k, opts)
    resume = model_path.with_suffix(".ckpt").is_file()
    log.info("iteration %d: training on %s from %s%s", k, prev, start, " (resuming)" if resume else "")
    train(seg, prev, opts.val, opts.train_options(k, model_path, resume, learnt))
    seg.training_info["idi_start"] = start
    seg.save(model_path)
    return seg, start


def _grow_labels(k: int, seg: Segmenter, writer: DatasetWriter, dataset: Dataset, truth: dict[str, np.ndarray],
                 previous: dict[str, Item], chosen: set[str], opts: ImproveOptions,
                 area: float) -> tuple[dict[str, int], float]:
    """Write every item into the new version, the chosen ones with their mask grown by the model;
    returns the pixel and mask counts of the report row and the confidence level used."""
    found: dict[str, tuple[Candidates, dict[str, Any]]] = {}
    means = [np.zeros(0)]
    for item in tqdm([i for i in dataset.items if i.stem in chosen], desc=f"IDI {k}: predicting", unit="image",
                     disable=not opts.progress, leave=False):
        found[item.stem], expert = _predicted(seg, item, truth[item.stem], opts, area, dataset.read_scale)
        means.append(expert)
    level = opts.rule.level(np.concatenate(means))
    stats = dict.fromkeys(("pixels", "before", "after", "added", "added_prev", "removed_prev", "changed",
                           "differ_gt", "unknown"), 0)
    for item in dataset.items:
        gt = truth[item.stem]
        prev_mask = gt if k == 1 else read_mask(previous[item.stem].mask, gt.shape).astype(bool)
        if item.stem in found:
            new, unknown = _write_grown(writer, item, gt, found[item.stem], level, k)
        else:
            writer.copy(item)
            new, unknown = gt, 0
        stats["unknown"] += unknown
        added = int((new & ~gt).sum())
        stats["pixels"] += gt.size
        stats["before"] += int(prev_mask.sum())
        stats["after"] += int(new.sum())
        stats["added"] += added
        stats["added_prev"] += int((new & ~prev_mask).sum())
        stats["removed_prev"] += int((prev_mask & ~new).sum())
        stats["changed"] += int(not np.array_equal(new, prev_mask))
        stats["differ_gt"] += int(added > 0)
    return stats, level


def idi_prediction(seg: Segmenter, image: Path, opts: ImproveOptions,
                   read_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, float | None]:
    """One training image as an IDI iteration sees it (read at `read_scale`, its folder's): the (H, W)
    bool mask of the IDI post-processing (`idi_postprocess`), the (H, W) float32 probabilities and the
    level the mask was cut at."""
    probs = seg.predict(read_image(image), read_scale=read_scale)
    with torch.inference_mode():
        pred, tau = idi_postprocess(seg, probs, opts.threshold, opts.normalize, opts.floor)
    return pred.cpu().numpy(), probs[0].float().cpu().numpy(), tau


def _predicted(seg: Segmenter, item: Item, gt: np.ndarray, opts: ImproveOptions, area: float,
               read_scale: float = 1.0) -> tuple[tuple[Candidates, dict[str, Any]], np.ndarray]:
    """What the model could add to one mask (`idi_rules.addable`) with its record, and the mean
    probability on each expert object (the image read at its folder's `read_scale`)."""
    pred, probs_np, tau = idi_prediction(seg, item.image, opts, read_scale)
    found = addable(gt, pred, probs_np, opts.rule, area)
    return (found, {"threshold_used": tau, "predicted_px": int(pred.sum())}), expert_means(gt, probs_np)


def _write_grown(writer: DatasetWriter, item: Item, gt: np.ndarray, found: tuple[Candidates, dict[str, Any]],
                 level: float, k: int) -> tuple[np.ndarray, int]:
    """Copy `item` into the new version with the candidates at or above `level` added to its mask
    (and, when that adds pixels, its picture in added/) and, for `--unsure unknown`, the predicted
    pixels left out marked unknown beside any the item had; returns the new mask and its unknown pixels."""
    grown = found[0].added(gt.shape, level)
    new = gt | grown
    added = new & ~gt
    unsure = found[0].unsure(grown)
    if unsure.any():
        before = read_unknown(item, gt.shape)
        unsure = unsure if before is None else (unsure | before) & ~new
    writer.copy(item, meta={"idi": {"iteration": k, **found[1], "added_px": int(added.sum()),
                                    "unknown_px": int(unsure.sum())}})
    if unsure.any():
        writer.write_unknown(item.stem, unsure)
    if added.any():
        written = writer.tmp / "masks" / f"{item.stem}{item.mask.suffix.lower()}"
        written.unlink()
        write_png(writer.tmp / "masks" / f"{item.stem}.png", new.astype(np.uint8) * 255)
        write_png(writer.tmp / "added" / f"{item.stem}.png", _idi_overlay(read_image(item.image), gt, added))
    return new, int(unsure.sum())


def val_scores(seg: Segmenter, val: Dataset, rule: GrowthRule, area: float, level: float) -> dict[str, float]:
    """Mean IoU and Dice of the model's masks on the incompletely annotated validation images, the
    objects the growth rule would add there (found but not annotated, see `idi_rules`) counted as
    unknown rather than false positives, as are the pixels the images' own unknown/ maps mark;
    `iou_strict` counts the objects, `unknown_px` the pixels of both."""
    rows = []
    for item in val.items:
        image = read_image(item.image)
        gt = read_mask(item.mask, image.shape[:2]).astype(bool)
        probs = seg.predict(image, read_scale=val.read_scale)
        with torch.inference_mode():
            mask = seg.masks_from_probabilities(probs).cpu().numpy().astype(bool)
        unknown = (np.zeros_like(gt) if rule.mode == "or" else
                   candidates(gt, mask, probs[0].float().cpu().numpy(), rule, area).added(gt.shape, level))
        marked = read_unknown(item, gt.shape)
        if marked is not None:
            unknown, gt, mask = unknown | marked, gt & ~marked, mask & ~marked
        kept = mask & ~unknown
        rows.append((jaccard(kept, gt), dice(kept, gt), jaccard(mask, gt), int(unknown.sum())))
    iou, dice_, strict, unknown_px = np.array(rows).T
    return {"iou": float(iou.mean()), "dice": float(dice_.mean()), "iou_strict": float(strict.mean()),
            "unknown_px": int(unknown_px.sum())}
