"""Models shipped with cyseg ('default': nuclei / cell foreground U-Net; provenance inside the file)."""
from __future__ import annotations

from pathlib import Path

from segmenter.errors import ModelFileError

SHIPPED = {"default": Path(__file__).with_name("default.pt")}


def resolve_model(name: str) -> Path:
    """A shipped model's path for its name, else `name` as a path."""
    if name in SHIPPED:
        if not SHIPPED[name].exists():
            raise ModelFileError(f"the shipped model '{name}' is missing from {SHIPPED[name]}; reinstall cyseg")
        return SHIPPED[name]
    return Path(name)
