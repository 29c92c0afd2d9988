"""KL to the reference policy: per-token estimators, the exact per-token KL, and β controllers.

With ``logr = log π_θ(y_t) − log π_ref(y_t)`` at the sampled token y_t ~ π_θ, the estimators of
KL(π_θ‖π_ref) at that position are (Schulman, "Approximating KL divergence", 2020):
k1 = logr (unbiased, high variance, can be negative), k2 = ½·logr² (biased, ≥ 0),
k3 = (e^{−logr} − 1) + logr (unbiased, ≥ 0). Because the agent holds the full logits, the exact
per-token KL Σ_v π_θ(v)·(log π_θ(v) − log π_ref(v)) is available too; logging it beside the
estimators shows when a sample estimate misleads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from agents.checks import check_choice, check_positive


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π_θ − log π_ref per token; shapes (batch, T) → (batch, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log π_θ − log π_ref)² per token."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (π_ref/π_θ − 1) − log(π_ref/π_θ) per token."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def exact_kl(
    log_probs: torch.Tensor, ref_log_probs: torch.Tensor, probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact KL(π_θ‖π_ref) per position over the whole vocabulary.

    ``log_probs``/``ref_log_probs``: (batch, T, vocab) normalised fp32 log-probs; ``log_probs``
    may hold −inf (tokens removed by top-k/top-p), which contribute 0; ``probs`` =
    ``log_probs.exp()`` if the caller has it. Returns (batch, T).
    """
    probs = log_probs.exp() if probs is None else probs
    low = torch.finfo(log_probs.dtype).min  # −inf → a finite number: 0 · it = 0, never NaN
    diff = log_probs.clamp(min=low) - ref_log_probs.clamp(min=low)
    return torch.einsum("...v,...v->...", probs, diff)  # one fused multiply-and-sum


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over the last axis of ``x * mask``: per-sequence totals, (batch, T) → (batch,)."""
    return (x * mask).sum(-1)


def sequence_kl_stats(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    exact: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean sequence KL (Σ over tokens, mean over sequences) for every estimator (+ exact).

    ``kl/ref`` is the k1 estimate (the DESIGN.md tag); ``kl/k2``, ``kl/k3`` and ``kl/exact`` sit
    beside it.
    """
    stats = {
        f"kl/{name}": masked_sum(fn(logprobs, ref_logprobs), mask).mean().item()
        for name, fn in KL_ESTIMATORS.items()
    }
    stats["kl/ref"] = stats.pop("kl/k1")
    if exact is not None:
        stats["kl/exact"] = masked_sum(exact, mask).mean().item()
    return stats


@dataclass
class FixedKLController:
    """β stays at its initial value."""

    value: float

    def update(self, kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Proportional β control towards a target sequence KL (Ziegler et al. 2019, eq. 2).

    e = clip(KL / target − 1, −0.2, 0.2);  β ← β · (1 + e · n_steps / horizon),
    with ``n_steps`` the prompts consumed since the last update.
    """

    value: float
    target: float
    horizon: float

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


@dataclass
class KLConfig:
    """The KL regularisation of the online agents: the reference, β and its controller, and the
    estimator that turns sampled log-ratios into the penalty."""

    beta: float = 0.05
    """Initial KL coefficient β (0 = no KL term)."""
    kl_target: float | None = None
    """Target sequence KL for the adaptive controller (None = fixed β)."""
    kl_horizon: float = 10000.0
    """Horizon (in prompts) of the adaptive KL controller."""
    kl_estimator: str = "k1"
    """Per-token estimator of KL(π_θ‖π_ref) in the penalty: k1 | k2 | k3 (Schulman 2020)."""
    ref_policy: str | None = None
    """Reference model directory (None = the initial policy: a frozen copy, or with LoRA the
    base weights with the adapters disabled)."""

    def __post_init__(self) -> None:
        check_positive("beta", self.beta, float, allow_zero=True)
        if self.kl_target is not None:
            check_positive("kl_target", self.kl_target, float)
        check_positive("kl_horizon", self.kl_horizon, float)
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)


def make_kl_controller(config: KLConfig) -> FixedKLController | AdaptiveKLController:
    """Fixed β when ``config.kl_target`` is None, else the adaptive controller."""
    if config.kl_target is None:
        return FixedKLController(config.beta)
    return AdaptiveKLController(config.beta, config.kl_target, config.kl_horizon)
