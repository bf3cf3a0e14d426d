"""Named classes (DESIGN §3): the vocabulary models predict and datasets declare, how a dataset's
masks encode the classes its dataset.json declares, and how they become a model's targets.

Classes overlap (a nucleus lies inside its cell), so a model is multi-label: one sigmoid channel per
class, `cell` being the whole cell with its nucleus. A dataset annotates the classes it declares; a
class it does not declare is unknown there (partial labels): neither foreground nor background, it is
left out of the loss and of the scores. A dataset that declares no classes holds one unnamed
foreground (0/255 masks), as before classes existed; it trains a model without named classes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segmenter.errors import CysegError, DatasetError

VOCABULARY = ("cell", "nucleus")  # also the order of a model's channels
DESCRIPTIONS = {"cell": "whole cell or cell group: cytoplasm and nucleus", "nucleus": "nucleus"}
# QuPath classification colours (RGB); the unnamed foreground is drawn as `cell`
COLOURS = {"cell": (0, 200, 0), "nucleus": (255, 220, 0)}  # seen on H&E, Pap and IHC stains alike
COLOUR_NAMES = {"cell": "green", "nucleus": "yellow"}
FOREGROUND = "foreground"  # the one channel of a model without named classes


@dataclass(frozen=True)
class Encoding:
    """How the masks of a dataset declaring some classes store them: label i is stored as `values[i]`
    and marks the classes `marks[i]`; `text` says so for a person."""

    values: tuple[int, ...]
    marks: tuple[tuple[str, ...], ...]
    text: str


ENCODINGS: dict[tuple[str, ...], Encoding] = {
    (): Encoding((0, 255), ((), (FOREGROUND,)), "0 background, 255 foreground"),
    ("cell",): Encoding((0, 255), ((), ("cell",)), "0 background, 255 cell"),
    ("nucleus",): Encoding((0, 255), ((), ("nucleus",)), "0 background, 255 nucleus"),
    # the class-index convention of the public cell + nucleus sets (masks_3class: wbc, urothelial, ISBI 2014)
    ("cell", "nucleus"): Encoding((0, 1, 2), ((), ("cell",), ("cell", "nucleus")),
                                  "0 background, 1 cell outside its nucleus, 2 nucleus"),
}


def listed(classes: Sequence[str]) -> str:
    """'cell, nucleus' for messages."""
    return ", ".join(classes)


def check_names(names: object, what: str) -> tuple[str, ...]:
    """Class names as a tuple in vocabulary order; a CysegError naming `what` unless they are
    distinct names of the vocabulary."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names \
            or not all(isinstance(name, str) for name in names):
        raise CysegError(f'{what} must list class names, e.g. ["cell", "nucleus"] (the classes are '
                         f"{listed(VOCABULARY)})")
    unknown = [name for name in names if name not in VOCABULARY]
    if unknown:
        raise CysegError(f"{what} names class {unknown[0]!r}, which cyseg does not know; use {listed(VOCABULARY)}")
    if len(set(names)) != len(names):
        raise CysegError(f"{what} names a class twice ({listed(names)}); list each class once")
    return tuple(name for name in VOCABULARY if name in names)


def decode(mask: np.ndarray, declared: tuple[str, ...], path: object) -> np.ndarray:
    """A stored mask (uint8) -> its labels 0..L-1 (0/1 for 0/255 masks); a DatasetError naming the
    mask unless every value is one its dataset's classes define."""
    encoding = ENCODINGS[declared]
    present = np.unique(mask).tolist()
    bad = [v for v in present if v not in encoding.values][:3]
    if bad and not declared:
        hint = ' (a cell/nucleus class-index mask? declare "classes": ["cell", "nucleus"] in dataset.json)' \
            if set(bad) <= {1, 2} else ""
        raise DatasetError(f"mask {path} is not binary (values {bad} besides 0/255); store 0 for background and "
                           f"255 for foreground{hint}")
    if bad:
        raise DatasetError(f"mask {path} holds values {bad}, which its dataset.json's classes ({listed(declared)}: "
                           f"{encoding.text}) do not define; fix the mask or declare the classes it holds")
    table = np.zeros(256, np.uint8)
    table[list(encoding.values)] = np.arange(len(encoding.values))
    return table[mask]


def encode(labels: np.ndarray, declared: tuple[str, ...]) -> np.ndarray:
    """Labels (or a 0/1 or 0/255 mask of one class) -> the mask to store for the declared classes."""
    values = ENCODINGS[declared].values
    if len(values) == 2:
        return (labels > 0).astype(np.uint8) * 255
    return np.asarray(values, np.uint8)[labels]


@dataclass(frozen=True)
class ChannelMap:
    """How one dataset's labels become a model's targets: `lut[label, c]` is channel c's target, and
    `known[c]` is 1 where the dataset annotates channel c's class, 0 where that class is unknown
    there (left out of the loss and the scores)."""

    lut: np.ndarray  # (labels, C) float32
    known: np.ndarray  # (C,) float32

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """(H, W) labels -> (H, W, C) float32 targets."""
        return self.lut[labels]


def channel_map(declared: tuple[str, ...], model: tuple[str, ...], where: object) -> ChannelMap:
    """The map from the labels of a dataset declaring `declared` (at `where`) to a model predicting
    `model` (empty: one unnamed foreground); a CysegError when they share no class."""
    if not model and declared:
        raise CysegError(f"{where} declares classes {listed(declared)} but the model predicts one unnamed "
                         "foreground; use a model trained with classes (cyseg train --classes) or a dataset "
                         'without "classes"')
    if model and not declared:
        raise CysegError(f"{where} declares no classes (its masks are one unnamed foreground) but the model "
                         f'predicts {listed(model)}; add "classes" to its dataset.json, e.g. ["{model[0]}"]')
    channels = model or (FOREGROUND,)
    if model and not set(model) & set(declared):
        raise CysegError(f"{where} annotates {listed(declared)} but the model predicts {listed(model)}: no class "
                         "in common; give a dataset that annotates one of them")
    encoding = ENCODINGS[declared]
    lut = np.array([[float(c in marks) for c in channels] for marks in encoding.marks], np.float32)
    known = np.array([float(not model or c in declared) for c in channels], np.float32)
    return ChannelMap(lut, known)


def model_classes(asked: tuple[str, ...] | None, declared: Sequence[tuple[object, tuple[str, ...]]]) -> tuple[str, ...]:
    """The classes a model trained on datasets declaring `declared` ((where, classes) each) predicts:
    `asked` (--classes), else every class one of them declares (none: one unnamed foreground)."""
    named = [where for where, classes in declared if classes]
    unnamed = [where for where, classes in declared if not classes]
    if named and unnamed:
        raise CysegError(f'{unnamed[0]} declares no classes but {named[0]} does; add "classes" to the dataset.json '
                         f"of {unnamed[0]} (e.g. [\"cell\"]) to train on both")
    if asked is None:
        return tuple(c for c in VOCABULARY if any(c in classes for _, classes in declared))
    if unnamed:
        raise CysegError(f"--classes {','.join(asked)} given but {unnamed[0]} declares no classes; add \"classes\" "
                         "to its dataset.json, or drop --classes for a model of its one unnamed foreground")
    for where, classes in declared:
        if not set(classes) & set(asked):
            raise CysegError(f"{where} annotates {listed(classes)}, none of --classes {','.join(asked)}; drop that "
                             "dataset or add its classes to --classes")
    missing = [c for c in asked if not any(c in classes for _, classes in declared)]
    if missing:
        raise CysegError(f"--classes names {missing[0]} but no training dataset annotates it; drop it from "
                         "--classes or add a dataset that declares it")
    return asked
