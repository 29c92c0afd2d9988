"""``report.md``, ``results.json`` and the PNG plots of any set of runs and evaluations: what
``tokenmdp pipeline`` and ``tokenmdp compare`` write."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from agents.registry import names
from scripts.studies.report.failures import FailureThresholds, baseline_of, failure_report
from scripts.studies.report.frontier import frontier_section
from scripts.studies.report.plots import (
    plot_fluency_vs_kl,
    plot_overoptimisation,
    plot_training_curves,
)
from scripts.studies.report.runs import AgentRun, summary_rows
from scripts.studies.report.tables import (
    EVAL_LEGEND,
    SUMMARY_COLUMNS,
    eval_table,
    markdown_table,
)


def write_report(
    runs: list[AgentRun],
    evals: list[dict],
    out_dir: Path,
    notes: list[str] | None = None,
    best_of_n: dict | None = None,
) -> dict:
    """Write ``results.json``, ``report.md`` and the PNG plots to ``out_dir``; return results.
    ``best_of_n``: the curves of ``frontier.best_of_n_curves``, drawn on the frontier."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs)
    frontier_lines, frontier_results = frontier_section(evals, best_of_n, out_dir, runs)
    has_overopt = plot_overoptimisation(runs, out_dir / "overoptimisation.png")
    has_fluency = plot_fluency_vs_kl(evals, out_dir / "fluency_vs_kl.png")
    if runs:
        plot_training_curves(runs, out_dir / "training_curves.png")
    results = {"runs": rows, "evaluations": evals, **frontier_results,
               "failure_thresholds": asdict(FailureThresholds())}  # fmt: skip
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    lines = ["# tokenmdp report", ""]
    lines += explain(evals, runs)
    if evals:
        lines += ["", "## Held-out evaluation", ""]
        lines.append(eval_table(evals))
        lines += ["", *EVAL_LEGEND, "", *frontier_lines]
        lines += ["", "## What the reward hides", "", *failure_report(evals, FailureThresholds())]
    if has_fluency:
        lines += ["", "![judge perplexity against KL](fluency_vs_kl.png)"]
    if runs:
        lines += ["", "## Training runs", "", markdown_table(rows, SUMMARY_COLUMNS)]
    lines.append("")
    if has_overopt:
        lines += ["![over-optimisation](overoptimisation.png)", ""]
    if runs:
        lines += ["![training curves](training_curves.png)", ""]
    samples = [(e["name"], s) for e in evals for s in e.get("samples", [])[:2]]
    if samples:
        lines += ["## Sample completions", ""]
        lines += [f"- **{n}** (gold {s['gold_reward']:+.2f}): {s['prompt']}⟨{s['completion']}⟩"
                  for n, s in samples]  # fmt: skip
    lines += [f"- {note}" for note in notes or []]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return results


def explain(evals: list[dict], runs: list[AgentRun]) -> list[str]:
    """The outcome in plain words: who reached what gold reward at what KL, and the gap."""
    if not evals:
        return ["No held-out evaluation was found; the table below summarises the training logs."]
    lines = []
    for e in evals:
        base = baseline_of(e, evals)
        if base is e:
            continue
        text = f"**{e['name']}** reached a mean gold reward of {e['gold_reward']:.3f} at KL {e['kl_ref']:.2f} from the SFT policy"
        if base is not None and "gold_gain_ci" in e:
            low, high = e["gold_gain_ci"]
            verdict = ("above SFT: the paired 95% interval of the gain excludes 0" if low > 0 else
                       "BELOW SFT: the paired 95% interval of the gain excludes 0" if high < 0
                       else "not distinguishable from SFT: the paired interval contains 0")  # fmt: skip
            text += (f": {e['gold_gain']:+.3f} [{low:+.3f}, {high:+.3f}] vs SFT "
                     f"({base['gold_reward']:.3f}), {verdict}")  # fmt: skip
        elif base is not None:
            delta = e["gold_reward"] - base["gold_reward"]
            beats = e["gold_ci"][0] > base["gold_ci"][1]
            verdict = ("clearly above SFT (the 95% intervals do not overlap)" if beats else
                       "above SFT, but the 95% intervals overlap" if delta > 0 else
                       "NOT above SFT")  # fmt: skip
            text += f": {delta:+.3f} vs SFT ({base['gold_reward']:.3f}), {verdict}"
        if not math.isnan(e.get("learned_reward", math.nan)):
            text += f"; its learned reward is {e['learned_reward']:.3f}"
        lines.append(f"- {text}.")
    for run in runs:
        train, gold = run.scalars.get("reward/train"), run.scalars.get("reward/gold")
        if (
            run.agent in names(kind="online")
            and "gold" not in run.name
            and train
            and gold
            and len(train) > 1
        ):
            lines.append(
                f"- Over-optimisation check ({run.label}): the learned reward went from "
                f"{train[0][1]:.3f} to {train[-1][1]:.3f} during training while the gold "
                f"reward went from {gold[0][1]:.3f} to {gold[-1][1]:.3f}."
            )
    return lines
