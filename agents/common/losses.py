"""Policy-gradient losses as pure functions of tensors returning ``(loss, stats)``.

Token tensors are (batch, T) with ``mask`` 1 on generated tokens; losses average over the
masked tokens of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agents.common.advantages import masked_mean


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
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    return torch.min(ratio * advantages, clipped), ratio, log_ratio


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
