"""Reports from run directories: a table per agent, ``report.md``, ``results.json`` and PNG plots.

Reads what every agent writes (TensorBoard event files with the shared tags, ``config.json``,
and, when present, ``resources.json`` and ``eval.json`` written by the pipeline), so it works
on any runs, not only the pipeline's. Used by ``tokenmdp pipeline`` and ``tokenmdp compare``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

# How many full models each method holds in memory while training (policy, reference, reward
# model, critic); DPO precomputes reference log-probs, so it keeps the policy alone.
MODELS_IN_MEMORY = {"sft": 1, "dpo": 1, "reinforce": 3, "ppo": 4, "ppo_gold": 3}


@dataclass
class AgentRun:
    """One agent's run directory, read back."""

    path: Path
    agent: str
    name: str
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    wall_time_s: float = math.nan
    config: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)

    def last(self, tag: str) -> float:
        values = self.scalars.get(tag)
        return values[-1][1] if values else math.nan

    def mean(self, tag: str) -> float:
        values = self.scalars.get(tag)
        return sum(v for _, v in values) / len(values) if values else math.nan

    @property
    def label(self) -> str:
        return self.path.name


def read_scalars(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], float]:
    """Scalars of every event file directly in ``run_dir``, and the span of their wall times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    times: list[float] = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                scalars.setdefault(tag, []).append((event.step, event.value))
                times.append(event.wall_time)
    for values in scalars.values():
        values.sort()
    span = max(times) - min(times) if times else math.nan
    return scalars, span


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def find_agent_runs(roots: list[str | Path]) -> list[AgentRun]:
    """Every directory under ``roots`` holding TensorBoard events (one agent run each)."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"run directory {str(root)!r} does not exist")
        dirs = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
        for d in dirs:
            agent, _, name = d.name.partition("-")
            scalars, span = read_scalars(d)
            resources = _json(d / "resources.json")
            runs.append(
                AgentRun(
                    path=d,
                    agent=agent,
                    name=name or agent,
                    scalars=scalars,
                    wall_time_s=resources.get("wall_time_s", span),
                    config=_json(d / "config.json"),
                    resources=resources,
                    evaluation=_json(d / "eval.json"),
                )
            )
    return runs


def summary_rows(runs: list[AgentRun]) -> list[dict]:
    """The comparison table: final gold and train reward, KL, wall time, tokens/s, memory, models."""
    rows = []
    for run in runs:
        ev = run.evaluation
        rows.append(
            {
                "run": run.label,
                "agent": run.agent,
                "gold_reward": ev.get("gold_reward", run.last("reward/gold")),
                "train_reward": ev.get("train_reward", run.last("reward/train")),
                "kl_ref": ev.get("kl_ref", run.last("kl/ref")),
                "wall_time_s": run.wall_time_s,
                "tokens_per_s": run.mean("perf/tokens_per_s"),
                "peak_memory_mb": run.resources.get("peak_rss_mb", math.nan),
                "models_in_memory": MODELS_IN_MEMORY.get(run.agent, math.nan),
            }
        )
    return rows


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> str:
    """``columns``: (key, header, digits)."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(k), d) for k, _, d in columns) + " |")
    return "\n".join(lines)


SUMMARY_COLUMNS = [
    ("run", "run", 0),
    ("gold_reward", "gold reward", 3),
    ("train_reward", "train reward", 3),
    ("kl_ref", "KL to ref", 2),
    ("wall_time_s", "wall time (s)", 0),
    ("tokens_per_s", "tokens/s", 0),
    ("peak_memory_mb", "peak memory (MB)", 0),
    ("models_in_memory", "models in memory", 0),
]


POLICY_AGENTS = ("ppo", "reinforce", "dpo")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_axes(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, loc: str = "best"):
    """Label one-axes figure ``fig``, add a grid and (if anything is labelled) a legend, save it
    to ``path`` and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc=loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


METHOD_COLORS = {"ppo_gold": "tab:purple", "ppo": "tab:blue", "reinforce": "tab:green",
                 "dpo": "tab:red", "sft": "black"}  # fmt: skip


def color_of(name: str) -> str:
    """One colour per method in every plot, chosen by the run name's method prefix."""
    for method, color in METHOD_COLORS.items():
        if name.startswith(method):
            return color
    palette = ["tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    return palette[sum(map(ord, name)) % len(palette)]


def plot_overoptimisation(runs: list[AgentRun], path: Path) -> bool:
    """Learned (train) vs gold reward over training of each run optimising a learned reward."""
    plt = _pyplot()
    chosen = [r for r in runs if r.agent in ("ppo", "reinforce") and "gold" not in r.name
              and "reward/gold" in r.scalars]  # fmt: skip
    if not chosen:
        return False
    fig, axes = plt.subplots(1, len(chosen), figsize=(max(7, 5 * len(chosen)), 4), squeeze=False)
    for ax, run in zip(axes[0], chosen):
        for tag, style in (("reward/train", "-"), ("reward/gold", "--")):
            values = run.scalars.get(tag, [])
            ax.plot([s for s, _ in values], [v for _, v in values], style, label=tag)
        ax.set_title(run.label)
        ax.set_xlabel("prompts consumed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Optimised (learned) vs gold reward during training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_training_curves(runs: list[AgentRun], path: Path) -> None:
    plt = _pyplot()
    tags = ["reward/gold", "reward/train", "kl/ref", "loss/total", "episode/length", "kl/beta"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    policy_runs = [r for r in runs if r.agent in POLICY_AGENTS]
    for ax, tag in zip(axes.flat, tags):
        for run in policy_runs:
            values = run.scalars.get(tag)
            if values:
                ax.plot([s for s, _ in values], [v for _, v in values], ".-", ms=3,
                        color=color_of(run.name), label=run.label)  # fmt: skip
        ax.set_title(tag)
        ax.set_xlabel("prompts (pairs for DPO) consumed")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


EVAL_COLUMNS = [
    ("name", "policy", 0), ("gold_reward", "gold reward", 3), ("gold_ci", "95% CI", 0),
    ("gold_gain_ci", "gain vs SFT (paired 95% CI)", 0),
    ("learned_reward", "learned reward", 3), ("kl_ref", "KL to SFT", 2), ("length", "length", 1),
    ("eos_rate", "EOS rate", 2), ("judge_ppl", "judge ppl", 2), ("lexicon_fraction", "lexicon", 3),
    ("distinct_1", "distinct-1", 3), ("distinct_2", "distinct-2", 3),
    ("unique_fraction", "unique", 3), ("self_bleu", "self-BLEU", 3), ("pass_at_k", "pass@k", 3),
    ("length_corr_gold", "corr(gold, len)", 2), ("length_corr_learned", "corr(learned, len)", 2),
    ("n", "prompts", 0),
]  # fmt: skip


def eval_table(evals: list[dict], columns=None) -> str:
    """The evaluations as a markdown table, intervals written ``[low, high]`` and the gain over
    SFT as ``+gain [low, high]``."""

    def cells(e: dict) -> dict:
        out = {**e, "gold_ci": f"[{e['gold_ci'][0]:.3f}, {e['gold_ci'][1]:.3f}]"}
        if "gold_gain_ci" in e:
            low, high = e["gold_gain_ci"]
            out["gold_gain_ci"] = f"{e['gold_gain']:+.3f} [{low:+.3f}, {high:+.3f}]"
        return out

    return markdown_table([cells(e) for e in evals], columns or EVAL_COLUMNS)


EVAL_LEGEND = [
    "Columns (definitions in `agents/common/metrics.py`): *judge ppl* — per-token perplexity of "
    "the completions (and their EOS) under a separate LM pre-trained on the task corpus; "
    "*lexicon* — share of completion words in the task's lexicon; *distinct-n* — distinct word "
    "n-grams / all n-grams; *unique* — distinct completions / completions; *self-BLEU* — mean "
    "BLEU-4 of each of the first 128 completions against the others (higher = less diverse); "
    "*corr(r, len)* — Pearson correlation of a reward with the completion's length in tokens.",
]


@dataclass(frozen=True)
class FailureThresholds:
    """When an evaluation shows a failure, compared with its SFT policy's evaluation."""

    lexicon_drop: float = 0.05
    """Drift into non-words: lexicon fraction lower than SFT's by more than this (absolute)."""
    collapse_ratio: float = 0.5
    """Collapse: unique fraction or distinct-2 below this multiple of SFT's."""
    length_corr: float = 0.3
    """Length hacking: |corr(reward, length)| at least this (the learned reward if scored) ..."""
    length_change: float = 0.25
    """... and the mean length differs from SFT's by more than this fraction of it."""
    ppl_ratio: float = 2.0
    """Disfluency: judge perplexity above this multiple of SFT's."""

    def describe(self) -> str:
        return (
            f"non-words: lexicon fraction more than {self.lexicon_drop:.2f} below SFT's; "
            f"collapse: unique fraction or distinct-2 below {self.collapse_ratio:g}× SFT's; "
            f"length hacking: |corr(reward, length)| ≥ {self.length_corr:g} (learned reward "
            f"where scored, else gold) and mean length off SFT's by more than "
            f"{self.length_change:.0%}; disfluency: judge perplexity above {self.ppl_ratio:g}× "
            "SFT's"
        )


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def failures(e: dict, base: dict, t: FailureThresholds) -> list[str]:
    """The failures evaluation ``e`` shows against its SFT evaluation ``base``, each named with
    the numbers behind it; empty when none crosses its threshold (or the numbers are missing)."""
    found = []
    lex, lex0 = e.get("lexicon_fraction"), base.get("lexicon_fraction")
    if _finite(lex, lex0) and lex < lex0 - t.lexicon_drop:
        found.append(f"drift into non-words (lexicon fraction {lex:.3f} vs SFT's {lex0:.3f})")
    collapsed = [
        f"{label} {e[key]:.3f} vs SFT's {base[key]:.3f}"
        for key, label in (("unique_fraction", "unique fraction"), ("distinct_2", "distinct-2"))
        if _finite(e.get(key), base.get(key)) and e[key] < t.collapse_ratio * base[key]
    ]
    if collapsed:
        found.append(f"collapse ({'; '.join(collapsed)})")
    reward = "learned" if _finite(e.get("length_corr_learned")) else "gold"
    corr, length, length0 = e.get(f"length_corr_{reward}"), e.get("length"), base.get("length")
    if (_finite(corr, length, length0) and abs(corr) >= t.length_corr
            and abs(length - length0) > t.length_change * length0):  # fmt: skip
        found.append(f"length hacking (corr({reward} reward, length) {corr:+.2f}, length "
                     f"{length:.1f} vs SFT's {length0:.1f})")  # fmt: skip
    ppl, ppl0 = e.get("judge_ppl"), base.get("judge_ppl")
    if _finite(ppl, ppl0) and ppl > t.ppl_ratio * ppl0:
        found.append(f"disfluency (judge perplexity {ppl:.2f} vs SFT's {ppl0:.2f})")
    return found


def baseline_of(e: dict, evals: list[dict]) -> dict | None:
    """The SFT (or reference) evaluation ``e`` is compared with: the one of its own run
    (``run/sft`` for ``run/ppo`` in ``compare``), else a top-level one."""
    prefix = e["name"].rpartition("/")[0]
    names = [f"{prefix}/{n}" if prefix else n for n in ("sft", "reference")] + ["sft", "reference"]
    by_name = {x["name"]: x for x in evals}
    return next((by_name[n] for n in names if n in by_name), None)


QUALITY_NUMBERS = [("judge_ppl", "judge perplexity", 2), ("lexicon_fraction", "lexicon", 3),
                   ("unique_fraction", "unique", 3), ("distinct_2", "distinct-2", 3),
                   ("self_bleu", "self-BLEU", 3), ("length", "length", 1)]  # fmt: skip


def versus(e: dict, base: dict) -> str:
    """``"judge perplexity 7.82 (×1.26), ..."``: each number of ``QUALITY_NUMBERS`` and its
    ratio to the baseline's (where both are known)."""
    parts = []
    for key, label, digits in QUALITY_NUMBERS:
        value, ref = e.get(key), base.get(key)
        ratio = f" (×{value / ref:.2f})" if _finite(value, ref) and ref else ""
        parts.append(f"{label} {_fmt(value, digits)}{ratio}")
    return ", ".join(parts)


def failure_report(evals: list[dict], t: FailureThresholds) -> list[str]:
    """The thresholds, then one sentence per evaluated method naming the failures it shows."""
    lines = [f"Failure thresholds, against the SFT policy's evaluation — {t.describe()}.", ""]
    for e in evals:
        base = baseline_of(e, evals)
        if base is None or base is e:
            continue
        found = failures(e, base, t)
        if found:
            lines.append(f"- **{e['name']}** shows {' and '.join(found)}.")
        else:
            lines.append(f"- **{e['name']}** shows no failure past the thresholds; against SFT: "
                         f"{versus(e, base)}.")  # fmt: skip
    if len(lines) == 2:
        lines.append("- No SFT (or reference) evaluation to compare with.")
    return lines


def plot_fluency_vs_kl(evals: list[dict], path: Path) -> bool:
    """Judge perplexity against KL to the reference, one point per evaluated policy; False (no
    file) when no evaluation has a judge perplexity."""
    points = [e for e in evals if _finite(e.get("judge_ppl"), e.get("kl_ref"))]
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for e in points:
        name = e["name"].rpartition("/")[2]
        ax.plot(e["kl_ref"], e["judge_ppl"], "o", ms=8, color=color_of(name), label=e["name"])
        ax.annotate(e["name"], (e["kl_ref"], e["judge_ppl"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    for e in points:
        if baseline_of(e, evals) is e:
            ax.axhline(e["judge_ppl"], ls="--", lw=1, color="gray")
    finish_axes(fig, ax, path, "KL(π ‖ π_ref)  [nats per completion]",
                "judge perplexity of the completions (lower = more fluent)",
                "Fluency against KL (dashed: SFT)")  # fmt: skip
    return True


def write_report(
    runs: list[AgentRun],
    evals: list[dict],
    out_dir: Path,
    notes: list[str] | None = None,
    best_of_n: dict | None = None,
) -> dict:
    """Write ``results.json``, ``report.md`` and the PNG plots to ``out_dir``; return results.
    ``best_of_n``: the curves of ``scripts.frontier.best_of_n_curves``, drawn on the frontier."""
    from scripts.frontier import frontier_section

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
        if run.agent == "ppo" and "gold" not in run.name and train and gold and len(train) > 1:
            lines.append(
                f"- Over-optimisation check ({run.label}): the learned reward went from "
                f"{train[0][1]:.3f} to {train[-1][1]:.3f} during training while the gold "
                f"reward went from {gold[0][1]:.3f} to {gold[-1][1]:.3f}."
            )
    return lines
