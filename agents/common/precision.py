"""Precision: bf16 autocast where the CPU/GPU supports it, fp32 otherwise.

Only matmuls run in bf16 under autocast; callers cast logits to fp32 before log-softmax, so
log-probs, KL and losses are always computed in fp32.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul support (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def compute_device() -> str:
    """Where the agents run their models: ``"cuda"`` when a GPU is visible, else ``"cpu"``
    (the device ``agents.common.distributed.Distributed`` places them on)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str | None = None) -> str:
    """``"auto"`` → ``"bf16"`` where supported, else ``"fp32"``; explicit values are checked."""
    device = device or compute_device()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    supported = torch.cuda.is_bf16_supported() if device.startswith("cuda") else cpu_supports_bf16()
    if precision == "auto":
        return "bf16" if supported else "fp32"
    return precision


def autocast(precision: str, device: str | None = None) -> contextlib.AbstractContextManager:
    """A context manager running the forward pass in ``precision`` (already resolved) on
    ``device`` (default: ``compute_device()``)."""
    device = device or compute_device()
    if precision == "bf16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()
