"""Training loop: random crops with online augmentation (segmenter.sampler), Adam with cosine
decay, validation IoU per epoch (best model kept), resumable checkpoints (segmenter.checkpoint),
per-epoch metrics (CSV, JSON, PNG), mixed precision (segmenter.precision).

`train` reads as its steps: prepare the data (read, resample, plan), start (fresh or from the
checkpoint), run the epochs (train, validate, checkpoint, metrics), finish (best weights,
threshold, provenance) and save.

Several dataset folders train one model together: a model with named classes learns each class
from the datasets that declare it; on the items of the others that class is unknown, left out of
the loss (`Segmenter.loss`'s `known`), of the validation scores and of the threshold calibration."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from segmenter.adopt import adopt_settings
from segmenter.checkpoint import LoopState, checkpoint_path, read_checkpoint, write_checkpoint
from segmenter.classes import ChannelMap, channel_map, listed
from segmenter.errors import CysegError
from segmenter.evaluation import calibrate_threshold, guard_fixed_threshold, mean_scores
from segmenter.history import write_history
from segmenter.instances import calibrate_separation, load_instances
from segmenter.io.dataset import (
    Dataset,
    manifest_hash,
    open_dataset,
    read_pair,
    read_unknown,
)
from segmenter.planning import (
    DEFAULT_CROP,
    DEFAULT_EPOCHS,
    object_size,
    plan_epochs,
    plan_resolution,
)
from segmenter.precision import autocast, precision_name
from segmenter.recalibrate import check_choice_datasets
from segmenter.resolution import check_resolution, resample_pair, scaled_size
from segmenter.sampler import CropSampler, channel_stats
from segmenter.scope import training_scope
from segmenter.subsets import sample
from transforms.instances import Separation

if TYPE_CHECKING:
    from segmenter.base import Segmenter

log = logging.getLogger(__name__)
# the threshold is calibrated on at most this many training images when no validation set is given
CALIBRATION_IMAGES = 64
# the training curves are redrawn at most this often, and at the end: drawing a PNG costs more than
# a short epoch's other bookkeeping, so it is not done after every epoch (CSV and JSON are)
PLOT_EVERY_S = 30
MAX_ZOOM = 3.0  # --zoom: crops magnified by at most 4x, shrunk by at most 4x
MAX_GAP_WEIGHT = 100.0  # --gap-weight: beyond this the gaps' pixels would drown the rest of the loss
Folders = str | os.PathLike | Sequence[str | os.PathLike]


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
    elastic: bool = False  # smooth random warps of the crops on top of the method's augmentation
    gap_weight: float = 0.0  # w0 of the gaps between touching objects in the class loss (0: unweighted)
    distance_cap: float = 0.0  # px at which the distance targets saturate (0: each object's own centre is 1)
    balance: bool = False  # crops drawn from every training folder equally often, not by image area
    resolution: float | None = None  # None: planned from the annotated objects' size
    calibrate_threshold: bool = False
    settings_from: str | None = None  # a model file whose thresholds, separation and least areas are adopted
    out: str | None = None
    name: str | None = None
    resume: bool = False
    resume_with_new_options: bool = False  # resume even when the run options differ from the checkpoint's
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


@dataclass
class TrainingData:
    """The training set as the loop uses it: images and mask labels at the working resolution, how
    each image's labels become the model's targets, the validation sets, and what was planned from them."""

    datasets: list[Dataset]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    maps: list[ChannelMap]
    instances: list[tuple[np.ndarray, np.ndarray]] | None  # per image: (H, W, K) labels, (K,) annotated
    unknown: list[np.ndarray | None]  # per image: (H, W) bool, the pixels nobody labelled (None: every one is)
    val: list[Dataset] | None
    dataset_hash: str
    object_size: float
    crop: int


def train(seg: Segmenter, train_dir: Folders, val_dir: Folders | None, opts: TrainOptions) -> list[dict[str, Any]]:
    """Train `seg` in place on one or several dataset folders; returns the per-epoch history. With
    `opts.out`, writes the best model, a checkpoint after every epoch (removed at the end) and the
    metrics files beside the model."""
    opts.check()
    data, opts = _prepare(seg, train_dir, val_dir, opts)
    torch.manual_seed(opts.seed)
    ckpt_path = checkpoint_path(opts.out) if opts.out else None
    resumed = None
    if opts.resume:
        resumed = read_checkpoint(ckpt_path, asdict(opts), data.dataset_hash, opts.resume_with_new_options,
                                  defaults=asdict(TrainOptions()))
    _start_weights(seg, resumed, data.images, opts.resolution)
    sampler = CropSampler(data.images, data.masks, data.crop, opts.steps_per_epoch * opts.batch, opts.seed,
                          opts.colour, opts.translate, opts.zoom, data.maps, data.instances,
                          _folder_of_each_image(data.datasets) if opts.balance else None, data.unknown,
                          elastic=opts.elastic, gap=opts.gap_weight, gap_channels=_gap_channels(seg, opts),
                          contours=seg.contours, distance_cap=_distance_cap(seg, opts))
    loader = DataLoader(sampler, batch_size=opts.batch, shuffle=False, num_workers=opts.workers,
                        drop_last=False, persistent_workers=False, pin_memory=seg.device.type == "cuda")
    state = _loop_state(seg, opts)
    if resumed is not None:
        state.restore(resumed)
        log.info("resuming from epoch %d of %d", state.epoch, opts.epochs)
    seg.training_info = _provenance(seg, data, opts)

    cpu_start = time.process_time()
    plotted = -math.inf
    for epoch in range(state.epoch, opts.epochs):
        _run_epoch(seg, sampler, loader, data.val, state, epoch, opts)
        if ckpt_path is not None:
            write_checkpoint(ckpt_path, seg, state, asdict(opts), data.dataset_hash)
            plotted = _write_metrics(state.history, Path(opts.out), plotted)
    _finish(seg, data, state, opts, cpu_start)
    if ckpt_path is not None:
        _save(seg, state.history, Path(opts.out), ckpt_path)
    return state.history


# ---------------------------------------------------------------- plan

def check_gap_weight(gap_weight: float, instance_classes: Sequence[str]) -> None:
    """Refuse a gap weight out of range, or for a model without instances (nothing says where one
    object ends)."""
    if not 0 <= gap_weight <= MAX_GAP_WEIGHT:
        raise CysegError(f"--gap-weight {gap_weight:g} must be in [0, {MAX_GAP_WEIGHT:g}]; e.g. 10, as U-Net's authors "
                         "used")
    if gap_weight > 0 and not instance_classes:
        raise CysegError(f"--gap-weight {gap_weight:g} weighs the gaps between touching objects, which only instance "
                         "labels show; add --instances (with masks_instance/ in the DIRs) or drop it")


def check_distance_cap(distance_cap: float, instance_classes: Sequence[str]) -> None:
    """Refuse a negative distance cap, or one for a model without instances (it learns no distance)."""
    if not distance_cap >= 0:  # NaN too
        raise CysegError(f"--distance-cap {distance_cap:g} must be >= 0 (px; 0: off); e.g. a quarter of the network's "
                         "receptive field")
    if distance_cap > 0 and not instance_classes:
        raise CysegError(f"--distance-cap {distance_cap:g} caps the distance targets that only --instances learns; add "
                         "--instances (with masks_instance/ in the DIRs) or drop it")


def _distance_cap(seg: Segmenter, opts: TrainOptions) -> float:
    """The distance targets' cap (px at the working resolution; 0: off), checked."""
    check_distance_cap(opts.distance_cap, seg.instance_classes)
    return opts.distance_cap


def _gap_channels(seg: Segmenter, opts: TrainOptions) -> list[int]:
    """The class channel of each instance class, whose touching objects' gaps `opts.gap_weight` weighs."""
    check_gap_weight(opts.gap_weight, seg.instance_classes)
    return [seg.channels.index(c) for c in seg.instance_classes]


def _folders(folders: Folders | None) -> list[Path]:
    """One folder or several, as a list (empty for None)."""
    if folders is None:
        return []
    if isinstance(folders, (str, os.PathLike)):
        return [Path(folders)]
    return [Path(f) for f in folders]


def _prepare(seg: Segmenter, train_dir: Folders, val_dir: Folders | None,
             opts: TrainOptions) -> tuple[TrainingData, TrainOptions]:
    """Read and check every dataset, bring the training images to the working resolution and plan
    the crop and the epochs; returns the data and the options with the planned values filled in."""
    datasets = [open_dataset(folder) for folder in _folders(train_dir)]
    images, masks, maps, unknown = _load_arrays(seg, datasets)  # reads and checks every pair first
    instances = load_instances(seg, datasets, [m.shape[:2] for m in masks]) if seg.instance_classes else None
    read_scales = [datasets[folder].read_scale for folder in _folder_of_each_image(datasets)]
    resolution, size = _working_resolution(seg, _at_read_scale(masks, read_scales), opts.resolution)
    opts = dataclasses.replace(opts, resolution=resolution)
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        factor = resolution * read_scales[i]
        images[i], masks[i] = resample_pair(image, mask, factor)
        side = (masks[i].shape[1], masks[i].shape[0])
        if unknown[i] is not None and factor != 1:
            unknown[i] = cv2.resize(unknown[i].view(np.uint8), side, interpolation=cv2.INTER_NEAREST) > 0
        if instances is not None and factor != 1:
            stack = cv2.resize(instances[i][0], side, interpolation=cv2.INTER_NEAREST)
            instances[i] = (stack.reshape(*masks[i].shape, -1), instances[i][1])
    if opts.resolution != 1:
        log.info("the network works at %g x the images' resolution (training crops and predictions)", opts.resolution)
    for dataset in datasets:
        if dataset.read_scale != 1:
            log.info("%s: read at %g x its images' size (its dataset.json's read_scale)", dataset.root,
                     dataset.read_scale)
    val = [open_dataset(folder) for folder in _folders(val_dir)] or None
    if val is not None:
        check_choice_datasets(seg, val, "--val dataset",
                              "add one that declares it, or drop --val (thresholds are then chosen on training images)")
    dataset_hash = _datasets_hash(datasets)
    crop = _plan_crop(masks, seg.multiple, opts.crop)
    if opts.epochs is None:
        opts = dataclasses.replace(opts, epochs=plan_epochs(crop))
        log.info("epochs auto: %d epochs of %d-px crops (the pixels of %d epochs of %d-px crops)", opts.epochs, crop,
                 DEFAULT_EPOCHS, DEFAULT_CROP)
    return TrainingData(datasets, images, masks, maps, instances, unknown, val, dataset_hash, size, crop), opts


def _at_read_scale(masks: list[np.ndarray], read_scales: list[float]) -> list[np.ndarray]:
    """The masks at their folders' read scales (nearest label): what the working resolution is planned on."""
    return [mask if scale == 1 else cv2.resize(mask, scaled_size(*mask.shape[:2], scale)[::-1],
                                               interpolation=cv2.INTER_NEAREST)
            for mask, scale in zip(masks, read_scales, strict=True)]


def _folder_of_each_image(datasets: list[Dataset]) -> list[int]:
    """The index of the dataset folder each training image comes from, in `_load_arrays`' order."""
    return [i for i, dataset in enumerate(datasets) for _ in dataset.items]


def _load_arrays(seg: Segmenter, datasets: list[Dataset]) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                   list[ChannelMap], list[np.ndarray | None]]:
    """Every image and mask of the datasets at the images' resolution, how each mask's labels
    become the model's targets, and each image's unknown pixels (None: all labelled); refuses a
    dataset that annotates none of the model's classes."""
    images, masks, maps, unknown = [], [], [], []
    for dataset in datasets:
        channels = channel_map(dataset.classes, seg.classes, dataset.root)
        ignored = [c for c in dataset.classes if c not in seg.classes]
        if ignored:
            log.info("%s: class %s not trained (the model predicts %s)", dataset.root, listed(ignored),
                     listed(seg.classes))
        for item in dataset.items:
            image, mask = read_pair(item)
            images.append(image)
            masks.append(mask)
            maps.append(channels)
            unknown.append(read_unknown(item, mask.shape))
    return images, masks, maps, unknown


def class_object_sizes(labels: tuple[str, ...], by_folder: dict[int, dict[str, float]]) -> dict[str, float]:
    """Per class (`labels`), the typical size of its annotated objects in the training folder where
    they are smallest (`by_folder`: `folder_object_sizes`): what tells a class's specks from its
    objects, so that a class drawn from sources of different scales keeps the smallest source's."""
    return {label: min((sizes[label] for sizes in by_folder.values() if sizes.get(label)), default=0.0)
            for label in labels}


def folder_object_sizes(seg: Segmenter, masks: list[np.ndarray], maps: list[ChannelMap], folders: list[int],
                        resolution: float = 1.0,
                        read_scales: Sequence[float] | None = None) -> dict[int, dict[str, float]]:
    """{training folder index (`folders`: each mask's): {class it annotates: typical object size}}:
    the equivalent diameter of the object holding the median foreground pixel (`planning.object_size`),
    in pixels of the images (`masks` are at `resolution` times theirs, times their folder's
    `read_scales`), the pixels polygons and scores count."""
    of_folder: dict[int, dict[str, list[np.ndarray]]] = {}
    for mask, m, folder in zip(masks, maps, folders, strict=True):
        targets = m.targets(mask)
        found = of_folder.setdefault(folder, {})
        for c in np.flatnonzero(m.known):
            found.setdefault(seg.labels[c], []).append(targets[:, :, c] > 0)
    scales = read_scales or [1.0] * (max(folders, default=0) + 1)
    return {folder: {label: round(object_size(found) / (resolution * scales[folder]), 1)
                     for label, found in classes.items()}
            for folder, classes in of_folder.items()}


def _datasets_hash(datasets: list[Dataset]) -> str:
    """The training data's hash: the dataset's manifest hash, or one over every dataset's in order."""
    if len(datasets) == 1:
        return manifest_hash(datasets[0])
    return hashlib.sha256("".join(manifest_hash(d) for d in datasets).encode()).hexdigest()


def _working_resolution(seg: Segmenter, masks: list[np.ndarray], asked: float | None) -> tuple[float, float]:
    """(resolution, object size in px): the one asked for, or the one planned from the masks."""
    size = object_size(masks)
    if asked is not None:
        return asked, size
    field = seg.receptive_field
    resolution = plan_resolution(size, field) if field else 1.0
    log.info("resolution auto: %g (the objects holding most foreground are %.0f px across; the network's "
             "receptive field is %s px)", resolution, size, field or "unknown")
    return resolution, size


def _plan_crop(masks: list[np.ndarray], multiple: int, asked: int) -> int:
    """The crop asked for, lowered to the largest image's shorter side (in multiples of `multiple`)."""
    largest = max(min(m.shape) for m in masks) // multiple * multiple
    crop = min(asked, largest or asked)
    if crop != asked:
        log.info("crop lowered to %d px: no image is larger", crop)
    if any(min(m.shape) < crop for m in masks):
        log.info("images smaller than the %d-px crop are mirror-padded", crop)
    return crop


# ---------------------------------------------------------------- start

def _start_weights(seg: Segmenter, resumed: dict[str, Any] | None, images: list[np.ndarray],
                   resolution: float | None) -> None:
    """The checkpoint's weights and input statistics when resuming, else the images' channel statistics."""
    if resumed is not None:
        seg.model.load_state_dict(resumed["state_dict"])
        seg.preprocess = resumed["preprocess"]
    else:
        mean, std = channel_stats(images)
        seg.preprocess = {"scale": 255.0, "mean": mean, "std": std, "resolution": resolution}


def _cosine_decay(opts: TrainOptions) -> Callable[[int], float]:
    """The learning-rate factor at each step: cosine from 1 down to `min_lr_ratio` over the run."""
    total_steps = opts.epochs * opts.steps_per_epoch

    def factor(step: int) -> float:
        progress = min(step, total_steps) / total_steps
        return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _loop_state(seg: Segmenter, opts: TrainOptions) -> LoopState:
    """A fresh optimiser, learning-rate schedule and gradient scaler, with no epoch done."""
    optimizer = seg.optimizer(opts.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_decay(opts))
    # float16 needs a gradient scaler, bfloat16 does not
    scaler = torch.amp.GradScaler("cuda", enabled=opts.amp and seg.device.type == "cuda")
    log.info("training computes in %s on %s", precision_name(seg.device, opts.amp), seg.device)
    return LoopState(optimizer, scheduler, scaler)


def _versions() -> dict[str, str]:
    import albumentations
    import cv2

    return {"torch": torch.__version__, "numpy": np.__version__, "albumentations": albumentations.__version__,
            "opencv": cv2.__version__, "python": platform.python_version()}


def _paths(datasets: list[Dataset] | None) -> str | list[str] | None:
    """The datasets' absolute paths: one path, a list for several, None for none."""
    if not datasets:
        return None
    paths = [str(d.root.resolve()) for d in datasets]
    return paths[0] if len(paths) == 1 else paths


def _object_sizes(seg: Segmenter, data: TrainingData, resolution: float) -> dict[str, Any]:
    """The model file's record of its objects' typical sizes: per class (the speck rule's) and per
    training folder."""
    by_folder = folder_object_sizes(seg, data.masks, data.maps, _folder_of_each_image(data.datasets), resolution,
                                    [d.read_scale for d in data.datasets])
    return {"object_size_px_by_class": class_object_sizes(seg.labels, by_folder),
            "object_size_px_by_folder": {str(data.datasets[i].root.resolve()): sizes
                                         for i, sizes in sorted(by_folder.items())}}


def _provenance(seg: Segmenter, data: TrainingData, opts: TrainOptions) -> dict[str, Any]:
    """What the model file records of how it was trained (completed by `_finish`)."""
    return {
        "name": opts.name or Path(opts.out or "model").stem,
        "dataset": _paths(data.datasets), "dataset_hash": data.dataset_hash,
        "n_images": sum(len(d) for d in data.datasets),
        **({"dataset_classes": {str(d.root.resolve()): list(d.classes) for d in data.datasets}} if seg.classes else {}),
        "validation": _paths(data.val),
        "options": {**asdict(opts), "crop": data.crop}, "object_size_px": round(data.object_size, 1),
        **_object_sizes(seg, data, opts.resolution),
        "scope": training_scope(data.datasets, seg.labels),
        "versions": _versions(), "device": str(seg.device),
        "precision": precision_name(seg.device, opts.amp),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- one epoch

def _run_epoch(seg: Segmenter, sampler: CropSampler, loader: DataLoader, val: list[Dataset] | None, state: LoopState,
               epoch: int, opts: TrainOptions) -> None:
    """Train epoch `epoch` (0-based), validate, and add its row to the history."""
    t0 = time.perf_counter()
    row = _train_epoch(seg, sampler, loader, state, epoch, opts)
    if val is not None:
        row.update(_validate(seg, val, state, epoch))
    row["seconds"] = time.perf_counter() - t0
    state.history.append(row)
    state.epoch = epoch + 1
    log.info("epoch %d/%d  " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)),
             epoch + 1, opts.epochs)


def _train_epoch(seg: Segmenter, sampler: CropSampler, loader: DataLoader, state: LoopState, epoch: int,
                 opts: TrainOptions) -> dict[str, Any]:
    """One pass over the epoch's crops; returns the epoch's mean loss and IoU on them and the learning rate."""
    sampler.epoch = epoch
    seg.model.train()
    losses, ious = [], []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="step", leave=False,
               disable=not opts.progress, dynamic_ncols=True)
    try:
        for x, target, known, weight in bar:
            loss, iou = _step(seg, state, x, target, known, weight, epoch, opts.amp)
            losses.append(loss)
            ious.append(iou)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
    except torch.OutOfMemoryError as exc:
        if seg.device.type == "cuda":
            torch.cuda.empty_cache()
        raise CysegError(f"out of memory on {seg.device} while training; lower --batch or --crop "
                         "(or use --device cpu)") from exc
    return {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_iou": float(np.mean(ious)),
            "lr": state.optimizer.param_groups[0]["lr"]}


def _step(seg: Segmenter, state: LoopState, x: torch.Tensor, target: torch.Tensor, known: torch.Tensor,
          weight: torch.Tensor, epoch: int, amp: bool) -> tuple[float, float]:
    """One optimiser step on a batch (`weight`: per-pixel loss weights, or empty for none); returns
    its loss and the IoU of its logits > 0 with the target over the classes each item's dataset annotates."""
    x, target = seg.to_input(x), target.to(seg.device, non_blocking=True)
    known = known.to(seg.device, non_blocking=True)
    state.optimizer.zero_grad(set_to_none=True)
    with autocast(seg.device, amp):
        logits = seg.model(x)
    loss = seg.loss(logits, target, known, weight.to(seg.device) if weight.numel() else None)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if not torch.isfinite(loss):
        raise CysegError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}; lower --lr")
    with torch.no_grad():
        c = seg.n_classes  # the class channels (the distance channels that may follow are not masks)
        counted = (known if known.dim() == 4 else known[:, :, None, None])[:, :c] > 0
        pred, truth = logits.detach()[:, :c] > 0, target[:, :c] > 0.5
        inter = (pred & truth & counted).sum().item()
        union = ((pred | truth) & counted).sum().item()
    return loss.item(), 1.0 if union == 0 else inter / union


def _validate(seg: Segmenter, val: list[Dataset], state: LoopState, epoch: int) -> dict[str, float]:
    """Validation IoU and Dice of the epoch (for named classes: their mean over the classes, and
    each class's); keeps a copy of the weights when the IoU is the best yet."""
    scores = mean_scores(seg, val)
    if scores["iou"] > state.best_val_iou:
        state.best_val_iou, state.best_epoch, state.best_state = scores["iou"], epoch + 1, seg.copy_state_dict()
    return {f"val_{key}": value for key, value in scores.items()}


def _write_metrics(history: list[dict[str, Any]], out: Path, plotted: float) -> float:
    """Write the metrics files, redrawing the curves only when the last drawing (at `plotted`) is
    older than PLOT_EVERY_S; returns when the curves were last drawn."""
    plot = time.perf_counter() - plotted >= PLOT_EVERY_S
    write_history(history, out, plot=plot)
    return time.perf_counter() if plot else plotted


# ---------------------------------------------------------------- finish

def _finish(seg: Segmenter, data: TrainingData, state: LoopState, opts: TrainOptions, cpu_start: float) -> None:
    """Keep the best epoch's weights, choose the threshold when asked, and record how the run went."""
    if state.best_state is not None:
        seg.model.load_state_dict(state.best_state)
    predictions: dict[Path, torch.Tensor] = {}  # the threshold sweep's, reused to choose the separation
    if opts.settings_from:
        _adopt(seg, opts.settings_from)
    if opts.calibrate_threshold:
        _calibrate(seg, data, opts.seed, predictions)
    else:
        _guard_threshold(seg, data, opts.seed, predictions)
    if seg.instance_classes and not opts.settings_from:
        _calibrate_separation(seg, data, opts.seed, predictions)
    history = state.history
    seg.training_info.update(
        epochs_run=len(history), best_epoch=state.best_epoch if data.val is not None else len(history),
        best_val_iou=state.best_val_iou if data.val is not None else None,
        final=history[-1] if history else None, cpu_seconds=time.process_time() - cpu_start,
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _save(seg: Segmenter, history: list[dict[str, Any]], out: Path, ckpt_path: Path) -> None:
    """Write the model file and its metrics, then remove the checkpoint: the run is complete."""
    seg.save(out)
    write_history(history, out)
    ckpt_path.unlink(missing_ok=True)


def _calibrate(seg: Segmenter, data: TrainingData, seed: int, predictions: dict[Path, torch.Tensor]) -> None:
    """Set the threshold (per class) that maximises the mean IoU on the validation images (else on
    up to CALIBRATION_IMAGES training images of each dataset)."""
    images, where = _choice_images(data, seed)
    seg.training_info["threshold"] = calibrate_threshold(seg, images, where, predictions)
    chosen = ", ".join(f"{name} {t:.1f}" for name, t in seg.thresholds.items()) or f"{seg.threshold:.1f}"
    log.info("threshold %s chosen on the %s: best mean IoU of the sweep 0.1..0.9", chosen, where)


def _adopt(seg: Segmenter, source: str) -> None:
    """Take the thresholds, separation and least object areas the model file `source` chose on its
    validation images (the refit on every image, validation ones included, keeps those choices)."""
    adopted = adopt_settings(seg, type(seg).load(source, device="cpu"), source)
    seg.training_info["settings_from"] = adopted
    seg.training_info["threshold"] = {k: v for k, v in adopted.items() if k in ("threshold", "thresholds", "chosen_on")}
    if seg.instance_classes:
        seg.training_info["separation"] = {**adopted["separation"], "chosen_on": adopted["chosen_on"]}
    log.info("thresholds, separation and least object areas adopted from %s, as chosen on the %s", source,
             adopted["chosen_on"])


def _guard_threshold(seg: Segmenter, data: TrainingData, seed: int, predictions: dict[Path, torch.Tensor]) -> None:
    """A fixed threshold at which the model predicts (next to) nothing where the masks hold foreground
    (a collapse towards background) is replaced by a calibrated one (`guard_fixed_threshold`)."""
    guarded = guard_fixed_threshold(seg, *_choice_images(data, seed), predictions)
    if guarded is not None:
        seg.training_info["threshold"] = guarded


def _calibrate_separation(seg: Segmenter, data: TrainingData, seed: int,
                          predictions: dict[Path, torch.Tensor]) -> None:
    """Choose the instance separation (per instance class: markers, growth, nuclei as cell seeds, least
    object area) with the best object F1 on the validation images (else on up to CALIBRATION_IMAGES
    training images of each dataset)."""
    chosen_on, where = _choice_images(data, seed)
    chosen = calibrate_separation(seg, chosen_on, predictions)
    seg.training_info["separation"] = {**chosen, "chosen_on": where}
    log.info("instance separation chosen on the %s (best mean object F1): %s", where,
             "; ".join(f"{c} {_described(p)}, objects from {p['min_area']:g} px²" for c, p in chosen.items()))


def _described(chosen: dict[str, Any]) -> str:
    """A class's chosen separation (`calibrate_separation`'s report) in words."""
    return Separation(**{f.name: chosen[f.name] for f in dataclasses.fields(Separation)}).describe()


def _choice_images(data: TrainingData, seed: int) -> tuple[list[Dataset], str]:
    """The images the threshold and the separation are chosen on, and what they are: the validation
    images, else up to CALIBRATION_IMAGES training images of each dataset (the same ones every time,
    so their predictions can be reused)."""
    if data.val is not None:
        return data.val, "validation images"
    return [_sample(d, CALIBRATION_IMAGES, seed) for d in data.datasets], "training images (no --val)"


def _sample(dataset: Dataset, n: int, seed: int) -> Dataset:
    """At most `n` items of `dataset`, drawn with `seed`."""
    return dataset if len(dataset) <= n else dataclasses.replace(dataset, items=sample(dataset.items, n, seed))
