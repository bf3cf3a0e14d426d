"""Instance labels of a dataset (DESIGN §3): masks_instance/<stem>.png for a dataset of one class (or
one unnamed foreground), masks_instance/<stem>_<class>.png per class for a cell + nucleus dataset;
8- or 16-bit single-channel PNG, 0 background, one id per object.

dataset.json's "instances" says which classes have them: `true` (every class the masks annotate) or
a list of class names. Without the key, a class has instances when masks_instance/ holds its file
for every image."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from metrics.instances import split_disconnected
from segmenter.classes import FOREGROUND, listed
from segmenter.errors import DatasetError
from segmenter.io.images import decode_file

log = logging.getLogger(__name__)
FOLDER = "masks_instance"


def instance_name(stem: str, channel: str, classes: tuple[str, ...]) -> str:
    """The file name of an image's instance labels of one channel (a class, or the unnamed foreground)."""
    return f"{stem}.png" if len(classes) <= 1 else f"{stem}_{channel}.png"


def _declared(manifest: dict[str, Any], classes: tuple[str, ...], root: Path) -> tuple[str, ...] | None:
    """The channels dataset.json says have instance labels; None when it does not say."""
    if "instances" not in manifest:
        return None
    channels = classes or (FOREGROUND,)
    value = manifest["instances"]
    if value is True:
        return channels
    if value is False:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or set(value) - set(channels):
        raise DatasetError(f'{root / "dataset.json"} "instances" must be true, false or a list of the classes it '
                           f"annotates ({listed(channels)}), got {value!r}; fix it")
    return tuple(c for c in channels if c in value)


def instance_paths(root: Path, stems: list[str], manifest: dict[str, Any],
                   classes: tuple[str, ...]) -> dict[str, dict[str, Path]]:
    """{stem: {channel: path}} of the dataset's instance labels (channels: its classes, or FOREGROUND);
    a DatasetError naming the first missing file of a class dataset.json says has them."""
    declared = _declared(manifest, classes, root)
    folder = root / FOLDER
    channels = classes or (FOREGROUND,)
    found = {c: [folder / instance_name(s, c, classes) for s in stems] for c in channels}
    if declared is None:
        chosen = [c for c in channels if folder.is_dir() and all(p.is_file() for p in found[c])]
    else:
        chosen = list(declared)
        for c in chosen:
            missing = [p for p in found[c] if not p.is_file()]
            if missing:
                raise DatasetError(f"{root / 'dataset.json'} says {c} has instance labels but {missing[0]} is missing"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                   + '; add them or drop the class from "instances"')
    return {s: {c: found[c][i] for c in chosen} for i, s in enumerate(stems)}


def read_instances(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An instance label image as int32 (H, W); a DatasetError naming the file unless it is one
    integer channel of the image's size."""
    labels = decode_file(path, "instance mask", "re-export it as a 16-bit PNG")
    if labels.ndim != 2 or labels.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"instance mask {path} must be one 8- or 16-bit channel of object ids (got "
                           f"{labels.dtype}, shape {labels.shape}); store it as a 16-bit single-channel PNG")
    if labels.shape != tuple(shape):
        raise DatasetError(f"instance mask {path} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                           f"{shape[1]}x{shape[0]}; export it at the image's size")
    return labels.astype(np.int32)


def warn_disconnected(labelled: list[tuple[Path, np.ndarray]]) -> int:
    """Log one warning when some instance masks give one id to disconnected regions (each id is
    kept as one object); returns how many ids do."""
    shared = [(path, split_disconnected(labels)[1]) for path, labels in labelled]
    shared = [(path, n) for path, n in shared if n]
    total = sum(n for _, n in shared)
    if total:
        log.warning("%d instance id(s) in %d instance mask(s) cover disconnected regions (first: %s); each id is "
                    "kept as one object: give each region its own id if they are separate objects", total,
                    len(shared), shared[0][0])
    return total
