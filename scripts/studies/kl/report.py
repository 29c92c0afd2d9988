"""The KL study's report: the markdown table with one finding per row, and the plot.

Takes the ``results`` dict ``scripts.studies.kl.study.run`` writes to ``kl_study.json``: ``a`` (the gradient
study along the reward-ascent path, ``2_token`` and ``1_token``), ``b`` (the GRPO runs per
"k/placement", one dict per seed), ``seeds``, ``argv``, ``completions``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOL = 1e-3
"""An exact bias below this is float error (measured ~1e-7); every real one is far above."""
CLAIMS = {  # the theory the study checks: claim, the measured field, the test
    "k1/reward": ("gives ∇KL", "grad_bias", lambda x: x < TOL),
    "k1/loss": ("has zero expected gradient", "grad_scale", lambda x: x < TOL),
    "k2/loss": ("gives ∇KL", "grad_bias", lambda x: x < TOL),
    "k3/loss": ("is biased", "grad_bias", lambda x: x >= TOL),
}
EXPECTED = {  # what E[ĝ] is, per state; tests/test_kl_study.py checks each identity
    "k1/reward": "E[ĝ] = E[log(π/π_ref)(y)·∇log π(y)] = ∇KL",
    "k1/loss": "E[ĝ] = E[∇log π(y)] = 0",
    "k2/reward": "As a stop-gradient reward ½·log²r pulls log(π/π_ref) towards +1, not 0 "
    "(one token: E[ĝ] = ∇E[½(log r − 1)²])",
    "k2/loss": "E[ĝ] = Σ_t E[∇KL(π‖π_ref)(s_t)] with the states' distribution held fixed: it "
    "misses how a token changes the KL of the states after it",
    "k3/reward": "E[ĝ] = ∇KL − Σ_t E[∇KL(π_ref‖π)(s_t)]: the forward KL enters with a minus "
    "sign and rewards driving tokens to probability 0",
    "k3/loss": "E[ĝ] = Σ_t E[∇KL(π_ref‖π)(s_t)]: the forward KL, per state",
}
FIXED = {  # the closed form of the fixed point, where there is one
    "k1/reward": "π* itself",
    "k1/loss": "the reward maximiser (all mass on the best completion), no KL at all",
    "k2/loss": "each state's reverse-KL optimum at β·G/(G−1), with Q the expected reward",
    "k3/loss": "each state's forward-KL optimum at β·G/(G−1), with Q the expected reward",
}
COLUMNS = (
    "k", "placement", "value bias", "value var", "grad bias", "grad bias, 1 token",
    "grad bias sampled (floor)", "grad var", "GRPO TV to π*", "GRPO TV to fixed pt",
    "fixed pt TV to π*", "KL: GRPO / fixed pt / π*", "finding",
)  # fmt: skip


def mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def claim_check(key: str, a: dict, a1: dict) -> str:
    claim, field, passes = CLAIMS[key]
    k, placement = key.split("/")
    verdict = "confirmed" if passes(a[field]) else "**contradicted**"
    measured = "‖E[ĝ]‖/‖∇KL‖" if field == "grad_scale" else "bias"
    return (f"Theory: {k} in the {placement} {claim}: {verdict} ({measured} {a[field]:.2g}; "
            f"{a1[field]:.2g} with one-token completions).")  # fmt: skip


def grpo_sentence(key: str, runs: list[dict]) -> str:
    """Where GRPO ended against π* and its expected update's fixed point."""
    text = (
        f"GRPO ends {mean_sd([r['tv_optimum'] for r in runs])} from π* and "
        f"{mean_sd([r['tv_fixed'] for r in runs])} from its expected update's fixed point "
        f"(E[r] {mean_sd([r['reward'] for r in runs], 2)}, "
        f"{mean_sd([r['support'] for r in runs], 1)} completions with π > 1%)"
    )
    elsewhere = [r for r in runs if r["tv_fixed"] > 0.5]
    if elsewhere:
        rewards = ", ".join(f"{r['reward']:.2f}" for r in elsewhere)
        text += f"; {len(elsewhere)} of {len(runs)} seeds settled on another point (E[r] {rewards})"
    fixed = FIXED.get(key)
    if fixed:
        gap = max(r["fixed_closed_form_tv"] for r in runs)
        point = f"the fixed point is {fixed} (TV {gap:.0e} from the closed form)"
    else:
        point = (f"no closed form: the noise-free update ends on "
                 f"{mean_sd([r['fixed_support'] for r in runs], 1)} completions with π > 1% "
                 f"(π*: {mean_sd([r['optimum_support'] for r in runs], 1)})")  # fmt: skip
    return f"{text}; {point}, {mean_sd([r['fixed_tv_optimum'] for r in runs])} from π*."


def finding(key: str, a: dict, a1: dict, runs: list[dict]) -> str:
    """The row's sentences, from its measured numbers."""
    check = [claim_check(key, a, a1)] if key in CLAIMS else []
    return " ".join([*check, EXPECTED[key] + ".", grpo_sentence(key, runs)])


def table_rows(results: dict) -> list[list[str]]:
    a, a1 = results["a"]["2_token"][-1], results["a"]["1_token"][-1]
    rows = []
    for key, runs in results["b"].items():
        g = a[key]
        kls = [np.mean([r[f] for r in runs]) for f in ("kl", "fixed_kl", "optimum_kl")]
        rows.append([
            *key.split("/"), f"{g['value_bias']:+.3f}", f"{g['value_variance']:.2f}",
            f"{g['grad_bias']:.3f}", f"{a1[key]['grad_bias']:.3f}",
            f"{g['sampled_bias']:.3f} ({g['sampled_floor']:.3f})", f"{g['grad_variance']:.1f}",
            mean_sd([r["tv_optimum"] for r in runs]), mean_sd([r["tv_fixed"] for r in runs]),
            mean_sd([r["fixed_tv_optimum"] for r in runs]), " / ".join(f"{x:.2f}" for x in kls),
            finding(key, g, a1[key], runs),
        ])  # fmt: skip
    return rows


def markdown(results: dict, args, seconds: float) -> str:
    a = results["a"]["2_token"][-1]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    seeds = ", ".join(str(s) for s in results["seeds"])
    return "\n".join([
        "# KL estimators × placement on the enumerable toy MDP", "",
        f"`{' '.join(['tokenmdp kl-study', *results['argv']])}`: {seconds:.0f} s. Toy: prompt "
        f"\"a\", {results['completions']} completions of 1–2 tokens, π_ref a fresh tiny GPT-2 "
        f"(1 layer, 32 wide), β = {args.beta}, π* = π_ref·exp(r/β)/Z.", "",
        *lines, "",
        f"**Gradient columns** (exact moments over every completion, y ~ π_θ): π_θ is π_ref after "
        f"{args.ascent_steps} Adam steps (lr {args.ascent_lr}) of exact reward ascent, "
        f"KL(π_θ‖π_ref) = {a['kl']:.3f}. *value bias* (E[Σ_t k] − KL)/KL, *value var* "
        "Var(Σ_t k)/KL²; *grad bias* ‖E[ĝ] − ∇KL‖/‖∇KL‖, ĝ the gradient of the estimator as "
        "used (loss: Σ_t k differentiated; reward: Σ_t k·∇log π(y), stop-gradient), ∇KL by "
        "autograd through the enumerated KL; *1 token*: the same on the one-token toy; *sampled*: "
        f"the mean of {args.samples} draws (floor: what an unbiased estimator would show); "
        "*grad var* E‖ĝ − E[ĝ]‖²/‖∇KL‖² (one sample).", "",
        f"**GRPO columns** (mean ± sd over seeds {seeds}): Dr. GRPO (advantage r − mean_G, "
        f"constant aggregation), {args.batch_size} prompts × G = {args.group_size}, "
        f"{args.iterations} iterations, lr {args.learning_rate} linear, μ = 1 (on-policy), the "
        "estimator in the reward or the loss. *Fixed pt*: the fixed point of GRPO's expected "
        f"update, followed noise-free for a tabular policy from π_ref ({args.flow_steps} Adam "
        "steps); *KL* KL(π‖π_ref) of GRPO's final policy, the fixed point and π*.", "",
        "![KL study](kl_study.png)", "",
    ])  # fmt: skip


COLOURS = {"k1": "tab:blue", "k2": "tab:green", "k3": "tab:red"}


def plot(results: dict, path: Path) -> None:
    """Gradient bias and variance along the reward ascent; GRPO's TV to π* over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    points = results["a"]["2_token"]
    kls = [p["kl"] for p in points]
    for key, runs in results["b"].items():
        k, placement = key.split("/")
        style = {"color": COLOURS[k], "linestyle": "-" if placement == "reward" else "--"}
        axes[0].plot(kls, [p[key]["grad_bias"] for p in points], marker="o", label=key, **style)
        axes[1].plot(kls, [p[key]["grad_variance"] for p in points], marker="o", **style)
        steps = [s for s, _ in runs[0]["curve"]]
        curve = np.mean([[v for _, v in r["curve"]] for r in runs], axis=0)
        axes[2].plot(steps, curve, label=key, **style)
    axes[0].set(xlabel="KL(π_θ‖π_ref) along reward ascent", ylabel="‖E[ĝ] − ∇KL‖ / ‖∇KL‖",
                title="gradient bias (exact)")  # fmt: skip
    axes[1].set(xlabel="KL(π_θ‖π_ref) along reward ascent", ylabel="E‖ĝ − E[ĝ]‖² / ‖∇KL‖²",
                title="gradient variance (one sample)", yscale="log")  # fmt: skip
    axes[2].set(xlabel="GRPO iteration", ylabel="TV(π_θ, π*), mean over seeds",
                title="GRPO: distance to π*")  # fmt: skip
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
