"""Process memory policy for inference and training on the CPU (glibc only; a no-op elsewhere).

PyTorch takes every CPU tensor above glibc's mmap threshold (a full-resolution U-Net activation)
from fresh `mmap` pages that the kernel zeroes and maps again on every forward pass: page faults
and zeroing paid for every activation, every time. Keeping freed blocks in the heap instead, and
handing them back explicitly between windows, removes that work; the benchmarks run with this
policy, as every cyseg command does (bench/throughput.py, bench/wsi.py).

The cyclic garbage collector is told to ignore what the process holds once its model is loaded
(`freeze_loaded_objects`): see there."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (release_freed_memory runs after every window)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Serve large tensors from the heap and keep freed memory there until
    `release_freed_memory`; returns whether the C library supports it."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    log.debug("heap keeps freed memory: %s", ok)
    return ok


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (after a window, so peak RSS stays bounded by one
    window's working set)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def freeze_loaded_objects() -> None:
    """Hide every object alive now (imported modules, the loaded model) from the cyclic garbage
    collector's full collections, which the many small lists of polygon tracing and GeoJSON export
    trigger: each would traverse again every object torch and the model hold, although they live
    as long as the process. Garbage is collected first, so none is kept for good; objects created
    later are collected as before."""
    gc.collect()
    gc.freeze()
    log.debug("%d loaded objects frozen out of the cyclic collector", gc.get_freeze_count())
