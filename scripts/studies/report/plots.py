"""The report's PNG plots: training curves, over-optimisation, fluency against KL; one colour per
method (``agents.registry``) in every plot, the frontier's too."""

from __future__ import annotations

from pathlib import Path

from agents.registry import AGENTS, names
from scripts.studies.report.failures import _finite, baseline_of
from scripts.studies.report.runs import AgentRun


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


def color_of(name: str) -> str:
    """One colour per method in every plot, chosen by the run name's method prefix."""
    if name.startswith("ppo_gold"):  # PPO against the gold reward: the pipeline's extra run
        return "tab:purple"
    for spec in sorted(AGENTS.values(), key=lambda s: -len(s.name)):
        if name.startswith(spec.name):
            return spec.color
    palette = ["tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    return palette[sum(map(ord, name)) % len(palette)]


def plot_overoptimisation(runs: list[AgentRun], path: Path) -> bool:
    """Learned (train) vs gold reward over training of each run optimising a learned reward."""
    plt = _pyplot()
    chosen = [r for r in runs if r.agent in names(kind="online") and "gold" not in r.name
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
    policy_runs = [r for r in runs if r.agent in names(role="method")]
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
