"""The agent contract and the one training loop every agent runs.

An agent is ``XConfig`` (an ``AgentConfig``) + ``X(Agent)``: ``learn(callback=None) -> history``,
``save(path)``, ``X.load(path, ...) -> X``. The algorithm file provides what differs:

- ``_num_steps()``: steps in the run; ``_step_size(step)``: examples (prompts, pairs) that
  step consumes — the x-axis of every logged scalar;
- ``_train_step(step) -> stats``: one iteration (online: a rollout batch and its update) or
  one optimiser step (offline); ``stats`` may carry ``tokens`` (summed, for throughput);
- optionally ``_evaluate()`` and ``_eval_due(done)``, ``_models()`` (what checkpoints
  hold besides the policy), ``_state()``/``_load_state()`` (the algorithm's own state, e.g.
  a KL controller's β).

Everything else lives here, once: the run directory (``config.json``, ``run.json``,
TensorBoard events, ``metrics.jsonl``), log points averaging the steps since the last one,
Stable-Baselines3 callbacks, learning-rate schedules, gradient clipping, atomic checkpoints
that record the agent type and a fingerprint of its config, ``resume`` (which refuses another
agent's or another config's checkpoint), the stop on a non-finite value (the last good
checkpoint is kept), and the final model in ``run_dir/final`` written atomically.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.harness.callbacks import CallbackRunner
from agents.harness.checkpoint import (
    CheckpointError,
    atomic_directory,
    checkpoint_status,
    has_checkpoint,
    load_checkpoint_state,
    load_weights_into,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from agents.harness.config import AgentConfig, OptimConfig, fingerprint_hash, resume_fingerprint
from agents.harness.distributed import Distributed
from agents.harness.logging import RunLogger
from agents.models.lora import is_lora, save_policy, trainable_parameters

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
RUN_FILE = "run.json"
SUMMARY_KEYS = ("loss/total", "reward/train", "reward/gold", "kl/ref", "kl/beta", "episode/length")


class TrainingStopped(RuntimeError):
    """A non-finite loss, gradient or reward, or a failing reward model: the run stops and the
    last good checkpoint stays on disk."""


def make_optimizer(
    params: list[torch.nn.Parameter], optim: OptimConfig, total_steps: int, lr: float | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its schedule over the run's ``total_steps`` loop steps: linear warm-up over
    ``warmup_steps``, then constant or linear decay to 0 at ``total_steps``."""
    optimizer = torch.optim.AdamW(
        params,
        lr=lr or optim.learning_rate,
        weight_decay=optim.weight_decay,
        fused=optim.fused_adamw,
    )
    warmup, linear = optim.warmup_steps, optim.lr_schedule == "linear"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup)) if linear else 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"learning_rate": v}}`` → ``{"optim.learning_rate": v}``: a changed option
    of a group is named on its own."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def summary_line(record: dict[str, float]) -> str:
    parts = [f"{k}={record[k]:.4g}" for k in SUMMARY_KEYS if k in record]
    return f"step {record['step']} examples {record['examples']}: " + " ".join(parts)


class Agent:
    """The contract and training loop (see the module docstring). Subclasses set ``config``,
    ``run_dir``, ``dist``, ``policy``, ``tokenizer``, ``optimizers`` (name → (optimizer,
    schedule); the name is the model's in ``_models()``) and optionally ``generator``."""

    agent_name = "agent"
    config: AgentConfig
    run_dir: Path
    dist: Distributed
    optimizers: dict[str, tuple[torch.optim.Optimizer, Any]]
    generator: torch.Generator | None = None

    def __init__(self) -> None:
        self.step = 0  # loop steps done
        self.num_timesteps = 0  # examples consumed: the x-axis (SB3's name, for callbacks)
        self.history: list[dict[str, float]] = []
        self.window: list[dict[str, float]] = []  # the steps since the last log point
        self.logger: RunLogger | None = None

    # -- what an algorithm provides ---------------------------------------------------------------
    def _num_steps(self) -> int:
        raise NotImplementedError

    def _step_size(self, step: int) -> int:
        raise NotImplementedError

    def _train_step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def _evaluate(self) -> dict[str, float]:
        return {}

    def _eval_due(self, done: int) -> bool:
        return False

    def _models(self) -> dict[str, Any]:
        return {"policy": self.policy}

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        pass

    # -- helpers for the algorithms ---------------------------------------------------------------
    def get_env(self):
        """The rollout env of an online agent (Stable-Baselines3's ``get_env()``), else None."""
        return getattr(self, "env", None)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    def _stop(self, reason: str):
        kept = (
            f"the last good checkpoint is kept at {self.checkpoint_dir} (continue with "
            "resume=True / --resume, e.g. with a lower learning rate)"
            if checkpoint_status(self.checkpoint_dir) == "complete"
            else "no checkpoint was saved yet"
        )
        raise TrainingStopped(
            f"{self.agent_name}: stopping at step {self.step + 1} ({self.num_timesteps} examples "
            f"consumed): {reason}; {kept}"
        )

    def _check_finite(self, name: str, value: torch.Tensor) -> None:
        """Stop (every process at once) if ``value`` has a NaN/inf on any process."""
        finite = bool(torch.isfinite(value).all())
        if self.dist.any(not finite):
            bad = value[~torch.isfinite(value)].flatten()[0].item() if not finite else None
            self._stop(f"{name} is non-finite ({bad if not finite else 'on another process'})")

    def _apply_gradients(self, *names: str) -> dict[str, float]:
        """Clip each named model's gradient norm to ``max_grad_norm``, stop if one is
        non-finite, then step and zero its optimiser. The caller has run ``backward()``."""
        clip = self.config.optim.max_grad_norm or math.inf
        models, stats = self._models(), {}
        for name in names:
            norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(models[name]), clip)
            self._check_finite(f"gradient norm of {name}", norm)
            stats[f"grad_norm/{name}"] = norm.item()
        for name in names:
            optimizer = self.optimizers[name][0]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return stats

    # -- checkpoints ------------------------------------------------------------------------------
    def _provenance(self) -> dict[str, Any]:
        fingerprint = resume_fingerprint(self.config)
        return {
            "agent": self.agent_name,
            "config": fingerprint,
            "hash": fingerprint_hash(fingerprint),
        }

    def save_checkpoint(self) -> Path:
        """Write the run's state atomically (main process; every process must call it)."""
        rngs = self.dist.gather_object(rng_state(self.generator))  # one per process
        state = {
            "provenance": self._provenance(),
            "step": self.step,
            "examples": self.num_timesteps,
            "history": self.history,
            "window": self.window,
            "optimizers": {k: opt.state_dict() for k, (opt, _) in self.optimizers.items()},
            "schedules": {k: sched.state_dict() for k, (_, sched) in self.optimizers.items()},
            "rng": rngs,
            "extra": self._state(),
        }
        self.dist.on_main(
            lambda: save_checkpoint(self.checkpoint_dir, self._models(), state, self.tokenizer)
        )
        self._checkpoint_step = self.step
        return self.checkpoint_dir

    def _check_provenance(self, saved: dict[str, Any]) -> None:
        mine, path = self._provenance(), self.checkpoint_dir
        if saved["agent"] != mine["agent"]:
            raise CheckpointError(
                f"--resume: {path} was written by the {saved['agent']!r} agent, not "
                f"{mine['agent']!r}; use another run directory or the agent that wrote it"
            )
        if saved["hash"] != mine["hash"]:
            before, after = flat_config(saved["config"]), flat_config(mine["config"])
            changed = [
                f"{k}: {before.get(k)!r} -> {after.get(k)!r}"
                for k in sorted(set(before) | set(after))
                if before.get(k) != after.get(k)
            ]
            raise CheckpointError(
                f"--resume: {path} was written with another config ({'; '.join(changed)}); "
                "resume with the same options, or start a new run directory"
            )

    def restore_checkpoint(self) -> None:
        """Continue from ``run_dir/checkpoint``: weights, optimisers, schedules, RNG states,
        counters, history, the algorithm's state. Refuses another agent's or config's."""
        state = load_checkpoint_state(self.checkpoint_dir)
        if "provenance" not in state:
            raise CheckpointError(f"--resume: {self.checkpoint_dir} records no agent or config")
        self._check_provenance(state["provenance"])
        for name, model in self._models().items():
            load_weights_into(model, self.checkpoint_dir / name)
        for name, (optimizer, schedule) in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            schedule.load_state_dict(state["schedules"][name])
        own = self.dist.own_rng(state["rng"])
        if own is not None:
            set_rng_state(own, self.generator)
        self.step, self.num_timesteps = int(state["step"]), int(state["examples"])
        self.history, self.window = list(state["history"]), list(state["window"])
        self._load_state(state["extra"])

    def _start(self) -> None:
        """Seed a fresh run, or resume if asked (saying so when there is nothing to resume);
        record the run."""
        if self.step == 0:
            torch.manual_seed(self.config.seed)
        if self.config.resume:
            status = checkpoint_status(self.checkpoint_dir)
            agreed = self.dist.found_checkpoint(
                self.checkpoint_dir, has_checkpoint(self.checkpoint_dir)
            )
            if status == "incomplete":
                raise CheckpointError(
                    f"--resume: {self.checkpoint_dir} is incomplete (no state.pt); delete it to "
                    "start over, or restore it"
                )
            if agreed:
                self.restore_checkpoint()
            elif self.dist.is_main:
                print(f"{self.agent_name}: no checkpoint in {self.run_dir}, starting from step 0",
                      file=sys.stderr)  # fmt: skip

        def write() -> None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / RUN_FILE).write_text(json.dumps(self._provenance(), indent=2))
            lines = "".join(json.dumps(h) + "\n" for h in self.history)
            (self.run_dir / METRICS_FILE).write_text(lines)

        self.dist.on_main(write)

    # -- the loop ---------------------------------------------------------------------------------
    def learn(self, callback=None) -> list[dict[str, float]]:
        """Train to the end of the run; returns one metrics dict per log point (those before a
        resume included; also ``run_dir/metrics.jsonl``). ``callback``: Stable-Baselines3
        callback(s), called after every step (see ``agents.harness.callbacks``)."""
        self._start()
        main, n_steps = self.dist.is_main, self._num_steps()
        logger = RunLogger(self.run_dir, self.config, enabled=main, purge_step=self.num_timesteps)
        hooks = CallbackRunner(callback, self, self.dist, logger)
        bar = tqdm(total=n_steps, initial=self.step, desc=self.agent_name, disable=not main)
        hooks.start(self.num_timesteps, locals())
        tic = time.perf_counter()
        try:
            while self.step < n_steps:
                stats = self._train_step(self.step)
                for _, schedule in self.optimizers.values():
                    schedule.step()
                self.num_timesteps += self._step_size(self.step)
                self.step += 1
                self.window.append(stats)
                stop = not hooks.step(self.num_timesteps, {"stats": stats})
                last = self.step == n_steps or stop
                every = self.config.log_every
                evaluate = last or self._eval_due(self.step)
                if (every and self.step % every == 0) or evaluate:
                    self._log_point(logger, time.perf_counter() - tic, bar, evaluate)
                    tic = time.perf_counter()
                every = self.config.save_every
                if (every and self.step % every == 0) or last:
                    self.save_checkpoint()
                bar.update(1)
                if stop:
                    break
        finally:
            bar.close()
            logger.close()
        hooks.end()
        self.save(self.run_dir / FINAL_DIR)
        return self.history

    def _log_point(self, logger: RunLogger, seconds: float, bar, evaluate: bool) -> None:
        """Average the window's steps (token counts summed), evaluate if due, write the point."""
        window, self.window = self.window, []
        keys = dict.fromkeys(k for w in window for k in w)
        metrics = {k: float(np.mean([w[k] for w in window if k in w])) for k in keys}
        metrics["tokens"] = float(sum(w.get("tokens", 0) for w in window))
        metrics = self.dist.reduce_metrics(metrics)
        metrics["perf/seconds_per_iter"] = seconds / len(window)
        metrics["perf/tokens_per_s"] = metrics.pop("tokens") / max(seconds, 1e-9)
        if evaluate:
            evaluation = self._evaluate() if self.dist.is_main else None
            metrics.update(self.dist.broadcast_object(evaluation) or {})
        previous = self.history[-1]["time/wall"] if self.history else 0.0
        metrics["time/wall"] = previous + seconds
        for name, (_, schedule) in self.optimizers.items():
            metrics[f"optim/lr_{name}"] = schedule.get_last_lr()[0]
        record = {"step": self.step, "examples": self.num_timesteps, **metrics}
        self.history.append(record)
        logger.log(self.num_timesteps, {k: v for k, v in metrics.items() if "/" in k})
        if self.dist.is_main:
            with (self.run_dir / METRICS_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.config.log_every:
                tqdm.write(summary_line(record))
        bar.set_postfix(
            {k.split("/")[-1]: f"{record[k]:.3f}" for k in SUMMARY_KEYS[:4] if k in record}
        )

    # -- saving -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """What ``load`` needs (``_save_files``), written atomically by the main process; every
        process returns once it exists."""
        path = Path(path)

        def write() -> None:
            with atomic_directory(path) as tmp:
                if not self._link_checkpoint(tmp):
                    self._save_files(tmp)

        self.dist.on_main(write)
        return path

    def _link_checkpoint(self, target: Path) -> bool:
        """Hard-link into ``target`` the policy files of the checkpoint written at this very
        step — what ``_save_files`` would write, without serialising the weights a second time
        (a 135M model's ``final/`` after its last checkpoint: ~3 s saved). False, and nothing
        linked, where that does not hold: an agent that saves more than its policy, a LoRA
        policy (its checkpoint is the adapter), no checkpoint at this step, or a file system
        without hard links. Safe: a later checkpoint replaces its directory, it never rewrites
        the linked files in place."""
        source = self.checkpoint_dir / "policy"
        if (
            type(self)._save_files is not Agent._save_files
            or is_lora(self.policy)
            or getattr(self, "_checkpoint_step", None) != self.step
            or not source.is_dir()
        ):
            return False
        files = [f for f in source.iterdir() if f.is_file()]
        try:
            for f in files:
                os.link(f, target / f.name)
        except OSError:
            for f in target.iterdir():
                f.unlink()
            return False
        return True

    def _save_files(self, path: Path) -> None:
        """The policy (``from_pretrained`` loadable; LoRA merged, adapter in ``adapter/``) and
        its tokenizer."""
        save_policy(self.policy, path, self.tokenizer)
