"""The report's failure sentences against hand-made evaluations, with the stated thresholds; the
fluency-vs-KL plot and the evaluation table's columns."""

from __future__ import annotations

import math

import pytest

from scripts.studies.report.failures import FailureThresholds, baseline_of, failure_report, failures
from scripts.studies.report.writer import write_report

SFT = {"name": "sft", "kl_ref": 0.0, "length": 16.0, "lexicon_fraction": 0.98,
       "unique_fraction": 0.9, "distinct_2": 0.40, "judge_ppl": 10.0,
       "length_corr_learned": 0.1, "length_corr_gold": 0.0}  # fmt: skip


def policy(name: str, **changes) -> dict:
    return {**SFT, "name": name, "kl_ref": 3.0, **changes}


@pytest.mark.parametrize(
    "changes, named",
    [
        ({}, []),
        ({"lexicon_fraction": 0.90}, ["drift into non-words (lexicon fraction 0.900 vs SFT's 0.980)"]),
        ({"lexicon_fraction": 0.95}, []),  # 0.03 below: within the 0.05 allowed
        ({"unique_fraction": 0.3}, ["collapse (unique fraction 0.300 vs SFT's 0.900)"]),
        ({"distinct_2": 0.1, "unique_fraction": 0.2},
         ["collapse (unique fraction 0.200 vs SFT's 0.900; distinct-2 0.100 vs SFT's 0.400)"]),
        ({"length_corr_learned": 0.6, "length": 22.0},
         ["length hacking (corr(learned reward, length) +0.60, length 22.0 vs SFT's 16.0)"]),
        ({"length_corr_learned": 0.6, "length": 18.0}, []),  # correlated, but length near SFT's
        ({"length_corr_learned": 0.1, "length": 30.0}, []),  # longer, but reward not tied to it
        ({"length_corr_learned": math.nan, "length_corr_gold": -0.5, "length": 8.0},
         ["length hacking (corr(gold reward, length) -0.50, length 8.0 vs SFT's 16.0)"]),
        ({"judge_ppl": 25.0}, ["disfluency (judge perplexity 25.00 vs SFT's 10.00)"]),
        ({"judge_ppl": math.nan, "lexicon_fraction": None}, []),  # missing numbers: no verdict
    ],
)  # fmt: skip
def test_failures_are_named_with_their_numbers(changes, named):
    assert failures(policy("ppo", **changes), SFT, FailureThresholds()) == named


def test_failure_report_states_thresholds_and_one_sentence_per_method():
    evals = [SFT, policy("ppo", unique_fraction=0.1), policy("dpo")]
    lines = failure_report(evals, FailureThresholds())
    assert "lexicon fraction more than 0.05 below SFT's" in lines[0]
    assert "below 0.5× SFT's" in lines[0] and "|corr(reward, length)| ≥ 0.3" in lines[0]
    sentences = [line for line in lines if line.startswith("- ")]
    assert len(sentences) == 2
    assert sentences[0].startswith("- **ppo** shows collapse (unique fraction 0.100")
    assert sentences[1].startswith("- **dpo** shows no failure past the thresholds; against SFT: "
                                   "judge perplexity 10.00 (×1.00), lexicon 0.980 (×1.00)")  # fmt: skip
    assert "distinct-2 0.400 (×1.00)" in sentences[1] and "self-BLEU —, " in sentences[1]


def test_each_evaluation_is_compared_with_its_own_runs_sft():
    evals = [{"name": "a/sft"}, {"name": "a/ppo"}, {"name": "b/sft"}, {"name": "b/ppo"}]
    assert baseline_of(evals[3], evals) is evals[2]
    assert baseline_of(evals[1], evals) is evals[0]
    assert baseline_of({"name": "ppo-ppo"}, [{"name": "reference"}])["name"] == "reference"
    assert baseline_of({"name": "ppo"}, [{"name": "dpo"}]) is None


def test_report_has_a_column_per_metric_and_the_fluency_plot(tmp_path):
    evals = [{**e, "gold_reward": 0.1, "gold_ci": [0.0, 0.2], "n": 8}
             for e in (SFT, policy("ppo", judge_ppl=30.0))]  # fmt: skip
    write_report([], evals, tmp_path)
    report = (tmp_path / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| policy |"))
    for column in ("EOS rate", "judge ppl", "lexicon", "distinct-1", "distinct-2", "unique",
                   "self-BLEU", "corr(gold, len)", "corr(learned, len)"):  # fmt: skip
        assert f"| {column} |" in header
    assert "- **ppo** shows disfluency (judge perplexity 30.00 vs SFT's 10.00)." in report
    assert "![judge perplexity against KL](fluency_vs_kl.png)" in report
    assert (tmp_path / "fluency_vs_kl.png").read_bytes()[:4] == b"\x89PNG"
    write_report([], [{**e, "judge_ppl": math.nan} for e in evals], tmp_path / "no-judge")
    assert not (tmp_path / "no-judge" / "fluency_vs_kl.png").exists()


def test_paired_table_differences_and_intervals_at_matched_beta():
    """A constant per-completion difference has a zero-width paired interval at that value; a
    difference that is +1 on half the prompts and −1 on the other half has mean 0 and an interval
    around 0; a method without that β, or without per-completion rewards, gets a dash."""
    from scripts.studies.report.frontier import method_points, paired_table

    base = [0.1, 0.5, -0.2, 0.4] * 8  # 32 completions, one per prompt

    def point(name, rewards, kl=1.0):
        return {"name": name, "gold_reward": float(sum(rewards) / len(rewards)), "kl_ref": kl,
                "gold_ci": [0, 0], "gold_rewards": rewards, "samples_per_prompt": 1}  # fmt: skip

    evals = [
        point("sft", base),
        point("online_dpo-beta0.1", [r + 0.25 for r in base], kl=2.0),
        point("online_dpo-beta1", base),
        point("dpo-beta0.1", base, kl=5.0),
        point("dpo-beta1", [r + (1 if i % 2 else -1) for i, r in enumerate(base)]),
        point("grpo-beta1", base) | {"gold_rewards": []},  # an older run: no per-completion rewards
    ]
    lines, results = paired_table(method_points(evals))
    assert lines[0] == "| β | online_dpo − dpo | online_dpo − grpo |"
    assert lines[2] == "| 0.1 | +0.250 [+0.250, +0.250] (KL 2.0 vs 5.0) | — |"
    one = results["against"]["dpo"][1]
    assert one["beta"] == 1.0 and one["gain"] == pytest.approx(0.0)
    low, high = one["ci"]
    assert -0.5 < low < 0 < high < 0.5  # ±1 on alternate prompts: mean 0, sd 1, n = 32
    assert results["against"]["grpo"] == []
    assert paired_table(method_points(evals[3:])) == ([], {})  # no online DPO: no table
