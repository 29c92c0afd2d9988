"""The reward–KL frontier of a study: every method over β, best-of-n, and the Gao et al. fits.

- ``best_of_n_curves`` samples N completions for each held-out prompt from the SFT policy through
  the env and scores them with the gold and (if any) the learned reward; best-of-n for n = 1, 2,
  4, …, N is then exact arithmetic (``scripts.studies.overoptimisation``): no training, analytic
  KL log n − (n − 1)/n.
- ``frontier_section`` reads the held-out evaluations (one per method and β, named
  ``<method>-beta<β>``), draws ``frontier.png`` (each method's points connected in order of KL,
  95% intervals, the best-of-n curves on the same axes) and ``overoptimisation_law.png`` (gold
  gain against d = √KL with the fits), and says in words what the numbers show: which method's
  point lies below another's frontier beyond the intervals, and where a proxy rose while the gold
  fell.

The fits: Gao et al. fit each RL run along its training trajectory; a study with a β sweep has
one held-out point per β at the end of training, so each method's RL-form fit here runs through
those points (gold gain over the SFT policy's held-out gold, same prompts and seed) — a law
across β rather than along one run, stated as such in the report.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from agents.registry import names
from scripts.studies.overoptimisation import best_of_n_kl, best_of_n_values, gao_fit
from scripts.studies.report.plots import _pyplot, color_of, finish_axes

BETA_NAME = re.compile(r"^(?P<method>.+)-beta(?P<beta>[0-9.eE+-]+)$")


def powers_of_two(n_max: int) -> list[int]:
    return [2**i for i in range(int(math.log2(n_max)) + 1)]


def best_of_n_curves(
    policy_dir: str | Path,
    env_kwargs: dict,
    learned,
    prompts: int,
    n_max: int,
    seed: int,
) -> dict:
    """Best-of-n from ``policy_dir`` on ``prompts`` held-out prompts (cycled), N = ``n_max``
    samples each: per selector (``learned`` if given, ``gold``) and n, the mean gold reward of
    the selected sample with a 95% bootstrap interval over prompts, the selector's own value,
    and the analytic KL."""
    from agents.evaluation import bootstrap_ci, evaluate
    from agents.models.policy import load_policy
    from llm_env.vector import TokenMDPVectorEnv

    policy, tokenizer = load_policy(policy_dir)
    env = TokenMDPVectorEnv(min(64, prompts * n_max), tokenizer=tokenizer, split="eval",
                            autoreset_mode="disabled", **env_kwargs)  # fmt: skip
    pool = list(env.setup.task.prompts("eval"))
    chosen = [pool[i % len(pool)] for i in range(prompts) for _ in range(n_max)]
    extra = {"learned": learned} if learned is not None else {}
    result = evaluate(policy.eval(), None, env, chosen, seed=seed, extra_reward_models=extra,
                      progress="best-of-n sampling")  # fmt: skip
    gold = result.gold_rewards.reshape(prompts, n_max)
    selectors = {name: v.reshape(prompts, n_max) for name, v in result.extra.items()}
    selectors["gold"] = gold
    curves = {}
    for name, select in selectors.items():
        curves[name] = []
        for n in powers_of_two(n_max):
            per_prompt = best_of_n_values(select, gold, n)
            curves[name].append({
                "n": n, "kl": best_of_n_kl(n), "gold_reward": float(per_prompt.mean()),
                "gold_ci": list(bootstrap_ci(per_prompt, seed=seed)),
                "selector_value": float(best_of_n_values(select, select, n).mean()),
            })  # fmt: skip
    return {"prompts": prompts, "distinct_prompts": len(set(chosen)), "n_max": n_max,
            "curves": curves}  # fmt: skip


def method_points(evals: list[dict]) -> dict[str, list[dict]]:
    """The evaluations grouped by method (``ppo-beta0.1`` → ``ppo``), each group sorted by KL;
    SFT and reference evaluations are left out."""
    groups: dict[str, list[dict]] = {}
    for e in evals:
        name = e["name"]
        if name in ("sft", "reference") or "/" in name:
            continue
        match = BETA_NAME.match(name)
        method = match["method"] if match else name
        beta = float(match["beta"]) if match else math.nan
        groups.setdefault(method, []).append({**e, "beta": beta})
    return {m: sorted(points, key=lambda p: p["kl_ref"]) for m, points in groups.items()}


def beta_label(point: dict) -> str:
    return f"β={point['beta']:g}" if math.isfinite(point["beta"]) else "(its default β)"


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    """Piecewise-linear value at ``x`` of points sorted by x; NaN outside their range."""
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return math.nan


KL_BUDGETS = (1.0, 2.0, 4.0, 8.0, 16.0)


def budget_table(measured: dict[str, list[tuple]], budgets=KL_BUDGETS) -> list[str]:
    """Per KL budget and curve, the best gold reward among its measured points within the
    budget, with the point's 95% interval: who reaches what at each KL (a markdown table)."""
    names = list(measured)
    lines = ["| KL ≤ | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for budget in budgets:
        cells = []
        for name in names:
            inside = [p for p in measured[name] if p[0] <= budget]
            best = max(inside, key=lambda p: p[1], default=None)
            cells.append("—" if best is None else
                         f"{best[1]:.3f} [{best[2][0]:.3f}, {best[2][1]:.3f}]")  # fmt: skip
        lines.append(f"| {budget:g} | " + " | ".join(cells) + " |")
    return lines


def dominance_lines(groups: dict[str, list[dict]], bon: dict | None) -> list[str]:
    """For every method's point: the other frontiers (and best-of-n) that pass above its 95%
    interval at the same KL (interpolated between their points), or that it beats."""
    curves = {name: [(kl, gold) for kl, gold, _ in points]
              for name, points in measured_curves(groups, bon).items()}  # fmt: skip
    lines = []
    for method, points in groups.items():
        for p in points:
            low, high = p["gold_ci"]
            above, below = [], []
            for other, curve in curves.items():
                if other == method:
                    continue
                y = interpolate(curve, p["kl_ref"])
                if y > high:
                    above.append(f"{other} ({y:.3f})")
                elif y < low:
                    below.append(f"{other} ({y:.3f})")
            text = (f"**{method}** {beta_label(p)}: gold {p['gold_reward']:.3f} "
                    f"[{low:.3f}, {high:.3f}] at KL {p['kl_ref']:.2f}")  # fmt: skip
            if above:
                text += f"; below the frontier of {', '.join(above)} at that KL"
            if below:
                text += f"; above {', '.join(below)} at that KL"
            if not above and not below:
                text += "; no other curve reaches this KL, or they pass within its interval"
            lines.append(f"- {text}.")
    return lines


PAIRED_FOCUS = "online_dpo"
"""The method the study's paired table compares with every other at the same β: does sampling
from the current policy close offline DPO's gap to the RL methods?"""


def paired_table(groups: dict[str, list[dict]], focus: str = PAIRED_FOCUS) -> tuple[list, dict]:
    """At every β ``focus`` ran, its gold reward minus each other method's at that β, with the
    paired 95% interval (``agents.evaluation.paired_gain_ci``: the same held-out prompts in the
    same order, resampled together); a markdown table and its ``results.json`` entries.
    Evaluations without per-completion rewards (older runs) get a dash."""
    from agents.evaluation import paired_gain_ci

    if focus not in groups:
        return [], {}
    others = [m for m in groups if m != focus]
    by_beta = {m: {p["beta"]: p for p in points if math.isfinite(p["beta"])}
               for m, points in groups.items()}  # fmt: skip
    lines = ["| β | " + " | ".join(f"{focus} − {o}" for o in others) + " |",
             "|---|" + "---|" * len(others)]  # fmt: skip
    results: dict[str, list] = {o: [] for o in others}
    for beta, p in sorted(by_beta[focus].items()):
        cells = []
        for other in others:
            q = by_beta[other].get(beta)
            if q is None or len(p.get("gold_rewards", ())) != len(q.get("gold_rewards", [0])):
                cells.append("—")
                continue
            diff = float(np.mean(p["gold_rewards"]) - np.mean(q["gold_rewards"]))
            low, high = paired_gain_ci(p["gold_rewards"], q["gold_rewards"],
                                       p.get("samples_per_prompt", 1))  # fmt: skip
            results[other].append({"beta": beta, "gain": diff, "ci": [low, high],
                                   "kl": [p["kl_ref"], q["kl_ref"]]})  # fmt: skip
            cells.append(f"{diff:+.3f} [{low:+.3f}, {high:+.3f}] (KL {p['kl_ref']:.1f} vs "
                         f"{q['kl_ref']:.1f})")  # fmt: skip
        lines.append(f"| {beta:g} | " + " | ".join(cells) + " |")
    return lines, {"focus": focus, "against": results}


def proxy_gold_lines(groups: dict[str, list[dict]], bon: dict | None) -> list[str]:
    """Where the optimised (learned) reward rose while the gold fell: along each method's β
    sweep (in order of KL) and along best-of-n with the learned reward."""
    lines = []
    for method, points in groups.items():
        for a, b in zip(points, points[1:]):
            learned = (a.get("learned_reward"), b.get("learned_reward"))
            if None in learned or b["gold_reward"] >= a["gold_reward"]:
                continue
            if learned[1] > learned[0]:
                overlap = b["gold_ci"][1] >= a["gold_ci"][0]
                lines.append(
                    f"- **{method}**: from {beta_label(a)} to {beta_label(b)} (KL "
                    f"{a['kl_ref']:.2f} → {b['kl_ref']:.2f}) the learned reward rose "
                    f"{learned[0]:.3f} → {learned[1]:.3f} while the gold fell "
                    f"{a['gold_reward']:.3f} → {b['gold_reward']:.3f}"
                    + (" (within the intervals)." if overlap else " (beyond the intervals).")
                )  # fmt: skip
    rows = (bon or {}).get("curves", {}).get("learned", [])
    for a, b in zip(rows, rows[1:]):
        if b["selector_value"] > a["selector_value"] and b["gold_reward"] < a["gold_reward"]:
            lines.append(
                f"- **best-of-n (learned reward)**: n {a['n']} → {b['n']} raised the learned "
                f"reward {a['selector_value']:.3f} → {b['selector_value']:.3f} while the gold "
                f"fell {a['gold_reward']:.3f} → {b['gold_reward']:.3f}."
            )
    return lines or ["- Nowhere in this study did the learned reward rise while the gold fell."]


def gao_fits(groups: dict[str, list[dict]], bon: dict | None, sft_gold: float) -> dict:
    """The Gao et al. fits: best-of-n form on each best-of-n curve, RL form on each method's
    β sweep (gold gain over SFT against d = √KL; the SFT point d = 0 is implied by the form)."""
    fits = {}
    for selector, rows in (bon or {}).get("curves", {}).items():
        kl = np.array([r["kl"] for r in rows])
        if np.count_nonzero(kl > 0) >= 2:  # n_max >= 4
            gain = np.array([r["gold_reward"] for r in rows]) - rows[0]["gold_reward"]
            fits[f"best-of-n ({selector} reward)"] = gao_fit(kl, gain, "bon")
    for method, points in groups.items():
        kl = np.array([p["kl_ref"] for p in points])
        if np.count_nonzero(kl > 0) >= 2:
            gain = np.array([p["gold_reward"] for p in points]) - sft_gold
            fits[method] = gao_fit(kl, gain, "rl")
    return fits


def training_fits(runs) -> tuple[dict, list[str]]:
    """Gao et al.'s RL form along training, as in the paper: for every online run that optimised
    the learned reward, the gold reward of its training samples at each log point, as a gain over
    its first log point (samples of the SFT policy, drawn before any update), against d = √KL
    of the same samples (k1). One fit per run; and a table row per run with the fit, the gold's
    peak and end, and the learned reward at both."""
    fits, rows = {}, []
    for run in runs:
        if run.agent not in names(kind="online") or "gold" in run.name:
            continue
        kl = dict(run.scalars.get("kl/ref", []))
        learned = dict(run.scalars.get("reward/train", []))
        points = [(s, kl[s], g) for s, g in run.scalars.get("reward/gold", []) if s in kl]
        if len(points) < 3 or not all(s in learned for s, _, _ in points):
            continue
        kls, gains = (
            np.array([p[1] for p in points]),
            np.array([p[2] - points[0][2] for p in points]),
        )
        try:
            fit = fits[run.label] = gao_fit(kls, gains, "rl")
        except ValueError:  # fewer than two points with KL > 0
            continue
        peak, end = max(points, key=lambda p: p[2]), points[-1]
        rows.append(f"| {run.label} | {fit.alpha:.3f} | {fit.beta:.3f} | {fit.rmse:.3f} | "
                    f"{fit.points} | {kl_text(fit.peak_d**2)} | {peak[2]:.3f} at KL {peak[1]:.2f}"
                    f" → {end[2]:.3f} at KL {end[1]:.2f} | {learned[peak[0]]:.3f} → "
                    f"{learned[end[0]]:.3f} |")  # fmt: skip
    if not rows:
        return fits, []
    header = ["| run | α | β | RMSE | points | peak at KL | gold: best log point → end | "
              "learned reward there → end |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    return fits, header + rows


def measured_curves(groups: dict[str, list[dict]], bon: dict | None) -> dict[str, list[tuple]]:
    """Every fitted curve's measured points, (KL, gold, 95% CI) in order of KL."""
    curves = {m: [(p["kl_ref"], p["gold_reward"], p["gold_ci"]) for p in pts]
              for m, pts in groups.items()}  # fmt: skip
    for selector, rows in (bon or {}).get("curves", {}).items():
        curves[f"best-of-n ({selector} reward)"] = [(r["kl"], r["gold_reward"], r["gold_ci"])
                                                    for r in rows]  # fmt: skip
    return curves


def decline(points: list[tuple]) -> str | None:
    """``"0.861 at KL 3.64 → 0.614 at KL 33.20"`` when a point past the best one lies below the
    best's 95% interval (a measured fall of the gold with more KL); else None."""
    best = max(range(len(points)), key=lambda i: points[i][1])
    later = [p for p in points[best + 1 :] if p[2][1] < points[best][2][0]]
    if not later:
        return None
    low = min(later, key=lambda p: p[1])
    return f"{points[best][1]:.3f} at KL {points[best][0]:.2f} → {low[1]:.3f} at KL {low[0]:.2f}"


def kl_text(kl: float) -> str:
    """A fitted peak's KL for the report: "never" (no peak), "> 10,000" (far out), or 2 decimals."""
    return "never" if math.isinf(kl) else "> 10,000" if kl > 1e4 else f"{kl:.2f}"


def fit_lines(fits: dict, measured: dict[str, list[tuple]]) -> list[str]:
    """The fits' table, then per curve what the fit and the measured points say."""
    lines = [
        "| curve | form | α | β | RMSE | points | peak at KL |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, fit in fits.items():
        form = "d(α − βd)" if fit.form == "bon" else "d(α − β log d)"
        lines.append(f"| {name} | {form} | {fit.alpha:.3f} | {fit.beta:.3f} | {fit.rmse:.3f} | "
                     f"{fit.points} | {kl_text(fit.peak_d**2)} |")  # fmt: skip
    lines.append("")
    for name, fit in fits.items():
        points = measured[name]
        fell = decline(points)
        if math.isinf(fit.peak_d):
            text = "the fit never turns down (β ≤ 0)"
        elif fit.peak_d**2 <= points[-1][0]:
            text = f"the fit peaks at KL {fit.peak_d**2:.2f}, inside the measured range"
        else:
            text = (f"the fit peaks at KL {kl_text(fit.peak_d**2)}, beyond the last point (KL "
                    f"{points[-1][0]:.2f}): an extrapolation")  # fmt: skip
        if fell:
            text += f"; the measured gold fell past its best point, beyond the intervals ({fell})"
        else:
            text += ("; the measured gold never fell below its best point's interval: "
                     "no over-optimisation observed" + (", the fitted peak only describes the "
                     "curve flattening" if fit.peak_d**2 <= points[-1][0] else ""))  # fmt: skip
        lines.append(f"- {name}: {text}.")
    return lines


def plot_frontiers(
    groups: dict[str, list[dict]], bon: dict | None, sft: dict | None, path: Path
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for method, points in groups.items():
        xs = [max(p["kl_ref"], 0.0) for p in points]  # a sampled KL estimate can dip below 0
        ys = [p["gold_reward"] for p in points]
        err = [[y - p["gold_ci"][0] for y, p in zip(ys, points)],
               [p["gold_ci"][1] - y for y, p in zip(ys, points)]]  # fmt: skip
        color = color_of(method)
        ax.errorbar(xs, ys, yerr=err, fmt="o-", ms=6, capsize=3, color=color, label=method)
        for x, y, p in zip(xs, ys, points):
            if math.isfinite(p["beta"]):
                ax.annotate(f"β={p['beta']:g}", (x, y), fontsize=7, color=color,
                            xytext=(4, -10), textcoords="offset points")  # fmt: skip
    styles = {"learned": ("k--", "best-of-n, learned reward"), "gold": ("k:", "best-of-n, gold")}
    for selector, rows in (bon or {}).get("curves", {}).items():
        style, label = styles.get(selector, ("k-.", f"best-of-n, {selector}"))
        ax.plot([r["kl"] for r in rows], [r["gold_reward"] for r in rows], style, label=label)
        last = rows[-1]
        ax.annotate(f"n={last['n']}", (last["kl"], last["gold_reward"]), fontsize=7)
    if sft is not None:
        ax.plot([0], [sft["gold_reward"]], "ks", label="SFT")
    ax.set_xscale("function", functions=(np.sqrt, np.square))  # d = √KL spacing (Gao et al.)
    ax.set_xlim(left=0)
    finish_axes(fig, ax, path, "KL(π ‖ π_SFT)  [nats per completion; square-root scale]",
                "gold reward (held-out prompts, 95% CI)",
                "Reward–KL frontier: one point per β, best-of-n for reference", "lower right")  # fmt: skip


def plot_law(
    fits: dict, groups: dict[str, list[dict]], bon: dict | None, sft_gold: float, path: Path
) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, fit in fits.items():
        if name in groups:
            pts = groups[name]
            d = np.sqrt(np.clip([p["kl_ref"] for p in pts], 0, None))
            gain = [p["gold_reward"] - sft_gold for p in pts]
            color, style = color_of(name), "-"
        else:
            selector = name.split("(")[1].split()[0]
            rows = bon["curves"][selector]
            d = np.sqrt([r["kl"] for r in rows])
            gain = [r["gold_reward"] - rows[0]["gold_reward"] for r in rows]
            color, style = "black", "--" if selector == "learned" else ":"
        ax.plot(d, gain, "o", color=color, ms=5)
        grid = np.linspace(0, max(d.max(), 1e-3) * 1.15, 60)
        ax.plot(grid, fit(grid), style, color=color, label=f"{name}: α={fit.alpha:.2f}, "
                f"β={fit.beta:.2f}")  # fmt: skip
    ax.axhline(0, color="gray", lw=0.8)
    finish_axes(
        fig,
        ax,
        path,
        "d = √KL(π ‖ π_SFT)",
        "gold reward gained over the SFT policy",
        "Over-optimisation law (Gao et al. 2022): points and fits",
    )


def frontier_section(
    evals: list[dict], bon: dict | None, out_dir: Path, runs=()
) -> tuple[list, dict]:
    """The report's frontier section (markdown lines) and its ``results.json`` entries; draws
    ``frontier.png`` and, when there is something to fit, ``overoptimisation_law.png``.
    ``runs``: the agents' runs (``runs.AgentRun``), for the fits along training."""
    groups = method_points(evals)
    sft = next((e for e in evals if e["name"] == "sft"), None)
    plot_frontiers(groups, bon, sft, out_dir / "frontier.png")
    lines = ["## Reward–KL frontier", "", "![reward-KL frontier](frontier.png)", ""]
    if bon:
        distinct = bon.get("distinct_prompts", bon["prompts"])
        lines.append(f"Best-of-n from the SFT policy: {bon['n_max']} samples of each of "
                     f"{bon['prompts']} held-out prompts ({distinct} distinct, cycled), n = 1 … "
                     f"{bon['n_max']}, KL = log n − (n − 1)/n (analytic).")  # fmt: skip
        lines.append("")
    lines += ["The best gold reward each curve reached within a KL budget (its best measured point "
              "there, with that point's 95% interval; — : no point that close to SFT):", "",
              *budget_table(measured_curves(groups, bon)), "",
              "Each point against the other curves at its own KL (linear between their points):",
              ""]  # fmt: skip
    lines += dominance_lines(groups, bon)
    paired, paired_results = paired_table(groups)
    if paired:
        lines += ["", f"### {PAIRED_FOCUS} against each method at the same β", "",
                  "Gold reward difference with its paired 95% interval (the same held-out "
                  "prompts; an interval above 0: better at that β beyond the noise); each "
                  "side's KL in brackets, since the same β need not give the same KL:", "",
                  *paired]  # fmt: skip
    lines += ["", "### Where the proxy rose while the gold fell", ""]
    lines += proxy_gold_lines(groups, bon)
    results = {"best_of_n": bon, "frontiers": {m: [{k: p[k] for k in ("beta", "kl_ref",
               "gold_reward", "gold_ci")} for p in pts] for m, pts in groups.items()}}  # fmt: skip
    if paired_results:
        results["paired_at_beta"] = paired_results
    fits = gao_fits(groups, bon, sft["gold_reward"]) if sft is not None else {}
    if fits:
        plot_law(fits, groups, bon, sft["gold_reward"], out_dir / "overoptimisation_law.png")
        lines += ["", "### Over-optimisation law (Gao et al. 2022)", "",
                  "Gold reward gained over the SFT policy against d = √KL. Best-of-n: the form "
                  "d(α − βd) on its curve. RL methods and DPO: the form d(α − β log d) through "
                  "their final held-out points, one per β (Gao et al. fit along one run's "
                  "training; here the law runs across β).", "",
                  *fit_lines(fits, measured_curves(groups, bon)), "",
                  "![over-optimisation law](overoptimisation_law.png)"]  # fmt: skip
        results["gao_fits"] = {name: fit.as_dict() for name, fit in fits.items()}
    along, table = training_fits(runs)
    if along:
        lines += ["", "### The law along training, run by run", "",
                  "As Gao et al. fit it: each online run's training samples at every log point, "
                  "gold gain over its first log point (the SFT policy's samples) against "
                  "d = √KL of the same samples, d(α − β log d). A log point averages one "
                  "iteration's samples (its batch of prompts; GRPO and RLOO: × their group "
                  "size), so its gold carries sampling noise: read a fall from the best point to the end "
                  "as over-optimisation only when it is larger than that noise.", "", *table]  # fmt: skip
        results["gao_fits_training"] = {name: fit.as_dict() for name, fit in along.items()}
    return lines, results
