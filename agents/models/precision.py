"""Device and precision: where the agents run their models, and in which forward precision.

``auto`` precision picks the faster one for the model and the device: bf16 autocast on a GPU
that supports it; on the CPU fp32, except the model types measured faster under bf16 autocast
(``CPU_BF16_FASTER``) on a CPU with native bf16 matmuls. Only matmuls run in bf16 under
autocast; callers cast logits to fp32 before log-softmax, so log-probs, KL and losses are always
computed in fp32.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")

CPU_BF16_FASTER = frozenset({"gpt2"})
"""Model types whose training step is faster under bf16 autocast than in fp32 on a CPU with
AVX512-BF16: the tiny GPT-2s of the built-in tasks (2.5x, measured on 2 cores). A Llama's
backward was ~20x slower under CPU autocast, so every other type runs fp32 there."""


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul support (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_device(device: str) -> None:
    """``device="cuda"`` needs a visible GPU: else an error naming the option."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device cuda needs a CUDA GPU and none is visible (torch.cuda.is_available() is "
            "False); use --device cpu or --device auto"
        )


def compute_device(device: str = "auto") -> str:
    """Where the agents run their models: ``"cuda"`` for ``device="cuda"``, and for ``"auto"``
    when a GPU is visible, else ``"cpu"`` (``agents.harness.distributed.Distributed`` places
    them there, each process of a multi-GPU launch on its own GPU)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_type_of(model: torch.nn.Module) -> str | None:
    """``config.model_type`` of ``model`` (of a LoRA policy: of its base model)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(inner, "config", None), "model_type", None)


def resolve_precision(
    precision: str,
    device: str | torch.device | None = None,
    model: torch.nn.Module | None = None,
    model_type: str | None = None,
) -> str:
    """``"auto"`` → the faster precision for the model (``model``, or its ``model_type``) on
    ``device`` (default: the model's, else ``compute_device()``): ``"bf16"`` on a GPU with bf16
    support; on the CPU ``"bf16"`` only for ``CPU_BF16_FASTER`` types on a CPU with native bf16
    matmuls; else ``"fp32"``. Explicit values are checked and returned."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device is None and model is not None:
        device = next(model.parameters()).device
    if torch.device(device or compute_device()).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if model_type is None and model is not None:
        model_type = model_type_of(model)
    return "bf16" if model_type in CPU_BF16_FASTER and cpu_supports_bf16() else "fp32"


def autocast(precision: str, device: str | None = None) -> contextlib.AbstractContextManager:
    """A context manager running the forward pass in ``precision`` (already resolved) on
    ``device``; default: the CPU and, when one is visible, the GPU, so it covers the model
    wherever it was placed (autocast of one device type leaves other devices' ops alone)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    kinds = [device.split(":")[0]] if device else ["cpu"] + ["cuda"] * torch.cuda.is_available()
    return _bf16_autocast(kinds)


@contextlib.contextmanager
def _bf16_autocast(kinds: list[str]):
    with contextlib.ExitStack() as stack:
        for kind in kinds:
            stack.enter_context(torch.autocast(device_type=kind, dtype=torch.bfloat16))
        yield
