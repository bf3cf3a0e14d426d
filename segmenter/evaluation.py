"""Evaluation of a segmenter on a dataset folder: per-image IoU and Dice at one or several
thresholds (the probability map is post-processed once, then thresholded for each value)."""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from metrics.torch_metrics import dice_score, jaccard_score
from segmenter.errors import CysegError
from segmenter.io.dataset import Dataset, Item, open_dataset, read_pair
from segmenter.pipeline import read_ahead
from transforms.chain import build_on, without_threshold

if TYPE_CHECKING:
    from segmenter.base import Segmenter

SWEEP = tuple(round(0.1 * i, 1) for i in range(1, 10))


def check_thresholds(thresholds: Sequence[float]) -> None:
    """Thresholds live in [0, 1]."""
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise CysegError(f"threshold {t} is outside [0, 1]; choose e.g. 0.5")


def evaluate_dataset(seg: Segmenter, data: str | os.PathLike | Dataset, thresholds: Sequence[float],
                     on_image: Callable[[str, np.ndarray, np.ndarray, dict[float, np.ndarray]], None] | None = None,
                     progress: bool = False) -> list[dict[str, Any]]:
    """One row per image and threshold: image, threshold, iou, dice, and pixel counts (tp, fp, fn).

    `on_image(stem, image, truth, masks_by_threshold)` is called per image (used for overlays).
    """
    check_thresholds(thresholds)
    dataset = data if isinstance(data, Dataset) else open_dataset(data)
    smooth = build_on(seg.device, without_threshold(seg.postprocess))
    rows: list[dict[str, Any]] = []
    def read(item: Item) -> tuple[np.ndarray, np.ndarray]:
        return read_pair(item, seg.n_classes)

    with closing(read_ahead(dataset.items, read)) as pairs:  # the next pair is read beside the network
        for item, (image, truth) in tqdm(pairs, total=len(dataset.items), desc="evaluating", unit="image",
                                         disable=not progress, leave=False):
            probs = seg.predict(image)
            truth_t = torch.from_numpy(truth).to(seg.device) > 0
            masks: dict[float, np.ndarray] = {}
            with torch.inference_mode():
                if seg.n_classes == 1:
                    smoothed = smooth(probs[None])[0, 0]
                for t in thresholds:
                    pred = smoothed > t if seg.n_classes == 1 else seg.masks_from_probabilities(probs) > 0
                    iou = float(jaccard_score(pred, truth_t))
                    dice = float(dice_score(pred, truth_t))
                    tp = int((pred & truth_t).sum())
                    fp = int((pred & ~truth_t).sum())
                    fn = int((~pred & truth_t).sum())
                    rows.append({"image": item.stem, "threshold": t, "iou": iou, "dice": dice, "tp": tp, "fp": fp,
                                 "fn": fn})
                    if on_image is not None:
                        masks[t] = pred.cpu().numpy().astype(np.uint8)
            if on_image is not None:
                on_image(item.stem, image, truth, masks)
    return rows


def mean_scores(seg: Segmenter, dataset: Dataset, threshold: float | None = None) -> dict[str, float]:
    """Mean IoU and Dice over a dataset at the model's (or the given) threshold."""
    rows = evaluate_dataset(seg, dataset, [seg.threshold if threshold is None else threshold])
    return {"iou": float(np.mean([r["iou"] for r in rows])), "dice": float(np.mean([r["dice"] for r in rows]))}


def calibrate_threshold(seg: Segmenter, dataset: Dataset, chosen_on: str) -> dict[str, Any]:
    """Set the model's threshold to the sweep value with the best mean IoU of the post-processed
    masks on `dataset` (validation or training images, never test images: that would flatter the
    test score); ties go to the value nearest 0.5."""
    summary = summarise(evaluate_dataset(seg, dataset, SWEEP))
    best = max(summary, key=lambda r: (r["iou_mean"], -abs(r["threshold"] - 0.5)))
    seg.set_threshold(best["threshold"])
    return {"threshold": best["threshold"], "chosen_on": chosen_on, "n_images": len(dataset),
            "sweep": [{k: r[k] for k in ("threshold", "iou_mean", "dice_mean")} for r in summary]}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per threshold: mean and std of IoU and Dice over images, and the pooled pixel counts."""
    out = []
    for t in sorted({r["threshold"] for r in rows}):
        sel = [r for r in rows if r["threshold"] == t]
        iou = np.array([r["iou"] for r in sel])
        dice = np.array([r["dice"] for r in sel])
        out.append({"threshold": t, "n_images": len(sel), "iou_mean": float(iou.mean()), "iou_std": float(iou.std()),
                    "dice_mean": float(dice.mean()), "dice_std": float(dice.std()),
                    "tp": sum(r["tp"] for r in sel), "fp": sum(r["fp"] for r in sel), "fn": sum(r["fn"] for r in sel)})
    return out
