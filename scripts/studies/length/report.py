"""The length study's report: a row per method (final pass@1, length, steps share, entropy,
right/wrong lengths, each as a mean over seeds with a 95% t-interval), the three answers written
from those numbers, ``length.png`` (four panels against training) and ``report.md``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from agents.maths.metrics import pearson
from scripts.studies.report.tables import markdown_table

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}  # fmt: skip
"""Student's t 0.975 quantile by degrees of freedom (a missing df takes the next one listed)."""
COLLAPSE = 0.5
"""Entropy collapse: the final token entropy below this share of the SFT policy's."""
PANELS = (("pass1", "pass@1"), ("length", "mean length [tokens]"),
          ("steps_share", "share writing steps"), ("entropy", "entropy of sampled tokens [nats]"))  # fmt: skip


def seed_interval(values: list[float | None]) -> tuple[float, float, float]:
    """(mean, low, high): the mean over seeds and its 95% t-interval (NaN bounds with fewer than
    two values; missing values left out)."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) < 2:
        return float(x[0]), math.nan, math.nan
    df = len(x) - 1
    t = T_975[min(d for d in T_975 if d >= df)] if df <= 30 else 1.96
    half = t * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def fmt(interval: tuple[float, float, float], digits: int = 3, sign: bool = False) -> str:
    """``0.512 [0.480, 0.544]`` (the bounds left out when undefined)."""
    mean, low, high = interval
    spec = f"{'+' if sign else ''}.{digits}f"
    if math.isnan(mean):
        return "—"
    if math.isnan(low):
        return f"{mean:{spec}}"
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"


def direction(interval: tuple[float, float, float]) -> str:
    """ "up" / "down" where the interval excludes 0, else "no clear change"."""
    _, low, high = interval
    if low > 0:
        return "up"
    if high < 0:
        return "down"
    return "no clear change"


def method_runs(results: dict, method: str) -> list[dict]:
    return [r for r in results["runs"] if r["method"] == method]


def summarise(results: dict) -> list[dict]:
    """One row per method, each value a (mean, low, high) over seeds of the run's final point
    (``d_`` values: final − SFT; ``corr``: Pearson of pass@1 and length over the run's points,
    the SFT point included; ``entropy_ratio``: final entropy / the SFT's)."""
    sft, rows = results["sft"], []
    for method in results["methods"]:
        runs = method_runs(results, method)
        if not runs:
            continue
        finals = [r["points"][-1] for r in runs]
        curves = [[sft, *r["points"]] for r in runs]
        rows.append({
            "method": method,
            **{key: seed_interval([p[key] for p in finals]) for key in
               ("pass1", "length", "steps_share", "entropy", "length_right", "length_wrong",
                "kl", "clipped_fraction")},
            **{f"d_{key}": seed_interval([None if p[key] is None or sft[key] is None
                                          else p[key] - sft[key] for p in finals])
               for key in ("pass1", "length", "steps_share", "length_wrong")},
            "entropy_ratio": seed_interval([p["entropy"] / sft["entropy"] for p in finals]),
            "corr": seed_interval([pearson([p["pass1"] for p in c], [p["length"] for p in c])
                                   for c in curves]),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
        })  # fmt: skip
    return rows


def run_value(run: dict, key: str, over: str = "final") -> float | None:
    """``key`` at the run's final point, or (``over="points"``) its mean over the run's
    evaluation points that have it (None where none has)."""
    if over == "final":
        return run["points"][-1][key]
    values = [p[key] for p in run["points"] if p[key] is not None]
    return float(np.mean(values)) if values else None


def paired_difference(
    results: dict, a: str, b: str, key: str, over: str = "final"
) -> tuple[float, float, float]:
    """``key`` of method ``a`` minus method ``b`` (``run_value``), paired by seed."""
    values = {(r["method"], r["seed"]): run_value(r, key, over) for r in results["runs"]}
    seeds = sorted({s for m, s in values if m == a} & {s for m, s in values if m == b})
    pairs = [(values[(a, s)], values[(b, s)]) for s in seeds]
    return seed_interval([x - y for x, y in pairs if x is not None and y is not None])


def answers(results: dict, rows: list[dict]) -> dict[str, list[str]]:
    """The three questions, answered in sentences from the measured numbers."""
    sft = results["sft"]
    growth = []
    for r in rows:
        acc, length = direction(r["d_pass1"]), direction(r["d_length"])
        verdict = {("up", "up"): "length grew as accuracy rose",
                   ("up", "down"): "accuracy rose while length fell",
                   ("up", "no clear change"): "accuracy rose, length did not clearly change",
                   }.get((acc, length), f"accuracy: {acc}; length: {length}")  # fmt: skip
        growth.append(
            f"`{r['method']}`: {verdict} — pass@1 {fmt(r['d_pass1'], sign=True)}, length "
            f"{fmt(r['d_length'], 2, sign=True)} tokens, share writing steps "
            f"{fmt(r['d_steps_share'], sign=True)} (final − SFT); corr(pass@1, length) over the "
            f"run's points {fmt(r['corr'], 2)}."
        )
    bias = []
    methods = {r["method"] for r in rows}
    if {"grpo", "dr_grpo"} <= methods:
        wrong = paired_difference(results, "grpo", "dr_grpo", "length_wrong")
        right = paired_difference(results, "grpo", "dr_grpo", "length_right")
        over = paired_difference(results, "grpo", "dr_grpo", "length_wrong", "points")
        means = {r["method"]: r for r in rows}
        said = {"up": "yes: GRPO's wrong answers are longer",
                "down": "no: GRPO's wrong answers are shorter",
                "no clear change": "not measurably: the difference's interval includes 0"}  # fmt: skip
        bias.append(
            f"{said[direction(wrong)]} — at the end, wrong answers GRPO − Dr. GRPO "
            f"{fmt(wrong, 2, sign=True)} tokens (paired by seed; GRPO "
            f"{fmt(means['grpo']['length_wrong'], 2)}, Dr. GRPO "
            f"{fmt(means['dr_grpo']['length_wrong'], 2)}; SFT {sft['length_wrong'] or math.nan:.2f})"
            f"; right answers {fmt(right, 2, sign=True)} tokens."
        )
        bias.append(
            f"Averaged over each run's evaluation points: wrong answers GRPO − Dr. GRPO "
            f"{fmt(over, 2, sign=True)} tokens. Against the SFT policy's wrong answers: GRPO "
            f"{fmt(means['grpo']['d_length_wrong'], 2, sign=True)}, Dr. GRPO "
            f"{fmt(means['dr_grpo']['d_length_wrong'], 2, sign=True)} tokens at the end."
        )
    else:
        bias.append("not measured: the study ran without both grpo and dr_grpo.")
    entropy = []
    for r in rows:
        mean, low, high = r["entropy_ratio"]
        state = ("kept" if low >= COLLAPSE else "collapsed" if high < COLLAPSE
                 else "kept" if math.isnan(low) and mean >= COLLAPSE
                 else "collapsed" if math.isnan(low) else "borderline")  # fmt: skip
        entropy.append(
            f"`{r['method']}`: {state} — final entropy {fmt(r['entropy'])} nats, "
            f"{fmt(r['entropy_ratio'], 2)} × the SFT policy's {sft['entropy']:.3f}."
        )
    return {"length_grows": growth, "grpo_length_bias": bias, "entropy": entropy}


def plot(results: dict, path: Path) -> None:
    """Four panels against completions trained on: each method's mean over seeds (line) and
    the seeds' range (band), the SFT policy at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colors = dict(zip(results["methods"], ["tab:blue", "tab:orange", "tab:green", "tab:red",
                                           "tab:purple"]))  # fmt: skip
    sft = results["sft"]
    for method in results["methods"]:
        runs = method_runs(results, method)
        if not runs:
            continue
        curves = [[sft, *r["points"]] for r in runs]
        n = min(len(c) for c in curves)
        x = [float(np.mean([c[i]["completions"] for c in curves])) for i in range(n)]
        for ax, (key, label) in zip(axes.flat, PANELS):
            y = np.array([[c[i][key] for i in range(n)] for c in curves], dtype=np.float64)
            ax.plot(x, y.mean(0), ".-", color=colors[method], lw=1.8, label=method)
            ax.fill_between(x, y.min(0), y.max(0), color=colors[method], alpha=0.15)
            ax.set_ylabel(label)
    for ax in axes.flat:
        ax.set_xlabel("completions trained on (prompts × G)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    seeds = ",".join(map(str, results["config"]["seeds"]))
    fig.suptitle(f"{results['task']['name']} {results['task']['num_terms']} terms ≤ "
                 f"{results['task']['max_operand']}; seeds {seeds} (line: mean; band: range)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


COLUMNS = [("method", "method", 0), ("pass1", "pass@1", 3), ("d_pass1", "Δ pass@1", 3),
           ("length", "length", 2), ("d_length", "Δ length", 2),
           ("steps_share", "writes steps", 3), ("entropy", "entropy", 3),
           ("length_right", "length right", 2), ("length_wrong", "length wrong", 2),
           ("kl", "KL", 2), ("seconds", "s / run", 0)]  # fmt: skip


def table(rows: list[dict]) -> str:
    """The rows as markdown, each interval written ``mean [low, high]``."""
    digits = {key: d for key, _, d in COLUMNS}
    shown = [{k: fmt(v, digits.get(k, 3), k.startswith("d_")) if isinstance(v, tuple) else v
              for k, v in r.items()} for r in rows]  # fmt: skip
    return markdown_table(shown, COLUMNS)


def write_report(results: dict, out: Path) -> None:
    """``results.json``, ``length.png`` and ``report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(results)
    results["summary"] = rows
    results["answers"] = answers(results, rows)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "length.png")
    sft, b, t = results["sft"], results["budget"], results["task"]
    seeds = ", ".join(map(str, results["config"]["seeds"]))
    lines = [
        f"# Length, steps and entropy under GRPO variants on {t['name']}", "",
        f"Task: sums of {t['num_terms']} terms in [0, {t['max_operand']}], answered directly or "
        f"step by step; SFT demonstrations {t['steps_fraction']:.0%} step by step; "
        f"{t['eval_prompts']} held-out prompts × {b['eval_repeats']} samples at temperature 1 "
        f"per evaluation point. SFT policy: pass@1 {sft['pass1']:.3f} (95% CI "
        f"{sft['pass1_ci'][0]:.3f}–{sft['pass1_ci'][1]:.3f}), length {sft['length']:.2f} tokens, "
        f"{sft['steps_share']:.3f} writing steps, entropy {sft['entropy']:.3f} nats. Every RL run "
        f"trains on {b['rl_prompts']} prompts × G = {b['group_size']} ({b['batch_size']} prompts "
        f"per iteration, minibatches of {b['minibatch_size']}), lr "
        f"{results['config']['learning_rate']}, β = {results['config']['beta']}; seeds {seeds}.",
        "", "Final point, mean over seeds [95% t-interval over seeds]; Δ = final − SFT:", "",
        table(rows), "",
        *[f"- `{m}`: {d}" for m, d in results["methods"].items()], "",
        "## Does length grow as accuracy rises?", "",
        *[f"- {s}" for s in results["answers"]["length_grows"]], "",
        "## Does GRPO's per-sequence normalisation make wrong answers longer than Dr. GRPO's?", "",
        *[f"- {s}" for s in results["answers"]["grpo_length_bias"]], "",
        f"## Which variants keep entropy from collapsing (below {COLLAPSE:.0%} of SFT's)?", "",
        *[f"- {s}" for s in results["answers"]["entropy"]], "",
        f"SFT {results['sft_seconds']:.0f} s; total {results['seconds']:.0f} s.", "",
        "![length study](length.png)", "",
    ]  # fmt: skip
    (out / "report.md").write_text("\n".join(lines))
