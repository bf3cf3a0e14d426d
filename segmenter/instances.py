"""Class masks -> instances (DESIGN §5) for a segmenter: touching objects split around the cores of a
model's distance channels (`transforms.instances`), connected components for the classes it does not
separate, the instance targets training reads, and the choice of the core level on validation images."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from metrics.glas import glas_detection, object_dice, object_hausdorff
from metrics.instance_scores import aggregated_jaccard, detection_scores, panoptic_scores
from metrics.instances import match_instances, match_overlaps, overlaps
from metrics.object_errors import ObjectErrors, errors_of
from segmenter.base import SPECK_RATIO
from segmenter.classes import channel_map
from segmenter.io.dataset import Dataset, Item, read_pair
from segmenter.io.instances import read_instances, warn_disconnected
from transforms.instances import GROWTHS, Separation, connected_instances, drop_small, separate

if TYPE_CHECKING:
    from pathlib import Path

    from segmenter.base import Segmenter

# the separations tried on the validation images: peak heights, contour levels (models with contours) and growths
H_VALUES = (0.1, 0.2, 0.3, 0.4)
CONTOUR_LEVELS = (0.3, 0.5, 0.7)
JOINS = (0.0, 1.0, 2.0, 3.0)  # seeding nuclei joined across gaps of these many diameters (0: each its own)
# the minimum object widths tried there, as fractions of the class's typical object (the speck rule's first)
MIN_WIDTHS = (1 / SPECK_RATIO, 0.0, 1 / 3, 1 / 2)


def instance_labels(seg: Segmenter, masks: np.ndarray, probs: np.ndarray,
                    separation: dict[str, dict[str, Any]] | None = None,
                    done: dict[str, np.ndarray] | None = None,
                    min_areas: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """{channel: int32 labels} from a segmenter's (C, H, W) 0/1 class masks and its (C + K, H, W)
    probabilities: split around cores for its instance classes (nuclei first: they may seed the cells),
    connected components for the others, without the objects under `min_areas` (per class label, as
    `Segmenter.min_areas` gives; none dropped without it). `separation` overrides the model's
    parameters; `done` holds channels already separated with them."""
    separation = {**seg.separation, **(separation or {})}
    smallest = {c: (min_areas or {}).get(label, 0.0) for c, label in seg.label_of.items()}
    out: dict[str, np.ndarray] = dict(done or {})
    order = sorted(set(seg.channels) - set(out), key=lambda c: c != "nucleus")
    for channel in order:
        mask = masks[seg.channels.index(channel)]
        if channel not in seg.instance_classes:
            out[channel] = drop_small(connected_instances(mask), smallest[channel])
            continue
        params = Separation(**separation[channel])
        distance = seg.instance_map(probs, channel, "distance")
        contour = seg.instance_map(probs, channel, "contour") if seg.contours else None
        seeds = out.get("nucleus") if params.nucleus_seeds and channel == "cell" else None
        out[channel] = drop_small(separate(mask, distance, params, seeds, contour), smallest[channel])
    return {c: out[c] for c in seg.channels}


def truth_instances(item: Item, channel: str, truth: np.ndarray) -> np.ndarray:
    """An item's ground-truth objects of one channel: its instance mask when the dataset has one,
    else the connected components of its class mask `truth`."""
    path = item.instances.get(channel)
    return read_instances(path, truth.shape) if path is not None else connected_instances(truth)


ERROR_KINDS = tuple(f.name for f in dataclasses.fields(ObjectErrors))  # fn_missed, ..., fp_misshapen
INSTANCE_SCORES = ("object_f1", "object_precision", "object_recall", "objects_tp", "objects_fp", "objects_fn",
                   *(f"objects_{kind}" for kind in ERROR_KINDS),
                   "objects_glas_tp", "objects_glas_fp", "objects_glas_fn", "aji", "pq", "dq", "sq", "object_dice",
                   "object_hausdorff")


def instance_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float | int | None]:
    """Object F1 (with precision, recall and counts at IoU > 0.5, and the kinds of the unmatched objects:
    `metrics.object_errors`), the GlaS detection counts, AJI, PQ (DQ, SQ) and the GlaS object Dice and
    Hausdorff (None where it is infinite: objects on one side only) of one image."""
    table = overlaps(predicted, truth)
    match = match_overlaps(table)
    detection, quality = detection_scores(match), panoptic_scores(match)
    errors = dataclasses.asdict(errors_of(table, match))
    hausdorff = object_hausdorff(predicted, truth)
    glas_tp, glas_fp, glas_fn = glas_detection(predicted, truth)
    return {"object_f1": detection.f1, "object_precision": detection.precision, "object_recall": detection.recall,
            "objects_tp": detection.tp, "objects_fp": detection.fp, "objects_fn": detection.fn,
            **{f"objects_{kind}": count for kind, count in errors.items()},
            "objects_glas_tp": glas_tp, "objects_glas_fp": glas_fp, "objects_glas_fn": glas_fn,
            "aji": aggregated_jaccard(predicted, truth), "pq": quality.pq, "dq": quality.dq, "sq": quality.sq,
            "object_dice": object_dice(predicted, truth),
            "object_hausdorff": None if not np.isfinite(hausdorff) else hausdorff}


def outside_unknown(labels: np.ndarray, unknown: np.ndarray | None) -> np.ndarray:
    """Instance labels without the objects lying mostly (over half their pixels) on `unknown` pixels:
    nobody labelled there, so such an object is neither found, missed nor a false positive."""
    if unknown is None or not unknown.any():
        return labels
    n = int(labels.max()) + 1
    total = np.bincount(labels.ravel(), minlength=n)
    dropped = 2 * np.bincount(labels[unknown], minlength=n) > total
    dropped[0] = False
    return np.where(dropped[labels], 0, labels).astype(labels.dtype)


def summarise_instances(rows: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    """The mean of each instance score over the rows (the Hausdorff distance over the finite ones),
    `object_f1_pooled`, the F1 of the objects of every image counted together, and
    `object_f1_glas`, the same with the GlaS challenge's counts (its published F1)."""
    out: dict[str, float | int | None] = {}
    for key in INSTANCE_SCORES:
        values = [r[key] for r in rows if r.get(key) is not None]
        if key.startswith("objects_"):
            out[key] = int(sum(values))
        else:
            out[f"{key}_mean"] = float(np.mean(values)) if values else None
    for key, prefix in (("object_f1_pooled", "objects_"), ("object_f1_glas", "objects_glas_")):
        tp, fp, fn = out[f"{prefix}tp"], out[f"{prefix}fp"], out[f"{prefix}fn"]
        out[key] = 2 * tp / (2 * tp + fp + fn) if fp + fn else 1.0
    return out


def load_instances(seg: Segmenter, datasets: Sequence[Dataset],
                   shapes: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per item of the datasets, in order: its (H, W, K) uint16 instance labels of the model's K
    instance classes (zeros where its dataset has none) and which of them it annotates (K,) float32;
    `shapes` are the items' mask shapes, in the same order (the masks are read already). Warns once
    per dataset about ids shared by disconnected regions."""
    out = []
    shape_of = iter(shapes)
    for dataset in datasets:
        read: list[tuple[Any, np.ndarray]] = []
        for item in dataset.items:
            shape = next(shape_of)
            layers, known = [], []
            for channel in seg.instance_classes:
                path = item.instances.get(channel)
                layer = np.zeros(shape, np.int32) if path is None else read_instances(path, shape)
                if path is not None:
                    read.append((path, layer))
                layers.append(layer.astype(np.uint16))
                known.append(float(path is not None))
            out.append((np.stack(layers, axis=2), np.array(known, np.float32)))
        warn_disconnected(read)
    return out


@dataclasses.dataclass
class _Predicted:
    """One validation image: the model's masks and probabilities, its ground-truth objects per
    channel, and the index of the dataset it comes from."""

    masks: np.ndarray
    probs: np.ndarray
    truth: dict[str, np.ndarray]
    source: int
    done: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # channels already calibrated


def _predicted(seg: Segmenter, datasets: Sequence[Dataset],
               predictions: dict[Path, torch.Tensor]) -> list[_Predicted]:
    """Every image of the datasets predicted once (or taken from `predictions`), with the ground truth
    of the channels it annotates."""
    out = []
    for source, dataset in enumerate(datasets):
        channels = channel_map(dataset.classes, seg.classes, dataset.root)
        for item in dataset.items:
            image, labels = read_pair(item)
            probs = (predictions[item.image].to(seg.device) if item.image in predictions
                     else seg.predict(image, read_scale=dataset.read_scale))
            with torch.inference_mode():
                masks = seg.class_masks(probs).cpu().numpy()
            targets = channels.targets(labels)
            truth = {c: truth_instances(item, c, (targets[:, :, i] > 0).astype(np.uint8))
                     for i, c in enumerate(seg.channels) if channels.known[i]}
            out.append(_Predicted(masks, probs.cpu().numpy(), truth, source))
    return out


def balanced_score(found: list[tuple[np.ndarray, np.ndarray, int]], min_area: float) -> tuple[float, float]:
    """(object F1, PQ) of (predicted, true objects, source dataset) triples once the predicted objects
    under `min_area` are dropped: the mean over source datasets of each one's mean over its images,
    so that a source with few images (a scale or stain of its own) weighs as much as a large one."""
    by_source: dict[int, list[tuple[float, float]]] = {}
    for predicted, truth, source in found:
        match = match_instances(drop_small(predicted, min_area), truth)
        by_source.setdefault(source, []).append((detection_scores(match).f1, panoptic_scores(match).pq))
    if not by_source:
        return 0.0, 0.0
    f1, pq = np.mean([np.mean(scores, axis=0) for scores in by_source.values()], axis=0)
    return float(f1), float(pq)


def candidate_areas(seg: Segmenter, label: str) -> list[float]:
    """The minimum object areas (px²) tried for a class: objects narrower than each of MIN_WIDTHS of
    its typical training object (the speck size first, so that it wins ties); 0 alone when the model
    does not record that size."""
    speck = seg.smallest_object(label)
    return [round(speck * (width * SPECK_RATIO) ** 2, 1) for width in MIN_WIDTHS] if speck else [0.0]


def separations(contours: bool, seeds: Sequence[bool]) -> list[Separation]:
    """The separations tried on validation images: each peak height (H_VALUES) and, for a model with
    contours, each contour level (CONTOUR_LEVELS), with each nucleus-seed choice (`seeds`; seeds joined
    across gaps of each of JOINS diameters) and growth. Growth to the nearest marker only from nuclei: from the
    distance's peaks it hands every spurious peak a Voronoi share of its object, too large for the least
    area to drop, where the watershed leaves it its small basin."""
    marks = [Separation(h=h) for h in H_VALUES]
    if contours:
        marks += [Separation(marks="contour", contour=level) for level in CONTOUR_LEVELS]
    return [dataclasses.replace(m, grow=grow, nucleus_seeds=seeded, join=join)
            for m, grow, seeded in itertools.product(marks, GROWTHS, seeds) if seeded or grow == "watershed"
            for join in (JOINS if seeded else (0.0,))]


def calibrate_separation(seg: Segmenter, datasets: Sequence[Dataset],
                         predictions: dict[Path, torch.Tensor] | None = None) -> dict[str, Any]:
    """Set the model's separation parameters and minimum object area, per instance class (nuclei
    first), to those of the grid with the best object F1 (then PQ; `balanced_score`: each dataset
    weighs the same) on `datasets` (validation or training images, never test images); returns each
    class's choice and score. Images in `predictions` (image path -> probabilities, e.g. from the
    threshold sweep just before) are not predicted again."""
    images = _predicted(seg, datasets, predictions or {})
    report: dict[str, Any] = {}
    for channel in sorted(seg.instance_classes, key=lambda c: c != "nucleus"):
        label = seg.label_of[channel]
        seeds = (False, True) if channel == "cell" and "nucleus" in seg.channels else (False,)
        areas = candidate_areas(seg, label)
        best, best_score = (None, 0.0), (-1.0, -1.0)
        for separation in separations(seg.contours, seeds):
            params = dataclasses.asdict(separation)
            found = [(instance_labels(seg, image.masks, image.probs, {channel: params}, image.done)[channel],
                      image.truth[channel], image.source) for image in images if channel in image.truth]
            for area in areas:
                score = balanced_score(found, area)
                if score > best_score:
                    best, best_score = (params, area), score
        seg.separation[channel], seg.min_area[label] = best
        for image in images:
            image.done[channel] = instance_labels(seg, image.masks, image.probs, done=image.done,
                                                  min_areas=seg.auto_min_areas())[channel]
        report[channel] = {**best[0], "min_area": best[1], "object_f1": round(best_score[0], 4),
                           "pq": round(best_score[1], 4)}
    return report
