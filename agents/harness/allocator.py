"""Keep freed CPU memory for reuse instead of handing it back to the OS (glibc's malloc).

By default glibc serves every allocation above a threshold (128 KiB, growing to at most 32 MiB)
with its own ``mmap`` and returns it with ``munmap`` when freed, so each new large tensor —
a (B, T, vocab) log-softmax, an activation, a gradient — faults in fresh zeroed pages. On a
135M-parameter Llama with a 49k vocabulary that page-faulting was most of the time of the
element-wise work: ``distribution_scores`` on (8, 24, 49152) logits took 0.125 s by default and
0.045 s with freed memory kept; one forward + backward of 8 sequences 3.9 s → 2.0 s; a whole
GRPO iteration 8.5 s → 6.6 s (2 cores, ``scripts/bench_real.py``). PyTorch's own CPU tuning
guides recommend jemalloc or tcmalloc for the same reason; this needs no preload.

``keep_freed_memory()`` raises the mmap and trim thresholds to 1 GiB through ``mallopt``: the
numbers computed are the same bit for bit (the quick pipeline's results.json unchanged), but
memory freed stays in the process for reuse, so the resident size does not shrink back between
iterations and its peak grows a little (the quick pipeline's runs: 540 → 580 MB). Applied once
per process on CPU (``set_num_threads``, and every agent's ``Distributed``); set
``TOKENMDP_KEEP_FREED_MEMORY=0`` to leave malloc alone. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

THRESHOLD = 1 << 30
"""Bytes: allocations below it come from the heap, and the heap is trimmed only above it."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; True when they are in force (glibc, not opted
    out with ``TOKENMDP_KEEP_FREED_MEMORY=0``)."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("TOKENMDP_KEEP_FREED_MEMORY", "1") != "0":
            libc = _glibc()
            if libc is not None:
                _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD)
                )
    return _applied


def _glibc():
    """The process's C library if it is glibc (it has ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
