"""Training crops: random augmented crops drawn from in-memory images, reproducible from a seed,
and the per-channel statistics the network's inputs are normalised with."""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from segmenter.augment import method_augmenter
from segmenter.classes import ChannelMap, channel_map
from transforms.instances import contour_target, distance_target, gap_weight


@functools.cache
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
    itself (an image smaller than the square is mirror-padded, as one smaller than the crop always is).

    A sample is (image (3, crop, crop) uint8, targets (C, crop, crop) float, known (C,) float): `maps`
    turns each image's mask labels into the model's per-class targets and says which classes its
    dataset annotates (default: every mask is the 0/1 foreground of a one-class model).

    With `instances` (per image: (H, W, K) uint16 instance labels of the model's K instance classes,
    and which of them its dataset annotates) the labels travel with the mask through the same crop
    and augmentation, and K distance targets (`transforms.instances.distance_target`) follow the
    class targets, computed on the augmented crop; with `contours`, K contour targets
    (`transforms.instances.contour_target`) follow those.

    An image is drawn with probability proportional to its area; with `groups` (a group index per
    image, e.g. its dataset folder) every group is drawn equally often and, within a group, by area.

    With `unknown` (per image: (H, W) bool of the pixels nobody labelled, or None) and any image
    having such pixels, the map travels with the mask too and `known` becomes per pixel,
    (C [+ K], crop, crop): 0 on the unknown pixels, which the loss leaves out.

    With `elastic` the augmentation also warps each crop (`segmenter.augment.elastic_warps`), its mask
    layers by nearest neighbour.

    A sample ends with its per-pixel loss weights (C, crop, crop): with `gap` > 0 and instances, the
    class channel `gap_channels[i]` of instance class i weighs the gaps between its touching objects
    (`transforms.instances.gap_weight`), every other pixel 1; without, an empty tensor (no weights)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], crop: int, length: int,
                 seed: int, colour: bool, translate: float, zoom: float = 0.0,
                 maps: Sequence[ChannelMap] | None = None,
                 instances: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                 groups: Sequence[int] | None = None, unknown: Sequence[np.ndarray | None] | None = None,
                 elastic: bool = False, gap: float = 0.0, gap_channels: Sequence[int] = (), contours: bool = False,
                 distance_cap: float = 0.0):
        self.images, self.masks, self.crop, self.length, self.seed = images, masks, crop, length, seed
        self.unknown = list(unknown) if unknown is not None and any(u is not None for u in unknown) else None
        self.zoom = zoom
        self.maps = list(maps) if maps is not None else [channel_map((), (), "")] * len(masks)
        self.instances = list(instances) if instances is not None else None
        self.epoch = 0
        self.p = image_weights([m.shape[0] * m.shape[1] for m in masks], groups)
        self.aug = method_augmenter(colour=colour, translate=translate, elastic=elastic)
        self.gap, self.gap_channels = (gap, list(gap_channels)) if self.instances is not None else (0.0, [])
        self.contours = contours and self.instances is not None
        self.distance_cap = distance_cap

    def __len__(self) -> int:
        return self.length

    def _side(self, rng: np.random.Generator) -> int:
        """Side of the square cut from the image: the crop, or the crop over a random magnification."""
        if self.zoom <= 0:
            return self.crop
        magnification = math.exp(rng.uniform(-math.log1p(self.zoom), math.log1p(self.zoom)))
        return max(2, round(self.crop / magnification))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.choice(len(self.images), p=self.p))
        image, mask = self.images[k], self._stacked_mask(k)
        side = self._side(rng)
        h, w = mask.shape[:2]
        if h < side or w < side:
            padded = _mirror_padder(side)(image=image, mask=mask)
            image, mask = padded["image"], padded["mask"]
            h, w = mask.shape[:2]
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        image, mask = image[y:y + side, x:x + side], mask[y:y + side, x:x + side]
        if side != self.crop:
            shrink = cv2.INTER_AREA if side > self.crop else cv2.INTER_LINEAR
            image = cv2.resize(image, (self.crop, self.crop), interpolation=shrink).reshape(self.crop, self.crop, -1)
            mask = cv2.resize(mask, (self.crop, self.crop), interpolation=cv2.INTER_NEAREST)
        self.aug.set_random_seed(int(rng.integers(2**31)))
        out = self.aug(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))
        x_t = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        channels, mask = self.maps[k], out["mask"]
        labelled = None
        if self.unknown is not None:  # the last layer is the unknown map
            mask = mask.reshape(*mask.shape[:2], -1)
            labelled = torch.from_numpy(mask[:, :, -1] == 0)
            mask = mask[:, :, :-1] if self.instances is not None else mask[:, :, 0]
        if self.instances is not None:
            target, known = self._with_instance_targets(mask, channels, self.instances[k][1], self.contours,
                                                        self.distance_cap)
        else:
            target, known = torch.from_numpy(channels.targets(mask)).permute(2, 0, 1), torch.from_numpy(channels.known)
        if labelled is not None:
            known = known[:, None, None] * labelled[None].float()
        return x_t, target, known, self._gap_weights(mask, channels.known.size)

    def _gap_weights(self, stacked: np.ndarray, n_classes: int) -> torch.Tensor:
        """(C, crop, crop) loss weights of an augmented crop stacked with its instance labels (empty
        without `gap`): the gaps between each instance class's objects on its class channel."""
        if self.gap <= 0:
            return torch.empty(0)
        stacked = stacked.reshape(*stacked.shape[:2], -1)
        weights = np.ones((n_classes, *stacked.shape[:2]), np.float32)
        for i, channel in enumerate(self.gap_channels):
            weights[channel] = gap_weight(stacked[:, :, 1 + i], self.gap)
        return torch.from_numpy(weights)

    def _stacked_mask(self, k: int) -> np.ndarray:
        """Image k's mask labels, with its instance ids and then its unknown map as further layers
        when the sampler has them, so that one crop and augmentation moves them all."""
        layers = [self.masks[k]]
        if self.instances is not None:
            layers = [layers[0][:, :, None].astype(np.uint16), self.instances[k][0]]
        if self.unknown is not None:
            unknown = self.unknown[k]
            layers.append(np.zeros(self.masks[k].shape, np.uint8) if unknown is None else unknown.astype(np.uint8))
        if len(layers) == 1:
            return layers[0]
        dtype = np.uint16 if self.instances is not None else np.uint8
        return np.concatenate([layer.reshape(*layer.shape[:2], -1).astype(dtype) for layer in layers], axis=2)

    @staticmethod
    def _with_instance_targets(stacked: np.ndarray, channels: ChannelMap, known: np.ndarray,
                               contours: bool = False, distance_cap: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(class targets, then distance targets (saturating at `distance_cap` px when above 0), then with
        `contours` contour targets (C + K [+ K], crop, crop), known (C + K [+ K],)) of an augmented crop of the
        mask stacked with its instance labels."""
        stacked = stacked.reshape(*stacked.shape[:2], -1)
        classes = channels.targets(stacked[:, :, 0])
        layers = [stacked[:, :, 1 + i] for i in range(stacked.shape[2] - 1)]
        maps = [distance_target(layer, distance_cap) for layer in layers]
        maps += [contour_target(layer) for layer in layers] * contours
        target = np.concatenate([classes, np.stack(maps, axis=2)], axis=2)
        known = np.concatenate([channels.known, known, known[:known.size * contours]])
        return (torch.from_numpy(np.ascontiguousarray(target)).permute(2, 0, 1),
                torch.from_numpy(known.astype(np.float32)))


def image_weights(areas: Sequence[int], groups: Sequence[int] | None) -> np.ndarray:
    """Probability of drawing each image: its share of the area, of its group's area when `groups`
    gives each image a group, every group then weighing the same."""
    weights = np.asarray(areas, dtype=np.float64)
    if groups is not None:
        group = np.asarray(groups)
        totals = {g: weights[group == g].sum() for g in np.unique(group)}
        weights = weights / np.array([totals[g] * len(totals) for g in group])
    return weights / weights.sum()


def channel_stats(images: list[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1]) over all pixels of the training images."""
    total = sum(im.shape[0] * im.shape[1] for im in images)
    s = sum(im.reshape(-1, im.shape[2]).astype(np.float64).sum(0) for im in images)
    s2 = sum((im.reshape(-1, im.shape[2]).astype(np.float64) ** 2).sum(0) for im in images)
    mean = s / total / 255.0
    std = np.sqrt(np.maximum(s2 / total / 255.0**2 - mean**2, 1e-8))
    return [float(v) for v in mean], [float(max(v, 1e-3)) for v in std]
