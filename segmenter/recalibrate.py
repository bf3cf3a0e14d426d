"""A trained model's settings chosen anew on annotated images, without training: its thresholds,
instance separation and least object areas, on images predicted as they will be at use (with or
without test-time augmentation, whose smoother probabilities want other settings), e.g. for a model
used with TTA or on images from another lab."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from segmenter.base import Segmenter
from segmenter.classes import channel_map
from segmenter.errors import CysegError
from segmenter.evaluation import calibrate_threshold
from segmenter.instances import calibrate_separation
from segmenter.io.dataset import Dataset, check_dataset

log = logging.getLogger(__name__)


def check_choice_datasets(seg: Segmenter, datasets: Sequence[Dataset], named: str, fix: str) -> None:
    """Every dataset the settings are chosen on is readable and shares a class with the model, and every
    class of the model is annotated by one of them; `named` says what they were given as and `fix` what
    to do when a class is missing, for the error."""
    for dataset in datasets:
        channel_map(dataset.classes, seg.classes, dataset.root)
        check_dataset(dataset)
    missing = [c for c in seg.classes if not any(c in dataset.classes for dataset in datasets)]
    if missing:
        raise CysegError(f"no {named} annotates {missing[0]}; {fix}")


def settings_of(seg: Segmenter) -> dict[str, Any]:
    """The model's thresholds (per output class), separation and least object areas, as plain data."""
    return {"thresholds": dict(zip(seg.labels, seg.channel_thresholds(), strict=True)),
            "separation": {c: dict(p) for c, p in seg.separation.items()}, "min_area": dict(seg.min_area)}


def recalibrate(seg: Segmenter, datasets: Sequence[Dataset], tta: bool) -> dict[str, Any]:
    """Choose the model's thresholds (best mean IoU of the sweep) and, for a model with instances, its
    separation and least object areas (best object F1, then PQ) on `datasets` (validation images, never
    test images) predicted with or without `tta`, as `cyseg train --val` does after training; the model's
    training record says where and how they were chosen, and keeps the settings they replace."""
    check_choice_datasets(seg, datasets, "folder given", "add one that declares it: each class's settings are "
                          "chosen on images that annotate it")
    folders = ", ".join(str(d.root) for d in datasets)
    where = f"validation images ({folders})" + (", with test-time augmentation" if tta else "")
    before, was_tta = settings_of(seg), seg.inference["tta"]
    seg.inference["tta"] = tta
    predictions: dict[Path, torch.Tensor] = {}
    try:
        seg.training_info["threshold"] = calibrate_threshold(seg, list(datasets), where, predictions)
        if seg.instance_classes:
            seg.training_info["separation"] = {**calibrate_separation(seg, datasets, predictions), "chosen_on": where}
    finally:
        seg.inference["tta"] = was_tta
    record = {"chosen_on": where, "tta": tta, "n_images": sum(len(d) for d in datasets), "replaced": before}
    seg.training_info["recalibrated"] = record
    return record


def chosen_with_tta(seg: Segmenter) -> bool:
    """Whether the model's settings were chosen on predictions with test-time augmentation, by `recalibrate`
    or by the model it adopted them from (`cyseg train --settings-from`)."""
    info = seg.training_info
    return any(bool((info.get(key) or {}).get("tta")) for key in ("recalibrated", "settings_from"))


def note_settings_view(seg: Segmenter, tta: bool) -> None:
    """Say when the model runs with or without test-time augmentation other than its settings were chosen
    for: the thresholds and separation fit the probabilities they were chosen on."""
    chosen = chosen_with_tta(seg)
    if tta and not chosen:
        log.info("the model's thresholds and separation were chosen without --tta; 'cyseg calibrate MODEL VALDIR "
                 "--tta --out M.pt' chooses them for it")
    elif chosen and not tta:
        log.info("the model's thresholds and separation were chosen with test-time augmentation; add --tta")
