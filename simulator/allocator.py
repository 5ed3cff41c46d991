"""Keep freed memory in the process instead of returning it to the kernel after every round (glibc).

A vectorised cohort allocates a few stacked tensors of ``clients × parameters`` floats per local step (the
stacked weights, their gradients, the momentum buffers) and frees them at the end of the step. glibc serves
blocks of this size (megabytes) with ``mmap`` and unmaps them on ``free``, so every step pays a page fault
per 4 KiB page when the memory is touched again: on the 500-client MLP workload of
``benchmarks/bench_engines.py`` that was about 3,000 faults and more than half of a round's training time.
Raising glibc's mmap threshold (to its 32 MiB maximum) and trim threshold keeps those blocks in the heap for
reuse, which is what PyTorch's CPU performance guides achieve by preloading jemalloc or tcmalloc.

The cost: up to ``TRIM_THRESHOLD`` bytes of freed memory stay mapped to the process. It is applied once per
process by the code that trains clients (:func:`simulator.flower.runtime.build_runtime`), never on import;
set ``PRIVSIM_MALLOC_TUNING=0`` to leave the allocator alone. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 256 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for this process (once); whether it was tuned."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("PRIVSIM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
