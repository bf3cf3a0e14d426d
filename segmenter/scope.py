"""What a model was made for (DESIGN §4): the modality, resolution, stains, classes and data of its
training images, recorded in the model file at training, and the check that refuses an input it was
not made for (a fluorescence slide given to a brightfield model, a resolution far outside the
trained range) unless the user overrides it. Model files without it (v1) skip the check, once said."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segmenter.errors import CysegError
from segmenter.io.images import read_image

if TYPE_CHECKING:
    from segmenter.base import Segmenter
    from segmenter.io.dataset import Dataset

log = logging.getLogger(__name__)

DARK_MEDIAN = 80  # median brightness (max over channels) below which an image is fluorescence-like
SAMPLE = 16  # training images per dataset whose modality is measured
RESOLUTION_SLACK = 2.0  # an input this many times finer or coarser than the trained range is refused
OVERRIDE = "--allow-mismatch"


def image_modality(image: np.ndarray) -> str:
    """`fluorescence` for a dark background (median of the brightest channel below DARK_MEDIAN),
    else `brightfield`."""
    return "fluorescence" if float(np.median(np.asarray(image).max(axis=2))) < DARK_MEDIAN else "brightfield"


def training_scope(datasets: Sequence[Dataset], labels: Sequence[str]) -> dict[str, Any]:
    """The scope a model file records: its classes, the modality measured on its training images,
    the resolution range (µm/px) and stains its datasets declare in dataset.json (`mpp`, `stain`),
    and the images it saw per dataset (named by its dataset.json `name`, else its folders; with the
    read scale it declared, when not 1)."""
    modalities, mpps, stains, data = set(), [], set(), []
    for dataset in datasets:
        manifest = dataset.manifest
        step = max(1, len(dataset.items) // SAMPLE)
        modalities |= {image_modality(read_image(item.image)) for item in dataset.items[::step][:SAMPLE]}
        if isinstance(manifest.get("mpp"), (int, float)) and manifest["mpp"] > 0:
            mpps.append(float(manifest["mpp"]))
        if isinstance(manifest.get("stain"), str):
            stains.add(manifest["stain"])
        data.append({"name": _dataset_name(manifest, Path(dataset.root)), "images": len(dataset.items),
                     **({"read_scale": dataset.read_scale} if dataset.read_scale != 1 else {})})
    return {"classes": list(labels), "modality": sorted(modalities),
            "mpp_range": [min(mpps), max(mpps)] if mpps else None, "stains": sorted(stains), "data": data}


def _dataset_name(manifest: dict[str, Any], root: Path) -> str:
    """What to call a training dataset: the `name` its dataset.json gives, else its folder with the
    folder above it (a folder named train or fit says little on its own)."""
    name = manifest.get("name")
    return name if isinstance(name, str) and name.strip() else f"{root.parent.name}/{root.name}"


def model_scope(seg: Segmenter) -> dict[str, Any] | None:
    """The scope recorded in the model file, None for a file written before scopes existed."""
    return seg.training_info.get("scope")


def check_input(seg: Segmenter, what: str, modality: str, mpp: float | None, allow: bool) -> None:
    """Refuse `what` (an image or slide, its modality and µm/px) when the model was not trained on
    such input: a CysegError naming the mismatch and OVERRIDE, or a warning when `allow`."""
    scope = model_scope(seg)
    if scope is None:
        log.info("the model records no modality or resolution (a v1 model file): input checks skipped")
        return
    problems = []
    if scope["modality"] and modality not in scope["modality"]:
        problems.append(f"{what} looks like {modality} (dark background) but the model was trained on "
                        f"{'/'.join(scope['modality'])} images")
    trained = scope.get("mpp_range")
    if mpp is not None and trained and not trained[0] / RESOLUTION_SLACK <= mpp <= trained[1] * RESOLUTION_SLACK:
        problems.append(f"{what} is processed at {mpp:.3g} µm/px, outside the model's trained {trained[0]:.3g}–"
                        f"{trained[1]:.3g} µm/px (give --mpp to resample it)")
    if not problems:
        return
    if allow:
        log.warning("%s; segmenting anyway (%s)", "; ".join(problems), OVERRIDE)
        return
    raise CysegError(f"{'; '.join(problems)}; its polygons would not be cells: use a model trained on such "
                     f"images, or give {OVERRIDE} to segment it anyway")
