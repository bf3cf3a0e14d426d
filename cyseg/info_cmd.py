"""`cyseg info MODEL`: what a model file holds and what it was made for: classes and instances, the
modality, resolution and stains of its training images, the data it saw, its thresholds and how it
separates objects, so a user knows what its polygons are before segmenting."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from segmenter.base import Segmenter
from segmenter.io.digest import file_digest
from segmenter.scope import model_scope


def model_card(seg: Segmenter, path: Path) -> dict[str, Any]:
    """The model's description as JSON-ready data."""
    info = seg.training_info
    label_of = seg.label_of
    return {"path": str(path), "sha256": file_digest(path), "name": info.get("name"),
            "architecture": {"arch": seg.arch, **seg.config}, "working_resolution": seg.resolution,
            "classes": list(seg.labels), "instances": [label_of[c] for c in seg.instance_classes],
            "thresholds": dict(seg.thresholds) if seg.classes else {seg.labels[0]: seg.threshold},
            "separation": {label_of[c]: dict(v) for c, v in seg.separation.items()}, "min_area": seg.min_areas(None),
            "settings_chosen_on": (info.get("threshold") or {}).get("chosen_on"), "scope": model_scope(seg),
            "training": {k: info.get(k) for k in ("n_images", "dataset", "best_epoch", "best_val_iou", "finished")}}


def card_lines(card: dict[str, Any]) -> list[str]:
    """The card as the lines `cyseg info` prints."""
    scope = card["scope"]
    lines = [f"model       {card['path']} (sha256 {card['sha256'][:16]}...)",
             f"name        {card['name'] or '(none)'}",
             f"finds       {', '.join(card['classes'])}"
             + (f"; one object per {', '.join(card['instances'])} (instances"
                + (", with contours)" if card["architecture"].get("contours") else ")") if card["instances"]
                else "; connected regions (no instances)")]
    if scope is None:
        lines.append("made for    not recorded (a v1 model file): inputs are not checked against it")
    else:
        mpp = scope.get("mpp_range")
        lines += [f"modality    {'/'.join(scope['modality']) or 'unknown'}",
                  "resolution  " + (f"{mpp[0]:g}–{mpp[1]:g} µm/px" if mpp else "not declared by its datasets"),
                  f"stains      {', '.join(scope['stains']) or 'not declared by its datasets'}",
                  "data        " + ", ".join(f"{d['name']} ({d['images']} images"
                                             + (f", read at {d['read_scale']:g}x" if "read_scale" in d else "") + ")"
                                             for d in scope["data"])]
    training = card["training"]
    val_iou = training.get("best_val_iou")
    lines += ["thresholds  " + ", ".join(f"{name} {t:g}" for name, t in card["thresholds"].items()),
              *(f"separation  {c}: " + ", ".join(f"{k} {v}" for k, v in p.items())
                for c, p in card["separation"].items()),
              "min area    " + ", ".join(f"{name} {area:g} px²" for name, area in card["min_area"].items())
              + " (smaller objects are dropped as specks)",
              "settings    " + (f"chosen on the {card['settings_chosen_on']}" if card["settings_chosen_on"]
                                  else "where they were chosen is not recorded"),
              f"network     {card['architecture'].get('arch')} depth {card['architecture'].get('depth')}, "
              f"n {card['architecture'].get('n')}, at {card['working_resolution']:g}x the images' resolution",
              f"training    {training.get('n_images')} images, best epoch {training.get('best_epoch')}, validation "
              f"IoU {'-' if val_iou is None else f'{val_iou:.4f}'}"]
    return lines
