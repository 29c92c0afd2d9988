"""The KL penalty's estimators, exactly: their values and the gradients they produce, over an
enumerable set of completions.

When every completion of a prompt can be listed (``S`` sequences of at most ``T`` tokens), every
expectation under π_θ is a finite sum, so the bias and variance of an estimator — and of the
gradient it produces where it is placed — are computed, not sampled. Arguments share a layout:
``logprobs`` (S, T) log π_θ(y_t | y_<t), differentiable in θ; ``ref_logprobs`` (S, T)
log π_ref(y_t | y_<t); ``mask`` (S, T) 1 on real tokens; the S rows are all the completions, so
Σ_y π_θ(y) = 1.

Per sampled y, an estimator k placed in the objective gives the gradient
ĝ(y) = Σ_t w_t(y)·∇_θ log π_θ(y_t | y_<t), with the token weights w of its placement
(``PLACEMENTS``):

- ``loss`` (GRPO's placement): β·Σ_t k(log π_θ(y_t), log π_ref(y_t)) differentiated directly,
  w_t = ∂k/∂log π_θ at y_t;
- ``reward`` (the RLHF placement): −β·Σ_t k folded into the return, a stop-gradient reward in
  the score function, w_t = v(y) = Σ_s k(y_s) for every t, i.e. ĝ(y) = v(y)·∇_θ log π_θ(y).

The target is ∇_θ KL(π_θ‖π_ref), autograd through ``exact_sequence_kl``. For the tabular
softmax policy (one logit vector per state, ``tree_logprobs``) the module also follows GRPO's
*expected* update to its fixed point (``expected_update_fixed_point``) and gives the closed-form
per-state optima the loss placements are expected to reach (``per_state_optimum``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agents.maths.kl import KL_ESTIMATORS

# -- values ---------------------------------------------------------------------------------------


def sequence_logprob(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log π(y) = Σ_t log π(y_t | y_<t): (S, T) → (S,)."""
    return (logprobs * mask).sum(-1)


def exact_sequence_kl(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(π_θ‖π_ref) = Σ_y π_θ(y)·log(π_θ(y)/π_ref(y)) over all S completions: a scalar,
    differentiable in ``logprobs`` (its gradient is the exact ∇_θ KL)."""
    log_ratio = sequence_logprob(logprobs - ref_logprobs, mask)
    return (sequence_logprob(logprobs, mask).exp() * log_ratio).sum()


def estimator_values(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str
) -> torch.Tensor:
    """v(y) = Σ_t k(y_t): the sequence KL estimate from one sample y, (S, T) → (S,)."""
    return sequence_logprob(KL_ESTIMATORS[estimator](logprobs, ref_logprobs), mask)


# -- gradients: token weights of each placement, per-sample gradients ----------------------------


def estimator_slopes(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str
) -> torch.Tensor:
    """∂k/∂log π_θ at every token, by autograd through ``KL_ESTIMATORS[estimator]`` (k1: 1,
    k2: log r, k3: 1 − 1/r with r = π_θ/π_ref); (S, T) → (S, T), detached."""
    x = logprobs.detach().requires_grad_(True)
    (slopes,) = torch.autograd.grad(KL_ESTIMATORS[estimator](x, ref_logprobs.detach()).sum(), x)
    return slopes


def loss_weights(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str
) -> torch.Tensor:
    """Placement "loss": w_t = ∂k/∂log π_θ(y_t) (the estimator differentiated directly)."""
    return estimator_slopes(logprobs, ref_logprobs, estimator) * mask


def reward_weights(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, estimator: str
) -> torch.Tensor:
    """Placement "reward": w_t = v(y) for every token (a stop-gradient sequence reward)."""
    values = estimator_values(logprobs.detach(), ref_logprobs, mask, estimator)
    return values[:, None] * mask


PLACEMENTS: dict[str, Callable[..., torch.Tensor]] = {
    "loss": loss_weights,
    "reward": reward_weights,
}


def per_sample_gradients(
    jacobian: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """ĝ(y) = Σ_t w_t(y)·∇_θ log π_θ(y_t | y_<t): ``jacobian`` (S, T, P) of ``logprobs``
    with respect to the P parameters, ``weights`` and ``mask`` (S, T) → (S, P)."""
    return torch.einsum("st,stp->sp", weights * mask, jacobian)


def moments(
    samples: torch.Tensor, probs: torch.Tensor, target: torch.Tensor
) -> dict[str, float | torch.Tensor]:
    """Exact moments of a per-sample estimate under y ~ π_θ, relative to ``target``.

    ``samples`` (S, P) (or (S,) for a scalar), ``probs`` (S,) π_θ(y), ``target`` (P,) (or ()).
    Returns ``mean`` (P,); ``bias`` ‖E[ĝ] − g‖/‖g‖; ``signed_bias`` (E[ĝ] − g)/|g| for a scalar;
    ``variance`` E‖ĝ − E[ĝ]‖²/‖g‖² (of one sample); ``scale`` ‖E[ĝ]‖/‖g‖.
    """
    samples = samples.reshape(len(probs), -1).double()
    target, probs = target.reshape(-1).double(), probs.double()
    mean = probs @ samples
    scale = target.norm()
    spread = (probs * ((samples - mean) ** 2).sum(-1)).sum()
    return {
        "mean": mean,
        "bias": ((mean - target).norm() / scale).item(),
        "signed_bias": ((mean - target).sum() / scale).item(),
        "variance": (spread / scale**2).item(),
        "scale": (mean.norm() / scale).item(),
    }


def sampled_bias(
    samples: torch.Tensor,
    probs: torch.Tensor,
    target: torch.Tensor,
    n: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """The bias as a sampling study measures it: the mean ḡ_n of ``n`` draws y ~ π_θ against g.

    ``bias`` ‖ḡ_n − g‖/‖g‖ (≥ the noise floor even for an unbiased estimator); ``floor`` its
    no-bias level sqrt(tr Cov(ĝ)/n)/‖g‖ estimated from the draws; ``projection`` ḡ_n·g/‖g‖²
    (1 when unbiased along g, 0 for a zero-mean gradient) and its standard error
    ``projection_se``.
    """
    samples = samples.reshape(len(probs), -1).double()
    target = target.reshape(-1).double()
    draws = torch.multinomial(probs.double(), n, replacement=True, generator=generator)
    share = torch.bincount(draws, minlength=len(probs)).double() / n  # empirical π, (S,)
    mean, scale = share @ samples, target.norm()
    spread = share @ ((samples - mean) ** 2).sum(-1) * n / (n - 1)  # tr of the sample Cov
    projection = samples @ target / scale**2
    centred = projection - share @ projection
    return {
        "bias": ((mean - target).norm() / scale).item(),
        "floor": ((spread / n).sqrt() / scale).item(),
        "projection": (share @ projection).item(),
        "projection_se": ((share @ centred**2) / (n - 1)).sqrt().item(),
    }


# -- GRPO's expected update and its fixed point -------------------------------------------------


def expected_update(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    estimator: str,
    placement: str,
    beta: float,
    baseline_factor: float,
) -> torch.Tensor:
    """A scalar whose gradient is the expected on-policy GRPO ascent direction (Dr. GRPO:
    advantage r − mean_G, constant aggregation; μ = 1, so the clip is inactive):
    E[(1 − 1/G)·r(y)·∇log π(y) − β·ĝ_k(y)], ĝ_k the placement's per-sample KL gradient.

    With a group mean baseline E[(R − mean_G R)·∇log π] = (1 − 1/G)·E[R·∇log π]: that factor
    (``baseline_factor``) scales the return and, with placement "reward", the penalty in it;
    with placement "loss" the β·Σ_t k term is not scaled. ``rewards`` (S,).
    """
    probs = sequence_logprob(logprobs, mask).exp().detach()
    penalty_scale = baseline_factor if placement == "reward" else 1.0
    kl_weights = PLACEMENTS[placement](logprobs, ref_logprobs, mask, estimator)
    weights = baseline_factor * rewards[:, None] * mask - beta * penalty_scale * kl_weights
    return (probs[:, None] * weights * logprobs).sum()


def tree_logprobs(
    state_log_probs: torch.Tensor, states: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Token log-probs of every completion from a table of next-token distributions.

    ``state_log_probs`` (N, V) log π(·|state) for the N states (prefixes); ``states`` and
    ``tokens`` (S, T) long: the state each token is chosen in and the token → (S, T).
    """
    return state_log_probs[states, tokens]


def expected_update_fixed_point(
    ref_state_log_probs: torch.Tensor,
    states: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    estimator: str,
    placement: str,
    beta: float,
    baseline_factor: float,
    steps: int = 3000,
    lr: float = 0.05,
) -> tuple[torch.Tensor, float]:
    """Follow GRPO's expected update (``expected_update``) for a tabular softmax policy from
    π_ref for ``steps`` Adam steps on the logits: where GRPO goes with the sampling noise and
    the network taken away. Log-probs are floored at ``LOG_PROB_FLOOR`` (a token pushed there
    stays there: it has left the support). Returns the final (N, V) log-probs and how far the
    completion distribution still moved over the second half of the steps (TV; ≈ 0 at a fixed
    point)."""
    ref = ref_state_log_probs.detach().double()
    logits = ref.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    ref_logprobs = tree_logprobs(ref, states, tokens)
    args = (mask.double(), rewards.double(), estimator, placement, beta, baseline_factor)
    halfway = None
    for step in range(steps):
        logprobs = tree_logprobs(floored_log_softmax(logits), states, tokens)
        loss = -expected_update(logprobs, ref_logprobs, *args)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == steps // 2:
            halfway = sequence_logprob(logprobs.detach(), mask).exp()
    final = floored_log_softmax(logits.detach())
    end = sequence_logprob(tree_logprobs(final, states, tokens), mask).exp()
    moved = 0.5 * (end - halfway).abs().sum().item() if halfway is not None else float("nan")
    return final, moved


LOG_PROB_FLOOR = -40.0
"""Below this a tabular log-prob stops falling (e^-40 ≈ 4e-18: out of the support; it keeps
k3's π_ref/π_θ finite in fp64)."""


def floored_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last axis, floored at ``LOG_PROB_FLOOR`` (no gradient below it)."""
    return logits.log_softmax(-1).clamp(min=LOG_PROB_FLOOR)


# -- closed-form per-state optima (the fixed points of the loss placements) ----------------------


def reverse_kl_solution(ref_probs: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """argmax_π Σ_a π(a)·q(a) − β·KL(π‖π_ref) = π_ref·exp(q/β)/Z; (V,) → (V,)."""
    return torch.softmax(ref_probs.log() + q / beta, -1)


def forward_kl_solution(ref_probs: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """argmax_π Σ_a π(a)·q(a) − β·KL(π_ref‖π): π(a) = β·π_ref(a)/(λ − q(a)), the multiplier
    λ > max q set by bisection so that Σ_a π(a) = 1; (V,) → (V,)."""
    low, high = q.max().item(), q.max().item() + beta
    for _ in range(200):  # Σ β·π_ref/(λ − q) falls from ∞ to ≤ 1 on (max q, max q + β]
        mid = 0.5 * (low + high)
        low, high = (mid, high) if (beta * ref_probs / (mid - q)).sum() > 1 else (low, mid)
    probs = beta * ref_probs / (high - q)
    return probs / probs.sum()


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "reverse": reverse_kl_solution,
    "forward": forward_kl_solution,
}


def per_state_optimum(
    ref_state_log_probs: torch.Tensor,
    states: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    beta: float,
    divergence: str,
) -> torch.Tensor:
    """Each state regularised on its own, by backward induction: π(·|s) maximises
    Σ_a π(a|s)·Q(s, a) − β·D(π(·|s), π_ref(·|s)), with Q(s, a) the expected *reward* after a
    (no KL from later states in it) and D the reverse or forward KL (``DIVERGENCES``).
    Returns (N, V) log-probs; states no completion reaches keep π_ref."""
    ref = ref_state_log_probs.detach().double()
    probs = ref.exp().clone()
    q = torch.zeros_like(probs)
    value = torch.zeros(len(probs), dtype=probs.dtype)
    lengths = mask.sum(-1).long()
    for t in reversed(range(states.shape[1])):
        solved = set()
        for s in range(len(states)):
            if t >= lengths[s]:
                continue
            n, a = int(states[s, t]), int(tokens[s, t])
            last = t == lengths[s] - 1
            q[n, a] = rewards[s] if last else value[states[s, t + 1]]
            solved.add(n)
        for n in solved:
            probs[n] = DIVERGENCES[divergence](probs[n], q[n], beta)
            value[n] = probs[n] @ q[n]
    return probs.log()
