"""Preference sampling: Bradley–Terry label frequencies, rows scored by the gold model, k·(k−1)/2
pairs per prompt, identical pairs counted, seeded runs repeat."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from agents.data.preferences import PreferenceConfig, bradley_terry_labels, sample_preferences
from reward_models.arithmetic import LengthRewardModel

ENV = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}


def test_bradley_terry_label_frequency_matches_sigmoid():
    rng = np.random.default_rng(0)
    n = 40_000
    a, b = np.full(n, math.log(3.0) * 0.5), np.zeros(n)  # Δ/T = log 3 → P(a ≻ b) = 0.75
    labels = bradley_terry_labels(a, b, temperature=0.5, rng=rng)
    assert labels.mean() == pytest.approx(0.75, abs=0.01)
    assert bradley_terry_labels(np.array([1.0, 0.0]), np.array([0.0, 1.0]), 0.0, rng).tolist() == [
        True,
        False,
    ]


def test_sample_preferences_rows(tiny_policy, arithmetic_tokenizer, tmp_path):
    config = PreferenceConfig(num_prompts=12, k=3, num_envs=8, label_temperature=1e-6, seed=1)
    out = sample_preferences(
        tiny_policy, arithmetic_tokenizer, ENV, "length", config, tmp_path / "p.jsonl"
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = json.loads((tmp_path / "p.jsonl.meta.json").read_text())
    assert len(rows) + meta["skipped_identical"] == 12 * 3  # C(3, 2) pairs per prompt
    assert meta["rows"] == len(rows) > 0
    assert all(
        set(r) == {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"} for r in rows
    )
    assert all(r["chosen"] != r["rejected"] for r in rows)
    length = LengthRewardModel()
    for r in rows:
        expected = length.score([r["prompt"]] * 2, [r["chosen"], r["rejected"]]).tolist()
        assert [r["chosen_gold"], r["rejected_gold"]] == expected
        # a near-zero temperature makes the labels the argmax of the gold score
        assert r["chosen_gold"] >= r["rejected_gold"]

    again = sample_preferences(
        tiny_policy, arithmetic_tokenizer, ENV, "length", config, tmp_path / "q.jsonl"
    )
    assert again.read_text() == out.read_text()


def test_noisy_labels_sometimes_prefer_the_lower_gold(tiny_policy, arithmetic_tokenizer, tmp_path):
    config = PreferenceConfig(num_prompts=40, k=4, num_envs=16, label_temperature=5.0, seed=2)
    out = sample_preferences(
        tiny_policy, arithmetic_tokenizer, ENV, LengthRewardModel(), config, tmp_path / "p.jsonl"
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    strict = [r for r in rows if r["chosen_gold"] != r["rejected_gold"]]
    agree = np.mean([r["chosen_gold"] > r["rejected_gold"] for r in strict])
    assert len(strict) > 50
    assert 0.45 < agree < 0.9  # noisy, yet better than chance on average


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("k", 1, "k must be >= 2 to form pairs, got 1"),
        ("num_prompts", 0, "num_prompts must be > 0, got 0"),
        ("num_envs", True, "num_envs must be an integer, got True"),
        ("label_temperature", -1.0, "label_temperature must be >= 0, got -1.0"),
        ("split", "test", "split must be one of \\['eval', 'train'\\], got 'test'"),
    ],
)
def test_bad_preference_options_are_named(field, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        PreferenceConfig(**{field: value})


def test_skip_ties_drops_pairs_with_equal_gold():
    from agents.data.preferences import label_pairs

    prompts = ["1+1="] * 4
    completions = ["2", "3", "4", "5"]
    gold = np.array([1.0, 0.0, 0.0, 0.0])  # one right answer among four samples
    config = PreferenceConfig(num_prompts=1, k=4, label_temperature=0.0, skip_ties=True)
    rows, skipped = label_pairs(prompts, completions, gold, config, np.random.default_rng(0))
    assert skipped == 3 and len(rows) == 3  # of 6 pairs, the 3 wrong-vs-wrong ones are ties
    assert all(r["chosen"] == "2" and r["chosen_gold"] == 1.0 for r in rows)
