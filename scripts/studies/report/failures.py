"""What the reward hides: failures (non-words, collapse, length hacking, disfluency) of each
evaluated policy against its SFT policy's evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scripts.studies.report.tables import _fmt


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
