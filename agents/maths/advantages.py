"""Per-token rewards with the KL penalty, GAE, and masked statistics.

Tensors are laid out like ``Rollout``: (batch, T) with ``mask`` 1 on generated tokens (EOS
included) and 0 after a sequence ended; every sequence has at least one token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (a scalar tensor)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_mean_var(
    x: torch.Tensor,
    mask: torch.Tensor,
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of ``x`` over the masked positions (two passes).

    ``all_sum`` (e.g. ``Distributed.all_sum``) sums the partial sums over processes, so the
    statistics are those of every process's positions together; ``None`` = this tensor only.
    """
    reduce = all_sum or (lambda t: t)
    total, n = reduce(torch.stack([(x * mask).sum(), mask.sum()]))
    mean = total / n.clamp(min=1)
    var = reduce(((x - mean) ** 2 * mask).sum()) / (n - 1).clamp(min=1)
    return mean, var


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``x`` over the masked positions."""
    return masked_mean_var(x, mask)[1]


def whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x − mean) / std over the masked positions (0 outside); ``shift_mean=False`` keeps the mean.

    ``all_sum``: as in ``masked_mean_var`` (whiten over the batch of all processes).
    """
    mean, var = masked_mean_var(x, mask, all_sum)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(batch,) index of each sequence's last generated token."""
    return mask.sum(-1).long() - 1


def kl_penalised_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """r_t = −β·(log π_θ − log π_ref)_t + [t = T]·score  (Ziegler et al. 2019; Ouyang et al. 2022).

    ``scores``: (batch,) sequence reward; ``kl``: (batch, T) per-token log-ratio; → (batch, T).
    """
    rewards = -beta * kl * mask
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    last_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t);  A_t = δ_t + γλ·A_{t+1}, with V = 0 past the end of a
    sequence unless ``last_values`` (batch,) gives the value of the state after its last token
    (bootstrapping a truncated episode). ``rewards``/``values``/``mask``: (batch, T).
    Returns ``(advantages, returns)``, (batch, T) each, 0 on masked positions; returns = A + V.
    """
    batch, T = rewards.shape
    values = values * mask
    next_mask = torch.cat([mask[:, 1:], mask.new_zeros(batch, 1)], dim=1)
    next_values = torch.cat([values[:, 1:], values.new_zeros(batch, 1)], dim=1)
    if last_values is not None:
        is_last = mask - next_mask
        next_values = next_values + is_last * last_values[:, None]
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(rewards)
    running = rewards.new_zeros(batch)
    for t in reversed(range(T)):
        running = deltas[:, t] + gamma * lam * next_mask[:, t] * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[returns − values] / Var[returns] over the masked positions."""
    var_returns = masked_var(returns, mask)
    return float(1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8))
