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

from agents.checks import check_choice, check_positive, check_range, group
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.run import Agent, make_optimizer
from agents.maths.advantages import masked_mean_var
from agents.maths.kl import KL_ESTIMATORS, KLConfig, masked_sum
from agents.maths.losses import reinforce_loss
from agents.models.lora import LoraOptions, trainable_parameters
from agents.models.policy import SamplingConfig, process_logits
from agents.sampling.online import (
    PromptBudget,
    init_online_agent,
    iteration_prompts,
    masked_token_logprobs,
    online_steps,
    policy_train_forward,
    rollout_metrics,
    sample,
    score_rollout,
    training_forward_scores,
    update_kl_controller,
)


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


@dataclass
class ReinforceConfig(AgentConfig):
    """REINFORCE options.

    The learning rate defaults to 1e-6, TRL's ``RLOOConfig``, for a pretrained checkpoint;
    constant (TRL: linear decay; the rate matters more). The tiny GPT-2s of the built-in tasks
    take ``agents.presets.TINY_MODEL_OPTIONS["reinforce"]`` (3e-4)."""

    precision: str = "auto"
    """Forward-pass precision: auto | bf16 | fp32 (log-probs, KL and losses stay fp32)."""
    log_every: int = 1
    """Write a log point every this many iterations (0 = only at the end)."""
    save_every: int = 10
    """Write an atomic checkpoint every this many iterations (0 = only at the end)."""
    total_prompts: int = 8192
    """Stop after this many prompts (each sampled k times; the x-axis counts prompts)."""
    batch_size: int = 16
    """Prompts per iteration (each sampled k times), in total over all processes."""
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
    no_eos_penalty: float = 0.0
    """Added to the reward of completions cut at the length limit without EOS (use < 0)."""
    optim: OptimConfig = group(lambda: OptimConfig(learning_rate=1e-6))
    sampling: SamplingConfig = group(SamplingConfig)
    kl: KLConfig = group(KLConfig)
    lora: LoraOptions = group(LoraOptions, prefix="lora_")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("total_prompts", "batch_size", "k", "minibatch_size"):
            check_positive(name, getattr(self, name))
        check_choice("baseline", self.baseline, BASELINES)
        if self.baseline == "rloo" and self.k < 2:
            raise ValueError(f"baseline='rloo' needs k >= 2 samples per prompt, got k={self.k}")
        check_range("baseline_decay", self.baseline_decay, 0.0, 1.0, "[)")


class Reinforce(PromptBudget, Agent):
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
        super().__init__()
        self.config = config = config or ReinforceConfig()
        self.run_dir = Path(run_dir)
        self.total_prompts = config.total_prompts
        num_envs = config.batch_size * config.k
        init_online_agent(self, policy, tokenizer, env_kwargs, reward_model, num_envs)
        steps = online_steps(config.total_prompts, config.batch_size)
        self.optimizers = {
            "policy": make_optimizer(trainable_parameters(self.policy), config.optim, steps)
        }
        self.train_forward = policy_train_forward(self)
        self.running_mean = 0.0

    def _state(self):
        return {**super()._state(), "running_mean": self.running_mean}

    def _load_state(self, state):
        super()._load_state(state)
        self.running_mean = float(state["running_mean"])

    def _train_step(self, step: int) -> dict[str, float]:
        """One iteration: k samples per prompt, R = r − β·KL(y), baseline, one gradient step."""
        cfg = self.config
        prompts = iteration_prompts(self, step)
        roll = sample(self, prompts, group_size=cfg.k)
        mask = roll.completion_mask
        logits = None
        if self._single_pass_applies(len(mask)):  # its forward gives the scores too
            logits = self.train_forward(roll.input_ids, roll.attention_mask, roll.prompt_width,
                                        self.precision, self.vocab_size)  # fmt: skip
            order = torch.arange(len(mask), device=mask.device)
            scores = training_forward_scores(self, roll, order, logits.detach())
        else:
            scores = score_rollout(
                self.policy, self.ref, roll, self.sampling, self.precision, self.vocab_size
            )
        beta = self.kl_ctl.value
        kl_per_token = KL_ESTIMATORS[cfg.kl.kl_estimator](scores.logprobs, scores.ref_logprobs)
        seq_kl = masked_sum(kl_per_token, mask)  # (B,)
        truncated = (~roll.terminated).float()
        returns = roll.rewards + cfg.no_eos_penalty * truncated - beta * seq_kl
        self._check_finite("return R = r_RM - beta*KL", returns)
        grouped = roll.grouped(returns)
        advantages = (grouped - BASELINES[cfg.baseline](grouped, self.running_mean)).flatten()
        ones = torch.ones_like(advantages)
        advantage_std = masked_mean_var(advantages, ones, self.dist.all_sum)[1].sqrt().item()
        if cfg.whiten:
            advantages = advantages / (advantage_std + 1e-8)
        decay = cfg.baseline_decay
        self.running_mean = decay * self.running_mean + (1 - decay) * self.dist.mean(returns)
        train_stats = self._update(roll, advantages, logits)
        metrics = rollout_metrics(roll, scores)
        update_kl_controller(self, metrics)
        return {
            **metrics,
            "reward/total": returns.mean().item(),
            "kl/beta": beta,
            **train_stats,
            "policy/advantage_std": advantage_std,
            "baseline/running_mean": self.running_mean,
        }

    def _single_pass_applies(self, n: int) -> bool:
        """The ``n`` sequences are one minibatch: the training forward, run before the
        returns, gives the rollout's scores too (the sampling policy is the one updated)."""
        return n <= self.config.minibatch_size

    def _update(self, roll, advantages: torch.Tensor, logits=None) -> dict[str, float]:
        """One gradient step on the whole batch, accumulated over minibatches (``logits``: the
        single minibatch's training forward, already run)."""
        mask, tokens = roll.completion_mask, roll.completion_ids
        n = len(mask)
        total_loss = 0.0
        for idx in torch.arange(n).split(self.config.minibatch_size):
            if logits is None:
                logits = self.train_forward(
                    roll.input_ids[idx], roll.attention_mask[idx], roll.prompt_width,
                    self.precision, self.vocab_size,
                )  # fmt: skip
            log_probs = F.log_softmax(process_logits(logits, self.sampling), dim=-1)
            logprobs = masked_token_logprobs(log_probs, tokens[idx], mask[idx])
            loss, _ = reinforce_loss(logprobs, advantages[idx], mask[idx])
            loss = loss * len(idx) / n
            self._check_finite("loss/policy", loss.detach())
            loss.backward()
            total_loss += loss.item()
            logits = None
        grad_stats = self._apply_gradients("policy")
        return {"loss/policy": total_loss, "loss/total": total_loss, **grad_stats}

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
