"""Reduced precision where the hardware computes it natively: float16 on CUDA, bfloat16 on CPUs
with AVX512-BF16 or AMX (half the memory traffic, on native matrix units; bench/throughput.py
times the forward pass in both: docs/benchmarks.md, "Throughput"); float32 on other CPUs, where
bfloat16 would be emulated and slower."""
from __future__ import annotations

import contextlib
import functools

import torch


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and bool(check()) for check in checks)


def reduced_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision `device` computes natively, or None where float32 is fastest."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def precision_name(device: torch.device, enabled: bool = True) -> str:
    """'float16', 'bfloat16' or 'float32': what `autocast(device, enabled)` computes in."""
    dtype = reduced_dtype(device) if enabled else None
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Autocast to the device's native reduced precision (a no-op when disabled or unavailable)."""
    dtype = reduced_dtype(device) if enabled else None
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
