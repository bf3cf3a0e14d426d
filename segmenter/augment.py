"""The method's augmenters (flips, 90-degree rotations, +-15 % translation) on albumentations, plus
optional elastic deformation and colour and stain variation; shared by `cyseg train` (online) and
`cydata augment` (offline).

imgaug, the thesis' library, does not import on NumPy 2; albumentations offers the same operations.
"""
from __future__ import annotations

import albumentations as A
import cv2


def geometric(translate: float = 0.15, border_mode: int = cv2.BORDER_REFLECT_101) -> list[A.BasicTransform]:
    """Flips, 90-degree rotations and +-`translate` shifts, in the method's spirit.

    The thesis filled shifted-in areas with black (imgaug's default); we mirror by default so that
    no artificial black borders with background masks are learned. Masks use nearest interpolation.
    """
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.Affine(translate_percent={"x": (-translate, translate), "y": (-translate, translate)},
                 border_mode=border_mode, p=0.5 if translate > 0 else 0.0),
    ]


# elastic deformation: a displacement field smoothed over ELASTIC_SIGMA px, a few px on average
# (albumentations scales the smoothed noise by ELASTIC_ALPHA)
ELASTIC_ALPHA, ELASTIC_SIGMA = 600.0, 20.0


def elastic_warps() -> list[A.BasicTransform]:
    """Smooth random warps of the crop (as the U-Net paper trained on few images), so irregular
    outlines and touching objects meet the network in shapes the training images do not hold."""
    return [A.ElasticTransform(alpha=ELASTIC_ALPHA, sigma=ELASTIC_SIGMA, border_mode=cv2.BORDER_REFLECT_101,
                               mask_interpolation=cv2.INTER_NEAREST, p=0.5)]


def photometric(strength: float = 1.0) -> list[A.BasicTransform]:
    """Colour and stain variation, so a model trained on one lab's staining transfers to another's."""
    s = strength
    return [
        A.HEStain(method="random_preset", intensity_scale_range=(1 - 0.25 * s, 1 + 0.25 * s),
                  intensity_shift_range=(-0.1 * s, 0.1 * s), p=0.5),
        A.ColorJitter(brightness=(1 - 0.2 * s, 1 + 0.2 * s), contrast=(1 - 0.2 * s, 1 + 0.2 * s),
                      saturation=(1 - 0.3 * s, 1 + 0.3 * s), hue=(-0.05 * s, 0.05 * s), p=0.8),
        A.GaussianBlur(blur_limit=(3, 5), p=0.2 * min(s, 1.0)),
    ]


def method_augmenter(colour: bool = False, translate: float = 0.15, seed: int | None = None,
                     elastic: bool = False) -> A.Compose:
    """The method's geometric augmenters, optionally followed by elastic deformation and colour/stain
    jitter."""
    ops = geometric(translate) + (elastic_warps() if elastic else []) + (photometric() if colour else [])
    return A.Compose(ops, seed=seed)
