"""DPO: losses against hand-computed values, the one-pass concatenated log-probs, the closed-form
optimum on an enumerable toy problem, evaluation through the env, resume, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import llm_env
from agents.dpo import DPO, DPOConfig, dpo_loss
from agents.harness.config import OptimConfig
from agents.harness.run import METRICS_FILE, TrainingStopped
from agents.models.policy import load_policy
from agents.presets import tiny_model_config
from llm_env.tasks import JsonlError
from reward_models.base import load_reward_model
from scripts.studies.report.runs import read_scalars
from tests.helpers import sequence_logp
from tests.interrupt import learn_until_killed

# two pairs: log-ratios chosen [0.5, 0.0], rejected [-0.5, -0.5] → h = [1.0, 0.5]
POLICY_CHOSEN = torch.tensor([-1.0, -2.0])
POLICY_REJECTED = torch.tensor([-3.0, -1.5])
REF_CHOSEN = torch.tensor([-1.5, -2.0])
REF_REJECTED = torch.tensor([-2.5, -1.0])
BETA = 0.1


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


@pytest.mark.parametrize(
    "loss_type, eps, expected",
    [
        ("sigmoid", 0.0, -(log_sigmoid(0.1) + log_sigmoid(0.05)) / 2),
        ("ipo", 0.0, ((1.0 - 5.0) ** 2 + (0.5 - 5.0) ** 2) / 2),
        (
            "conservative",
            0.2,
            -(0.8 * log_sigmoid(0.1) + 0.2 * log_sigmoid(-0.1)) / 2
            - (0.8 * log_sigmoid(0.05) + 0.2 * log_sigmoid(-0.05)) / 2,
        ),
    ],
)
def test_losses_hand_computed(loss_type, eps, expected):
    loss, stats = dpo_loss(
        POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, BETA, loss_type, eps
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the implicit reward β·log(π/π_ref) is what is logged
    assert stats["dpo/chosen_reward"] == pytest.approx(BETA * (0.5 + 0.0) / 2)
    assert stats["dpo/rejected_reward"] == pytest.approx(BETA * (-0.5 - 0.5) / 2)
    assert stats["dpo/margin"] == pytest.approx(BETA * (1.0 + 0.5) / 2)
    assert stats["dpo/chosen_logratio"] == pytest.approx(0.25)
    assert stats["dpo/rejected_logratio"] == pytest.approx(-0.5)
    assert stats["dpo/reward_accuracy"] == 1.0


def test_conservative_with_zero_smoothing_is_dpo():
    a, _ = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, 0.3, "sigmoid")
    b, _ = dpo_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, 0.3, "conservative")
    assert a.item() == pytest.approx(b.item())


def test_concatenated_padded_pass_matches_one_sequence_at_a_time(
    tiny_policy, arithmetic_tokenizer, tmp_path
):
    pairs = [("1+2=", "3", "12"), ("9+9=", "18", "7"), ("4+4=", "8", "88")]
    dpo = DPO(tiny_policy, arithmetic_tokenizer, pairs, DPOConfig(), tmp_path)
    dpo.ref_chosen_logps, dpo.ref_rejected_logps = dpo.reference_logps()
    tiny_policy.eval()
    expected_chosen = [sequence_logp(tiny_policy, arithmetic_tokenizer, p, c) for p, c, _ in pairs]
    expected_rejected = [
        sequence_logp(tiny_policy, arithmetic_tokenizer, p, r) for p, _, r in pairs
    ]
    np.testing.assert_allclose(dpo.ref_chosen_logps, expected_chosen, rtol=1e-5)
    np.testing.assert_allclose(dpo.ref_rejected_logps, expected_rejected, rtol=1e-5)
    loss, stats = dpo.loss(np.array([0, 2]))
    # policy == reference: every log-ratio is 0, the loss is log 2
    assert loss.item() == pytest.approx(math.log(2), rel=1e-5)
    assert stats["dpo/margin"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_dpo_reaches_the_closed_form_optimum_on_a_toy_problem(arithmetic_tokenizer, tmp_path):
    """One prompt, five one-token completions with rewards r; labels P(a ≻ b) = σ(r_a − r_b)
    (Bradley–Terry); the KL-regularised optimum is π*(y) ∝ π_ref(y)·exp(r(y)/β) over them.

    2,000 labels per pair: the Bradley–Terry MLE of this finite sample is itself TV ≈ 0.017 from
    π* (seed 0), so DPO converging to it passes with margin; 600 per pair would not (≈ 0.045).
    """
    tok = arithmetic_tokenizer
    prompt, completions = "1+2=", ["0", "1", "2", "3", "4"]
    beta = 0.5
    r = beta * np.array([2.0, 1.0, 0.0, -1.0, -2.0])  # r/β = 2, 1, 0, −1, −2
    for c in completions:  # each completion is one token (+ <eos>)
        assert len(tok(prompt + c, add_special_tokens=False)["input_ids"]) == 6

    model = llm_env.tiny_gpt2(tok, n_layer=1, n_head=2, n_embd=32, n_positions=32, seed=3)
    model.eval()
    ref_logp = np.array([sequence_logp(model, tok, prompt, c) for c in completions])
    pi_ref = np.exp(ref_logp - ref_logp.max())
    pi_ref /= pi_ref.sum()
    target = pi_ref * np.exp(r / beta)
    target /= target.sum()

    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(2000):  # every unordered pair equally often, labels drawn from Bradley–Terry
        for a in range(5):
            for b in range(a + 1, 5):
                win = rng.random() < 1 / (1 + math.exp(-(r[a] - r[b])))
                w, lose = (a, b) if win else (b, a)
                pairs.append((prompt, completions[w], completions[lose]))
    config = DPOConfig(
        beta=beta, batch_size=2000, epochs=8.0, log_every=40, save_every=10_000, eval_prompts=0,
        optim=OptimConfig(learning_rate=3e-2, warmup_steps=5, lr_schedule="linear"),
    )  # fmt: skip
    dpo = DPO(model, tok, pairs, config, tmp_path / "run")
    history = dpo.learn()
    model.eval()
    logp = np.array([sequence_logp(model, tok, prompt, c) for c in completions])
    pi = np.exp(logp - logp.max())
    pi /= pi.sum()
    tv = 0.5 * np.abs(pi - target).sum()
    print(
        f"toy DPO: TV(π_θ, π*) = {tv:.4f}; TV(π_ref, π*) = {0.5 * np.abs(pi_ref - target).sum():.4f}"
    )
    assert tv <= 0.05, (pi.round(3), target.round(3))
    assert 0.5 * np.abs(pi_ref - target).sum() > 0.3  # the optimum is far from where we started
    assert history[-1]["dpo/reward_accuracy"] > 0.7


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluation_through_env_logs_gold_and_kl_and_saves_final(
    tiny_policy, arithmetic_tokenizer, tmp_path
):
    rows = [{"prompt": f"{a}+1=", "chosen": str(a + 1), "rejected": "0"} for a in range(1, 9)]
    pairs = write_pairs(tmp_path / "pairs.jsonl", rows)
    config = tiny_model_config(
        "dpo", DPOConfig, batch_size=4, epochs=2.0, log_every=1, eval_every=2, eval_prompts=6,
        eval_num_envs=4,
    )  # fmt: skip
    env_kwargs = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}
    dpo = DPO(tiny_policy, arithmetic_tokenizer, pairs, config, tmp_path / "run", env_kwargs)
    history = dpo.learn()
    lines = [json.loads(x) for x in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert [h["examples"] for h in lines] == [4, 8, 12, 16]
    evals = [h for h in lines if "reward/gold" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert all(h["kl/ref"] > 0 and 0 <= h["reward/gold"] <= 1 for h in evals)
    for key in ("eval/distinct_1", "eval/unique_fraction"):  # the cheap text metrics, each eval
        assert all(0 < h[key] <= 1 for h in evals), key
    assert all(0 <= h["eval/eos_rate"] <= 1 for h in evals)
    assert all("eval/distinct_2" not in h for h in evals)  # one-word answers: no bigram
    scalars, _ = read_scalars(tmp_path / "run")
    assert [step for step, _ in scalars["eval/distinct_1"]] == [8, 16]
    assert history[-1] == lines[-1]
    model, _ = load_policy(tmp_path / "run" / "final")
    for p, q in zip(model.parameters(), dpo.policy.parameters()):
        assert torch.equal(p, q)


def test_resume_reproduces_an_uninterrupted_run(arithmetic_tokenizer, tmp_path):
    rows = [(f"{a}+{b}=", str(a + b), str(a + b + 1)) for a in range(1, 5) for b in range(1, 5)]
    config = tiny_model_config(
        "dpo", DPOConfig, batch_size=4, epochs=2.0, log_every=2, save_every=3, eval_prompts=0
    )

    def make(run, resume=False):
        model = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32)
        cfg = DPOConfig(**{**config.__dict__, "resume": resume})
        return DPO(model, arithmetic_tokenizer, rows, cfg, tmp_path / run)

    full = make("full")
    full_history = full.learn()
    learn_until_killed(make("cut"), step=5)
    resumed = make("cut", resume=True)
    history = resumed.learn()
    assert [(h["step"], h["loss/total"]) for h in history] == [
        (h["step"], h["loss/total"]) for h in full_history
    ]
    for p, q in zip(full.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(p, q)


def test_bad_input(tiny_policy, arithmetic_tokenizer, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "1+1=", "rejected": "3"}\n'
    )
    with pytest.raises(JsonlError, match=r"pairs\.jsonl:2: missing key 'chosen'"):
        DPO(tiny_policy, arithmetic_tokenizer, path, DPOConfig(), tmp_path / "run")
    path.write_text("\n\n")
    with pytest.raises(JsonlError, match="no rows"):
        DPO(tiny_policy, arithmetic_tokenizer, path, DPOConfig(), tmp_path / "run")
    with pytest.warns(UserWarning, match="skipped 1 row"):
        dpo = DPO(
            tiny_policy, arithmetic_tokenizer, [("a", "1", "1"), ("b", "1", "2")], DPOConfig(),
            tmp_path / "run",
        )  # fmt: skip
    assert dpo.skipped_identical == 1 and len(dpo.chosen) == 1
    with pytest.raises(
        ValueError,
        match=r"loss_type must be one of \['conservative', 'ipo', 'sigmoid'\], got 'hinge'",
    ):
        DPOConfig(loss_type="hinge")

    other = llm_env.train_tokenizer(["the cat sat on the mat"] * 5, vocab_size=40)
    ref = llm_env.tiny_gpt2(other, n_layer=1, n_head=2, n_embd=32)
    ref.save_pretrained(tmp_path / "ref")
    other.save_pretrained(tmp_path / "ref")
    with pytest.raises(ValueError, match="tokenizer mismatch between the policy and the reference"):
        DPO(
            tiny_policy, arithmetic_tokenizer, [("a", "1", "2")], DPOConfig(), tmp_path / "run",
            ref_policy=tmp_path / "ref",
        )  # fmt: skip


def test_nan_loss_stops_with_clear_message(tiny_policy, arithmetic_tokenizer, tmp_path):
    rows = [(f"{a}+1=", str(a + 1), "0") for a in range(1, 9)]
    config = tiny_model_config(
        "dpo", DPOConfig, batch_size=2, epochs=1.0, save_every=2, eval_prompts=0, log_every=1
    )
    dpo = DPO(tiny_policy, arithmetic_tokenizer, rows, config, tmp_path / "run")
    dpo.ref_chosen_logps = None
    original = dpo.reference_logps

    def poisoned():
        chosen, rejected = original()
        chosen[5] = float("nan")  # pair 5 is in some later batch
        return chosen, rejected

    dpo.reference_logps = poisoned
    with pytest.raises(TrainingStopped, match=r"step \d+ .*loss/total is non-finite \(nan\)"):
        dpo.learn()


@pytest.mark.slow
def test_scripts_end_to_end_sft_preferences_reward_model_dpo(tmp_path, capsys):
    """The four CLIs chained on the arithmetic task with a tiny model, each asserting an outcome."""
    from scripts import dpo as dpo_script
    from scripts import preferences as preferences_script
    from scripts import reward_model as reward_model_script
    from scripts import sft as sft_script

    task = ["--task", "arithmetic", "--task-kwargs", '{"max_operand": 9}']
    sft_script.main(
        [*task, "--out", str(tmp_path / "sft"), "--run-dir", str(tmp_path / "sft-run"),
         "--model-kwargs", '{"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 32}',
         "--epochs", "40", "--batch-size", "16", "--learning-rate", "5e-3",
         "--heldout-fraction", "0.1"]
    )  # fmt: skip
    sft_metrics = [json.loads(x) for x in (tmp_path / "sft-run" / METRICS_FILE).open()]
    assert sft_metrics[-1]["sft/heldout_ce"] < 1.5  # log(17) ≈ 2.83 before training

    pairs = tmp_path / "pairs.jsonl"
    preferences_script.main(
        ["--policy", str(tmp_path / "sft"), *task, "--out", str(pairs), "--num-prompts", "200",
         "--k", "4", "--label-temperature", "0.05"]
    )  # fmt: skip
    assert "pairs to" in capsys.readouterr().out
    rows = [json.loads(x) for x in pairs.open()]
    assert len(rows) > 300

    reward_model_script.main(
        ["--policy", str(tmp_path / "sft"), "--pairs", str(pairs), "--out", str(tmp_path / "rm"),
         "--run-dir", str(tmp_path / "rm-run"), "--epochs", "3", "--learning-rate", "2e-3"]
    )  # fmt: skip
    rm_metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # (the arithmetic gold is 0/1 correctness: mostly ties, so accuracy is not the point here —
    # test_reward_model.py checks it against the Bayes-optimal rate)
    assert 0 <= rm_metrics["heldout_accuracy"] <= 1 and rm_metrics["label_gold_agreement"] == 1.0
    rm = load_reward_model(str(tmp_path / "rm"))
    texts = sorted({(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")})
    assert abs(rm.score(*map(list, zip(*texts))).mean()) < 1e-3  # normalised on SFT samples

    dpo_script.main(
        ["--policy", str(tmp_path / "sft"), "--pairs", str(pairs), *task,
         "--run-dir", str(tmp_path / "dpo-run"), "--epochs", "3", "--eval-prompts", "16",
         "--eval-every", "10", "--learning-rate", "2e-3"]
    )  # fmt: skip
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (tmp_path / "dpo-run" / "final" / "model.safetensors").is_file()
    history = [json.loads(x) for x in (tmp_path / "dpo-run" / METRICS_FILE).open()]
    late = history[len(history) // 2 :]  # single batches are noisy: ties are labelled at random
    assert sum(h["dpo/margin"] for h in late) / len(late) > 0
    assert sum(h["loss/total"] for h in late) / len(late) < math.log(2)
    assert final["kl/ref"] > 0
    assert 0 <= final["reward/gold"] <= 1
