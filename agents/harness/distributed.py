"""Data parallelism over processes and machines, through 🤗 accelerate (DDP).

Every trainer (SFT, reward model, DPO, PPO, REINFORCE) runs unchanged as one process
(``python scripts/ppo.py ...``) or as N processes (``accelerate launch --multi_gpu
--num_processes N scripts/ppo.py ...``, or ``torchrun --nproc_per_node N ...``). The contract:

- **Global sizes.** ``batch_size`` and ``minibatch_size`` are totals over all processes; each
  process handles 1/N of them (N must divide them). Hyper-parameters, the logged x-axis (prompts
  or pairs consumed) and the number of optimiser steps mean the same with 1 or N processes.
- **Shards.** Online agents draw the iteration's prompts as a pure function of (seed,
  iteration) and process r rolls out ``prompts[r::N]`` with its own random stream (seed + r).
  Offline trainers split every batch of the seeded schedule into N contiguous parts.
- **Gradients.** The forward pass that carries gradients goes through a DDP-wrapped module
  (``Distributed.prepare``), so ``backward()`` averages gradients across processes; each
  process's loss is weighted so that this average equals the single-process batch loss.
- **Reductions.** Advantage whitening, REINFORCE's moving baseline, the KL that drives the
  adaptive controller, and every logged metric are computed over the sequences of all
  processes (means; token counts are summed). Non-finite checks are collective, so every
  process stops together with the same message.
- **Writes.** Only the main process writes TensorBoard events, ``metrics.jsonl``, checkpoints
  and final models; a checkpoint stores each process's RNG state, every process reads it on
  ``--resume`` (resuming with another process count restarts the random streams, with a warning).

Supported: one process, and DDP over CPUs (gloo) or GPUs (nccl), on one or many machines.
FSDP and DeepSpeed shard the weights, while rollouts sample from the whole policy on every
process; they are refused with a clear error rather than run wrongly.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.harness.allocator import keep_freed_memory
from agents.models.precision import compute_device

# Metrics whose value across processes is a sum (counts), not a mean.
SUMMED_METRICS = frozenset({"episode/tokens", "tokens"})


class TrainForward(nn.Module):
    """``fn(*models, *args, **kwargs)`` as the forward pass of a module owning ``models``.

    Wrapping the whole gradient-carrying computation (e.g. PPO's policy logits and critic
    values) in one module lets DDP see every parameter it must synchronise, however the
    computation reaches into the models.
    """

    def __init__(self, fn: Callable[..., Any], models: dict[str, nn.Module]):
        super().__init__()
        self.fn = fn
        self.models = nn.ModuleDict(models)

    def forward(self, *args, **kwargs):
        return self.fn(*self.models.values(), *args, **kwargs)


class Distributed:
    """This process's place in the run: rank, world size, the device its models train on
    (``device``: an ``AgentConfig.device``) and the collectives the trainers use.

    With one process every method is the identity and no collective runs.
    """

    def __init__(self, device: str = "auto"):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        # one accelerator state per process, on the GPU whenever one is visible: "cpu" then
        # only moves this run's models (a process may train on both, one run after the other)
        self.accelerator = Accelerator(cpu=compute_device() == "cpu")
        supported = {DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU}
        kind = self.accelerator.distributed_type
        if kind not in supported:
            raise ValueError(
                f"accelerate distributed_type {kind} is not supported: rollouts and evaluation "
                "sample from the whole policy on every process, which FSDP / DeepSpeed shard. "
                "Use DDP (`accelerate config`: multi-GPU or multi-CPU, no FSDP / DeepSpeed)."
            )
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        # where this process's models train: its GPU (its own under a multi-GPU launch), else
        # the CPU
        self.device = self.accelerator.device
        if self.device.type == "cpu":
            keep_freed_memory()
        wanted = compute_device(device)
        if wanted == "cuda" and self.device.type != "cuda":
            raise ValueError(
                "device='cuda' but accelerate runs this process on the CPU (ACCELERATE_USE_CPU "
                "or `accelerate launch --cpu`); use --device cpu or launch on GPUs"
            )
        if wanted == "cpu" and self.device.type != "cpu":
            if self.world_size > 1:
                raise ValueError(
                    "device='cpu' under a multi-GPU launch: the processes communicate through "
                    "their GPUs; launch on CPUs (accelerate launch --cpu) or use --device auto"
                )
            self.device = torch.device("cpu")

    def place(self, *models: nn.Module) -> None:
        """Move ``models`` to this process's device (in place)."""
        for model in models:
            model.to(self.device)

    # -- shards ---------------------------------------------------------------------------------
    def check_divisible(self, **sizes: int) -> None:
        """Every global size must split evenly over the processes."""
        for name, value in sizes.items():
            if value % self.world_size:
                raise ValueError(
                    f"{name}={value} is a total over all {self.world_size} processes and must be "
                    f"divisible by it (e.g. {self.world_size * max(1, value // self.world_size)})"
                )

    def shard(self, items: Sequence) -> list:
        """This process's share of a global list: ``items[rank::world_size]``."""
        return list(items[self.rank :: self.world_size])

    def split(self, indices: np.ndarray) -> np.ndarray:
        """This process's contiguous part of a batch of indices (sizes differ by at most one)."""
        return np.array_split(indices, self.world_size)[self.rank]

    # -- gradients ------------------------------------------------------------------------------
    def prepare(self, fn: Callable[..., Any], **models: nn.Module) -> nn.Module:
        """A module computing ``fn(*models, ...)``; with several processes it is DDP-wrapped, so
        ``backward()`` through its output averages the models' gradients across processes."""
        module = TrainForward(fn, models)
        if self.world_size == 1:
            return module
        return self.accelerator.prepare_model(module)

    # -- collectives ----------------------------------------------------------------------------
    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes, on ``x``'s device (a new tensor; the input is left
        alone). The collective itself runs on this process's device (NCCL needs GPU tensors)."""
        if self.world_size == 1:
            return x
        out = x.detach().to(self.device, copy=True)
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out.to(x.device)

    def mean(self, x: torch.Tensor) -> float:
        """Mean of all elements of ``x`` over every process."""
        sums = self.all_sum(
            torch.stack(
                [
                    x.detach().float().sum(),
                    torch.tensor(x.numel(), dtype=torch.float32, device=x.device),
                ]
            )
        )
        return (sums[0] / sums[1].clamp(min=1)).item()

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any."""
        if self.world_size == 1:
            return bool(flag)
        return bool(self.all_sum(torch.tensor([float(flag)])).item() > 0)

    def gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order (a one-element list with one process)."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def on_main(self, write: Callable[[], Any]) -> None:
        """Run ``write`` (saving files) on the main process only; every process returns once it
        is done, so what it wrote exists for all of them. Every process must call it
        unconditionally (decide inside ``write`` whether to write)."""
        if self.is_main:
            write()
        self.barrier()

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the processes that report it (``SUMMED_METRICS`` summed)."""
        if self.world_size == 1:
            return dict(metrics)
        everyone = self.gather_object(metrics)
        keys = list(dict.fromkeys(k for m in everyone for k in m))
        out = {}
        for key in keys:
            values = [m[key] for m in everyone if key in m]
            out[key] = float(np.sum(values) if key in SUMMED_METRICS else np.mean(values))
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def found_checkpoint(self, path: str | os.PathLike, found: bool) -> bool:
        """Whether the checkpoint at ``path`` exists (``found``: this process sees it), agreed
        by every process: an error names the processes that cannot see it (``--resume`` across
        machines needs the run directory on a filesystem they share)."""
        seen = self.gather_object(found)
        if any(seen) and not all(seen):
            missing = [rank for rank, found in enumerate(seen) if not found]
            raise FileNotFoundError(
                f"--resume: the checkpoint {path} is visible to some processes but not to "
                f"process(es) {missing}; put the run directory on a filesystem every machine shares"
            )
        return all(seen)

    def own_rng(self, saved: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any] | None:
        """This process's RNG state from a checkpoint's list (``None``: restart the stream)."""
        states = [saved] if isinstance(saved, dict) else list(saved)
        if len(states) == self.world_size:
            return states[self.rank]
        if self.is_main:
            warnings.warn(
                f"the checkpoint was written by {len(states)} process(es) and this run has "
                f"{self.world_size}: weights, optimiser and counters resume, the random streams "
                "restart from the seed",
                stacklevel=2,
            )
        return None


def local_world_size() -> int:
    """Processes launched on this machine (1 outside ``accelerate launch`` / ``torchrun``)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def print_on_main(text: str) -> None:
    """``print`` on the main process only (a CLI's summary line is printed once, not N times)."""
    if Distributed().is_main:
        print(text)


def set_num_threads(threads: int | None = None) -> None:
    """Share the cores among the processes launched on this machine (all of them for a single
    process) unless told otherwise, flush denormal floats to zero, and keep freed memory for
    reuse (``agents.harness.allocator``).

    Without the flush, Adam's tiny second-moment values turn into denormals after the first
    steps and every optimiser step on CPU runs >10x slower (measured on the tiny GPT-2).
    """
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads or max(1, cores // local_world_size()))
    torch.set_flush_denormal(True)
    keep_freed_memory()
