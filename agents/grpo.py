"""GRPO (Shao et al. 2024, DeepSeekMath §4) and its variants, without a critic.

Each iteration draws ``batch_size`` prompts and samples ``group_size`` G completions of each,
rolled out together through the vector env (``Rollout.grouped``). A completion's advantage
comes from its own group's rewards; every token of it carries that advantage in a clipped
surrogate. The choices that distinguish the variants are named config fields:

- ``scale_rewards`` (the advantage): ``"group"`` (r − mean_G)/(std_G + ε) (GRPO);
  ``"none"`` r − mean_G (Dr. GRPO, Liu et al. 2025); ``"batch"`` (r − mean_G)/(std_batch + ε)
  (REINFORCE++-baseline, Hu et al. 2025; TRL's ``scale_rewards="batch"``). std is the
  unbiased sample standard deviation, as in TRL.
- ``loss_type`` (how token losses become one number): ``"grpo"`` token mean per sequence, then
  mean over sequences; ``"dapo"`` token sum over the minibatch's token count (Yu et al. 2025);
  ``"dr_grpo"`` token sum over the constant (sequences × max_new_tokens) (Liu et al. 2025);
  ``"cispo"`` CISPO's objective sg(min(ρ, ε_max))·A·log π_θ (MiniMax-M1, Chen et al. 2025) in
  place of the clipped surrogate, aggregated as ``"dapo"`` (as TRL); ε_max is
  ``cispo_max_weight``, an absolute cap on the weight (``losses.cispo_objective``).
- ``importance_sampling_level``: ``"token"`` one ratio ρ_t per token; ``"sequence"`` GSPO's
  s_i = exp(mean_t log ρ_t) (Zheng et al. 2025), one clipped ratio shared by a sequence's tokens.
- ``clip_eps_low`` / ``clip_eps_high``: the PPO clip with DAPO's "clip-higher" ε_high > ε_low;
  unset (None), they take the level's default: 0.2 / 0.2 per token, GSPO's 3e-4 / 4e-4 per
  sequence (its mean log-ratio moves far less than one token's). ``num_iterations`` μ inner
  passes over each batch, the importance ratio taken against the sampling policy (GRPO's μ;
  TRL's ``num_iterations``).
- ``entropy_coef``: −entropy_coef·(token mean of π_θ's exact entropy over the tokenizer's
  vocabulary) is added to the loss. ``top_entropy_quantile`` ρ (Wang et al. 2025; TRL's): only
  the share ρ of the batch's loss tokens with the highest entropy (the sampling policy's,
  pooled over processes) carry the policy term; the KL and entropy terms keep every token.
- ``kl_placement``: ``"reward"`` folds −β·Σ_t k(y_t) into each completion's return before the
  group advantage (the RLHF placement, as REINFORCE/PPO here); ``"loss"`` adds β·k per token to
  the loss, with gradients (GRPO's placement). ``kl.kl_estimator`` picks k1/k2/k3 (``kl.py``).
  ``kl.beta = 0`` loads no reference model at all.
- ``dynamic_sampling`` (DAPO): groups whose rewards are all equal carry no signal; they are
  dropped and more prompts are drawn (up to ``max_sampling_rounds`` rounds) until the batch is
  full; ``grpo/dropped_fraction`` is logged.
- ``overlong`` (DAPO): ``"none"``; ``"soft_penalty"`` adds −penalty·(L − (L_max − buffer))/buffer
  to completions longer than L_max − buffer tokens; ``"mask"`` drops truncated completions
  (no EOS) from the loss.

Each minibatch is one optimiser step and is aggregated on its own (as PPO's minibatches).
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
from agents.maths.advantages import masked_mean
from agents.maths.kl import KL_ESTIMATORS, KLConfig, masked_sum
from agents.maths.losses import (
    cispo_objective,
    clip_objective,
    entropy_bonus,
    entropy_of,
    high_entropy_mask,
    sequence_log_ratio,
    token_log_ratio,
)
from agents.models.lora import LoraOptions, trainable_parameters
from agents.models.policy import SamplingConfig, process_logits
from agents.sampling.online import (
    PromptBudget,
    RolloutScores,
    draw_prompts,
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
from agents.sampling.rollout import Rollout, concat_rollouts

# -- advantages: (prompts, G) rewards → (prompts, G) advantages ---------------------------------


def advantage_group(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """GRPO: (r − mean_G) / (std_G + ε)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def advantage_none(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """Dr. GRPO: r − mean_G (no division by a standard deviation)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def advantage_batch(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """(r − mean_G) / (std over the whole batch + ε)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    return centred / (rewards.std() + eps)


ADVANTAGES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "group": advantage_group,
    "none": advantage_none,
    "batch": advantage_batch,
}

# -- loss aggregation: (B, T) token losses and mask → scalar ------------------------------------


def aggregate_grpo(losses: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Token mean within each sequence, then mean over sequences (GRPO)."""
    per_sequence = (losses * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_sequence.mean()


def aggregate_dapo(losses: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Token sum over the number of tokens (DAPO: every token weighs the same)."""
    return masked_mean(losses, mask)


def aggregate_dr_grpo(
    losses: torch.Tensor, mask: torch.Tensor, max_new_tokens: int
) -> torch.Tensor:
    """Token sum over the constant sequences × max_new_tokens (Dr. GRPO: no length bias)."""
    return (losses * mask).sum() / (losses.shape[0] * max_new_tokens)


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "grpo": aggregate_grpo,
    "dapo": aggregate_dapo,
    "dr_grpo": aggregate_dr_grpo,
    "cispo": aggregate_dapo,
}

# -- the policy term: loss_type → per-token objective, importance level → log-ratio ----------------

OBJECTIVES = {
    "grpo": clip_objective,
    "dapo": clip_objective,
    "dr_grpo": clip_objective,
    "cispo": cispo_objective,
}
IMPORTANCE_LEVELS = {"token": token_log_ratio, "sequence": sequence_log_ratio}
CLIP_EPS_DEFAULTS = {"token": (0.2, 0.2), "sequence": (3e-4, 4e-4)}
"""(ε_low, ε_high) where the config leaves them unset; per sequence GSPO's (§5.1)."""


def soft_overlong_penalty(
    lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float
) -> torch.Tensor:
    """DAPO's soft over-long punishment: 0 up to L_max − buffer tokens, then falling linearly
    to −penalty at L_max. ``lengths``: (B,) completion lengths → (B,)."""
    excess = (lengths - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * excess / buffer


@dataclass
class GRPOConfig(AgentConfig):
    """GRPO options; the defaults are DeepSeekMath's GRPO for a pretrained checkpoint.

    The learning rate defaults to 1e-6, TRL's ``GRPOConfig``; constant (TRL: linear decay; the
    rate matters more). The tiny GPT-2s of the built-in tasks take
    ``agents.presets.TINY_MODEL_OPTIONS["grpo"]`` (1e-4)."""

    precision: str = "auto"
    """Forward-pass precision: auto | bf16 | fp32 (log-probs, KL and losses stay fp32)."""
    log_every: int = 1
    """Write a log point every this many iterations (0 = only at the end)."""
    save_every: int = 10
    """Write an atomic checkpoint every this many iterations (0 = only at the end)."""
    total_prompts: int = 4096
    """Stop after this many prompts (each sampled group_size times; the x-axis counts prompts)."""
    batch_size: int = 16
    """Prompts per iteration, in total over all processes."""
    group_size: int = 4
    """G: completions sampled per prompt."""
    minibatch_size: int = 64
    """Sequences per optimiser step (a multiple of group_size is natural, not required)."""
    num_iterations: int = 1
    """μ: passes over each batch; the ratio is taken against the sampling policy."""
    scale_rewards: str = "group"
    """Advantage: group (GRPO) | none (Dr. GRPO) | batch (batch std)."""
    advantage_eps: float = 1e-4
    """ε added to the standard deviation of the advantage."""
    loss_type: str = "grpo"
    """Aggregation: grpo (sequence mean) | dapo (token mean) | dr_grpo (constant) | cispo (CISPO's
    objective, token mean)."""
    importance_sampling_level: str = "token"
    """Importance ratio: token (one per token) | sequence (GSPO: one per sequence)."""
    clip_eps_low: float | None = None
    """ε_low: the ratio is clipped below at 1 − ε_low (None: 0.2 per token, 3e-4 per sequence)."""
    clip_eps_high: float | None = None
    """ε_high: the ratio is clipped above at 1 + ε_high (None: 0.2 per token, 4e-4 per sequence;
    DAPO's clip-higher: 0.28)."""
    cispo_max_weight: float = 5.0
    """loss_type=cispo: ε_max, the absolute cap on the importance weight min(ρ, ε_max) (TRL);
    cispo ignores clip_eps_low/high."""
    entropy_coef: float = 0.0
    """Entropy bonus: −entropy_coef × the token mean of the policy's entropy (0 = none)."""
    top_entropy_quantile: float = 1.0
    """ρ: only the share ρ of the batch's tokens with the highest entropy carry the policy loss
    (1 = all tokens; the Wang et al. 2025 paper uses 0.2)."""
    kl_placement: str = "loss"
    """Where β·KL goes: loss (GRPO: β·k per token in the loss) | reward (−β·Σk in the return)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and draw more prompts until the batch is full."""
    max_sampling_rounds: int = 4
    """With dynamic_sampling: at most this many rollout rounds per iteration."""
    overlong: str = "none"
    """Over-long completions: none | soft_penalty (DAPO) | mask (drop truncated ones)."""
    overlong_buffer: int = 4
    """soft_penalty: tokens before max_new_tokens where the penalty ramps up."""
    overlong_penalty: float = 1.0
    """soft_penalty: the penalty at max_new_tokens."""
    optim: OptimConfig = group(lambda: OptimConfig(learning_rate=1e-6))
    sampling: SamplingConfig = group(SamplingConfig)
    kl: KLConfig = group(lambda: KLConfig(beta=0.04, kl_estimator="k3"))
    lora: LoraOptions = group(LoraOptions, prefix="lora_")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("total_prompts", "batch_size", "group_size", "minibatch_size"):
            check_positive(name, getattr(self, name))
        check_positive("num_iterations", self.num_iterations)
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a group baseline), got {self.group_size}")
        check_choice("scale_rewards", self.scale_rewards, ADVANTAGES)
        check_positive("advantage_eps", self.advantage_eps, float, allow_zero=True)
        check_choice("loss_type", self.loss_type, AGGREGATIONS)
        check_choice("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_LEVELS)
        if self.clip_eps_low is not None:
            check_range("clip_eps_low", self.clip_eps_low, 0.0, 1.0, "(]")
        if self.clip_eps_high is not None:
            check_positive("clip_eps_high", self.clip_eps_high, float)
        check_positive("cispo_max_weight", self.cispo_max_weight, float)
        check_positive("entropy_coef", self.entropy_coef, float, allow_zero=True)
        check_range("top_entropy_quantile", self.top_entropy_quantile, 0.0, 1.0, "(]")
        check_choice("kl_placement", self.kl_placement, ("loss", "reward"))
        check_positive("max_sampling_rounds", self.max_sampling_rounds)
        check_choice("overlong", self.overlong, ("none", "soft_penalty", "mask"))
        check_positive("overlong_buffer", self.overlong_buffer)
        check_positive("overlong_penalty", self.overlong_penalty, float, allow_zero=True)

    def ratio_bounds(self) -> tuple[float, float]:
        """The bounds on the importance ratio: PPO's clip (1 − ε_low, 1 + ε_high), an unset ε
        taking ``importance_sampling_level``'s default (resolved here, not on construction, so
        ``dataclasses.replace`` of the level keeps it unset); for cispo (0, cispo_max_weight)."""
        if self.loss_type == "cispo":
            return 0.0, self.cispo_max_weight
        default_low, default_high = CLIP_EPS_DEFAULTS[self.importance_sampling_level]
        low = default_low if self.clip_eps_low is None else self.clip_eps_low
        high = default_high if self.clip_eps_high is None else self.clip_eps_high
        return 1.0 - low, 1.0 + high


class GRPO(PromptBudget, Agent):
    """GRPO over ``TokenMDPVectorEnv``; see the module docstring."""

    agent_name = "grpo"

    def __init__(
        self,
        policy,
        tokenizer=None,
        env_kwargs: dict | None = None,
        config: GRPOConfig | None = None,
        run_dir: str | Path = "runs/grpo",
        reward_model=None,
    ):
        super().__init__()
        self.config = config = config or GRPOConfig()
        self.run_dir = Path(run_dir)
        self.total_prompts = config.total_prompts
        needs_ref = config.kl.beta > 0 or config.kl.kl_target is not None
        num_envs = config.batch_size * config.group_size
        init_online_agent(
            self, policy, tokenizer, env_kwargs, reward_model, num_envs, needs_reference=needs_ref
        )
        if config.dynamic_sampling and self.dist.world_size > 1:
            raise ValueError("dynamic_sampling runs on one process (batches would differ in size)")
        self.dist.check_divisible(minibatch_size=config.minibatch_size)
        steps = online_steps(config.total_prompts, config.batch_size)
        params = trainable_parameters(self.policy)
        self.optimizers = {"policy": make_optimizer(params, config.optim, steps)}
        self.train_forward = policy_train_forward(self)
        self.max_new_tokens = self.env.setup.max_new_tokens

    # -- one iteration ----------------------------------------------------------------------------
    def _collect(self, step: int) -> tuple[Rollout, float]:
        """The iteration's groups; with dynamic sampling, only groups whose rewards differ,
        topped up by further rounds of prompts. Returns the rollout and the dropped share."""
        cfg = self.config
        roll = sample(self, iteration_prompts(self, step), cfg.group_size)
        if not cfg.dynamic_sampling:
            return roll, 0.0
        kept, seen, dropped = [], 0, 0
        for round_ in range(cfg.max_sampling_rounds):
            if round_:
                pool = self.env.setup.task.prompts(self.env.setup.split)
                extra = draw_prompts(pool, cfg.batch_size, cfg.seed, step, round_)
                roll = sample(self, extra, cfg.group_size)
            varied = roll.grouped(roll.rewards).std(dim=1) > 0
            seen, dropped = seen + len(varied), dropped + int((~varied).sum())
            kept.append(roll.select_groups(varied.nonzero().flatten().tolist()))
            if sum(len(r.prompts) for r in kept) >= cfg.batch_size * cfg.group_size:
                break
        kept = [r for r in kept if r.prompts]
        if not kept:
            self._stop(f"dynamic sampling: every group of {seen} had equal rewards")
        roll = concat_rollouts(kept)
        n_groups = min(cfg.batch_size, len(roll.prompts) // cfg.group_size)
        return roll.select_groups(list(range(n_groups))), dropped / seen

    def _train_step(self, step: int) -> dict[str, float]:
        """Roll out groups, score them in one pass, group advantages, μ clipped updates, β."""
        cfg = self.config
        roll, dropped = self._collect(step)
        mask = roll.completion_mask
        single = None
        if self._single_pass_applies(len(mask)):
            single = self._single_pass(roll)
            scores = single[2]
        else:
            scores = score_rollout(
                self.policy, self.ref, roll, self.sampling, self.precision, self.vocab_size
            )
        beta = self.kl_ctl.value
        returns = roll.rewards.clone()
        if cfg.overlong == "soft_penalty":
            returns += soft_overlong_penalty(
                roll.lengths, self.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty
            )
        if cfg.kl_placement == "reward" and self.ref is not None:
            estimator = KL_ESTIMATORS[cfg.kl.kl_estimator]
            returns -= beta * masked_sum(estimator(scores.logprobs, scores.ref_logprobs), mask)
        self._check_finite("return (reward, penalties)", returns)
        advantages = ADVANTAGES[cfg.scale_rewards](roll.grouped(returns), cfg.advantage_eps)
        advantages = advantages.flatten()
        loss_mask = mask * roll.terminated.float()[:, None] if cfg.overlong == "mask" else mask
        keep, kept = None, {}
        if cfg.top_entropy_quantile < 1:
            keep = self._high_entropy_tokens(scores.entropy, loss_mask)
            kept = {"grpo/entropy_kept_fraction": masked_mean(keep, loss_mask).item()}
        train_stats = self._update(roll, scores, advantages, loss_mask, beta, single, keep)
        metrics = rollout_metrics(roll, scores)
        if self.ref is not None:
            update_kl_controller(self, metrics)
        zero_std = (roll.grouped(roll.rewards).std(dim=1) == 0).float().mean().item()
        return {
            **metrics,
            "reward/total": returns.mean().item(),
            "kl/beta": beta,
            **train_stats,
            "grpo/dropped_fraction": dropped,
            "grpo/zero_std_fraction": zero_std,
            "grpo/advantage_abs": advantages.abs().mean().item(),
            **kept,
        }

    def _high_entropy_tokens(self, entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) 1.0 on the ``mask`` tokens among the top ``top_entropy_quantile`` by
        ``entropy``, the quantile taken over every process's tokens (``high_entropy_mask``)."""
        shards = self.dist.gather_object(entropy[mask > 0].cpu())
        pool = torch.cat(shards).to(entropy.device)
        return high_entropy_mask(entropy, mask, self.config.top_entropy_quantile, pool)

    def _single_pass_applies(self, n: int) -> bool:
        """μ = 1 and the ``n`` sequences are one minibatch (see ``_single_pass``)."""
        return (
            self.config.num_iterations == 1
            and n <= self.config.minibatch_size // self.dist.world_size
        )

    def _single_pass(self, roll: Rollout) -> tuple[torch.Tensor, torch.Tensor, RolloutScores]:
        """μ = 1 and the batch is one minibatch: the sampling policy IS the policy being
        updated, so the training forward's logits (rows in the update's shuffled order) give
        the old log-probs too, and no second policy forward runs. Returns the order, those
        logits (with gradients) and the rollout's scores in the rollout's own row order."""
        order = torch.randperm(len(roll.completion_mask), generator=self.generator)
        logits = self.train_forward(roll.input_ids[order], roll.attention_mask[order],
                                    roll.prompt_width, self.precision, self.vocab_size)  # fmt: skip
        return order, logits, training_forward_scores(self, roll, order, logits.detach())

    def _update(
        self, roll, scores, advantages, loss_mask, beta, single=None, keep=None
    ) -> dict[str, float]:
        """μ passes of shuffled minibatches; each is one optimiser step. Returns mean stats.
        ``single``: ``_single_pass``'s order and logits, the one minibatch's forward done;
        ``keep``: (B, T) the tokens that carry the policy term (None: all)."""
        cfg = self.config
        tokens, totals, n = roll.completion_ids, {}, 0
        for _ in range(cfg.num_iterations):
            order, done = single[:2] if single else (None, None)
            if order is None:
                order = torch.randperm(len(loss_mask), generator=self.generator)
            for idx in order.split(cfg.minibatch_size // self.dist.world_size):
                logits = done if done is not None else self.train_forward(
                    roll.input_ids[idx], roll.attention_mask[idx], roll.prompt_width,
                    self.precision, self.vocab_size,
                )  # fmt: skip
                done = None
                log_probs = F.log_softmax(process_logits(logits, self.sampling), dim=-1)
                m = loss_mask[idx]
                logprobs = masked_token_logprobs(log_probs, tokens[idx], m)
                entropy = entropy_of(log_probs, log_probs.exp()) if cfg.entropy_coef else None
                loss, stats = self._loss(logprobs, entropy, scores, advantages, idx, m, beta, keep)
                self._check_finite("loss/total", loss.detach())
                loss.backward()
                stats.update(self._apply_gradients("policy"))
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                n += 1
        return {k: v / n for k, v in totals.items()}

    def _loss(self, logprobs, entropy, scores, advantages, idx, mask, beta, keep=None):
        """The minibatch's loss: −(``loss_type``'s objective on ``importance_sampling_level``'s
        ratio, on the ``keep`` tokens only) + β·k per token with kl_placement="loss", aggregated
        by ``loss_type``; then − entropy_coef × the token mean of ``entropy`` (B, T)."""
        cfg = self.config
        log_ratio = IMPORTANCE_LEVELS[cfg.importance_sampling_level](
            logprobs, scores.logprobs[idx], mask
        )
        objective, ratio, clipped_low, clipped_high = OBJECTIVES[cfg.loss_type](
            log_ratio, logprobs, advantages[idx, None], *cfg.ratio_bounds()
        )
        if keep is not None:
            objective = objective * keep[idx]
        token_losses = -objective
        aggregate = AGGREGATIONS[cfg.loss_type]
        stats = {}
        if cfg.kl_placement == "loss" and self.ref is not None:
            kl = KL_ESTIMATORS[cfg.kl.kl_estimator](logprobs, scores.ref_logprobs[idx])
            token_losses = token_losses + beta * kl
            stats["loss/kl"] = aggregate(kl.detach(), mask, self.max_new_tokens).item()
        loss = aggregate(token_losses, mask, self.max_new_tokens)
        if cfg.entropy_coef:
            bonus, entropy_stats = entropy_bonus(entropy, mask, cfg.entropy_coef)
            loss = loss + bonus
            stats.update(entropy_stats)
        with torch.no_grad():
            stats["policy/clipfrac_low"] = masked_mean(clipped_low.float(), mask).item()
            stats["policy/clipfrac_high"] = masked_mean(clipped_high.float(), mask).item()
            stats["policy/ratio_deviation"] = masked_mean((ratio - 1).abs(), mask).item()
        policy_loss = aggregate(-objective.detach(), mask, self.max_new_tokens).item()
        return loss, {"loss/policy": policy_loss, "loss/total": loss.item(), **stats}

    @classmethod
    def load(
        cls,
        path: str | Path,
        env_kwargs: dict | None = None,
        config: GRPOConfig | None = None,
        run_dir: str | Path = "runs/grpo",
        reward_model=None,
    ) -> GRPO:
        """An agent whose policy comes from ``save(path)``."""
        return cls(
            path, env_kwargs=env_kwargs, config=config, run_dir=run_dir, reward_model=reward_model
        )
