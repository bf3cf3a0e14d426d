"""Carry the settings chosen on one model's validation images (per-class thresholds, instance
separation, least object areas) over to another model of the same classes: the final refit on
every annotated image, validation images included, keeps the choices made before it saw them."""
from __future__ import annotations

from typing import Any

from segmenter.base import Segmenter
from segmenter.errors import CysegError
from segmenter.recalibrate import chosen_with_tta


def _described(classes: list[str], separated: list[str], contours: bool) -> str:
    """'classes [...] (instances: [...][, with contours])' for an error message."""
    return f"classes {classes or 'foreground'} (instances: {separated or 'none'}{', with contours' * contours})"


def check_same_classes(seg: Segmenter, reference: Segmenter, source: str) -> None:
    """A CysegError with the fix unless `reference` predicts and separates the classes `seg` does, with
    contours where it has them (its separation may be marked by them)."""
    ours = (list(seg.classes), list(seg.instance_classes), seg.contours)
    theirs = (list(reference.classes), list(reference.instance_classes), reference.contours)
    if ours != theirs:
        raise CysegError(f"--settings-from {source} predicts {_described(*theirs)}, this run {_described(*ours)}; "
                         "give a model trained with the same --classes, --instances and --contours")


def adopt_settings(seg: Segmenter, reference: Segmenter, source: str) -> dict[str, Any]:
    """Give `seg` the thresholds, separation and least object areas of `reference`; returns what was
    adopted and where the reference chose it, for the model file's training record."""
    check_same_classes(seg, reference, source)
    if seg.classes:
        for name, threshold in reference.thresholds.items():
            seg.set_threshold(threshold, name)
    else:
        seg.set_threshold(reference.threshold)
    seg.separation = {c: dict(p) for c, p in reference.separation.items()}
    seg.min_area = dict(reference.min_area)
    chosen_on = (reference.training_info.get("threshold") or {}).get("chosen_on", "unknown images")
    threshold = {"thresholds": dict(seg.thresholds)} if seg.classes else {"threshold": seg.threshold}
    return {"from": source, "chosen_on": f"{chosen_on} of {source}", **threshold, "separation": seg.separation,
            "min_area": seg.min_area, "tta": chosen_with_tta(reference)}
