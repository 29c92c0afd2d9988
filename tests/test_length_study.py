"""``tokenmdp length-study``: the ``--quick`` study end to end (structure and values of its
results), the report's interval maths, and its bad options."""

from __future__ import annotations

import json
import math

import pytest

from scripts import cli
from scripts.studies.length.report import direction, paired_difference, seed_interval
from scripts.studies.length.study import METHODS, QUICK

POINT_KEYS = {"completions", "pass1", "pass1_ci", "length", "steps_share", "entropy", "kl",
              "length_right", "length_wrong", "clipped_fraction"}  # fmt: skip


def check_point(point: dict, max_new_tokens: int) -> None:
    """A point's values are in range and agree with each other."""
    assert set(point) == POINT_KEYS
    assert 0.0 <= point["pass1"] <= 1.0 and 0.0 <= point["steps_share"] <= 1.0
    low, high = point["pass1_ci"]
    assert low <= point["pass1"] <= high
    assert 1.0 <= point["length"] <= max_new_tokens and 0.0 <= point["clipped_fraction"] <= 1.0
    assert 0.0 < point["entropy"] <= math.log(17)  # the chain tokenizer's 17 tokens
    right, wrong, p = point["length_right"], point["length_wrong"], point["pass1"]
    if right is not None and wrong is not None:  # the mean length is the mix of the two
        assert point["length"] == pytest.approx(p * right + (1 - p) * wrong, rel=1e-5)
    else:
        assert p in (0.0, 1.0)


@pytest.mark.slow
def test_quick_study_runs_every_method_and_seed(tmp_path, capsys):
    cli.main(["length-study", "--quick", "--out", str(tmp_path), "--workers", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [
        (m, s) for s in (0, 1, 2) for m in METHODS
    ]
    per_iteration = QUICK.batch_size * QUICK.group_size
    iterations = QUICK.rl_prompts // QUICK.batch_size
    max_new = results["task"]["max_new_tokens"]
    assert max_new == len("9+9=18;18+9=27") + 1 + 4  # the longest answer, EOS, DAPO's buffer
    check_point(results["sft"], max_new)
    for run in results["runs"]:
        xs = [p["completions"] for p in run["points"]]
        assert xs == [per_iteration * (i + 1) for i in range(iterations)]
        for point in run["points"]:
            check_point(point, max_new)
    assert [r["method"] for r in results["summary"]] == list(METHODS)
    for row in results["summary"]:
        mean, low, high = row["pass1"]
        assert low <= mean <= high
        assert row["d_pass1"][0] == pytest.approx(mean - results["sft"]["pass1"])
    answers = results["answers"]
    assert [len(answers[k]) for k in ("length_grows", "grpo_length_bias", "entropy")] == [5, 2, 5]
    assert answers["entropy"][0].startswith("`grpo`: ")
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Does length grow as accuracy rises?",
                    "## Does GRPO's per-sequence normalisation make wrong answers longer",
                    "## Which variants keep entropy from collapsing"):  # fmt: skip
        assert heading in report
    assert "| dr_grpo |" in report and (tmp_path / "length.png").stat().st_size > 0
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["report"].endswith("report.md") and printed["answers"] == answers


@pytest.mark.slow
def test_workers_give_the_same_runs(tmp_path):
    argv = ["length-study", "--quick", "--seeds", "0", "--methods", "grpo,cispo"]
    runs = []
    for workers in (1, 2):
        out = tmp_path / str(workers)
        cli.main([*argv, "--out", str(out), "--workers", str(workers)])
        results = json.loads((out / "results.json").read_text())
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in results["runs"]])
    assert runs[0] == runs[1]


def test_seed_interval_against_hand_computed_t_intervals():
    mean, low, high = seed_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    assert (mean, low, high) == pytest.approx((2.0, 2 - 4.303 / math.sqrt(3), 2 + 4.303 / 3**0.5))
    mean, low, high = seed_interval([0.5, None, 0.7, float("nan")])  # two values: t(1) = 12.706
    assert (mean, high - low) == pytest.approx((0.6, 2 * 12.706 * 0.1414214 / math.sqrt(2)))
    assert seed_interval([4.0])[0] == 4.0 and math.isnan(seed_interval([4.0])[1])
    assert math.isnan(seed_interval([None])[0])
    assert [
        direction(seed_interval(v)) for v in ([1.0, 1.1, 1.2], [-1.0, -1.1, -1.2], [-1.0, 1.0])
    ] == ["up", "down", "no clear change"]


def test_paired_difference_pairs_methods_by_seed():
    runs = [{"method": m, "seed": s, "points": [{"length_wrong": v}]}
            for m, s, v in [("a", 0, 5.0), ("a", 1, 7.0), ("b", 0, 4.0), ("b", 1, 4.0),
                            ("b", 2, 9.0), ("a", 3, None), ("b", 3, 1.0)]]  # fmt: skip
    mean, low, high = paired_difference({"runs": runs}, "a", "b", "length_wrong")
    assert mean == 2.0 and high - low == pytest.approx(2 * 12.706 * math.sqrt(2) / math.sqrt(2))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workers", "0"], "--workers 0: must be >= 1"),
        (["--methods", "grpo,ppo"], "'ppo' is not one of grpo, dr_grpo, dapo, gspo, cispo"),
        (["--steps-fraction", "2"], "--steps-fraction 2.0: must be in [0, 1]"),
        (["--learning-rate", "0"], "--learning-rate 0.0: must be > 0"),
        (["--task-kwargs", '{"num_terms": 12}'], "exceed the model's 64 positions"),
    ],
)
def test_bad_options_are_rejected(argv, message, tmp_path, capsys):
    with pytest.raises((SystemExit, ValueError)) as error:
        cli.main(["length-study", "--out", str(tmp_path), *argv])
    text = capsys.readouterr().err if error.type is SystemExit else str(error.value)
    assert message in text
