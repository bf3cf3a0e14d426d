"""`cyseg evaluate`: per-image IoU/Dice, mean and std, threshold sweep (CSV + PNG) and optional
five-panel overlays per crop."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from segmenter.base import Segmenter
from segmenter.evaluation import SWEEP, evaluate_dataset, summarise
from segmenter.io.atomic import atomic_dir
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
    """Evaluate and write per_image.csv, summary.json, and with `sweep` sweep.csv and sweep.png."""
    chosen = seg.threshold if threshold is None else threshold
    thresholds = sorted(set(SWEEP) | {chosen}) if sweep else [chosen]
    with atomic_dir(out, overwrite=True) as tmp:
        if overlays:
            (tmp / "overlays").mkdir()

        def save_overlay(stem: str, image: np.ndarray, truth: np.ndarray, masks: dict[float, np.ndarray]) -> None:
            write_png(tmp / "overlays" / f"{stem}.png", comparison_panel(image, truth, masks[chosen]))

        rows = evaluate_dataset(seg, data, thresholds, on_image=save_overlay if overlays else None, progress=progress)
        per_image = [r for r in rows if r["threshold"] == chosen]
        _write_csv(tmp / "per_image.csv", per_image)
        summary = summarise(rows)
        at_chosen = next(r for r in summary if r["threshold"] == chosen)
        report = {"model_threshold": chosen, "dataset": str(data), **at_chosen,
                  "training": {k: seg.training_info.get(k) for k in ("dataset", "best_epoch", "best_val_iou")}}
        if sweep:
            _write_csv(tmp / "sweep.csv", summary)
            plot_sweep(summary, tmp / "sweep.png", chosen)
            best = max(summary, key=lambda r: r["iou_mean"])
            report["sweep"] = summary
            report["best_threshold"] = best["threshold"]
        (tmp / "summary.json").write_text(json.dumps(report, indent=2))
    log.info("IoU %.4f ± %.4f, Dice %.4f ± %.4f over %d images at threshold %s; reports in %s",
             at_chosen["iou_mean"], at_chosen["iou_std"], at_chosen["dice_mean"], at_chosen["dice_std"],
             at_chosen["n_images"], chosen, out)
    return report
