"""REINFORCE on whole completions (a sequence-level bandit), no critic.

Each iteration draws ``batch_size`` prompts and samples ``k`` completions of each. The return of
completion y is R = r_RM − β·KL(y), with KL(y) = Σ_t (log π_θ − log π_ref)(y_t) (k1, from ONE
reference forward pass), and the loss is −(R − b)·Σ_t log π_θ(y_t) with a baseline b:
``"rloo"`` (default; leave-one-out mean of the other k − 1 samples of the same prompt,
Kool et al. 2019; Ahmadian et al. 2024), ``"moving_average"`` of past returns, or ``"none"``.
One optimiser step per rollout batch (``minibatch_size`` only bounds memory), so every update
is on-policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.common.advantages import masked_mean, masked_mean_var
from agents.common.kl import masked_sum, sequence_kl_stats
from agents.common.lora import trainable_parameters
from agents.common.losses import reinforce_loss
from agents.common.online import (
    OnlineAgent,
    OnlineConfig,
    gold_metric,
    masked_token_logprobs,
    score_rollout,
)
from agents.common.policy import completion_logits, process_logits
from agents.common.precision import autocast


def baseline_none(returns: torch.Tensor, running_mean: float) -> torch.Tensor:
    """b = 0.  ``returns``: (prompts, k) → (prompts, k)."""
    return torch.zeros_like(returns)


def baseline_moving_average(returns: torch.Tensor, running_mean: float) -> torch.Tensor:
    """b = exponential moving average of the returns of earlier batches."""
    return torch.full_like(returns, running_mean)


def baseline_rloo(returns: torch.Tensor, running_mean: float) -> torch.Tensor:
    """b_i = mean of the other k − 1 returns of the same prompt (leave-one-out)."""
    k = returns.shape[1]
    if k < 2:
        raise ValueError("the leave-one-out baseline needs k >= 2 samples per prompt")
    return (returns.sum(dim=1, keepdim=True) - returns) / (k - 1)


BASELINES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "none": baseline_none,
    "moving_average": baseline_moving_average,
    "rloo": baseline_rloo,
}


def policy_logits(
    policy: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    precision: str,
) -> torch.Tensor:
    """The training forward pass: (B, T, vocab) completion logits."""
    with autocast(precision):
        return completion_logits(policy, input_ids, attention_mask, prompt_width)


@dataclass
class ReinforceConfig(OnlineConfig):
    """REINFORCE hyper-parameters; the defaults train a tiny GPT-2 on the built-in tasks."""

    batch_size: int = 16
    """Prompts per iteration (each sampled k times)."""
    k: int = 4
    """Completions sampled per prompt."""
    minibatch_size: int = 64
    """Sequences per forward/backward (gradients are accumulated over the batch)."""
    baseline: str = "rloo"
    """"rloo" | "moving_average" | "none"."""
    baseline_decay: float = 0.9
    """Decay of the moving-average baseline."""
    whiten: bool = False
    """Divide the advantages R − b by their standard deviation over the batch."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {sorted(BASELINES)}, got {self.baseline!r}")
        if self.baseline == "rloo" and self.k < 2:
            raise ValueError("baseline='rloo' needs k >= 2 samples per prompt")


class Reinforce(OnlineAgent):
    """REINFORCE / RLOO over ``TokenMDPVectorEnv``; see the module docstring."""

    agent_name = "reinforce"

    def __init__(
        self,
        policy,
        tokenizer=None,
        env_kwargs: dict | None = None,
        config: ReinforceConfig | None = None,
        run_dir: str | Path = "runs/reinforce",
        reward_model=None,
    ):
        config = config or ReinforceConfig()
        super().__init__(policy, tokenizer, env_kwargs, config, run_dir, reward_model)
        self.optimizer = torch.optim.Adam(
            trainable_parameters(self.policy), lr=config.learning_rate
        )
        self.train_forward = self.dist.prepare(policy_logits, policy=self.policy)
        self.running_mean = 0.0

    @property
    def rollout_size(self) -> int:
        return self.config.batch_size * self.config.k

    def _optimizers(self):
        return {"policy": self.optimizer}

    def _extra_state(self):
        return {"running_mean": self.running_mean}

    def _load_extra_state(self, state):
        self.running_mean = float(state["running_mean"])

    def _iteration(self) -> dict[str, float]:
        cfg = self.config
        prompts = self._draw_prompts()
        roll = self._rollout([p for p in prompts for _ in range(cfg.k)])  # prompt-major
        mask = roll.completion_mask
        scores = score_rollout(self.policy, self.ref, roll, self.sampling, self.precision)
        beta = self.kl_ctl.value
        seq_kl = masked_sum(scores.logprobs - scores.ref_logprobs, mask)  # (B,)
        truncated = (~roll.terminated).float()
        returns = roll.rewards + cfg.no_eos_penalty * truncated - beta * seq_kl
        self._check_finite("return R = r_RM - beta*KL", returns)
        grouped = returns.view(len(prompts), cfg.k)
        advantages = (grouped - BASELINES[cfg.baseline](grouped, self.running_mean)).flatten()
        ones = torch.ones_like(advantages)
        advantage_std = masked_mean_var(advantages, ones, self.dist.all_sum)[1].sqrt().item()
        if cfg.whiten:
            advantages = advantages / (advantage_std + 1e-8)
        decay = cfg.baseline_decay
        self.running_mean = decay * self.running_mean + (1 - decay) * self.dist.mean(returns)
        train_stats = self._train(roll, advantages)
        train_stats["policy/advantage_std"] = advantage_std
        kl_stats = sequence_kl_stats(scores.logprobs, scores.ref_logprobs, mask, scores.exact_kl)
        return {
            "reward/train": roll.rewards.mean().item(),
            **gold_metric(roll),
            "reward/total": returns.mean().item(),
            **kl_stats,
            "kl/beta": beta,
            "policy/entropy": masked_mean(scores.entropy, mask).item(),
            **train_stats,
            "baseline/running_mean": self.running_mean,
            "episode/length": roll.lengths.mean().item(),
            "episode/eos_fraction": roll.terminated.float().mean().item(),
            "episode/tokens": float(roll.num_tokens),
        }

    def _train(self, roll, advantages: torch.Tensor) -> dict[str, float]:
        """One gradient step on the whole batch, accumulated over minibatches."""
        cfg = self.config
        mask, tokens = roll.completion_mask, roll.completion_ids
        n = len(mask)
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = 0.0
        for idx in torch.arange(n).split(cfg.minibatch_size):
            logits = self.train_forward(
                roll.input_ids[idx], roll.attention_mask[idx], roll.prompt_width, self.precision
            )
            log_probs = F.log_softmax(process_logits(logits, self.sampling), dim=-1)
            logprobs = masked_token_logprobs(log_probs, tokens[idx], mask[idx])
            loss, _ = reinforce_loss(logprobs, advantages[idx], mask[idx])
            loss = loss * len(idx) / n
            self._check_finite("loss/policy", loss.detach())
            loss.backward()
            total_loss += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        return {
            "loss/policy": total_loss,
            "loss/total": total_loss,
            "grad_norm/policy": norm.item(),
        }

    @classmethod
    def load(
        cls,
        path: str | Path,
        env_kwargs: dict | None = None,
        config: ReinforceConfig | None = None,
        run_dir: str | Path = "runs/reinforce",
        reward_model=None,
    ) -> Reinforce:
        """An agent whose policy comes from ``save(path)``."""
        return cls(
            path, env_kwargs=env_kwargs, config=config, run_dir=run_dir, reward_model=reward_model
        )
