"""The length picture every online agent logs: ``length_metrics`` against hand-computed numbers
(ties and empty groups included), then PPO, REINFORCE and GRPO logging it under the shared tags,
also when no completion ends on a stop id."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import llm_env
from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import OptimConfig
from agents.maths.metrics import length_metrics
from agents.ppo import PPO, PPOConfig
from agents.reinforce import Reinforce, ReinforceConfig
from agents.sampling.rollout import Rollout
from tests.helpers import ARITH

pytestmark = pytest.mark.usefixtures("one_thread")

TAGS = ("length/terminated", "length/clipped_fraction", "length/rewarded", "length/unrewarded")


def test_length_metrics_by_hand_for_a_verifier():
    """0/1 rewards: rewarded = reward 1, unrewarded = reward 0."""
    out = length_metrics(
        lengths=np.array([3, 5, 8, 8]),
        terminated=np.array([True, True, False, False]),
        rewards=np.array([1.0, 0.0, 1.0, 0.0]),
    )
    assert out == {
        "length/clipped_fraction": 0.5,
        "length/terminated": 4.0,  # (3 + 5) / 2
        "length/rewarded": 5.5,  # (3 + 8) / 2
        "length/unrewarded": 6.5,  # (5 + 8) / 2
    }


def test_a_verifier_splits_by_correctness_whatever_the_median():
    """Three right of four: the median is 1, still every reward-1 completion is rewarded."""
    out = length_metrics(np.array([2, 4, 6, 9]), np.ones(4, bool), np.array([1.0, 1.0, 1.0, 0.0]))
    assert out["length/rewarded"] == 4.0 and out["length/unrewarded"] == 9.0
    all_right = length_metrics(np.array([2, 4]), np.ones(2, bool), np.array([1.0, 1.0]))
    assert all_right["length/rewarded"] == 3.0 and "length/unrewarded" not in all_right


def test_other_rewards_split_at_the_median_and_ties_count_as_neither():
    lengths, done = np.array([1, 2, 3, 4, 5]), np.ones(5, bool)
    # median 0.5: above it 0.9 and 2.0 (lengths 4, 5), below it 0.1 (length 1); the 0.5s neither
    out = length_metrics(lengths, done, np.array([0.1, 0.5, 0.5, 0.9, 2.0]))
    assert out["length/rewarded"] == 4.5 and out["length/unrewarded"] == 1.0
    # an even count: the median 0.5 is the mean of the middle two, so nothing ties
    out = length_metrics(lengths[:4], done[:4], np.array([0.2, 0.4, 0.6, 0.8]))
    assert out["length/rewarded"] == 3.5 and out["length/unrewarded"] == 1.5
    # all equal: nothing above or below
    flat = length_metrics(lengths, done, np.full(5, 0.3))
    assert not {"length/rewarded", "length/unrewarded"} & set(flat)


def test_empty_groups_are_left_out_never_nan():
    out = length_metrics(np.array([8, 8]), np.zeros(2, bool), np.array([0.0, 1.0]))
    assert out == {"length/clipped_fraction": 1.0, "length/rewarded": 8.0,
                   "length/unrewarded": 8.0}  # fmt: skip
    assert length_metrics(np.array([]), np.array([], bool), np.array([])) == {}
    with pytest.raises(ValueError, match="3 lengths, 2 terminated flags and 3 rewards"):
        length_metrics(np.ones(3), np.ones(2, bool), np.ones(3))


def tiny(tokenizer):
    return llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)


AGENTS = {
    "ppo": lambda tok, run: PPO(tiny(tok), tok, ARITH, PPOConfig(
        batch_size=8, minibatch_size=8, epochs=1, total_prompts=16, save_every=0,
        precision="fp32", optim=OptimConfig(learning_rate=1e-3)), run),
    "reinforce": lambda tok, run: Reinforce(tiny(tok), tok, ARITH, ReinforceConfig(
        batch_size=4, k=2, minibatch_size=8, total_prompts=8, save_every=0, precision="fp32",
        optim=OptimConfig(learning_rate=1e-3)), run),
    "grpo": lambda tok, run: GRPO(tiny(tok), tok, ARITH, GRPOConfig(
        batch_size=4, group_size=2, minibatch_size=8, total_prompts=8, save_every=0,
        precision="fp32", optim=OptimConfig(learning_rate=1e-3)), run),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(AGENTS))
def test_every_online_agent_logs_the_length_picture(kind, tmp_path, arithmetic_tokenizer):
    history = AGENTS[kind](arithmetic_tokenizer, tmp_path).learn()
    for point in history:
        assert {"length/clipped_fraction", "policy/entropy"} <= set(point)
        assert point["length/clipped_fraction"] == pytest.approx(1 - point["episode/eos_fraction"])
        for tag in TAGS:
            assert tag not in point or math.isfinite(point[tag]), tag
    assert any("length/terminated" in point for point in history)


@pytest.mark.parametrize("kind", sorted(AGENTS))
def test_no_terminated_completion_leaves_the_tag_out_and_trains_on(
    kind, tmp_path, arithmetic_tokenizer, monkeypatch
):
    """Every completion reported cut at the limit: ``length/terminated`` is absent (no NaN in
    the history or metrics.jsonl), and the run is not stopped as non-finite."""
    monkeypatch.setattr(Rollout, "terminated", property(lambda roll: roll.rewards < -math.inf))
    history = AGENTS[kind](arithmetic_tokenizer, tmp_path).learn()
    assert all("length/terminated" not in p and p["length/clipped_fraction"] == 1.0
               for p in history)  # fmt: skip
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in record.values())
    assert torch.isfinite(torch.tensor([p["loss/total"] for p in history])).all()
