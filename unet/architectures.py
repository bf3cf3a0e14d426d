"""The architectures a model file may name, looked up in an explicit map (as segmentation_models_pytorch's
`create_model` does) rather than registered as a side effect of importing a package."""
from __future__ import annotations

import os
from typing import Any

import torch

from segmenter.base import Segmenter
from segmenter.errors import ModelFileError
from segmenter.modelfile import load_model_file
from unet.segmenter import UNetSegmenter

ARCHITECTURES: dict[str, type[Segmenter]] = {UNetSegmenter.arch: UNetSegmenter}


def segmenter_from_state(content: dict[str, Any], device: str | torch.device | None = None,
                         source: str = "model") -> Segmenter:
    """The segmenter of the architecture a model file's content names."""
    arch = content.get("arch")
    klass = ARCHITECTURES.get(arch) if isinstance(arch, str) else None
    if klass is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelFileError(f"{source} holds architecture {arch!r}; this cyseg knows {known}")
    return klass.from_state(content, device, source)


def load_segmenter(path: str | os.PathLike, device: str | torch.device | None = None) -> Segmenter:
    """Load a model file of any known architecture (`Segmenter.load` on a subclass loads only its own)."""
    return segmenter_from_state(load_model_file(path), device, source=f"model file {path}")
