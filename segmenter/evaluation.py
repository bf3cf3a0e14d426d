"""Evaluation of a segmenter on dataset folders: per-image IoU and Dice at one or several
thresholds (the probability map is post-processed once, then thresholded for each value).

A model with named classes is scored per class, each on the images whose dataset annotates it
(partial labels: a class a dataset does not declare is unknown there, not background); its rows
carry the class, its summaries are per class, and its thresholds are calibrated per class."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from metrics.torch_metrics import dice_score, jaccard_score
from segmenter.classes import VOCABULARY, channel_map
from segmenter.errors import CysegError
from segmenter.instances import instance_labels, instance_scores, outside_unknown, truth_instances
from segmenter.io.dataset import Dataset, Item, open_dataset, read_pair, read_unknown
from segmenter.io.instances import warn_disconnected
from segmenter.pipeline import read_ahead
from transforms.chain import build_on, without_threshold

if TYPE_CHECKING:
    from segmenter.base import Segmenter

SWEEP = tuple(round(0.1 * i, 1) for i in range(1, 10))
LOW_SWEEP = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001)  # the collapse guard's thresholds
#: a class predicted on less than this share of its annotated pixels counts as predicted empty (collapsed)
NEAR_EMPTY = 0.05
Data = str | os.PathLike | Dataset | Sequence[Dataset]
# on_image(stem, class (None for the unnamed foreground), image, truth, masks by threshold)
Predictions = dict[Path, torch.Tensor]  # image path -> (C, H, W) probabilities
OnImage = Callable[[str, str | None, np.ndarray, np.ndarray, dict[float, np.ndarray]], None]
log = logging.getLogger(__name__)


def check_thresholds(thresholds: Sequence[float]) -> None:
    """Thresholds live in [0, 1]."""
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise CysegError(f"threshold {t} is outside [0, 1]; choose e.g. 0.5")


def datasets_of(data: Data) -> list[Dataset]:
    """A folder, a dataset or several datasets, as a list of datasets."""
    if isinstance(data, Dataset):
        return [data]
    if isinstance(data, (str, os.PathLike)):
        return [open_dataset(data)]
    return list(data)


def evaluate_dataset(seg: Segmenter, data: Data, thresholds: Sequence[float], on_image: OnImage | None = None,
                     progress: bool = False, instances_at: dict[str | None, float] | None = None,
                     predictions: Predictions | None = None) -> list[dict[str, Any]]:
    """One row per image (per class its dataset annotates, for a model with named classes) and
    threshold: image, [class,] threshold, iou, dice, and pixel counts (tp, fp, fn). With
    `instances_at` (each class's threshold) the rows at those thresholds also hold the instance scores
    (`segmenter.instances.instance_scores`) of the model's objects against the dataset's instance
    labels, or the connected regions of its masks where it has none.

    `on_image(stem, class, image, truth, masks_by_threshold)` is called per image and class (used for overlays).
    `predictions` (image path -> probabilities on the CPU), when given, receives every image's
    probabilities, so a later step on the same images need not predict them again.
    """
    check_thresholds(thresholds)
    rows: list[dict[str, Any]] = []
    for dataset in datasets_of(data):
        rows += _evaluate_one(seg, dataset, thresholds, on_image, progress, instances_at, predictions)
    return rows


def _evaluate_one(seg: Segmenter, dataset: Dataset, thresholds: Sequence[float], on_image: OnImage | None,
                  progress: bool, instances_at: dict[str | None, float] | None = None,
                  predictions: Predictions | None = None) -> list[dict[str, Any]]:
    """`evaluate_dataset` on one dataset."""
    channels = channel_map(dataset.classes, seg.classes, dataset.root)
    scored = [(c, name) for c, name in enumerate(seg.classes or (None,)) if channels.known[c]]
    smooth = build_on(seg.device, without_threshold(seg.postprocess))
    rows: list[dict[str, Any]] = []
    read_truth: list[tuple[Any, np.ndarray]] = []
    with closing(read_ahead(dataset.items, _read_scored)) as pairs:  # the next pair is read beside the network
        for item, (image, labels, unknown) in tqdm(pairs, total=len(dataset.items), desc="evaluating", unit="image",
                                          disable=not progress, leave=False):
            probs = seg.predict(image, read_scale=dataset.read_scale)
            if predictions is not None:
                predictions[item.image] = probs.cpu()
            targets = channels.targets(labels)
            with torch.inference_mode():
                smoothed = smooth(probs[None])[0]
                for c, name in scored:
                    truth = (targets[:, :, c] > 0).astype(np.uint8)
                    masks = _score_channel(rows, item.stem, name, smoothed[c], truth, thresholds, seg.device,
                                           keep_masks=on_image is not None, unknown=unknown)
                    if on_image is not None:
                        on_image(item.stem, name, image, truth, masks)
                if instances_at is not None:
                    _score_instances(rows, seg, item, probs, smoothed, targets, scored, instances_at, read_truth,
                                     unknown)
    warn_disconnected(read_truth)
    return rows


def _score_instances(rows: list[dict[str, Any]], seg: Segmenter, item: Item, probs: torch.Tensor,
                     smoothed: torch.Tensor, targets: np.ndarray, scored: list[tuple[int, str | None]],
                     instances_at: dict[str | None, float], read_truth: list[tuple[Any, np.ndarray]],
                     unknown: np.ndarray | None = None) -> None:
    """Add one image's instance scores to its rows at each scored class's `instances_at` threshold,
    without the objects under the least area the model chose on validation images (`min_area`; a
    model without one is scored on all its objects: its speck rule came from no validation), and
    without the objects, found or true, lying mostly on the image's `unknown` pixels."""
    masks = torch.stack([smoothed[c] > instances_at[name] for c, name in enumerate(seg.classes or (None,))])
    predicted = instance_labels(seg, masks.to(torch.uint8).cpu().numpy(), probs.cpu().numpy(),
                               min_areas=seg.min_area)
    for c, name in scored:
        channel = seg.channels[c]
        truth = truth_instances(item, channel, (targets[:, :, c] > 0).astype(np.uint8))
        if channel in item.instances:
            read_truth.append((item.instances[channel], truth))
        row = next(r for r in reversed(rows) if r["image"] == item.stem and r.get("class") == name
                   and r["threshold"] == instances_at[name])
        row.update(instance_scores(outside_unknown(predicted[channel], unknown), outside_unknown(truth, unknown)))


def _read_scored(item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """An item's image, mask labels and unknown pixels (`read_unknown`)."""
    image, labels = read_pair(item)
    return image, labels, read_unknown(item, labels.shape)


def _score_channel(rows: list[dict[str, Any]], stem: str, name: str | None, smoothed: torch.Tensor, truth: np.ndarray,
                   thresholds: Sequence[float], device: torch.device, keep_masks: bool,
                   unknown: np.ndarray | None = None) -> dict[float, np.ndarray]:
    """Append one row per threshold for one image and class, the `unknown` pixels (nobody labelled
    them) counted neither right nor wrong; returns the masks when asked to keep them."""
    truth_t = torch.from_numpy(truth).to(device) > 0
    labelled = None if unknown is None else torch.from_numpy(~unknown).to(device)
    if labelled is not None:
        truth_t &= labelled
    masks: dict[float, np.ndarray] = {}
    for t in thresholds:
        pred = smoothed > t if labelled is None else (smoothed > t) & labelled
        tp = int((pred & truth_t).sum())
        fp = int((pred & ~truth_t).sum())
        fn = int((~pred & truth_t).sum())
        rows.append({"image": stem, **({} if name is None else {"class": name}), "threshold": t,
                     "iou": float(jaccard_score(pred, truth_t)), "dice": float(dice_score(pred, truth_t)),
                     "tp": tp, "fp": fp, "fn": fn})
        if keep_masks:
            masks[t] = pred.cpu().numpy().astype(np.uint8)
    return masks


def at_thresholds(rows: list[dict[str, Any]], chosen: dict[str | None, float]) -> list[dict[str, Any]]:
    """The rows at each class's chosen threshold (`chosen[None]` for the unnamed foreground)."""
    return [r for r in rows if r["threshold"] == chosen[r.get("class")]]


def chosen_thresholds(seg: Segmenter, threshold: float | None = None) -> dict[str | None, float]:
    """Each class's threshold (`None`: the unnamed foreground): `threshold` when given, else the model's."""
    return dict(zip(seg.classes or (None,), seg.channel_thresholds(threshold), strict=True))


def mean_scores(seg: Segmenter, data: Data, threshold: float | None = None) -> dict[str, float]:
    """Mean IoU and Dice over the images at the model's (or the given) thresholds; for named
    classes, each class's means (`iou_<class>`, `dice_<class>`) over the images that annotate it,
    and `iou`, `dice` their mean over the classes."""
    chosen = chosen_thresholds(seg, threshold)
    rows = at_thresholds(evaluate_dataset(seg, data, sorted(set(chosen.values()))), chosen)
    if not seg.classes:
        return {"iou": float(np.mean([r["iou"] for r in rows])), "dice": float(np.mean([r["dice"] for r in rows]))}
    scores: dict[str, float] = {}
    for name in seg.classes:
        sel = [r for r in rows if r["class"] == name]
        if sel:
            scores[f"iou_{name}"] = float(np.mean([r["iou"] for r in sel]))
            scores[f"dice_{name}"] = float(np.mean([r["dice"] for r in sel]))
    scored = [name for name in seg.classes if f"iou_{name}" in scores]
    return {"iou": float(np.mean([scores[f"iou_{n}"] for n in scored])),
            "dice": float(np.mean([scores[f"dice_{n}"] for n in scored])), **scores}


def calibrate_threshold(seg: Segmenter, data: Data, chosen_on: str,
                        predictions: Predictions | None = None) -> dict[str, Any]:
    """Set the model's threshold (per class for named classes) to the sweep value with the best mean
    IoU of the post-processed masks on `data` (validation or training images, never test images:
    that would flatter the test score); ties go to the value nearest 0.5. `predictions` receives
    the images' probabilities (see `evaluate_dataset`). A class collapsed below the sweep is
    guarded (`_guard_collapse`)."""
    datasets = datasets_of(data)
    rows = evaluate_dataset(seg, datasets, SWEEP, predictions=predictions)
    guarded = _guard_collapse(seg, datasets, rows, chosen_on)
    summary = summarise(rows)
    n_images = sum(len(d) for d in datasets)
    extra = {"collapse_guard": guarded} if guarded else {}
    if not seg.classes:
        best = _best(summary)
        seg.set_threshold(best["threshold"])
        return {"threshold": best["threshold"], "chosen_on": chosen_on, "n_images": n_images, **extra,
                "sweep": [{k: r[k] for k in ("threshold", "iou_mean", "dice_mean")} for r in summary]}
    for name in seg.classes:
        of_class = [r for r in summary if r["class"] == name]
        if of_class:
            seg.set_threshold(_best(of_class)["threshold"], name)
    return {"thresholds": dict(seg.thresholds), "chosen_on": chosen_on, "n_images": n_images, **extra,
            "sweep": [{k: r[k] for k in ("class", "threshold", "iou_mean", "dice_mean")} for r in summary]}


def guard_fixed_threshold(seg: Segmenter, data: Data, chosen_on: str,
                          predictions: Predictions | None = None) -> dict[str, Any] | None:
    """For a model trained with a fixed threshold: None when it predicts foreground at that threshold
    on `data`'s images whose masks hold some (`collapsed_classes`); else (collapsed towards background) it is
    calibrated instead (`calibrate_threshold`, with its own guard) and the calibration is returned."""
    datasets = datasets_of(data)
    chosen = chosen_thresholds(seg)
    rows = at_thresholds(evaluate_dataset(seg, datasets, sorted(set(chosen.values())), predictions=predictions),
                         chosen)
    collapsed = collapsed_classes(rows)
    if not collapsed:
        return None
    log.warning("the model predicts (next to) no %s on the %s at its threshold (collapsed towards background); "
                "its threshold is calibrated instead", ", ".join(c or "foreground" for c in collapsed), chosen_on)
    return {**calibrate_threshold(seg, datasets, chosen_on), "fixed_threshold_collapsed": collapsed}


def collapsed_classes(rows: list[dict[str, Any]]) -> list[str | None]:
    """The classes (None: the unnamed foreground) that, at every threshold of `rows`, are predicted
    on fewer pixels than NEAR_EMPTY of the pixels their masks annotate (none annotated: never
    collapsed): a model collapsed towards background, whose prediction is empty or a few specks."""
    out = []
    for name in dict.fromkeys(r.get("class") for r in rows):
        predicted: dict[float, int] = {}
        annotated: dict[float, int] = {}
        for r in rows:
            if r.get("class") == name:
                predicted[r["threshold"]] = predicted.get(r["threshold"], 0) + r["tp"] + r["fp"]
                annotated[r["threshold"]] = annotated.get(r["threshold"], 0) + r["tp"] + r["fn"]
        if max(annotated.values()) and all(predicted[t] < NEAR_EMPTY * annotated[t] for t in predicted):
            out.append(name)
    return out


def _guard_collapse(seg: Segmenter, datasets: list[Dataset], rows: list[dict[str, Any]],
                    chosen_on: str) -> list[str | None]:
    """Training on sparse foreground can leave every probability below the sweep (an empty or
    near-empty prediction at any of its thresholds, `collapsed_classes`). For such classes, `rows`
    gains the rows of LOW_SWEEP (the images are predicted once more), so that the model's ranking of
    the pixels still serves; a class (next to) empty even there is refused (CysegError). Returns the
    guarded classes."""
    collapsed = collapsed_classes(rows)
    if not collapsed:
        return []
    low = [r for r in evaluate_dataset(seg, datasets, LOW_SWEEP) if r.get("class") in collapsed]
    dead = collapsed_classes(low)
    if dead:
        what = "foreground" if dead[0] is None else f"class {dead[0]}"
        raise CysegError(f"training collapsed: the model predicts (next to) no {what} on the {chosen_on} at any "
                         f"threshold down to {min(LOW_SWEEP)}, where their masks hold some; train again with "
                         "another --seed, more --epochs or a lower --lr")
    log.warning("the model predicts (next to) no %s on the %s at any threshold of 0.1..0.9 (collapsed towards "
                "background); its threshold is chosen among %s instead",
                ", ".join(c or "foreground" for c in collapsed), chosen_on, ", ".join(map(str, LOW_SWEEP)))
    rows += low
    return collapsed


def _best(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary row with the best mean IoU, the one nearest 0.5 among ties."""
    return max(summary, key=lambda r: (r["iou_mean"], -abs(r["threshold"] - 0.5)))


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per threshold (per class and threshold for named classes): mean and std of IoU and Dice over
    images, and the pooled pixel counts."""
    out = []
    present = {r.get("class") for r in rows}
    for name in (n for n in (None, *VOCABULARY) if n in present):
        of_class = [r for r in rows if r.get("class") == name]
        for t in sorted({r["threshold"] for r in of_class}):
            sel = [r for r in of_class if r["threshold"] == t]
            iou = np.array([r["iou"] for r in sel])
            dice = np.array([r["dice"] for r in sel])
            out.append({**({} if name is None else {"class": name}), "threshold": t, "n_images": len(sel),
                        "iou_mean": float(iou.mean()), "iou_std": float(iou.std()),
                        "dice_mean": float(dice.mean()), "dice_std": float(dice.std()),
                        "tp": sum(r["tp"] for r in sel), "fp": sum(r["fp"] for r in sel),
                        "fn": sum(r["fn"] for r in sel), **unannotated_images(sel)})
    return out


def unannotated_images(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many images annotate none of the class, and the mean Dice over the others: an image without
    any annotated pixel scores all or nothing (1 when nothing is predicted there, 0 for a single
    predicted pixel), unlike the graded scores of the others."""
    annotated = [r["dice"] for r in rows if r["tp"] + r["fn"] > 0]
    return {"n_unannotated": len(rows) - len(annotated),
            "dice_mean_annotated": float(np.mean(annotated)) if annotated else None}
