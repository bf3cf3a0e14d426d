"""The generic `Segmenter`: a per-pixel classifier with its device, classes, class weights, loss,
pre- and post-processing, tiled prediction, evaluation and model file. Subclasses supply the
network, the loss and the optimiser (see `unet.UNetSegmenter`).

A model predicts one sigmoid channel per class: its named classes (config `classes`, see
`segmenter.classes`; each with its own threshold), or one unnamed foreground when it has none. A
model trained with instances (config `instances`) adds, per class it separates, one channel
predicting the normalised distance to the object's boundary (`transforms.instances`), after the
class channels; the separation parameters that use it (`separation`) are stored beside the threshold."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from segmenter.classes import FOREGROUND, check_names, listed
from segmenter.device import out_of_memory_message, resolve_device
from segmenter.errors import CysegError, ModelFileError
from segmenter.fusion import fold_batch_norms, weights_version
from segmenter.modelfile import load_model_file, save_model_file
from segmenter.precision import autocast
from segmenter.resolution import to_image, to_network
from segmenter.tiling import predict_tiled
from segmenter.tta import with_tta
from transforms.chain import build_on, default_chain, validate_chain, with_threshold
from transforms.instances import Separation

log = logging.getLogger(__name__)

# Large tiles with a wide overlap, so that the blended tiled prediction matches the untiled one
# (tests/test_seams.py holds it to that with the shipped model): thinner overlaps compute fewer
# pixels but leave seams, smaller tiles compute more overlap per image (docs/benchmarks.md, "Throughput")
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 192
DEFAULT_BATCH = 1
SPECK_RATIO = 5  # a polygon narrower than the typical training object's diameter over this is a speck


@contextlib.contextmanager
def oom_guard(device: torch.device, what: str) -> Iterator[None]:
    """Turn a device out-of-memory error into a one-line CysegError with the fix."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise CysegError(out_of_memory_message(device, what)) from exc


class Segmenter:
    """Base class: holds an `nn.Module` producing per-class logits (N, C, H, W) and everything
    needed to turn RGB crops into probabilities and masks."""

    arch: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any], device: str | torch.device | None = None,
                 class_weights: Sequence[float] | None = None, preprocess: dict[str, Any] | None = None,
                 postprocess: list[dict[str, Any]] | None = None, threshold: float = 0.5,
                 inference: dict[str, int] | None = None, thresholds: dict[str, float] | None = None,
                 separation: dict[str, dict[str, Any]] | None = None, min_area: dict[str, float] | None = None):
        self.config = _with_classes(config)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model: nn.Module = self.build_model(self.config).to(self.device)
        n_classes = self.config.get("n_classes", 1)
        self.class_weights = list(class_weights) if class_weights is not None else [1.0] * n_classes
        if len(self.class_weights) != n_classes:
            raise CysegError(f"{len(self.class_weights)} class weights given for {n_classes} classes; "
                             "give one per class")
        in_ch = self.config.get("in_channels", 3)
        self.preprocess = preprocess or {"scale": 255.0, "mean": [0.5] * in_ch, "std": [0.25] * in_ch}
        if not 0.0 <= threshold <= 1.0:
            raise CysegError(f"threshold {threshold} is outside [0, 1]; choose e.g. 0.5")
        self.threshold = float(threshold)
        try:
            self.postprocess = validate_chain(with_threshold(postprocess or default_chain(threshold), threshold))
        except ValueError as exc:  # transforms, below this layer, raise plain ValueErrors
            raise CysegError(str(exc)) from exc
        self.thresholds = _class_thresholds(self.classes, thresholds, self.threshold)
        self.separation = _separation(self.instance_classes, separation, self.contours)
        self.min_area = _min_area(self.labels, min_area)
        self.inference = {"tile": DEFAULT_TILE, "overlap": DEFAULT_OVERLAP, "batch": DEFAULT_BATCH, "tta": False,
                          "amp": True, **(inference or {})}
        # channels-last convolutions: the layout oneDNN's fastest CPU kernels and CUDA's tensor
        # cores want
        self.channels_last = self.device.type in ("cuda", "cpu")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.training_info: dict[str, Any] = {}
        self._inference: tuple[tuple[int, ...], nn.Module] | None = None

    # ---- what a subclass provides -------------------------------------------------------------
    @classmethod
    def build_model(cls, config: dict[str, Any]) -> nn.Module:
        """The network for `config`."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """Training loss of logits (N, C, H, W) against targets (N, C, H, W) in {0, 1}; `known` (N, C)
        is 1 where the item's dataset annotates the channel's class and 0 where that class is unknown
        there (partial labels: left out of the loss); None: every class is known. `weight` (N, C, H, W),
        where given, weighs each pixel of the class channels."""
        raise NotImplementedError

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """The optimiser over the model's parameters."""
        raise NotImplementedError

    # ---- properties ---------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        """Output channels: one per named class, or one for the unnamed foreground."""
        return int(self.config.get("n_classes", 1))

    @property
    def classes(self) -> tuple[str, ...]:
        """The named classes the model predicts, one channel each; empty for one unnamed foreground."""
        return tuple(self.config.get("classes", ()))

    @property
    def channels(self) -> tuple[str, ...]:
        """The name of each class channel: its class, FOREGROUND for a model without named classes."""
        return self.classes or (FOREGROUND,)

    @property
    def instance_classes(self) -> tuple[str, ...]:
        """The class channels (`channels`) with a distance channel that separates touching objects."""
        return tuple(self.config.get("instances", ()))

    @property
    def contours(self) -> bool:
        """Whether the network also predicts each instance class's contour band (`transforms.instances`)."""
        return bool(self.config.get("contours", False))

    @property
    def n_outputs(self) -> int:
        """The network's output channels (`output_channels`)."""
        return output_channels(self.config)

    def instance_map(self, probs: Any, channel: str, kind: str) -> Any:
        """The (H, W) `distance` or `contour` map of instance class `channel` in (C_out, H, W) outputs."""
        k = len(self.instance_classes)
        offset = {"distance": self.n_classes, "contour": self.n_classes + k}[kind]
        return probs[offset + self.instance_classes.index(channel)]

    @property
    def labels(self) -> tuple[str, ...]:
        """The name of each channel's objects in GeoJSON: its class, `cell` for the unnamed foreground."""
        return self.classes or ("cell",)

    @property
    def label_of(self) -> dict[str, str]:
        """{channel: the label its objects carry} (`channels` to `labels`: FOREGROUND's objects are `cell`)."""
        return dict(zip(self.channels, self.labels, strict=True))

    def require_one_class(self, what: str) -> None:
        """Refuse a model of several classes where `what` handles one class only."""
        if self.n_classes != 1:
            raise CysegError(f"{what} handles one class, but the model predicts {listed(self.classes)}; segment "
                             "crops (cyseg segment MODEL CROPS/ --out DIR) or use a one-class model (--classes cell)")

    @property
    def in_channels(self) -> int:
        return int(self.config.get("in_channels", 3))

    @property
    def resolution(self) -> float:
        """The network's working resolution as a fraction of the images' (1: full resolution)."""
        return float(self.preprocess.get("resolution", 1.0))

    @property
    def multiple(self) -> int:
        """Tile sides that are a multiple of this need no padding inside the network."""
        return int(getattr(self.model, "multiple", 1))

    @property
    def receptive_field(self) -> int | None:
        """Input pixels one output pixel sees, per side (None when the model does not say)."""
        field = getattr(self.model, "receptive_field", None)
        return None if field is None else int(field)

    def smallest_object(self, label: str | None = None) -> float:
        """Polygons of class `label` (default: the first) below this area (px² of the images the model
        was trained on) are specks, not cells: objects a fifth as wide as the typical annotated object
        of that class (the one holding the median foreground pixel); 0 when the model file does not
        record that size (a file of several classes from before per-class sizes were recorded)."""
        label = label or self.labels[0]
        sizes = self.training_info.get("object_size_px_by_class")
        if isinstance(sizes, dict):
            size = sizes.get(label)
        else:
            size = self.training_info.get("object_size_px") if self.n_classes == 1 else None
        if not isinstance(size, (int, float)) or size <= 0:
            return 0.0
        return round(math.pi / 4 * (size / SPECK_RATIO) ** 2, 1)

    def min_areas(self, asked: float | None) -> dict[str, float]:
        """Per class (`labels`), the area below which its objects are dropped: `asked` for every
        class, else `auto_min_areas` (logging the classes without one)."""
        if asked is not None:
            return dict.fromkeys(self.labels, float(asked))
        areas = self.auto_min_areas()
        unknown = [label for label, area in areas.items() if not area and label not in self.min_area]
        if unknown:
            log.info("the model does not record the size of its training objects of %s: no such polygon is dropped "
                     "as a speck (give --min-area)", ", ".join(unknown))
        return areas

    def auto_min_areas(self) -> dict[str, float]:
        """Per class (`labels`), the least object area (px² of the images the model was trained on):
        the one chosen on validation images (`min_area`) where the model records it, else the class's
        `smallest_object`."""
        return {label: self.min_area.get(label, self.smallest_object(label)) for label in self.labels}

    # ---- inference ----------------------------------------------------------------------------
    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) on any device -> normalised float on the model's device."""
        mean = torch.tensor(self.preprocess["mean"], device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocess["std"], device=self.device).view(1, -1, 1, 1)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        # always a new tensor (copy=True), so the in-place normalisation never touches the caller's
        x = images.to(self.device, non_blocking=True).to(torch.float32, memory_format=layout, copy=True)
        # (x / scale - mean) / std as one multiply-add in place: one pass over the batch, not three
        return x.mul_(1 / (float(self.preprocess["scale"]) * std)).add_(-mean / std)

    def inference_model(self) -> nn.Module:
        """The network as inference runs it: batch norms folded into the convolutions, rebuilt
        whenever the weights change (training, loading)."""
        version = weights_version(self.model)
        if self._inference is None or self._inference[0] != version:
            net = fold_batch_norms(self.model)
            self._inference = (version, net.to(memory_format=torch.channels_last) if self.channels_last else net)
        return self._inference[1]

    def probabilities(self, x: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        """Normalised input batch -> per-class probabilities (sigmoid of the logits of `net`,
        default the inference model)."""
        logits = (net if net is not None else self.inference_model())(x)
        return torch.sigmoid(logits.float())

    def _image_tensor(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = image[:, :, None]
            if image.shape[2] != self.in_channels:
                raise CysegError(f"image has {image.shape[2]} channels but the model expects {self.in_channels}")
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return image

    def predict(self, image: np.ndarray | torch.Tensor, tile: int | None = None, overlap: int | None = None,
                batch: int | None = None, tta: bool | None = None, amp: bool | None = None,
                into: torch.Tensor | None = None, scale: torch.Tensor | None = None,
                multiple: int = 1, read_scale: float = 1.0) -> torch.Tensor:
        """Per-class probabilities (C, H, W) on the model's device for an RGB uint8 image (H, W, 3)
        or a uint8 tensor (3, H, W); images larger than `tile` run tile by tile, blended, at the
        model's working resolution (tile sizes count network pixels). With `tta` every tile is the
        mean over its 8 rotations/reflections (8x the compute); with `amp` the network computes in
        the device's native reduced precision (segmenter.precision), the rest in float32.

        With `into` (C, H, W), e.g. a view of a slide area's canvas, the probabilities (times `scale`
        (H, W) when given) are added to it and it is returned, without a result tensor of their own
        when the network works at the image's resolution. Tiles of a tiled image have sides that are
        multiples of `multiple` (and of the network's own). `read_scale` (a dataset folder's, see
        `declared_read_scale`) multiplies the working resolution for this image."""
        tile = tile or self.inference["tile"]
        overlap = self.inference["overlap"] if overlap is None else overlap
        batch = batch or self.inference["batch"]
        tta = self.inference["tta"] if tta is None else tta
        amp = self.inference["amp"] if amp is None else amp
        x = self._image_tensor(image).to(self.device)
        self.model.eval()
        net = self.inference_model()
        with torch.inference_mode(), oom_guard(self.device, f"predicting a {x.shape[2]}x{x.shape[1]} image"):
            def forward(t: torch.Tensor) -> torch.Tensor:
                with autocast(self.device, amp):
                    return self.probabilities(self.to_input(t), net)

            size = (x.shape[1], x.shape[2])
            resolution = self.resolution * read_scale
            direct = resolution == 1
            probs = predict_tiled(with_tta(forward, tta), to_network(x, resolution), self.n_outputs, tile,
                                  overlap, batch, math.lcm(self.multiple, multiple), into if direct else None,
                                  scale if direct else None)
            if into is None or direct:
                return to_image(probs, size)
            probs = to_image(probs, size)
            return into.add_(probs) if scale is None else into.addcmul_(probs, scale)

    def set_threshold(self, threshold: float, name: str | None = None) -> None:
        """The probability threshold used by `segment` (and stored in the model file): of class
        `name`, or of every class when None."""
        if name is not None:
            self.thresholds[name] = float(threshold)
            return
        self.postprocess = with_threshold(self.postprocess, threshold)
        self.threshold = float(threshold)
        self.thresholds = dict.fromkeys(self.classes, self.threshold)

    def channel_thresholds(self, threshold: float | None = None) -> list[float]:
        """Each channel's threshold: `threshold` when given, else its class's (the model's for the
        unnamed foreground)."""
        if threshold is not None:
            return [float(threshold)] * self.n_classes
        return [self.thresholds[name] for name in self.classes] or [self.threshold]

    def postprocess_chain(self, threshold: float | None = None, device: torch.device | None = None):
        """The post-processing chain for tensors on `device` (default the model's), with an optional
        threshold override."""
        spec = self.postprocess if threshold is None else with_threshold(self.postprocess, threshold)
        return build_on(device or self.device, spec)

    def class_masks(self, probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """(C, H, W) probabilities -> (C, H, W) uint8 0/1 masks, each channel post-processed and cut
        at its class's threshold (or `threshold`)."""
        return torch.stack([self.postprocess_chain(t, probs.device)(probs[c][None, None])[0, 0]
                            for c, t in enumerate(self.channel_thresholds(threshold))]).to(torch.uint8)

    def masks_from_probabilities(self, probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """(1, H, W) probabilities of a one-class model -> its post-processed (H, W) uint8 0/1 mask."""
        self.require_one_class("a single mask (Segmenter.segment, masks_from_probabilities)")
        return self.postprocess_chain(threshold, probs.device)(probs[:1][None])[0, 0].to(torch.uint8)

    def segment(self, image: np.ndarray | torch.Tensor, threshold: float | None = None, **tiling: int) -> np.ndarray:
        """Post-processed 0/1 mask (H, W) uint8 of a one-class model for one RGB image."""
        probs = self.predict(image, **tiling)
        with torch.inference_mode():
            return self.masks_from_probabilities(probs, threshold).cpu().numpy()

    # ---- training and evaluation --------------------------------------------------------------
    def fit(self, train_dir: str | os.PathLike | Sequence[str | os.PathLike],
            val_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
            **options: Any) -> list[dict[str, Any]]:
        """Train on one or several dataset folders (see `segmenter.training.TrainOptions` for the options)."""
        from segmenter.training import TrainOptions, train

        return train(self, train_dir, val_dir, TrainOptions(**options))

    def evaluate(self, dataset_dir: str | os.PathLike, threshold: float | None = None) -> list[dict[str, Any]]:
        """Per-image (and per-class) Dice and IoU of the post-processed masks on a dataset folder, at
        the model's thresholds or `threshold`."""
        from segmenter.evaluation import at_thresholds, chosen_thresholds, evaluate_dataset

        chosen = chosen_thresholds(self, threshold)
        return at_thresholds(evaluate_dataset(self, dataset_dir, sorted(set(chosen.values()))), chosen)

    # ---- model file ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a model file holds, with tensors on the CPU (per-class thresholds only for
        named classes, so a one-foreground model's file is as before classes existed)."""
        state_dict = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        return {
            "arch": self.arch,
            "config": self.config,
            "state_dict": state_dict,
            "preprocess": self.preprocess,
            "threshold": self.threshold,
            "postprocess": self.postprocess,
            "class_weights": self.class_weights,
            "inference": self.inference,
            "training": self.training_info,
            **({"thresholds": dict(self.thresholds)} if self.classes else {}),
            **({"separation": {c: dict(v) for c, v in self.separation.items()}} if self.instance_classes else {}),
            **({"min_area": dict(self.min_area)} if self.min_area else {}),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file atomically."""
        return save_model_file(path, self.state())

    @classmethod
    def from_state(cls, content: dict[str, Any], device: str | torch.device | None = None,
                   source: str = "model") -> Segmenter:
        """Build a segmenter of this class from a model file's content (`unet.segmenter_from_state`
        picks the class a file names)."""
        arch = content.get("arch")
        if not cls.arch or arch != cls.arch:
            raise ModelFileError(f"{source} holds architecture {arch!r}, not {cls.arch or 'a concrete one'!r}; "
                                 "load it with unet.load_segmenter")
        try:
            seg = cls(content["config"], device=device, class_weights=content.get("class_weights"),
                        preprocess=content["preprocess"], postprocess=content["postprocess"],
                        threshold=content["threshold"], thresholds=content.get("thresholds"),
                        separation=content.get("separation"), min_area=content.get("min_area"))
            seg.model.load_state_dict(content["state_dict"])
        except CysegError as exc:
            raise ModelFileError(f"{source} holds an unusable configuration ({exc}); "
                                 "retrain it with 'cyseg train'") from exc
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{source} does not match its own configuration ({str(exc).splitlines()[0]}); "
                                 "retrain it") from exc
        seg.training_info = dict(content.get("training") or {})
        return seg

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> Segmenter:
        """Load a model file of this class' architecture written by `save`."""
        return cls.from_state(load_model_file(path), device, source=f"model file {path}")

    def copy_state_dict(self) -> dict[str, torch.Tensor]:
        """A detached copy of the current weights (used to keep the best epoch)."""
        return copy.deepcopy({k: v.detach() for k, v in self.model.state_dict().items()})


def _with_classes(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with its classes checked and `n_classes` matching them; a model of several
    channels must name its classes (class-index models, once made by `--classes N`, are not read)."""
    config = dict(config)
    if "classes" in config:
        config["classes"] = list(check_names(config["classes"], "the model's classes"))
        config["n_classes"] = len(config["classes"])
    elif config.get("n_classes", 1) != 1:
        raise CysegError(f"{config['n_classes']} unnamed classes: a model of several classes names them "
                         "(class-index models gave way to named classes, cyseg train --classes cell,nucleus)")
    if "instances" in config:
        channels = config.get("classes") or [FOREGROUND]
        instances = config["instances"]
        if not isinstance(instances, list) or not instances or set(instances) - set(channels):
            raise CysegError(f"the model's instance classes {instances!r} must list some of its classes "
                             f"({listed(channels)})")
        config["instances"] = [c for c in channels if c in instances]
    if config.get("contours") and "instances" not in config:
        raise CysegError("a model with contours needs instance classes; train it with --instances --contours")
    return config


def output_channels(config: dict[str, Any]) -> int:
    """The network's output channels for a checked `config`: the class channels, then one distance
    channel per instance class, then (with contours) one contour channel per instance class."""
    k = len(config.get("instances", ()))
    return int(config.get("n_classes", 1)) + k * (2 if config.get("contours") else 1)


def _separation(instances: tuple[str, ...], given: dict[str, dict[str, Any]] | None,
                contours: bool) -> dict[str, dict[str, Any]]:
    """The separation parameters of each instance class: the given ones, the defaults for the others;
    contour marks only for a model with contours."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(instances))
    if unknown:
        raise CysegError(f"separation parameters are given for {unknown[0]!r}, which the model does not separate "
                         f"({listed(instances) or 'no instance classes'})")
    try:
        chosen = {c: dataclasses.asdict(Separation(**given.get(c, {})).check()) for c in instances}
    except (TypeError, ValueError) as exc:
        raise CysegError(f"unusable instance separation parameters ({exc})") from exc
    marked = [c for c, p in chosen.items() if p["marks"] == "contour"]
    if marked and not contours:
        raise CysegError(f"the separation of {marked[0]!r} is marked by contours, which the model does not predict; "
                         "use a model trained with --contours")
    return chosen


def _min_area(labels: tuple[str, ...], given: dict[str, float] | None) -> dict[str, float]:
    """The object areas (px²) chosen per class (`labels`), each a number >= 0 of a class the model has."""
    given = dict(given or {})
    for label, area in given.items():
        if label not in labels:
            raise CysegError(f"a minimum object area is given for {label!r}, which the model does not predict "
                             f"({listed(labels)})")
        if not isinstance(area, (int, float)) or area < 0:
            raise CysegError(f"the minimum object area of {label!r} is {area!r}; it must be a number >= 0")
    return {label: float(area) for label, area in given.items()}


def _class_thresholds(classes: tuple[str, ...], given: dict[str, float] | None, default: float) -> dict[str, float]:
    """One threshold in [0, 1] per named class: the given ones, `default` for the others."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise CysegError(f"a threshold is given for class {unknown[0]!r}, which the model does not predict "
                         f"({listed(classes) or 'no named classes'})")
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise CysegError(f"threshold {value!r} of class {name} is not a number in [0, 1]; choose e.g. 0.5")
    return {name: float(given.get(name, default)) for name in classes}
