"""Per-epoch training metrics written beside the model: CSV, JSON and a PNG of loss and IoU curves."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from segmenter.io.atomic import atomic_path


def history_paths(model_path: Path) -> dict[str, Path]:
    """Where the metrics of the model at `model_path` go."""
    stem = model_path.with_suffix("")
    return {"csv": Path(f"{stem}.history.csv"), "json": Path(f"{stem}.history.json"), "png": Path(f"{stem}.curves.png")}


def write_history(history: list[dict[str, Any]], model_path: Path, plot: bool = True) -> dict[str, Path]:
    """Write the history as CSV, JSON and (with `plot`) a loss/IoU plot; returns the paths."""
    paths = history_paths(model_path)
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(history, indent=1))
    if plot:
        plot_history(history, paths["png"])
    return paths


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss (left) and IoU (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train loss (BCE + Dice)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_iou.plot(epochs, [r["train_iou"] for r in history], label="train IoU (augmented crops)")
    if any("val_iou" in r for r in history):
        ax_iou.plot(epochs, [r.get("val_iou") for r in history], label="validation IoU")
        ax_iou.plot(epochs, [r.get("val_dice") for r in history], label="validation Dice", linestyle="--")
    ax_iou.set_xlabel("epoch")
    ax_iou.set_ylim(0, 1)
    ax_iou.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
