"""Atomic checkpoints: write everything to a temporary directory, then rename it into place.

A checkpoint directory holds one ``save_pretrained`` sub-directory per model (safetensors; for a
LoRA policy, ``peft``'s: the adapter only), the
tokenizer, and ``state.pt`` (optimiser states, controller state, RNG states, counters), loaded
with ``torch.load(weights_only=True)``. A run killed mid-write leaves the previous checkpoint
intact; ``--resume`` loads the newest complete one.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from agents.models.critic import ValueModel
from agents.models.lora import is_lora, load_adapter_into

STATE_FILE = "state.pt"


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, numpy (global) and torch RNG states (plus an explicit generator's), as plain data."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state()[1].tolist(),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"]))
    torch.set_rng_state(state["torch"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: incomplete, corrupt, or another agent's or config's.
    The message names the file or the difference."""


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; once the block finishes, it replaces
    ``path`` (an interrupted write leaves the previous ``path`` intact, or ``path.old`` that
    ``load_checkpoint_state`` falls back to)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    path: str | Path, models: dict[str, Any], state: dict[str, Any], tokenizer=None
) -> Path:
    """Write ``models`` (name → model with ``save_pretrained``), ``tokenizer`` and ``state``
    to ``path`` atomically (the old checkpoint is replaced only once the new one is complete)."""
    with atomic_directory(path) as tmp:
        for name, model in models.items():
            model.save_pretrained(tmp / name, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / name)
        torch.save(state, tmp / STATE_FILE)
    return Path(path)


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """``state.pt`` of a complete checkpoint (falls back to ``<path>.old`` if a rename was cut)."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not (path / STATE_FILE).is_file() and (old / STATE_FILE).is_file():
        try:
            os.replace(old, path)
        except FileNotFoundError:  # another process of the same run moved it first
            pass
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"no complete checkpoint at {path} (missing {path / STATE_FILE})")
    try:
        return torch.load(path / STATE_FILE, weights_only=True)
    except Exception as e:  # truncated or corrupt: name the file
        raise CheckpointError(
            f"cannot read {path / STATE_FILE} (corrupt or truncated?): {e}"
        ) from e


def load_weights_into(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the weights ``save_checkpoint`` wrote for ``model`` at ``path`` into it, in place
    (so optimisers keep pointing at its parameters). A LoRA policy's checkpoint is its adapter."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"the checkpoint has no {path.name!r} weights: {path} is missing")
    try:
        if is_lora(model):
            load_adapter_into(model, path)
            return
        if isinstance(model, ValueModel):
            saved = ValueModel.from_pretrained(path)
        else:
            saved = type(model).from_pretrained(
                path, local_files_only=True, trust_remote_code=False, use_safetensors=True
            )
    except SafetensorError as e:  # a truncated or corrupt weights file: name it
        files = ", ".join(str(f) for f in sorted(path.glob("*.safetensors")))
        raise CheckpointError(f"cannot read {files} (corrupt or truncated?): {e}") from e
    except (OSError, ValueError, RuntimeError) as e:
        files = ", ".join(sorted(f.name for f in path.iterdir()))
        raise CheckpointError(f"cannot load the weights in {path} ({files}): {e}") from e
    model.load_state_dict(saved.state_dict())


def checkpoint_status(path: str | Path) -> str:
    """``"complete"`` (or recoverable from ``<path>.old``), ``"incomplete"`` (the directory
    exists without ``state.pt``) or ``"missing"``."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if (path / STATE_FILE).is_file() or (old / STATE_FILE).is_file():
        return "complete"
    return "incomplete" if path.is_dir() else "missing"


def has_checkpoint(path: str | Path) -> bool:
    return checkpoint_status(path) == "complete"
