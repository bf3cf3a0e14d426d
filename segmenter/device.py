"""Device selection: CUDA when available, else CPU, or what the user asks for with --device."""
from __future__ import annotations

import torch

from segmenter.errors import CysegError


def resolve_device(name: str | None = None) -> torch.device:
    """Turn 'auto' / None / 'cpu' / 'cuda' / 'cuda:N' / 'mps' into a usable torch.device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CysegError(f"device '{name}' is not a device name; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CysegError(f"device '{name}' asked for but no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CysegError(f"device '{name}' does not exist ({torch.cuda.device_count()} GPU(s)); use cuda:0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CysegError(f"device '{name}' asked for but MPS is not available; use --device cpu")
    return device


def out_of_memory_message(device: torch.device, what: str) -> str:
    """The one-line advice given when the device runs out of memory."""
    return (f"out of memory on {device} while {what}; lower --batch or --tile (or use --device cpu)")
