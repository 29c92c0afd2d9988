"""PPO with a critic: the four-model RLHF setup (Ouyang et al. 2022, stage 3).

Policy π_θ, frozen reference π_ref, reward model (any ``load_reward_model`` spec, scored by the
env) and critic V. Each iteration:
1. roll out ``batch_size`` prompts through ``TokenMDPVectorEnv`` with the KV cache;
2. ONE full-sequence forward each of policy (old log-probs), reference and critic;
3. per-token rewards r_t = −β·(log π_θ − log π_ref)_t + [t = T]·r_RM, GAE(γ, λ) advantages;
4. ``epochs`` passes of shuffled minibatches: clipped surrogate + clipped value loss
   (− entropy bonus), gradient clipping; then β is updated by the KL controller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.common.advantages import (
    explained_variance,
    gae,
    kl_penalised_rewards,
    masked_mean,
    whiten,
)
from agents.common.critic import ValueModel, completion_values
from agents.common.kl import sequence_kl_stats
from agents.common.lora import trainable_parameters
from agents.common.losses import clipped_value_loss, entropy_from_logits, ppo_clip_loss
from agents.common.online import (
    OnlineAgent,
    OnlineConfig,
    gold_metric,
    masked_token_logprobs,
    score_rollout,
)
from agents.common.policy import completion_logits, process_logits
from agents.common.precision import autocast


@dataclass
class PPOConfig(OnlineConfig):
    """PPO hyper-parameters (beyond ``OnlineConfig``); the defaults train a tiny GPT-2 on the
    built-in tasks."""

    epochs: int = 4
    """Passes over each rollout batch."""
    critic_learning_rate: float | None = None
    """Adam learning rate of the critic (None = learning_rate)."""
    gamma: float = 1.0
    """Discount per token."""
    lam: float = 0.95
    """GAE λ."""
    clip_eps: float = 0.2
    """PPO ratio clip ε."""
    value_clip: float | None = 0.2
    """Clip of the value update around the old values (None = unclipped)."""
    vf_coef: float = 0.5
    """Weight of the value loss in the total loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit std over each rollout batch."""
    bootstrap_truncated: bool = False
    """Bootstrap V(final state) on truncation; off as the env pays the full reward at the limit."""
    critic_init: str = "policy"
    """Critic backbone: "policy" (a copy) or a save_pretrained directory (e.g. the reward model)."""


def policy_logits_and_values(
    policy: torch.nn.Module,
    critic: ValueModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward pass: (B, T, vocab) completion logits and (B, T) values before each
    completion token (run as one module, so DDP synchronises both models' gradients)."""
    with autocast(precision):
        logits = completion_logits(policy, input_ids, attention_mask, prompt_width)
        values = completion_values(critic, input_ids, attention_mask, prompt_width)[:, :-1]
    return logits, values


class PPO(OnlineAgent):
    """PPO over ``TokenMDPVectorEnv``; see the module docstring."""

    agent_name = "ppo"

    def __init__(
        self,
        policy,
        tokenizer=None,
        env_kwargs: dict | None = None,
        config: PPOConfig | None = None,
        run_dir: str | Path = "runs/ppo",
        reward_model=None,
        critic: ValueModel | str | Path | None = None,
    ):
        config = config or PPOConfig()
        super().__init__(policy, tokenizer, env_kwargs, config, run_dir, reward_model)
        if critic is not None:
            self.critic = (
                critic if isinstance(critic, ValueModel) else ValueModel.from_pretrained(critic)
            )
        elif config.critic_init == "policy":
            self.critic = ValueModel.from_policy(self.policy)
        else:
            self.critic = ValueModel.from_backbone(config.critic_init)
        self.critic.eval()
        self.dist.place(self.critic)
        self.dist.check_divisible(minibatch_size=config.minibatch_size)
        self.train_forward = self.dist.prepare(
            policy_logits_and_values, policy=self.policy, critic=self.critic
        )
        self.policy_opt = torch.optim.Adam(
            trainable_parameters(self.policy), lr=config.learning_rate
        )
        self.critic_opt = torch.optim.Adam(
            self.critic.parameters(), lr=config.critic_learning_rate or config.learning_rate
        )

    def _models(self):
        return {"policy": self.policy, "critic": self.critic}

    def _optimizers(self):
        return {"policy": self.policy_opt, "critic": self.critic_opt}

    def _iteration(self) -> dict[str, float]:
        cfg = self.config
        roll = self._rollout(self._draw_prompts())
        mask = roll.completion_mask
        scores = score_rollout(self.policy, self.ref, roll, self.sampling, self.precision)
        with torch.no_grad(), autocast(self.precision):
            all_values = completion_values(
                self.critic, roll.input_ids, roll.attention_mask, roll.prompt_width
            )  # (B, T + 1)
        values = all_values[:, :-1] * mask
        beta = self.kl_ctl.value
        truncated = (~roll.terminated).float()
        seq_scores = roll.rewards + cfg.no_eos_penalty * truncated
        rewards = kl_penalised_rewards(
            seq_scores, scores.logprobs - scores.ref_logprobs, mask, beta
        )
        self._check_finite("reward (KL-penalised, per token)", rewards)
        last_values = None
        if cfg.bootstrap_truncated:
            last_values = (
                all_values[torch.arange(len(mask), device=mask.device), roll.lengths.long()]
                * truncated
            )
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam, last_values)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask, all_sum=self.dist.all_sum)
        train_stats = self._train(roll, scores.logprobs, values, advantages, returns)
        kl_stats = sequence_kl_stats(scores.logprobs, scores.ref_logprobs, mask, scores.exact_kl)
        return {
            "reward/train": roll.rewards.mean().item(),
            **gold_metric(roll),
            "reward/total": rewards.sum(-1).mean().item(),
            **kl_stats,
            "kl/beta": beta,
            "policy/entropy": masked_mean(scores.entropy, mask).item(),
            **train_stats,
            "value/explained_variance": explained_variance(values, returns, mask),
            "value/mean": masked_mean(values, mask).item(),
            "episode/length": roll.lengths.mean().item(),
            "episode/eos_fraction": roll.terminated.float().mean().item(),
            "episode/tokens": float(roll.num_tokens),
        }

    def _train(self, roll, old_logprobs, old_values, advantages, returns) -> dict[str, float]:
        """``epochs`` passes of shuffled minibatches; returns the mean of each statistic."""
        cfg = self.config
        mask, tokens = roll.completion_mask, roll.completion_ids
        totals: dict[str, float] = {}
        n = 0
        parts = {"policy": (self.policy, self.policy_opt), "critic": (self.critic, self.critic_opt)}
        for _ in range(cfg.epochs):
            order = torch.randperm(len(mask), generator=self.generator)
            for idx in order.split(cfg.minibatch_size // self.dist.world_size):
                m = mask[idx]
                logits, values = self.train_forward(
                    roll.input_ids[idx], roll.attention_mask[idx], roll.prompt_width, self.precision
                )
                log_probs = F.log_softmax(process_logits(logits, self.sampling), dim=-1)
                logprobs = masked_token_logprobs(log_probs, tokens[idx], m)
                pg_loss, pg_stats = ppo_clip_loss(
                    logprobs, old_logprobs[idx], advantages[idx], m, cfg.clip_eps
                )
                vf_loss, vf_stats = clipped_value_loss(
                    values, old_values[idx], returns[idx], m, cfg.value_clip
                )
                loss = pg_loss + cfg.vf_coef * vf_loss
                if cfg.ent_coef:
                    entropy = masked_mean(entropy_from_logits(log_probs), m)
                    loss = loss - cfg.ent_coef * entropy
                self._check_finite("loss/total", loss.detach())
                grad_stats = self._optimizer_step(loss, parts)
                stats = {
                    "loss/policy": pg_loss.item(),
                    "loss/value": vf_loss.item(),
                    "loss/total": loss.item(),
                    **pg_stats,
                    **vf_stats,
                    **grad_stats,
                }
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                n += 1
        return {k: v / n for k, v in totals.items()}

    def save(self, path: str | Path) -> None:
        """Policy + tokenizer in ``path`` (``from_pretrained`` loadable), critic in ``path/critic``
        (written by the main process)."""
        super().save(path)
        self.dist.on_main(lambda: self.critic.save_pretrained(Path(path) / "critic"))

    @classmethod
    def load(
        cls,
        path: str | Path,
        env_kwargs: dict | None = None,
        config: PPOConfig | None = None,
        run_dir: str | Path = "runs/ppo",
        reward_model=None,
    ) -> PPO:
        """An agent whose policy (and critic, if saved) come from ``save(path)``."""
        critic = Path(path) / "critic"
        return cls(
            path,
            env_kwargs=env_kwargs,
            config=config,
            run_dir=run_dir,
            reward_model=reward_model,
            critic=critic if critic.is_dir() else None,
        )
