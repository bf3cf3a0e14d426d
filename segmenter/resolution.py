"""The network's working resolution as a fraction of the images' (`--resolution`): images are
resampled to it for training and prediction, probabilities are brought back to the image's size,
so masks, scores and polygons stay at the images' resolution. Large objects such as glands gain
context in the same crop and tile."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segmenter.errors import CysegError

MAX_RESOLUTION = 4.0


def check_resolution(resolution: float) -> float:
    """A working resolution in (0, 4]."""
    if not 0 < resolution <= MAX_RESOLUTION:
        raise CysegError(f"--resolution {resolution} must be in (0, {MAX_RESOLUTION:g}]; e.g. 0.5 works at half "
                         "the images' resolution, 1 at full resolution")
    return float(resolution)


def scaled_size(height: int, width: int, resolution: float) -> tuple[int, int]:
    """(height, width) of an image at the working resolution (at least 1 px each)."""
    return max(1, round(height * resolution)), max(1, round(width * resolution))


def resample_image(image: np.ndarray, resolution: float) -> np.ndarray:
    """An (H, W, C) image at `resolution` times its size (area-averaged when shrunk, bilinear when enlarged)."""
    if resolution == 1:
        return image
    h, w = scaled_size(*image.shape[:2], resolution)
    interpolation = cv2.INTER_AREA if resolution < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (w, h), interpolation=interpolation)
    return small[:, :, None] if small.ndim == 2 else small


def resample_pair(image: np.ndarray, mask: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """A training image (`resample_image`) and its mask (nearest label) at the working resolution."""
    if resolution == 1:
        return image, mask
    h, w = scaled_size(*mask.shape, resolution)
    return resample_image(image, resolution), cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


def to_network(image: torch.Tensor, resolution: float) -> torch.Tensor:
    """(C, H, W) image -> float (C, h, w) at the working resolution (area mean when shrinking, as in training)."""
    if resolution == 1:
        return image
    h, w = scaled_size(image.shape[1], image.shape[2], resolution)
    mode = "area" if resolution < 1 else "bilinear"
    return F.interpolate(image[None].float(), size=(h, w), mode=mode)[0]


def to_image(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, h, w) probabilities -> (C, H, W) at the image's size (bilinear)."""
    if tuple(probs.shape[1:]) == tuple(size):
        return probs
    return F.interpolate(probs[None], size=size, mode="bilinear", align_corners=False)[0]
