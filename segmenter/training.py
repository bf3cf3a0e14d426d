"""Training loop: random crops with online augmentation, Adam with cosine decay, validation IoU
per epoch (best model kept), resumable checkpoints, per-epoch metrics (CSV, JSON, PNG), mixed
precision (segmenter.precision)."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from segmenter.augment import method_augmenter
from segmenter.errors import CysegError, ModelFileError
from segmenter.history import write_history
from segmenter.io.atomic import atomic_path
from segmenter.io.dataset import (
    Dataset,
    check_dataset,
    manifest_hash,
    open_dataset,
    read_pair,
)
from segmenter.planning import (
    DEFAULT_CROP,
    DEFAULT_EPOCHS,
    object_size,
    plan_epochs,
    plan_resolution,
)
from segmenter.precision import autocast, precision_name
from segmenter.resolution import check_resolution, resample_pair

if TYPE_CHECKING:
    from segmenter.base import Segmenter

log = logging.getLogger(__name__)
# the threshold is calibrated on at most this many training images when no validation set is given
CALIBRATION_IMAGES = 64
PLOT_EVERY_S = 30  # the training curves are redrawn at most this often, and at the end
MAX_ZOOM = 3.0  # --zoom: crops magnified by at most 4x, shrunk by at most 4x


@dataclass
class TrainOptions:
    """Everything that defines a training run; recorded in the model file."""

    epochs: int | None = None  # None: plan_epochs(crop), the same pixel budget whatever the crop
    steps_per_epoch: int = 20
    batch: int = 8
    crop: int = DEFAULT_CROP
    lr: float = 1e-3
    min_lr_ratio: float = 0.01
    seed: int = 0
    workers: int = 1
    colour: bool = False
    translate: float = 0.15
    zoom: float = 0.0  # 0: no scale augmentation (the method); Z: crops magnified by 1/(1+Z)..(1+Z)
    resolution: float | None = None  # None: planned from the annotated objects' size
    calibrate_threshold: bool = False
    out: str | None = None
    name: str | None = None
    resume: bool = False
    amp: bool = True
    progress: bool = True

    def check(self) -> None:
        """Reject values that cannot train."""
        for name in ("epochs", "steps_per_epoch", "batch", "crop"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CysegError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if not self.lr > 0:
            raise CysegError(f"--lr must be > 0 (got {self.lr})")
        if self.workers < 0:
            raise CysegError(f"--workers must be >= 0 (got {self.workers})")
        if not 0 <= self.translate < 0.5:
            raise CysegError(f"translation {self.translate} must be in [0, 0.5)")
        if not 0 <= self.zoom <= MAX_ZOOM:
            raise CysegError(f"--zoom {self.zoom} must be in [0, {MAX_ZOOM:g}]; e.g. 0.4 magnifies crops by 0.71-1.4x")
        if self.resolution is not None:
            check_resolution(self.resolution)


@functools.lru_cache(maxsize=None)
def _mirror_padder(side: int) -> A.PadIfNeeded:
    """Pads an image and its mask to at least side x side by mirroring (built once per side:
    building it costs more than padding)."""
    return A.PadIfNeeded(min_height=side, min_width=side, border_mode=cv2.BORDER_REFLECT_101, p=1.0)


class CropSampler(torch.utils.data.Dataset):
    """Random augmented crops from in-memory images; sample i of epoch e is a pure function of
    (seed, e, i), so runs are reproducible with any number of workers and after a resume.

    With `zoom` > 0 each crop is magnified by a factor drawn log-uniformly in [1/(1+zoom), 1+zoom]:
    a larger or smaller square is cut and resized to the crop, so the network meets the objects at
    other scales (slides scanned at 20x and 40x) without the mirrored borders of shrinking the crop
    itself (an image smaller than the square is mirror-padded, as one smaller than the crop always is)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], crop: int, length: int,
                 seed: int, colour: bool, translate: float, n_classes: int, zoom: float = 0.0):
        self.images, self.masks, self.crop, self.length, self.seed = images, masks, crop, length, seed
        self.n_classes, self.zoom = n_classes, zoom
        self.epoch = 0
        areas = np.array([m.size for m in masks], dtype=np.float64)
        self.p = areas / areas.sum()
        self.aug = method_augmenter(colour=colour, translate=translate)

    def __len__(self) -> int:
        return self.length

    def _side(self, rng: np.random.Generator) -> int:
        """Side of the square cut from the image: the crop, or the crop over a random magnification."""
        if self.zoom <= 0:
            return self.crop
        magnification = math.exp(rng.uniform(-math.log1p(self.zoom), math.log1p(self.zoom)))
        return max(2, round(self.crop / magnification))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.choice(len(self.images), p=self.p))
        image, mask = self.images[k], self.masks[k]
        side = self._side(rng)
        h, w = mask.shape
        if h < side or w < side:
            padded = _mirror_padder(side)(image=image, mask=mask)
            image, mask = padded["image"], padded["mask"]
            h, w = mask.shape
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        image, mask = image[y:y + side, x:x + side], mask[y:y + side, x:x + side]
        if side != self.crop:
            shrink = cv2.INTER_AREA if side > self.crop else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.crop, self.crop), interpolation=shrink).reshape(self.crop, self.crop, -1)
            mask = cv2.resize(mask, (self.crop, self.crop), interpolation=cv2.INTER_NEAREST)
        self.aug.set_random_seed(int(rng.integers(2**31)))
        out = self.aug(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
        x_t = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        m = torch.from_numpy(np.ascontiguousarray(out["mask"])).long()
        if self.n_classes == 1:
            target = m[None].float()
        else:
            target = torch.nn.functional.one_hot(m, self.n_classes).permute(2, 0, 1).float()
        return x_t, target


def _load_arrays(dataset: Dataset, n_classes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every image and mask of the dataset, at the images' resolution."""
    pairs = [read_pair(item, n_classes) for item in dataset.items]
    return [image for image, _ in pairs], [mask for _, mask in pairs]


def _working_resolution(seg: "Segmenter", masks: list[np.ndarray], asked: float | None) -> tuple[float, float]:
    """(resolution, object size in px): the one asked for, or the one planned from the masks."""
    size = object_size(masks)
    if asked is not None:
        return asked, size
    field = seg.receptive_field
    resolution = plan_resolution(size, field) if field else 1.0
    log.info("resolution auto: %g (the objects holding most foreground are %.0f px across; the network's "
             "receptive field is %s px)", resolution, size, field or "unknown")
    return resolution, size


def channel_stats(images: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1]) over all pixels of the training images."""
    total = sum(im.shape[0] * im.shape[1] for im in images)
    s = sum(im.reshape(-1, im.shape[2]).astype(np.float64).sum(0) for im in images)
    s2 = sum((im.reshape(-1, im.shape[2]).astype(np.float64) ** 2).sum(0) for im in images)
    mean = s / total / 255.0
    std = np.sqrt(np.maximum(s2 / total / 255.0**2 - mean**2, 1e-8))
    return [float(v) for v in mean], [float(max(v, 1e-3)) for v in std]


def _sample(dataset: Dataset, n: int, seed: int) -> Dataset:
    """At most `n` items of `dataset`, drawn with `seed`."""
    if len(dataset) <= n:
        return dataset
    picked = np.random.default_rng(seed).choice(len(dataset), n, replace=False)
    return dataclasses.replace(dataset, items=[dataset.items[i] for i in sorted(picked)])


def _checkpoint_path(out: str) -> Path:
    return Path(out).with_suffix(".ckpt")


def _versions() -> dict[str, str]:
    import albumentations
    import cv2

    return {"torch": torch.__version__, "numpy": np.__version__, "albumentations": albumentations.__version__,
            "opencv": cv2.__version__, "python": platform.python_version()}


def train(seg: "Segmenter", train_dir: str | os.PathLike, val_dir: str | os.PathLike | None,
          opts: TrainOptions) -> list[dict[str, Any]]:
    """Train `seg` in place; returns the per-epoch history. With `opts.out`, writes the best model,
    a checkpoint after every epoch (removed at the end) and the metrics files beside the model."""
    opts.check()
    dataset = open_dataset(train_dir)
    images, masks = _load_arrays(dataset, seg.n_classes)  # reads and checks every pair first
    resolution, size = _working_resolution(seg, masks, opts.resolution)
    opts = dataclasses.replace(opts, resolution=resolution)
    for i, (image, mask) in enumerate(zip(images, masks)):
        images[i], masks[i] = resample_pair(image, mask, resolution)
    if opts.resolution != 1:
        log.info("the network works at %g x the images' resolution (training crops and predictions)", opts.resolution)
    val = open_dataset(val_dir) if val_dir is not None else None
    if val is not None:
        check_dataset(val, seg.n_classes)
    dataset_hash = manifest_hash(dataset)
    largest = max(min(m.shape) for m in masks) // seg.multiple * seg.multiple
    crop = min(opts.crop, largest or opts.crop)
    if crop != opts.crop:
        log.info("crop lowered to %d px: no image is larger", crop)
    if any(min(m.shape) < crop for m in masks):
        log.info("images smaller than the %d-px crop are mirror-padded", crop)
    if opts.epochs is None:
        opts = dataclasses.replace(opts, epochs=plan_epochs(crop))
        log.info("epochs auto: %d epochs of %d-px crops (the pixels of %d epochs of %d-px crops)", opts.epochs, crop,
                 DEFAULT_EPOCHS, DEFAULT_CROP)
    torch.manual_seed(opts.seed)
    resumed = None
    ckpt_path = _checkpoint_path(opts.out) if opts.out else None
    if opts.resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise CysegError(f"--resume given but no checkpoint {ckpt_path} exists; run without --resume")
        try:
            resumed = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say so, never train from a wrong state
            raise ModelFileError(f"checkpoint {ckpt_path} cannot be read ({exc}); delete it and train without --resume") from exc
        made = resumed.get("options", {})
        if (made.get("seed"), made.get("resolution", 1.0), resumed.get("dataset")) != (opts.seed, opts.resolution, dataset_hash):
            raise CysegError(f"checkpoint {ckpt_path} was made with another dataset, seed or resolution; delete it or "
                             "use the same options")
        seg.model.load_state_dict(resumed["state_dict"])
        seg.preprocess = resumed["preprocess"]
    else:
        mean, std = channel_stats(images)
        seg.preprocess = {"scale": 255.0, "mean": mean, "std": std, "resolution": opts.resolution}

    sampler = CropSampler(images, masks, crop, opts.steps_per_epoch * opts.batch, opts.seed, opts.colour,
                          opts.translate, seg.n_classes, opts.zoom)
    loader = DataLoader(sampler, batch_size=opts.batch, shuffle=False, num_workers=opts.workers,
                        drop_last=False, persistent_workers=False, pin_memory=seg.device.type == "cuda")
    optimizer = seg.optimizer(opts.lr)
    total_steps = opts.epochs * opts.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=opts.amp and seg.device.type == "cuda")  # float16 needs it, bfloat16 not
    log.info("training computes in %s on %s", precision_name(seg.device, opts.amp), seg.device)
    history: list[dict[str, Any]] = []
    best = {"val_iou": -1.0, "epoch": 0, "state": None}
    start_epoch = 0
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        history = resumed["history"]
        start_epoch = resumed["epoch"]
        best = {"val_iou": resumed["best_val_iou"], "epoch": resumed["best_epoch"], "state": resumed["best_state"]}
        log.info("resuming from epoch %d of %d", start_epoch, opts.epochs)

    seg.training_info = {
        "name": opts.name or Path(opts.out or "model").stem,
        "dataset": str(Path(train_dir).resolve()), "dataset_hash": dataset_hash, "n_images": len(dataset),
        "validation": str(Path(val_dir).resolve()) if val_dir is not None else None,
        "options": {**asdict(opts), "crop": crop}, "object_size_px": round(size, 1), "versions": _versions(),
        "device": str(seg.device),
        "precision": precision_name(seg.device, opts.amp),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    from segmenter.evaluation import calibrate_threshold, mean_scores

    cpu_start = time.process_time()
    plotted = -math.inf
    for epoch in range(start_epoch, opts.epochs):
        sampler.epoch = epoch
        seg.model.train()
        t0 = time.perf_counter()
        losses, ious = [], []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="step", leave=False,
                   disable=not opts.progress, dynamic_ncols=True)
        try:
            for x, target in bar:
                x, target = seg.to_input(x), target.to(seg.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with autocast(seg.device, opts.amp):
                    logits = seg.model(x)
                loss = seg.loss(logits, target)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if not torch.isfinite(loss):
                    raise CysegError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; lower --lr")
                with torch.no_grad():
                    pred = logits.detach() > 0
                    inter = (pred & (target > 0.5)).sum().item()
                    union = (pred | (target > 0.5)).sum().item()
                losses.append(loss.item())
                ious.append(1.0 if union == 0 else inter / union)
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        except torch.OutOfMemoryError as exc:
            if seg.device.type == "cuda":
                torch.cuda.empty_cache()
            raise CysegError(f"out of memory on {seg.device} while training; lower --batch or --crop "
                             "(or use --device cpu)") from exc
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_iou": float(np.mean(ious)),
                               "lr": optimizer.param_groups[0]["lr"]}
        if val is not None:
            scores = mean_scores(seg, val)
            row.update(val_iou=scores["iou"], val_dice=scores["dice"])
            if scores["iou"] > best["val_iou"]:
                best = {"val_iou": scores["iou"], "epoch": epoch + 1, "state": seg.copy_state_dict()}
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        log.info("epoch %d/%d  " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)),
                 epoch + 1, opts.epochs)
        if ckpt_path is not None:
            with atomic_path(ckpt_path) as tmp:
                torch.save({"state_dict": seg.copy_state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                            "history": history, "best_val_iou": best["val_iou"], "best_epoch": best["epoch"],
                            "best_state": best["state"], "preprocess": seg.preprocess,
                            "options": asdict(opts), "dataset": seg.training_info["dataset_hash"]}, tmp)
            plot = time.perf_counter() - plotted >= PLOT_EVERY_S  # drawing takes ~0.2 s: not after every short epoch
            write_history(history, Path(opts.out), plot=plot)
            plotted = time.perf_counter() if plot else plotted

    if best["state"] is not None:
        seg.model.load_state_dict(best["state"])
    if opts.calibrate_threshold:
        where = "validation images" if val is not None else "training images (no --val)"
        images_for_threshold = val if val is not None else _sample(dataset, CALIBRATION_IMAGES, opts.seed)
        seg.training_info["threshold"] = calibrate_threshold(seg, images_for_threshold, where)
        log.info("threshold %.1f chosen on the %s: best mean IoU of the sweep 0.1..0.9", seg.threshold, where)
    seg.training_info.update(
        epochs_run=len(history), best_epoch=best["epoch"] if val is not None else len(history),
        best_val_iou=best["val_iou"] if val is not None else None,
        final=history[-1] if history else None, cpu_seconds=time.process_time() - cpu_start,
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if opts.out:
        seg.save(opts.out)
        write_history(history, Path(opts.out))
        if ckpt_path is not None:
            ckpt_path.unlink(missing_ok=True)
    return history
