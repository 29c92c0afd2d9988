"""Agent configs: small dataclasses composed into one ``XConfig`` per agent, validated on
construction (``agents.checks``).

Every agent config derives (one level) from ``AgentConfig`` — what every run has: seed,
precision, how often it logs and checkpoints, whether it resumes — and composes the small
option groups it uses as fields: ``optim: OptimConfig``, ``sampling: SamplingConfig``,
``lora: LoraOptions``, ``kl: KLConfig``. Each dataclass checks its own fields in
``__post_init__`` and names the field, the bad value and the valid range. ``build_config``
builds one from flat options (``"optim.learning_rate"``); ``scripts.flags`` turns one into
command-line options. The fingerprint of a config (``resume_fingerprint``) is what resumes and
the studies' stage keys compare.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from agents.checks import (
    as_container,
    check_bool,
    check_choice,
    check_number,
    check_positive,
    field_types,
)
from agents.models.precision import DEVICES, PRECISIONS, check_device


@dataclasses.dataclass
class OptimConfig:
    """The optimiser every agent uses: AdamW, optional warm-up, constant or linear schedule.

    The bare default learning rate is TRL's for GRPO, DPO and RLOO (1e-6), for a pretrained
    checkpoint; each agent sets its own (``agents.presets`` holds the tiny models' values)."""

    learning_rate: float = 1e-6
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up over this many optimiser steps."""
    lr_schedule: str = "constant"
    """After warm-up: constant | linear (decay to 0 at the last step)."""
    max_grad_norm: float = 1.0
    """Clip each model's gradient norm to this (0 = no clipping)."""
    fused_adamw: bool = True
    """torch's fused AdamW kernel (one pass over all parameters: ~7x faster than the loop on a
    135M model on 2 CPU cores; TRL's default, ``optim="adamw_torch_fused"``); False: torch's
    per-parameter loop (its CPU default; the tiny models' presets keep it, for their results
    bit for bit — the two agree to ~1e-7 per step, not to the bit)."""

    def __post_init__(self) -> None:
        check_positive("learning_rate", self.learning_rate, float)
        check_positive("weight_decay", self.weight_decay, float, allow_zero=True)
        check_positive("warmup_steps", self.warmup_steps, allow_zero=True)
        check_choice("lr_schedule", self.lr_schedule, ("constant", "linear"))
        check_positive("max_grad_norm", self.max_grad_norm, float, allow_zero=True)
        check_bool("fused_adamw", self.fused_adamw)


@dataclasses.dataclass
class AgentConfig:
    """What every training run has. Agent configs derive from it (one level) and add their own
    fields and option groups."""

    seed: int = 0
    """Seeds initialisation, data order, prompt draws and sampling."""
    precision: str = "fp32"
    """Forward-pass precision: auto | bf16 | fp32 (log-probs, KL and losses stay fp32)."""
    device: str = "auto"
    """Where the models train: auto (CUDA when a GPU is visible) | cpu | cuda; env and reward
    models stay on the CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    log_every: int = 10
    """Write a log point (TensorBoard, metrics.jsonl, summary line) every this many steps,
    averaging the steps since the last one (0 = only at evaluations and the end)."""
    save_every: int = 100
    """Write an atomic checkpoint every this many steps (0 = only at the end)."""
    resume: bool = False
    """Continue from run_dir/checkpoint (an error if it was written by another agent or config)."""

    def __post_init__(self) -> None:
        check_number("seed", self.seed, int)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        check_device(self.device)
        check_bool("gradient_checkpointing", self.gradient_checkpointing)
        check_positive("log_every", self.log_every, allow_zero=True)
        check_positive("save_every", self.save_every, allow_zero=True)
        check_bool("resume", self.resume)


# Fields that may differ between a run and its resumption (they change no result, or only its
# rounding: the device, recomputed activations).
RESUMABLE_CHANGES = frozenset(
    {"resume", "log_every", "save_every", "total_prompts", "device", "gradient_checkpointing"}
)


def to_jsonable(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=str))


def resume_fingerprint(config: Any) -> dict[str, Any]:
    """The config as plain data, less the fields a resumed run may change."""
    return {k: v for k, v in to_jsonable(config).items() if k not in RESUMABLE_CHANGES}


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from flat ``{"field": v, "group.field": v}`` values; a group's fields not in
    ``values`` keep the defaults of ``cls``'s own factory for it (GRPO's ``kl`` group keeps its
    k3 estimator when only ``kl.beta`` is given)."""
    hints, kwargs = field_types(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            inner = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f.name + ".")}
            group_hints = field_types(hints[f.name])
            inner = {k: as_container(group_hints.get(k), v) for k, v in inner.items()}
            kwargs[f.name] = dataclasses.replace(f.default_factory(), **inner)
        elif f.name in values:
            kwargs[f.name] = as_container(hints[f.name], values[f.name])
    return cls(**kwargs)
