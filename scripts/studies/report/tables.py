"""Markdown tables of runs and evaluations."""

from __future__ import annotations

import math


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
    "Columns (definitions in `agents/maths/metrics.py`): *judge ppl* — per-token perplexity of "
    "the completions (and their EOS) under a separate LM pre-trained on the task corpus; "
    "*lexicon* — share of completion words in the task's lexicon; *distinct-n* — distinct word "
    "n-grams / all n-grams; *unique* — distinct completions / completions; *self-BLEU* — mean "
    "BLEU-4 of each of the first 128 completions against the others (higher = less diverse); "
    "*corr(r, len)* — Pearson correlation of a reward with the completion's length in tokens.",
]
