"""`cyseg train`: build a U-Net segmenter from the options and train it on one or several dataset
folders; its classes are the ones asked for (--classes) or those the datasets declare."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from segmenter.adopt import check_same_classes
from segmenter.checkpoint import checkpoint_path
from segmenter.classes import FOREGROUND, check_names, listed, model_classes
from segmenter.errors import CysegError
from segmenter.history import history_paths
from segmenter.io.dataset import open_dataset
from segmenter.training import check_distance_cap, check_gap_weight
from transforms.chain import default_chain
from unet import UNetSegmenter, load_segmenter

log = logging.getLogger(__name__)


def parse_classes(text: str | None) -> tuple[str, ...] | None:
    """'cell,nucleus' -> ('cell', 'nucleus'); None (not given) stays None."""
    if text is None:
        return None
    if text.strip().isdigit():
        raise CysegError(f"--classes takes class names, not a count (got {text}): e.g. --classes cell,nucleus; "
                         'class-index masks 0..N-1 gave way to the classes a dataset.json declares')
    return check_names([name.strip() for name in text.split(",")], f"--classes {text}")


def instance_classes(names: tuple[str, ...], data: list[Path]) -> list[str]:
    """The model's classes (FOREGROUND for none) that some training dataset has instance labels of;
    a CysegError with the fix when none has any."""
    channels = names or (FOREGROUND,)
    labelled = {c for d in map(open_dataset, data) for item in d.items for c in item.instances}
    chosen = [c for c in channels if c in labelled]
    if not chosen:
        raise CysegError(f"--instances given but no training dataset has instance labels of {listed(channels)}; add "
                         "masks_instance/<name>.png (<name>_<class>.png for cell + nucleus datasets, 16-bit object "
                         "ids) to a DIR, or drop --instances")
    return chosen


def training_classes(asked: tuple[str, ...] | None, data: list[Path]) -> tuple[str, ...]:
    """The classes the model will predict: `asked`, checked against what the datasets declare, else
    every class one of them declares (none: one unnamed foreground)."""
    return model_classes(asked, [(d.root, d.classes) for d in map(open_dataset, data)])


def parse_weights(text: str | None, n_classes: int) -> list[float] | None:
    """'1,2' -> [1.0, 2.0], checked against the number of classes."""
    if not text:
        return None
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise CysegError(f"--class-weights '{text}' must be comma-separated numbers, e.g. 1,1") from exc
    if len(weights) != n_classes or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise CysegError(f"--class-weights '{text}' must give {n_classes} non-negative weight(s), not all zero")
    return weights


def check_out(out: Path) -> None:
    """Fail before training, not after it, when the model file cannot be written at `out`."""
    if out.is_dir():
        raise CysegError(f"--out {out} is a folder; give a model file path such as model.pt")
    existing = next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir():
        raise CysegError(f"cannot write --out {out}: {existing} is a file, not a folder; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CysegError(f"cannot write --out {out}: {existing} is not writable; choose another path")


def interrupted_message(out: Path) -> str:
    """What an interrupted `cyseg train` leaves and how to continue it, in one line."""
    ckpt = checkpoint_path(str(out))
    if not ckpt.is_file():
        return "interrupted before the first epoch ended; nothing to resume, run the command again"
    try:
        done = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
    except Exception:  # a checkpoint being replaced at that very moment: the hint still holds
        done = "some"
    return f"interrupted: {ckpt} holds {done} finished epoch(s); run the same command with --resume to continue"


def run_train(data: list[Path], out: Path, val: list[Path], *, n: int, depth: int, upsampling: str,
              classes: str | None, class_weights: str | None, threshold: float | None, erode_k: int,
              erode_iterations: int, smoothing_k: int, device: str, instances: bool = False,
              contours: bool = False, settings_from: Path | None = None, **options) -> UNetSegmenter:
    """Train and save; returns the trained segmenter. A `threshold` of None is chosen after training
    (per class) by a sweep on `val` (on the training images without it), unless `settings_from` names a
    model whose thresholds and separation are adopted. With `instances` the model also learns the
    distance channels that separate touching objects, and with `contours` their contour bands."""
    check_out(out)
    names = training_classes(parse_classes(classes), data)
    separated = instance_classes(names, data) if instances else []
    check_gap_weight(options.get("gap_weight", 0.0), separated)
    check_distance_cap(options.get("distance_cap", 0.0), separated)
    if contours and not separated:
        raise CysegError("--contours needs --instances (with masks_instance/ in the DIRs): the contours are those of "
                         "the instance labels; add --instances or drop --contours")
    if settings_from is not None and threshold is not None:
        raise CysegError(f"--threshold {threshold} and --settings-from {settings_from} both set the threshold; "
                         "give one of them")
    calibrate = threshold is None and settings_from is None
    threshold = 0.5 if threshold is None else threshold
    torch.manual_seed(options.get("seed", 0))  # the initial weights are drawn here, so seed them too
    config = {"depth": depth, "n": n, "upsampling": upsampling, **({"classes": list(names)} if names else {}),
              **({"instances": separated} if separated else {}), **({"contours": True} if contours else {})}
    seg = UNetSegmenter(config, device=device, class_weights=parse_weights(class_weights, max(1, len(names))),
                        threshold=threshold, postprocess=default_chain(threshold, erode_k, erode_iterations,
                                                                       smoothing_k))
    if settings_from is not None:
        check_same_classes(seg, load_segmenter(settings_from, device="cpu"), str(settings_from))
        options["settings_from"] = str(settings_from)
    log.info("training a U-Net (n=%d, depth=%d, %s) on %s, classes %s%s, device %s", n, depth, upsampling,
             ", ".join(map(str, data)), ", ".join(names) or "one unnamed foreground",
             f" (instances: {listed(separated)}{', with contours' * contours})" if separated else "", seg.device)
    seg.fit(data, val or None, out=str(out), calibrate_threshold=calibrate, **options)
    paths = history_paths(out)
    log.info("model written to %s; metrics in %s, %s and %s", out, paths["csv"], paths["json"], paths["png"])
    return seg
