"""Evaluate a policy through the env: gold reward, learned reward, KL to a reference, length.

Every method (SFT, PPO, REINFORCE, DPO) is measured by this one function on held-out prompts, so
their numbers land on the same reward–KL axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agents.common.policy import SamplingConfig, completion_logits, token_logprobs
from agents.common.rollout import rollout
from llm_env.vector import TokenMDPVectorEnv
from reward_models.base import RewardModel, checked_score


@dataclass
class EvalResult:
    """Per-sample arrays (for spreads and bootstrap intervals) and their means."""

    gold_rewards: np.ndarray
    train_rewards: np.ndarray
    kls: np.ndarray
    lengths: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        out = {
            "reward/gold": float(np.nanmean(self.gold_rewards)),
            "reward/train": float(np.mean(self.train_rewards)),
            "kl/ref": float(np.mean(self.kls)),
            "episode/length": float(np.mean(self.lengths)),
        }
        out.update({f"reward/{k}": float(np.mean(v)) for k, v in self.extra.items()})
        return out


def sequence_kl(
    policy: torch.nn.Module, ref: torch.nn.Module, batch, sampling: SamplingConfig
) -> torch.Tensor:
    """k1 sequence KL Σ_t log π(y_t) − log π_ref(y_t) of a rollout's samples, shape (B,).

    The policy's log-probs are those of the distribution sampled from (recorded during the
    rollout); the reference is evaluated at the same temperature, without truncation.
    """
    with torch.no_grad():
        ref_logits = completion_logits(
            ref, batch.input_ids, batch.attention_mask, batch.prompt_width
        )
    ref_sampling = SamplingConfig(temperature=sampling.temperature)
    ref_logprobs = token_logprobs(ref_logits, batch.completion_ids, ref_sampling)
    return ((batch.logprobs - ref_logprobs) * batch.completion_mask).sum(-1)


def evaluate(
    policy: torch.nn.Module,
    ref_policy: torch.nn.Module | None,
    env: TokenMDPVectorEnv,
    prompts: list[str],
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    extra_reward_models: dict[str, RewardModel] | None = None,
    n_samples: int = 4,
) -> EvalResult:
    """Sample one completion per prompt through ``env`` (lockstep, batches of ``env.num_envs``).

    ``ref_policy=None`` reports KL 0 (the policy is its own reference). ``extra_reward_models``
    are scored on the same completions (e.g. the learned reward model beside the gold one).
    """
    sampling = sampling or SamplingConfig()
    generator = torch.Generator().manual_seed(seed)
    gold, train, kls, lengths, samples = [], [], [], [], []
    extra: dict[str, list] = {name: [] for name in extra_reward_models or {}}
    B = env.num_envs
    for start in range(0, len(prompts), B):
        chunk = list(prompts[start : start + B])
        chunk += [chunk[-1]] * (B - len(chunk))  # fill the lockstep batch; extras are dropped
        n = min(B, len(prompts) - start)
        batch = rollout(policy, env, sampling, generator, prompts=chunk, seed=seed + start)
        kl = (
            torch.zeros(B, device=batch.rewards.device)
            if ref_policy is None
            else sequence_kl(policy, ref_policy, batch, sampling)
        )
        gold.append(batch.gold_rewards[:n].cpu().numpy())
        train.append(batch.rewards[:n].cpu().numpy())
        kls.append(kl[:n].cpu().numpy())
        lengths.append(batch.lengths[:n].cpu().numpy())
        for name, model in (extra_reward_models or {}).items():
            extra[name].append(checked_score(model, batch.prompts[:n], batch.completions[:n]))
        for i in range(min(n, n_samples - len(samples))):
            samples.append(
                {
                    "prompt": batch.prompts[i],
                    "completion": batch.completions[i],
                    "gold_reward": float(batch.gold_rewards[i]),
                    "reward": float(batch.rewards[i]),
                }
            )
    return EvalResult(
        gold_rewards=np.concatenate(gold),
        train_rewards=np.concatenate(train),
        kls=np.concatenate(kls),
        lengths=np.concatenate(lengths),
        extra={k: np.concatenate(v) for k, v in extra.items()},
        samples=samples,
    )


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval of the mean: ``(low, high)``."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
