"""Bradley–Terry reward model: loss by hand, recovery of a synthetic gold ranking near the
Bayes-optimal accuracy, save → load_reward_model, normalisation, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from agents.harness.config import OptimConfig
from agents.presets import tiny_model_config
from agents.reward_model import RewardModelConfig, RewardModelTrainer, bradley_terry_loss
from llm_env.tasks import JsonlError
from reward_models.base import load_reward_model
from reward_models.learned import (
    NORM_FILE,
    LearnedRewardModel,
)

TEMPERATURE = 1.0


def gold(digit: str) -> float:
    return 0.5 * int(digit)


def synthetic_pairs(n: int, seed: int) -> tuple[list[dict], float]:
    """Pairs of one-digit answers to random sums, labelled by Bradley–Terry on ``gold``; also
    the Bayes-optimal accuracy E[max(p, 1 − p)] of the labels."""
    rng = np.random.default_rng(seed)
    rows, best = [], []
    for _ in range(n):
        x, y = rng.integers(0, 10, size=2)
        a, b = (str(d) for d in rng.choice(10, size=2, replace=False))
        p = 1 / (1 + math.exp(-(gold(a) - gold(b)) / TEMPERATURE))
        chosen, rejected = (a, b) if rng.random() < p else (b, a)
        rows.append(
            {"prompt": f"{x}+{y}=", "chosen": chosen, "rejected": rejected,
             "chosen_gold": gold(chosen), "rejected_gold": gold(rejected)}
        )  # fmt: skip
        best.append(max(p, 1 - p))
    return rows, float(np.mean(best))


@pytest.fixture
def policy_dir(tiny_policy, arithmetic_tokenizer, tmp_path):
    tiny_policy.save_pretrained(tmp_path / "policy")
    arithmetic_tokenizer.save_pretrained(tmp_path / "policy")
    return tmp_path / "policy"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bradley_terry_loss_hand_computed():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)) + math.log(2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["rm/accuracy"] == pytest.approx(1 / 3)
    assert stats["rm/margin"] == pytest.approx(0.0)


def test_reward_model_recovers_gold_ranking_near_bayes_optimal(policy_dir, tmp_path):
    rows, bayes = synthetic_pairs(1600, seed=0)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = RewardModelConfig(
        batch_size=32, epochs=3.0, heldout_fraction=0.25, log_every=20, save_every=10_000,
        optim=OptimConfig(learning_rate=5e-3, warmup_steps=5, lr_schedule="linear"),
    )  # fmt: skip
    trainer = RewardModelTrainer(policy_dir, pairs, config, tmp_path / "run")
    trainer.learn()
    metrics = trainer.summary()
    # the Bayes rule (predict the higher gold score) on the same held-out labels:
    heldout = [rows[i] for i in trainer.heldout_idx]
    bayes_heldout = np.mean([r["chosen_gold"] > r["rejected_gold"] for r in heldout])
    assert 0.78 < bayes < 0.86  # noisy labels: far from 100 %
    assert metrics["heldout_accuracy"] >= bayes_heldout - 0.03, (metrics, bayes_heldout)
    assert metrics["label_gold_agreement"] == pytest.approx(bayes_heldout)
    assert metrics["gold_agreement"] >= 0.97  # it recovers the ranking itself

    # saved → load_reward_model scores text the same way, normalised on the pairs' completions
    out = trainer.save(tmp_path / "rm")
    norm = json.loads((out / NORM_FILE).read_text())
    assert norm == {"mean": metrics["norm_mean"], "std": metrics["norm_std"]}
    rm = load_reward_model(str(out))
    assert isinstance(rm, LearnedRewardModel)
    texts = sorted({(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")})
    scores = rm.score(*map(list, zip(*texts)))
    assert scores.mean() == pytest.approx(0.0, abs=1e-4)
    assert scores.std() == pytest.approx(1.0, abs=1e-3)
    digits = rm.score(["3+4="] * 10, [str(d) for d in range(10)])
    assert np.corrcoef(digits, np.arange(10))[0, 1] > 0.95


def test_identical_pairs_are_skipped_and_counted(policy_dir, tmp_path):
    rows, _ = synthetic_pairs(20, seed=1)
    rows[3]["rejected"] = rows[3]["chosen"]
    rows[7]["rejected"] = rows[7]["chosen"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    config = tiny_model_config(
        "reward_model", RewardModelConfig, max_steps=1, log_every=1, normalize=False
    )
    with pytest.warns(UserWarning, match="skipped 2 row"):
        trainer = RewardModelTrainer(policy_dir, pairs, config, tmp_path / "run")
    assert trainer.skipped_identical == 2 and len(trainer.pairs) == 18
    trainer.learn()
    assert trainer.summary()["skipped_identical"] == 2
    assert not (trainer.save(tmp_path / "rm") / NORM_FILE).exists()


def test_bad_pairs_name_file_line_and_key(policy_dir, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n\n{"prompt": "a", "chosen": "b"}\n'
    )
    with pytest.raises(JsonlError, match=r"pairs\.jsonl:3: missing key 'rejected'"):
        RewardModelTrainer(policy_dir, path, RewardModelConfig(), tmp_path / "run")
    path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": 3}\n')
    with pytest.raises(JsonlError, match=r"pairs\.jsonl:1: key 'rejected' must be a string"):
        RewardModelTrainer(policy_dir, path, RewardModelConfig(), tmp_path / "run")
    path.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "2"}\n')
    with pytest.raises(ValueError, match="no usable pairs"), pytest.warns(UserWarning):
        RewardModelTrainer(policy_dir, path, RewardModelConfig(), tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"init_policy_dir: '.*nowhere' is not a local"):
        RewardModelTrainer(tmp_path / "nowhere", path, RewardModelConfig(), tmp_path / "run")
