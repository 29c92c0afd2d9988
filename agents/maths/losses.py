"""Policy-gradient losses as pure functions of tensors returning ``(loss, stats)``.

Token tensors are (batch, T) with ``mask`` 1 on generated tokens; losses average over the
masked tokens of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from agents.maths.advantages import masked_mean


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate objective (Schulman et al. 2017, eq. 7), to maximise:
    min(ρ_t·A_t, clip(ρ_t, 1−ε_low, 1+ε_high)·A_t) with ρ_t = π_θ(y_t)/π_old(y_t); ε_low ≠ ε_high
    is DAPO's "clip-higher" (Yu et al. 2025). Returns (objective, ρ, log ρ), (batch, T) each."""
    log_ratio = logprobs - old_logprobs
    objective, ratio, _, _ = clip_objective(
        log_ratio, logprobs, advantages, 1.0 - eps_low, 1.0 + eps_high
    )
    return objective, ratio, log_ratio


# -- the importance ratio: (batch, T) log-probs → (batch, T) log ρ ---------------------------------


def token_log_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """log ρ_t = log π_θ(y_t) − log π_old(y_t): one ratio per token (PPO, GRPO)."""
    return logprobs - old_logprobs


def sequence_log_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """GSPO (Zheng et al. 2025, eq. 7): log s_i = (1/|y_i|)·Σ_t (log π_θ − log π_old)(y_{i,t})
    over the sequence's masked tokens, given to each of its tokens in GSPO-token form (eq. 13):
    sg[log s_i] + log π_θ(y_t) − sg[log π_θ(y_t)]. Every token's value is log s_i (so all tokens
    of a sequence share one clipped ratio); token t's gradient is s_i·∇log π_θ(y_t). When the
    tokens of a sequence weigh the same in the loss this sums to GSPO's ∇s_i = s_i·mean_t ∇log π;
    a per-token mask (``high_entropy_mask``) then acts on its own tokens only.
    ``logprobs``/``old_logprobs``/``mask``: (batch, T) → (batch, T)."""
    per_sequence = ((logprobs - old_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_sequence.detach()[:, None] + (logprobs - logprobs.detach())


# -- per-token objectives (to maximise) from log ρ: (objective, ρ, clipped low, clipped high) ----


def clip_objective(
    log_ratio: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    low: float,
    high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7): min(ρ·A, clip(ρ, low, high)·A), with
    ``low``/``high`` the bounds on ρ (1 − ε_low, 1 + ε_high). The flags mark tokens where the clip
    takes the gradient away: ρ < low with A < 0, ρ > high with A > 0. ``logprobs`` is unused
    (the gradient flows through ρ). (batch, T) each; ``advantages`` broadcasts."""
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, low, high) * advantages
    with torch.no_grad():
        clipped_low = (ratio < low) & (advantages < 0)
        clipped_high = (ratio > high) & (advantages > 0)
    return torch.min(ratio * advantages, clipped), ratio, clipped_low, clipped_high


def cispo_objective(
    log_ratio: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    low: float,
    high: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, Chen et al. 2025, eq. 4): sg(clip(ρ, low, high))·A·log π_θ(y_t). The
    clipped importance weight w is a constant, so every token keeps its gradient w·A·∇log π_θ:
    the clip bounds a token's weight instead of dropping the token, as PPO's clip does.

    ``low``/``high`` are absolute bounds on w. GRPO's ``loss_type="cispo"`` follows TRL: low = 0
    (no lower bound, as in the paper's runs) and high = ε_max, an absolute cap on the weight
    (TRL's ``epsilon_high`` under cispo; ScaleRL recommends 5): w = min(ρ, ε_max). verl's
    ``compute_policy_loss_cispo`` (read in public forks of verl's ``core_algos.py``; the copy of
    verl's own repository searched here predates it, so unconfirmed there) clamps ρ to
    [1 − clip_ratio_low, 1 + clip_ratio_high] instead, offsets around 1 as in PPO's clip: its
    clip_ratio_high = 0.28 caps w at 1.28, where TRL's cap 0.28 would mean w ≤ 0.28.
    Flags: w was bounded below / above."""
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, low, high).detach()
    with torch.no_grad():
        clipped_low, clipped_high = ratio < low, ratio > high
    return weight * advantages * logprobs, ratio, clipped_low, clipped_high


# -- which tokens carry the loss, and the entropy bonus ---------------------------------------------


def high_entropy_mask(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    top_fraction: float,
    pool: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wang et al. 2025 ("Beyond the 80/20 rule"): 1.0 on the masked tokens whose entropy is
    among the highest ``top_fraction`` ρ, i.e. at least the (1 − ρ)-quantile (linear
    interpolation, as ``torch.quantile``, which refuses more than 2^24 values) of the entropies
    in ``pool`` (1-D; default: the masked entries of ``entropy``), else 0. TRL's
    ``top_entropy_quantile``: tokens tied at the threshold are all kept; ρ = 1 keeps every masked
    token; an empty pool keeps none. No gradient. ``entropy``/``mask``: (batch, T) → (batch, T)."""
    entropy = entropy.detach().float()
    pool = entropy[mask > 0] if pool is None else pool.detach().float()
    if pool.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.float32)
    ordered = pool.sort().values
    position = (1.0 - top_fraction) * (len(ordered) - 1)
    below = ordered[math.floor(position)]
    threshold = torch.lerp(below, ordered[math.ceil(position)], position - math.floor(position))
    return ((entropy >= threshold) & (mask > 0)).float()


def entropy_bonus(
    entropy: torch.Tensor, mask: torch.Tensor, coef: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """−coef·(token mean of the policy's entropy over the masked tokens): added to a loss, it
    rewards spread (PPO's entropy bonus, Schulman et al. 2017, eq. 9). ``entropy``/``mask``:
    (batch, T), the entropy with its gradient. Stats: ``loss/entropy`` (the mean entropy)."""
    mean_entropy = masked_mean(entropy, mask)
    return -coef * mean_entropy, {"loss/entropy": mean_entropy.item()}


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss, token mean.

    L = −E_t[min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t)],  ρ_t = π_θ(y_t)/π_old(y_t).
    Stats: ``policy/clipfrac`` (share of tokens where the clip is active) and
    ``policy/approx_kl`` (k3 estimate of KL(π_old‖π_θ)).
    """
    objective, ratio, log_ratio = clipped_surrogate(
        logprobs, old_logprobs, advantages, clip_eps, clip_eps
    )
    loss = -masked_mean(objective, mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask)
        approx_kl = masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
    return loss, {"policy/clipfrac": clipfrac.item(), "policy/approx_kl": approx_kl.item()}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """½·E_t[max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²)]  (PPO2 / OpenAI baselines).

    ``clip=None`` gives the plain squared error ½·E_t[(V − R)²].
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(unclipped, mask), {"value/clipfrac": 0.0}
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, {"value/clipfrac": clipfrac.item()}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy per position of softmax(``logits``) (−inf logits allowed): (..., vocab) → (...)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return entropy_of(log_probs, log_probs.exp())


def entropy_of(log_probs: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """−Σ_v p(v)·log p(v) from normalised (..., vocab) ``log_probs`` and their ``exp()``."""
    safe = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)  # −inf (p = 0) contributes 0
    return -torch.einsum("...v,...v->...", probs, safe)


def reinforce_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sequence-level REINFORCE (Williams 1992): L = −E_i[(R_i − b_i)·Σ_t log π_θ(y_{i,t})].

    ``logprobs``/``mask``: (batch, T); ``advantages``: (batch,) = R − b.
    """
    seq_logprobs = (logprobs * mask).sum(-1)
    loss = -(advantages * seq_logprobs).mean()
    return loss, {"policy/seq_logprob": seq_logprobs.mean().item()}
