"""What PPO and REINFORCE share: the env, the frozen reference, the one-pass scoring of a rollout,
and a ``learn()`` loop with logging, atomic checkpoints, ``--resume`` and non-finite guards.

An ``OnlineAgent`` subclass sets ``agent_name`` and implements ``_iteration()`` (one rollout
batch → one update, returning its metrics); it may add models/optimisers/state to the
checkpoint through ``_models()``, ``_optimizers()``, ``_extra_state()``/``_load_extra_state()``.

Under ``accelerate launch`` each process rolls out its shard of every batch (see
``agents.common.distributed``); ``learn()`` reduces the metrics over processes before logging
and before the KL controller sees them, and only the main process writes.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from agents.common.callbacks import CallbackRunner
from agents.common.checkpoint import (
    has_checkpoint,
    load_checkpoint_state,
    load_weights_into,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from agents.common.distributed import Distributed
from agents.common.kl import exact_kl, make_kl_controller
from agents.common.logging import RunLogger
from agents.common.lora import BaseWeightsReference, LoraOptions, is_lora, save_policy, with_lora
from agents.common.losses import entropy_from_logits
from agents.common.policy import (
    SamplingConfig,
    check_same_tokenizer,
    completion_logits,
    gather_logprobs,
    load_policy,
    process_logits,
)
from agents.common.precision import autocast, resolve_precision
from agents.common.rollout import Rollout, rollout
from llm_env.vector import TokenMDPVectorEnv
from reward_models.base import RewardModelError

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"


@dataclass
class OnlineConfig(LoraOptions):
    """Options every online agent (PPO, REINFORCE) shares (LoRA options included)."""

    seed: int = 0
    """Seeds prompt draws, sampling, minibatch order and initialisation."""
    total_prompts: int = 8192
    """Stop after this many prompts (x-axis of every logged scalar)."""
    batch_size: int = 64
    """Prompts per rollout batch / iteration (in total over all processes)."""
    minibatch_size: int = 16
    """Sequences per gradient step."""
    learning_rate: float = 3e-4
    """Adam learning rate of the policy."""
    anneal_lr: bool = False
    """Decay the learning rates linearly to 0 over total_prompts."""
    beta: float = 0.05
    """Initial KL coefficient β."""
    kl_target: float | None = None
    """Target sequence KL for the adaptive controller (None = fixed β)."""
    kl_horizon: float = 10000.0
    """Horizon (in prompts) of the adaptive KL controller."""
    temperature: float = 1.0
    """Sampling temperature (log-probs are those of the tempered distribution)."""
    top_k: int = 0
    """Top-k truncation while sampling (0 = off)."""
    top_p: float = 1.0
    """Nucleus truncation while sampling (1.0 = off)."""
    max_grad_norm: float = 1.0
    """Clip each model's gradient norm to this."""
    no_eos_penalty: float = 0.0
    """Added to the reward of completions cut at the length limit without EOS (use < 0)."""
    ref_policy: str | None = None
    """Reference model directory (None = the initial policy: a frozen copy, or with LoRA the
    base weights with the adapters disabled)."""
    precision: str = "auto"
    """"auto" | "bf16" | "fp32" for forward passes; log-probs, KL and losses are fp32."""
    save_every: int = 10
    """Checkpoint every this many iterations (0 = only at the end)."""
    resume: bool = False
    """Continue from run_dir/checkpoint if it exists."""
    log_every: int = 1
    """Print a summary line every this many iterations (TensorBoard gets every iteration)."""


class TrainingStopped(RuntimeError):
    """A non-finite loss or reward: the run stops, the last good checkpoint stays on disk."""


@dataclass
class RolloutScores:
    """The one-pass re-evaluation of a rollout, (B, T) fp32 each, 0 on masked positions.

    ``logprobs``: π_θ of the sampled distribution; ``ref_logprobs``: π_ref at the same
    temperature, untruncated; ``exact_kl``: Σ_v π_θ(v)(log π_θ(v) − log π_ref(v)) per position;
    ``entropy``: entropy of the sampled distribution per position.
    """

    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    exact_kl: torch.Tensor
    entropy: torch.Tensor


def masked_token_logprobs(
    log_probs: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Gather (B, T) log-probs of ``tokens`` from (B, T, V); 0 where ``mask`` is 0 (never −inf)."""
    return torch.where(mask > 0, gather_logprobs(log_probs, tokens), 0.0)


@torch.no_grad()
def score_rollout(
    policy: torch.nn.Module,
    ref: torch.nn.Module,
    roll: Rollout,
    sampling: SamplingConfig,
    precision: str,
) -> RolloutScores:
    """ONE full-sequence forward each of policy and reference over the whole rollout batch."""
    mask, tokens = roll.completion_mask, roll.completion_ids
    with autocast(precision):
        logits = completion_logits(policy, roll.input_ids, roll.attention_mask, roll.prompt_width)
    log_probs = F.log_softmax(process_logits(logits, sampling), dim=-1)
    del logits
    with autocast(precision):
        ref_logits = completion_logits(ref, roll.input_ids, roll.attention_mask, roll.prompt_width)
    ref_sampling = SamplingConfig(temperature=sampling.temperature)
    ref_log_probs = F.log_softmax(process_logits(ref_logits, ref_sampling), dim=-1)
    del ref_logits
    return RolloutScores(
        logprobs=masked_token_logprobs(log_probs, tokens, mask),
        ref_logprobs=masked_token_logprobs(ref_log_probs, tokens, mask),
        exact_kl=exact_kl(log_probs, ref_log_probs) * mask,
        entropy=entropy_from_logits(log_probs) * mask,
    )


def gold_metric(roll: Rollout) -> dict[str, float]:
    """``{"reward/gold": mean}`` over the sequences with a known gold score (empty if none)."""
    known = torch.isfinite(roll.gold_rewards)
    return {"reward/gold": roll.gold_rewards[known].mean().item()} if known.any() else {}


def draw_prompts(pool: tuple[str, ...], n: int, seed: int, iteration: int) -> list[str]:
    """``n`` prompts drawn with replacement; a pure function of (seed, iteration), so resumable."""
    rng = np.random.default_rng([seed, iteration])
    return [pool[i] for i in rng.integers(len(pool), size=n)]


def load_reference(policy, tokenizer, ref_policy: str | None) -> torch.nn.Module:
    """A frozen copy of the initial policy (for a LoRA policy: its base weights, adapters
    disabled, no copy), or the causal LM saved at ``ref_policy``."""
    if ref_policy is None and is_lora(policy):
        ref = BaseWeightsReference(policy)
    elif ref_policy is None:
        ref = copy.deepcopy(policy)
    else:
        ref, ref_tokenizer = load_policy(ref_policy)
        check_same_tokenizer(tokenizer, ref_tokenizer, "policy and reference")
    ref.eval().requires_grad_(False)
    return ref


def summary_line(record: dict[str, float]) -> str:
    keys = ("reward/train", "reward/gold", "kl/ref", "kl/exact", "kl/beta", "episode/length")
    parts = [f"{k}={record[k]:.4g}" for k in keys if k in record]
    return f"iter {record['iteration']} prompts {record['prompts']}: " + " ".join(parts)


class OnlineAgent:
    """Shared constructor and ``learn()`` loop of the online agents (see the module docstring)."""

    agent_name = "online"

    def __init__(
        self,
        policy,
        tokenizer=None,
        env_kwargs: dict | None = None,
        config=None,
        run_dir: str | Path = "runs/online",
        reward_model=None,
    ):
        self.config = config
        self.dist = Distributed()
        self.dist.check_divisible(batch_size=config.batch_size)
        torch.manual_seed(config.seed)
        self.policy, self.tokenizer = load_policy(policy, tokenizer)
        self.policy = with_lora(self.policy, config)
        self.policy.eval()  # dropout off: π_θ/π_old must be exactly 1 before the first update
        self.dist.place(self.policy)
        self.ref = load_reference(self.policy, self.tokenizer, config.ref_policy)
        self.dist.place(self.ref)
        env_kwargs = dict(env_kwargs or {})
        if reward_model is not None:
            env_kwargs["reward_model"] = reward_model
        self.env = TokenMDPVectorEnv(
            num_envs=self.rollout_size // self.dist.world_size,
            autoreset_mode="disabled",
            tokenizer=self.tokenizer,
            **env_kwargs,
        )
        self.sampling = SamplingConfig(config.temperature, config.top_k, config.top_p)
        if self.sampling.truncates:
            warnings.warn(
                f"sampling with top_k={config.top_k}, top_p={config.top_p}: log-probs and the KL "
                "are computed for this truncated distribution (the one actually sampled from)",
                stacklevel=2,
            )
        self.precision = resolve_precision(config.precision)
        self.kl_ctl = make_kl_controller(config.beta, config.kl_target, config.kl_horizon)
        self.generator = torch.Generator().manual_seed(config.seed + self.dist.rank)
        self.run_dir = Path(run_dir)
        self.iteration = 0
        self.prompts_consumed = 0
        self.history: list[dict[str, float]] = []
        self.num_timesteps = 0  # prompts consumed, for Stable-Baselines3 callbacks
        self.logger: RunLogger | None = None

    def get_env(self) -> TokenMDPVectorEnv:
        """The rollout env (Stable-Baselines3's ``model.get_env()``, for callbacks)."""
        return self.env

    @property
    def rollout_size(self) -> int:
        """Sequences per rollout batch over all processes (one per prompt unless the agent
        samples several)."""
        return self.config.batch_size

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / CHECKPOINT_DIR

    # -- what subclasses provide ----------------------------------------------------------------
    def _iteration(self) -> dict[str, float]:
        raise NotImplementedError

    def _models(self) -> dict[str, Any]:
        return {"policy": self.policy}

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -- shared steps ---------------------------------------------------------------------------
    def _draw_prompts(self) -> list[str]:
        """This process's shard of the iteration's ``batch_size`` prompts."""
        cfg = self.config
        pool = self.env.setup.task.prompts(self.env.setup.split)
        return self.dist.shard(draw_prompts(pool, cfg.batch_size, cfg.seed, self.iteration))

    def _rollout(self, prompts: list[str]) -> Rollout:
        """Sample one completion per prompt; a failing reward model stops the run cleanly (on
        every process)."""
        error = None
        try:
            roll = rollout(
                self.policy, self.env, self.sampling, self.generator, prompts, None, self.precision
            )
        except RewardModelError as e:
            error = e
        if self.dist.any(error is not None):
            self._stop(f"the reward failed: {error or 'on another process'}")
        return roll

    def _check_finite(self, name: str, value: torch.Tensor) -> None:
        """Stop (every process at once) if ``value`` has a NaN/inf on any process."""
        finite = bool(torch.isfinite(value).all())
        if self.dist.any(not finite):
            bad = value[~torch.isfinite(value)].flatten()[0].item() if not finite else None
            self._stop(f"{name} is non-finite ({bad if not finite else 'on another process'})")

    def _stop(self, reason: str):
        kept = (
            f"the last good checkpoint is kept at {self.checkpoint_dir}"
            if has_checkpoint(self.checkpoint_dir)
            else "no checkpoint was saved yet"
        )
        raise TrainingStopped(
            f"{self.agent_name}: stopping at iteration {self.iteration} "
            f"({self.prompts_consumed} prompts): {reason}; {kept}"
        )

    def _optimizer_step(
        self, loss: torch.Tensor, parts: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]
    ) -> dict[str, float]:
        """Backward, clip each model's gradient norm to ``max_grad_norm``, step each optimiser."""
        for _, opt in parts.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        stats = {}
        for name, (model, opt) in parts.items():
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
            stats[f"grad_norm/{name}"] = norm.item()
            opt.step()
        return stats

    def _anneal_lr(self, fraction: float) -> None:
        """Set every learning rate to ``fraction`` of its initial value (linear annealing)."""
        for opt in self._optimizers().values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
                group["lr"] = group["initial_lr"] * fraction

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Written by the main process only (every process must call it: it gathers the RNGs)."""
        rngs = self.dist.gather_object(rng_state(self.generator))  # one per process
        state = {
            "iteration": self.iteration,
            "prompts_consumed": self.prompts_consumed,
            "kl_controller": self.kl_ctl.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self._optimizers().items()},
            "rng": rngs,
            "history": self.history,
            "extra": self._extra_state(),
        }
        self.dist.on_main(
            lambda: save_checkpoint(self.checkpoint_dir, self._models(), state, self.tokenizer)
        )
        return self.checkpoint_dir

    def restore_checkpoint(self, path: Path | None = None) -> None:
        """Continue from a checkpoint: weights, optimisers, β, RNG states, counters, history."""
        path = Path(path or self.checkpoint_dir)
        state = load_checkpoint_state(path)
        for name, model in self._models().items():
            load_weights_into(model, path / name)
        for name, opt in self._optimizers().items():
            opt.load_state_dict(state["optimizers"][name])
        self.kl_ctl.load_state_dict(state["kl_controller"])
        own = self.dist.own_rng(state["rng"])
        if own is not None:
            set_rng_state(own, self.generator)
        self.iteration = int(state["iteration"])
        self.prompts_consumed = int(state["prompts_consumed"])
        self.history = list(state["history"])
        self._load_extra_state(state["extra"])

    # -- the loop -------------------------------------------------------------------------------
    def learn(self, total_prompts: int | None = None, callback=None) -> list[dict[str, float]]:
        """Train until ``total_prompts`` (default ``config.total_prompts``) prompts are consumed.

        Returns one metrics dict per iteration (those before a resume included). Writes
        TensorBoard events, ``metrics.jsonl``, checkpoints every ``save_every`` iterations and
        at the end, and the final policy to ``run_dir/final``. ``callback``: Stable-Baselines3
        callback(s), called after every iteration (see ``agents.common.callbacks``).
        """
        cfg = self.config
        total = int(total_prompts or cfg.total_prompts)
        if cfg.resume and self.dist.found_checkpoint(self.checkpoint_dir):
            self.restore_checkpoint()
        main = self.dist.is_main
        logger = RunLogger(self.run_dir, cfg, enabled=main)
        hooks = CallbackRunner(callback, self, self.dist, logger)
        metrics_path = self.run_dir / METRICS_FILE
        if main:
            metrics_path.write_text("".join(json.dumps(m) + "\n" for m in self.history))
        start = time.perf_counter() - (self.history[-1]["time/wall"] if self.history else 0.0)
        bar = tqdm(
            total=total, initial=self.prompts_consumed, desc=self.agent_name, unit="prompt",
            disable=not main,
        )  # fmt: skip
        hooks.start(self.prompts_consumed, locals())
        try:
            while self.prompts_consumed < total:
                t0 = time.perf_counter()
                if cfg.anneal_lr:
                    self._anneal_lr(1.0 - self.prompts_consumed / total)
                metrics = self.dist.reduce_metrics(self._iteration())
                self.kl_ctl.update(metrics["kl/ref"], cfg.batch_size)
                self.iteration += 1
                self.prompts_consumed += cfg.batch_size
                seconds = time.perf_counter() - t0
                metrics["perf/seconds_per_iter"] = seconds
                metrics["perf/tokens_per_s"] = metrics.pop("episode/tokens") / seconds
                metrics["time/wall"] = time.perf_counter() - start
                record = {"iteration": self.iteration, "prompts": self.prompts_consumed, **metrics}
                self.history.append(record)
                # before logging, so what the callback records lands at this x
                stop = not hooks.step(self.prompts_consumed, {"metrics": record})
                logger.log(self.prompts_consumed, metrics)
                if main:
                    with metrics_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.update(cfg.batch_size)
                bar.set_postfix(
                    reward=f"{metrics['reward/train']:.3f}", kl=f"{metrics['kl/ref']:.3f}"
                )
                if main and cfg.log_every and self.iteration % cfg.log_every == 0:
                    tqdm.write(summary_line(record))
                if cfg.save_every and self.iteration % cfg.save_every == 0:
                    self.save_checkpoint()
                if stop:
                    break
        finally:
            bar.close()
            logger.close()
        hooks.end()
        self.save_checkpoint()
        self.save(self.run_dir / "final")
        return self.history

    def save(self, path: str | Path) -> None:
        """The policy (``from_pretrained`` loadable; LoRA merged, adapter in ``adapter/``) and
        its tokenizer. Written by the main process; every process returns once it exists."""
        self.dist.on_main(lambda: save_policy(self.policy, Path(path), self.tokenizer))
