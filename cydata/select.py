"""`cydata select`: keep the crops whose annotation looks complete, as the method recommends for
building a training set from partially annotated slides.

A model scores each crop's annotation **completeness** = the fraction of the model's predicted
foreground that the annotation covers, |prediction AND annotation| / |prediction|, with the model's
own post-processing and threshold (or `--threshold`). When the model predicts nothing on a crop,
nothing is missing by this measure and the score is 1.0. An empty annotation under a non-empty
prediction scores 0.0. Crops scoring at least `--min-completeness` are kept; with `--per-slide N`
at most N per slide, best first (ties by name), so that no slide dominates; the slide is the
item's 'slide' (or 'image_id') in dataset.json, and items without one form a single group.

The output is a new dataset (files copied unchanged) whose dataset.json records the parent, the
model and the rule, and each kept item's score; scores.csv in it lists every crop's score and
whether it was kept (and why not).
"""
from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from segmenter.classes import ChannelMap, channel_map
from segmenter.errors import CysegError
from segmenter.io.dataset import Dataset, DatasetWriter, check_dataset, image_declarations, open_dataset, read_pair
from segmenter.io.digest import file_digest

if TYPE_CHECKING:
    from segmenter.base import Segmenter

log = logging.getLogger(__name__)

CSV_FIELDS = ("stem", "slide", "kind", "score", "predicted_px", "annotated_px", "covered_px", "selected", "reason")


def completeness(pred: np.ndarray, annotation: np.ndarray) -> float:
    """|pred AND annotation| / |pred| for two masks (nonzero = foreground); 1.0 when pred is empty."""
    p, a = np.asarray(pred) > 0, np.asarray(annotation) > 0
    if p.shape != a.shape:
        raise CysegError(f"prediction {p.shape} and annotation {a.shape} differ in shape")
    predicted = int(p.sum())
    return 1.0 if predicted == 0 else int((p & a).sum()) / predicted


def choose(rows: list[dict[str, Any]], min_completeness: float, per_slide: int | None) -> None:
    """Mark rows `selected` (with a `reason` when not): score >= threshold, then at most `per_slide`
    per slide, best first."""
    by_slide: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        row["selected"], row["reason"] = False, ""
        if row["score"] >= min_completeness:
            by_slide[row["slide"]].append(row)
        else:
            row["reason"] = f"score below {min_completeness}"
    for group in by_slide.values():
        group.sort(key=lambda r: (-r["score"], r["stem"]))
        for rank, row in enumerate(group):
            if per_slide is None or rank < per_slide:
                row["selected"] = True
            else:
                row["reason"] = f"slide already has {per_slide} better crops"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        writer.writerows(rows)


def select_dataset(directory: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
                   min_completeness: float = 0.5, per_slide: int | None = None, threshold: float | None = None,
                   device: str = "auto", csv_path: str | os.PathLike | None = None,
                   progress: bool = True) -> tuple[Path, list[dict[str, Any]]]:
    """Score every crop of `directory`, write the kept ones to `out`; returns (out, all rows)."""
    from unet import load_segmenter

    _check_options(min_completeness, per_slide, threshold)
    out = Path(out)
    if out.exists():
        raise CysegError(f"output folder {out} already exists; choose a new --out or remove it")
    src = Path(directory)
    dataset = open_dataset(src)
    seg = load_segmenter(model, device=device)
    seg.require_one_class("cydata select")
    channels = channel_map(dataset.classes, seg.classes, src)
    check_dataset(dataset)
    rows = _score(seg, dataset, channels, threshold, progress)
    choose(rows, min_completeness, per_slide)
    kept = [r for r in rows if r["selected"]]
    if csv_path is not None:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        _write_csv(Path(csv_path), rows)
    if not kept:
        best = max(rows, key=lambda r: r["score"])
        raise CysegError(f"no crop of {src} reaches completeness {min_completeness} (best: {best['stem']} with "
                         f"{best['score']:.3f}); lower --min-completeness")
    model_path = Path(model)
    rule = {"score": "|prediction AND annotation| / |prediction|; 1.0 when the model predicts nothing",
            "model": str(model_path.resolve()), "model_sha256": file_digest(model_path),
            "model_name": seg.training_info.get("name"), "threshold": seg.threshold if threshold is None else threshold,
            "min_completeness": min_completeness, "per_slide": per_slide,
            "scored": len(rows), "selected": len(kept)}
    _write_selection(out, src, dataset, rows, rule)
    log.info("kept %d of %d crops (completeness >= %s%s); scores in %s", len(kept), len(rows), min_completeness,
             "" if per_slide is None else f", at most {per_slide} per slide", out / "scores.csv")
    return out, rows


def _check_options(min_completeness: float, per_slide: int | None, threshold: float | None) -> None:
    """Refuse values outside their range before the model is loaded."""
    if not 0.0 <= min_completeness <= 1.0:
        raise CysegError(f"--min-completeness {min_completeness} is outside [0, 1]; choose e.g. 0.5")
    if per_slide is not None and per_slide < 1:
        raise CysegError(f"--per-slide must be >= 1 (got {per_slide}); leave it out for no cap")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise CysegError(f"--threshold {threshold} is outside [0, 1]; choose e.g. 0.5")


def _score(seg: Segmenter, dataset: Dataset, channels: ChannelMap, threshold: float | None,
           progress: bool) -> list[dict[str, Any]]:
    """One row per item: its completeness under the model's post-processed prediction (of the model's
    class, as the item's mask annotates it), and the pixel counts."""
    rows: list[dict[str, Any]] = []
    for item in tqdm(dataset.items, desc="scoring", unit="image", disable=not progress, leave=False):
        image, labels = read_pair(item)
        annotation = channels.targets(labels)[:, :, 0]
        pred = seg.segment(image, threshold=threshold)
        if pred.shape != annotation.shape:
            raise CysegError(f"model output for {item.image} is {pred.shape}, not the image's {annotation.shape}")
        p, a = pred > 0, annotation > 0
        rows.append({"stem": item.stem, "slide": item.slide or "", "kind": item.kind or "",
                     "score": completeness(p, a), "predicted_px": int(p.sum()), "annotated_px": int(a.sum()),
                     "covered_px": int((p & a).sum())})
    return rows


def _write_selection(out: Path, src: Path, dataset: Dataset, rows: list[dict[str, Any]], rule: dict[str, Any]) -> None:
    """The kept items as a new dataset recording the rule and each item's score, with scores.csv of all rows."""
    by_stem = {item.stem: item for item in dataset.items}
    with DatasetWriter(out, source=dataset.manifest.get("source"), parent=str(src.resolve()),
                       extra={**image_declarations(dataset.manifest), "selection": rule},
                       classes=dataset.classes) as writer:
        for row in rows:
            if row["selected"]:
                writer.copy(by_stem[row["stem"]], meta={"completeness": row["score"]})
        _write_csv(writer.tmp / "scores.csv", rows)
