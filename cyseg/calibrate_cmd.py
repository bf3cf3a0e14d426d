"""`cyseg calibrate MODEL DIR... --out OUT [--tta]`: a trained model's thresholds, instance separation
and least object areas chosen anew on annotated validation images predicted as the model will be used
(`segmenter.recalibrate`), written to a new model file; the weights are not touched."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segmenter.base import Segmenter
from segmenter.io.dataset import open_dataset
from segmenter.recalibrate import recalibrate, settings_of


def run_calibrate(seg: Segmenter, folders: Sequence[Path], out: Path, tta: bool) -> dict[str, Any]:
    """Recalibrate `seg` on the dataset folders and write it to `out` (atomically, so a failed run
    leaves no model file); returns the calibration record."""
    datasets = [open_dataset(folder) for folder in folders]
    record = recalibrate(seg, datasets, tta)
    seg.save(out)
    return record


def summary_lines(seg: Segmenter, record: dict[str, Any]) -> list[str]:
    """What changed, one line per setting: the value before and the value chosen."""
    now, before = settings_of(seg), record["replaced"]
    lines = [f"settings chosen on {record['n_images']} {record['chosen_on']}"]
    for label, threshold in now["thresholds"].items():
        lines.append(f"threshold   {label}: {before['thresholds'].get(label)} -> {threshold}")
    for channel, params in now["separation"].items():
        old = before["separation"].get(channel, {})
        changed = [f"{k} {old.get(k)} -> {v}" for k, v in params.items() if old.get(k) != v] or ["unchanged"]
        lines.append(f"separation  {seg.label_of[channel]}: " + ", ".join(changed))
    for label, area in now["min_area"].items():
        lines.append(f"min area    {label}: {before['min_area'].get(label)} -> {area} px²")
    return lines
