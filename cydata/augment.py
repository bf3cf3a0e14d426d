"""`cydata augment`: a new dataset holding the originals plus N augmented copies of every item.

The thesis augmented in place with imgaug; we never modify the input. The augmenter is the
method's (segmenter.augment.method_augmenter: flips, 90-degree rotations, +-15 % translation,
optional colour/stain jitter). Masks use nearest interpolation, so they stay binary 0/255.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import albumentations as A
import numpy as np
from tqdm import tqdm

from segmenter.augment import method_augmenter
from segmenter.errors import CysegError
from segmenter.io.dataset import DatasetWriter, image_declarations, open_dataset, read_pair, read_unknown

log = logging.getLogger(__name__)

TRANSLATE = 0.15


def default_output(src: str | os.PathLike) -> Path:
    """`<DIR>_aug` beside DIR."""
    root = Path(src).resolve()
    return root.with_name(root.name + "_aug")


def describe(colour: bool, translate: float = TRANSLATE) -> str:
    """One line saying what the augmenter does."""
    text = f"horizontal/vertical flips, 90-degree rotations, +-{translate:.0%} translation (mirrored borders)"
    return text + (", H&E stain, colour jitter and blur" if colour else "")


def augment_dataset(src: str | os.PathLike, steps: int, seed: int = 0, colour: bool = False,
                    out: str | os.PathLike | None = None, progress: bool | None = None) -> Path:
    """Write `out` (default `<src>_aug`): every item of `src` unchanged plus `<stem>_aug1`..`<stem>_aug<steps>`."""
    if steps < 1:
        raise CysegError(f"--steps {steps} is not allowed; give the number of augmented copies per item (1 or more)")
    src = Path(src)
    out = Path(out) if out is not None else default_output(src)
    dataset = open_dataset(src)
    if out.exists():
        raise CysegError(f"output folder {out} already exists; remove it or choose another --out")
    stems = {item.stem for item in dataset.items}
    for item in dataset.items:
        clash = next((f"{item.stem}_aug{k}" for k in range(1, steps + 1) if f"{item.stem}_aug{k}" in stems), None)
        if clash:
            raise CysegError(
                f"{src} already holds an item named '{clash}', the name of augmented copy of '{item.stem}';"
                " augment the original dataset instead, or rename the item"
            )
    augmenter = method_augmenter(colour=colour, translate=TRANSLATE, seed=seed)
    info = {
        "steps": steps,
        "seed": seed,
        "colour": colour,
        "augmenter": describe(colour),
        "albumentations": A.to_dict(augmenter),
    }
    log.info("augmenting %d items of %s, %d copies each (seed %d, colour %s)", len(dataset), src, steps, seed,
             "on" if colour else "off")
    with DatasetWriter(out, source=dataset.manifest.get("source") or {}, parent=str(src.resolve()),
                       iteration=dataset.manifest.get("iteration"),
                       extra={**image_declarations(dataset.manifest), "augmentation": info},
                       classes=dataset.classes) as writer:
        for item in tqdm(dataset.items, desc="augment", unit="item",
                         disable=None if progress is None else not progress):
            image, mask = read_pair(item)
            unknown = read_unknown(item, mask.shape)
            stacked = mask if unknown is None else np.dstack([mask, unknown.astype(np.uint8)])
            writer.copy(item)
            for k in range(1, steps + 1):
                result = augmenter(image=image, mask=stacked)
                labels = result["mask"] if unknown is None else result["mask"][:, :, 0]
                stem = f"{item.stem}_aug{k}"
                # item meta (slide, kind, ...) is kept so that `split --by-slide` works on the result
                writer.add(stem, result["image"], labels, meta={**item.meta, "source": item.stem, "augmentation": k},
                           unknown=None if unknown is None else result["mask"][:, :, 1] > 0)
    log.info("wrote %s (%d items)", out, len(dataset) * (steps + 1))
    return out
