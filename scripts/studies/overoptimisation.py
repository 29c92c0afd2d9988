"""Best-of-n and the over-optimisation law: pure functions (numpy), tested against hand numbers.

**Best-of-n** samples n completions from the reference policy and keeps the one a reward ranks
highest. Its KL to the reference has the closed form ``log n − (n − 1)/n`` (Stiennon et al. 2020,
appendix; exact when the ranking has no ties), so it costs no training and gives the curve every
RL method should beat on the reward–KL plane. Its expected reward is estimated without bias from
N ≥ n samples per prompt (Nakano et al. 2021): rank the N samples by the selecting reward; the
i-th lowest (1-based) is the best of a uniformly drawn n-subset with probability
``C(i − 1, n − 1) / C(N, n)``.

**The over-optimisation law** (Gao, Schulman & Hilton 2022, "Scaling laws for reward model
over-optimization"): with d = √KL(π‖π_ref) and R(d) the gold reward gained over the initial
policy (so R(0) = 0),

- best-of-n: ``R(d) = d (α − β d)``, peaking at d* = α / (2β);
- RL: ``R(d) = d (α − β log d)``, peaking at d* = exp(α/β − 1).

Both are linear in (α, β), so the fit is ordinary least squares (no optimiser, no seed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

GAO_FORMS = ("bon", "rl")


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ π_ref) = log n − (n − 1)/n nats."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"best-of-n needs an integer n >= 1, got {n!r}")
    return math.log(n) - (n - 1) / n


def best_of_n_weights(N: int, n: int) -> np.ndarray:
    """``w[i]``: the probability that the (i+1)-th lowest of N ranked samples is the best of a
    uniformly drawn n-subset, ``C(i, n − 1) / C(N, n)`` (zero for i < n − 1; sums to 1)."""
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= N samples per prompt, got N = {N}")
    total = math.comb(N, n)
    return np.array([math.comb(i, n - 1) / total for i in range(N)])


def best_of_n_values(select: np.ndarray, value: np.ndarray, n: int) -> np.ndarray:
    """Per prompt, the expected ``value`` of the sample that ``select`` ranks best among n drawn
    without replacement from the prompt's N samples. ``select``/``value``: shape (prompts, N).

    Ties in ``select`` are broken by ``value``, lowest first (a tie's expected value is then
    not overstated)."""
    select, value = np.asarray(select, float), np.asarray(value, float)
    if select.shape != value.shape or select.ndim != 2:
        raise ValueError(f"select {select.shape} and value {value.shape} must be (prompts, N)")
    order = np.lexsort((value, select), axis=-1)  # by select, then value (lexsort: last key first)
    ranked = np.take_along_axis(value, order, axis=-1)
    return ranked @ best_of_n_weights(select.shape[1], n)


@dataclass(frozen=True)
class GaoFit:
    """A least-squares fit of R(d) (see the module docstring)."""

    form: str
    alpha: float
    beta: float
    rmse: float
    points: int

    def __call__(self, d: np.ndarray) -> np.ndarray:
        d = np.asarray(d, float)
        return d * (self.alpha - self.beta * gao_shape(self.form, d))

    @property
    def peak_d(self) -> float:
        """The d at which the fitted gold reward peaks (inf when it never turns down)."""
        if self.beta <= 0:
            return math.inf
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        return math.exp(min(self.alpha / self.beta - 1, 700.0))

    def as_dict(self) -> dict:
        return {**asdict(self), "peak_d": self.peak_d, "peak_kl": self.peak_d**2}


def gao_shape(form: str, d: np.ndarray) -> np.ndarray:
    """The term multiplying −β: d (best-of-n) or log d (RL; 0 at d = 0, where d log d → 0)."""
    if form not in GAO_FORMS:
        raise ValueError(f"Gao form must be one of {GAO_FORMS}, got {form!r}")
    d = np.asarray(d, float)
    if form == "bon":
        return d
    return np.log(np.where(d > 0, d, 1.0))


def gao_fit(kl: np.ndarray, gain: np.ndarray, form: str) -> GaoFit:
    """Fit R(d) = d(α − β·shape(d)) to (d = √KL, gold gain) points by least squares.

    KL values below zero (a sampled estimate's noise) count as 0. Needs two points with d > 0."""
    d = np.sqrt(np.clip(np.asarray(kl, float), 0.0, None))
    gain = np.asarray(gain, float)
    if d.shape != gain.shape:
        raise ValueError(f"kl {d.shape} and gain {gain.shape} must have one shape")
    keep = np.isfinite(d) & np.isfinite(gain)
    d, gain = d[keep], gain[keep]
    if np.count_nonzero(d > 0) < 2:
        raise ValueError(f"a Gao fit needs two points with KL > 0, got {np.count_nonzero(d > 0)}")
    design = np.stack([d, -d * gao_shape(form, d)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    residual = gain - design @ np.array([alpha, beta])
    rmse = float(np.sqrt(np.mean(residual**2)))
    return GaoFit(form, float(alpha), float(beta), rmse, int(len(d)))
