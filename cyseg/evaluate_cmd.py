"""`cyseg evaluate`: per-image IoU/Dice and instance scores (object F1, AJI, PQ, GlaS object Dice and
Hausdorff), mean and std, threshold sweep (CSV + PNG) and optional five-panel overlays per crop;
per class for a model with named classes, each class scored on the images whose dataset annotates it."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.base import Segmenter
from segmenter.evaluation import SWEEP, at_thresholds, chosen_thresholds, evaluate_dataset, summarise
from segmenter.instances import ERROR_KINDS, summarise_instances
from segmenter.io.atomic import atomic_dir
from segmenter.io.dataset import folder_read_scale
from segmenter.io.images import write_png
from segmenter.overlays import comparison_panel

log = logging.getLogger(__name__)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(summary: list[dict[str, Any]], path: Path, chosen: float) -> None:
    """Mean IoU and Dice (with std bands) against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["threshold"] for r in summary])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("iou", "IoU"), ("dice", "Dice")):
        mean = np.array([r[f"{key}_mean"] for r in summary])
        std = np.array([r[f"{key}_std"] for r in summary])
        ax.plot(t, mean, marker="o", label=label)
        ax.fill_between(t, mean - std, mean + std, alpha=0.2)
    ax.axvline(chosen, color="grey", linestyle=":", label=f"model threshold {chosen}")
    ax.set_xlabel("threshold")
    ax.set_ylabel("score (mean ± std over images)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_evaluate(seg: Segmenter, data: Path, out: Path, threshold: float | None, sweep: bool,
                 overlays: bool, progress: bool = True) -> dict[str, Any]:
    """Evaluate and write per_image.csv, summary.json, and with `sweep` sweep.csv and sweep.png (per
    class for a model with named classes: a `class` column, sweep_<class>.png, and summary.json's
    `classes` holding each class's scores on the images whose dataset annotates it)."""
    chosen = chosen_thresholds(seg, threshold)
    thresholds = sorted(set(SWEEP) | set(chosen.values())) if sweep else sorted(set(chosen.values()))
    with atomic_dir(out, overwrite=True) as tmp:
        if overlays:
            (tmp / "overlays").mkdir()

        def save_overlay(stem: str, name: str | None, image: np.ndarray, truth: np.ndarray,
                         masks: dict[float, np.ndarray]) -> None:
            shown = stem if name is None else f"{stem}_{name}"
            write_png(tmp / "overlays" / f"{shown}.png", comparison_panel(image, truth, masks[chosen[name]]))

        rows = evaluate_dataset(seg, data, thresholds, on_image=save_overlay if overlays else None, progress=progress,
                                instances_at=chosen)
        chosen_rows = at_thresholds(rows, chosen)
        _write_csv(tmp / "per_image.csv", chosen_rows)
        summary = summarise(rows)
        scores = {name: {**_class_report(summary, name, chosen[name], sweep),
                         "instances": summarise_instances([r for r in chosen_rows if r.get("class") == name])}
                  for name in chosen if any(r.get("class") == name for r in summary)}
        training = {k: seg.training_info.get(k) for k in ("dataset", "best_epoch", "best_val_iou")}
        read_scale = folder_read_scale(data)
        dataset = {"dataset": str(data), **({"read_scale": read_scale} if read_scale != 1 else {})}
        if seg.classes:
            report = {"model_thresholds": {name: chosen[name] for name in scores}, **dataset,
                      "classes": scores, "training": training}
        else:
            report = {"model_threshold": chosen[None], **dataset, **scores[None], "training": training}
        if sweep:
            _write_csv(tmp / "sweep.csv", summary)
            for name in scores:
                plot_sweep([r for r in summary if r.get("class") == name],
                           tmp / ("sweep.png" if name is None else f"sweep_{name}.png"), chosen[name])
        (tmp / "summary.json").write_text(json.dumps(report, indent=2))
    for line in summary_lines(report):
        log.info("%s; reports in %s", line, out)
    return report


def _class_report(summary: list[dict[str, Any]], name: str | None, chosen: float, sweep: bool) -> dict[str, Any]:
    """One class's scores at its chosen threshold, with its sweep and best sweep threshold when swept."""
    rows = [r for r in summary if r.get("class") == name]
    at_chosen = {k: v for k, v in next(r for r in rows if r["threshold"] == chosen).items() if k != "class"}
    if not sweep:
        return at_chosen
    sweep_rows = [{k: v for k, v in r.items() if k != "class"} for r in rows]
    return {**at_chosen, "sweep": sweep_rows, "best_threshold": max(rows, key=lambda r: r["iou_mean"])["threshold"]}


# the kinds of unmatched objects per side, as `cyseg evaluate` names them: fn: missed, merged, ...
KINDS = {side: tuple(kind.removeprefix(f"{side}_") for kind in ERROR_KINDS if kind.startswith(f"{side}_"))
         for side in ("fn", "fp")}


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The lines `cyseg evaluate` prints: mean ± std IoU and Dice (one line per class for named classes),
    then why objects went unmatched (a line per class that has any)."""
    def line(scores: dict[str, Any]) -> str:
        objects = scores.get("instances")
        return (f"IoU {scores['iou_mean']:.4f} ± {scores['iou_std']:.4f}  Dice {scores['dice_mean']:.4f} ± "
                f"{scores['dice_std']:.4f}  ({scores['n_images']} images, threshold {scores['threshold']})"
                + ("" if not objects else f"  object F1 {objects['object_f1_mean']:.4f}  AJI {objects['aji_mean']:.4f}"
                   f"  PQ {objects['pq_mean']:.4f}"))

    if "classes" not in report:
        return [line(report), *_unannotated_line(report, "", "foreground"), *_error_line(report, "")]
    classes = report["classes"].items()
    return ([f"{name}: {line(scores)}" for name, scores in classes]
            + [text for name, scores in classes for text in _unannotated_line(scores, f"{name}: ", name)]
            + [text for name, scores in classes for text in _error_line(scores, f"{name}: ")])


def _unannotated_line(scores: dict[str, Any], prefix: str, what: str) -> list[str]:
    """The images that annotate none of the class (`segmenter.evaluation.unannotated_images`), as one
    line when there are any: each scores Dice 1 or 0, so the user sees how much of the mean they make."""
    n = scores.get("n_unannotated")
    if not n:
        return []
    rest = scores["dice_mean_annotated"]
    return [f"{prefix}{n} of {scores['n_images']} images annotate no {what}: each scores Dice 1 when nothing is "
            "predicted there, 0 otherwise" + ("" if rest is None else f"; Dice over the others {rest:.4f}")]


def _error_line(scores: dict[str, Any], prefix: str) -> list[str]:
    """Why objects went unmatched (`metrics.object_errors`), as one line when any did."""
    objects = scores.get("instances") or {}
    if not objects.get("objects_fn") and not objects.get("objects_fp"):
        return []
    kinds = {side: ", ".join(f"{objects[f'objects_{side}_{kind}']} {kind}" for kind in KINDS[side])
             for side in KINDS}
    return [f"{prefix}unmatched true objects: {kinds['fn']}; unmatched predictions: {kinds['fp']}"]
