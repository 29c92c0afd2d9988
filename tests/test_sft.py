"""SFT: the loss against hand-computed numbers, held-out CE going down, save/load, resume, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import llm_env
from agents.data.offline import batch_schedule, encode_examples, pad_batch
from agents.harness.checkpoint import load_checkpoint_state
from agents.harness.config import OptimConfig
from agents.harness.run import CHECKPOINT_DIR, METRICS_FILE, TrainingStopped
from agents.models.policy import load_policy
from agents.presets import tiny_model_config
from agents.sft import SFT, SFTConfig, sft_loss
from llm_env.tasks import JsonlError
from tests.interrupt import learn_until_killed


def fast_config(**overrides) -> SFTConfig:
    base = dict(
        batch_size=16, epochs=15.0, log_every=5, save_every=1000, heldout_fraction=0.2,
        max_length=16,
    )  # fmt: skip
    optim = OptimConfig(learning_rate=5e-3, warmup_steps=2, lr_schedule="linear")
    return SFTConfig(**{**base, **overrides}, optim=optim)


def test_sft_loss_hand_computed():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -1.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, stats = sft_loss(logprobs, mask)
    assert loss.item() == pytest.approx((2.0 + 3.0 + 0.5) / 3)
    assert stats["tokens"] == 3


def test_loss_mask_covers_completion_and_eos_only(arithmetic_tokenizer):
    tok = arithmetic_tokenizer
    rows = encode_examples(tok, ["1+2=", "9+9="], ["3", "18"], max_length=32)
    prompt_ids = tok("1+2=", add_special_tokens=False)["input_ids"]
    assert rows[0] == (prompt_ids + tok.convert_tokens_to_ids(["3"]) + [tok.eos_token_id], 5)
    batch = pad_batch(rows, tok.pad_token_id)
    # row 0: 5 prompt tokens, '3', <eos> → targets at positions 4 and 5 are scored
    assert batch["loss_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 0]
    assert batch["loss_mask"][1].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch["attention_mask"][0].tolist() == [1] * 7 + [0]
    assert batch["input_ids"][0, -1].item() == tok.pad_token_id
    full = pad_batch(rows, tok.pad_token_id, train_on_prompt=True)
    assert full["loss_mask"][0].tolist() == [1, 1, 1, 1, 1, 1, 0]


def test_batch_schedule_is_a_seeded_pure_function():
    a = batch_schedule(10, 4, epochs=2.0, max_steps=0, seed=3)
    assert [len(b) for b in a] == [4, 4, 4, 4, 4]
    assert sorted(np.concatenate(a[:2].copy() + [a[2][:2]]).tolist()) == list(range(10))
    b = batch_schedule(10, 4, epochs=2.0, max_steps=3, seed=3)
    assert all((x == y).all() for x, y in zip(a, b)) and len(b) == 3


def test_sft_lowers_heldout_ce_and_saved_model_round_trips(
    arithmetic_task, arithmetic_tokenizer, tiny_policy, tmp_path
):
    sft = SFT(
        tiny_policy, arithmetic_tokenizer, list(arithmetic_task.demonstrations),
        fast_config(), tmp_path / "run",
    )  # fmt: skip
    before = sft.heldout_ce()
    history = sft.learn()
    after = sft.heldout_ce()
    assert before > 2.5  # ~log(17) for an untrained 17-token model
    assert after < before - 1.5, (before, after)
    assert history[-1]["sft/heldout_ce"] == pytest.approx(after, rel=1e-5)
    lines = (tmp_path / "run" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [h["step"] for h in history]
    assert history[-1]["examples"] == 15 * len(sft.train_rows)

    sft.save(tmp_path / "model")
    model, tokenizer = load_policy(tmp_path / "model")
    assert tokenizer.get_vocab() == arithmetic_tokenizer.get_vocab()
    ids = torch.tensor([arithmetic_tokenizer("3+4=7", add_special_tokens=False)["input_ids"]])
    sft.policy.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, sft.policy(input_ids=ids).logits)


def test_resume_reproduces_an_uninterrupted_run(arithmetic_task, arithmetic_tokenizer, tmp_path):
    data = list(arithmetic_task.demonstrations)
    config = fast_config(epochs=2.0, log_every=2, save_every=3)

    def make(run):
        model = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32)
        return SFT(model, arithmetic_tokenizer, data, config, tmp_path / run)

    full = make("full")
    full_history = full.learn()

    # the checkpoint of step 3 exists, step 5 never finishes
    learn_until_killed(make("cut"), step=5)
    assert load_checkpoint_state(tmp_path / "cut" / CHECKPOINT_DIR)["step"] == 3

    resumed = make("cut")
    resumed.config = SFTConfig(**{**config.__dict__, "resume": True})
    history = resumed.learn()
    assert [h["step"] for h in history] == [h["step"] for h in full_history]
    for a, b in zip(history, full_history):
        assert a["loss/total"] == b["loss/total"]
    for (name, p), q in zip(full.policy.named_parameters(), resumed.policy.parameters()):
        assert torch.equal(p, q), name


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    arithmetic_task, arithmetic_tokenizer, tiny_policy, monkeypatch, tmp_path
):
    sft = SFT(
        tiny_policy, arithmetic_tokenizer, list(arithmetic_task.demonstrations),
        fast_config(save_every=2, epochs=3.0), tmp_path / "run",
    )  # fmt: skip
    calls = {"n": 0}
    original = SFT.loss

    def nan_at_step_4(self, indices):
        calls["n"] += 1
        loss, stats = original(self, indices)
        return (loss * float("nan") if calls["n"] == 4 else loss), stats

    monkeypatch.setattr(SFT, "loss", nan_at_step_4)
    with pytest.raises(
        TrainingStopped, match=r"step 4 .*loss/total is non-finite \(nan\).*checkpoint"
    ):
        sft.learn()
    assert load_checkpoint_state(tmp_path / "run" / CHECKPOINT_DIR)["step"] == 2


def test_bad_sft_data_names_file_line_and_key(arithmetic_tokenizer, tiny_policy, tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2="}\n')
    with pytest.raises(JsonlError, match=r"sft\.jsonl:2: missing key 'completion'"):
        SFT(tiny_policy, arithmetic_tokenizer, path, fast_config(), tmp_path / "run")
    path.write_text("")
    with pytest.raises(JsonlError, match=r"sft\.jsonl: no rows"):
        SFT(tiny_policy, arithmetic_tokenizer, path, fast_config(), tmp_path / "run")
    with pytest.raises(ValueError, match="empty"):
        SFT(tiny_policy, arithmetic_tokenizer, [], fast_config(), tmp_path / "run")
    with pytest.raises(ValueError, match=r"#1: missing or non-string 'completion'"):
        SFT(tiny_policy, arithmetic_tokenizer, [("1+1=", "2"), ("2+2=",)], fast_config(), "x")


def test_model_object_needs_its_tokenizer(tiny_policy, tmp_path):
    with pytest.raises(ValueError, match="pass the tokenizer"):
        SFT(tiny_policy, None, [("a", "b")], fast_config(), tmp_path)


def test_cross_entropy_of_uniform_model_is_log_vocab(arithmetic_tokenizer, tmp_path):
    model = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32)
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: all logits 0 → uniform
    sft = SFT(model, arithmetic_tokenizer, [("1+2=", "3")] * 20, fast_config(), tmp_path)
    assert sft.heldout_ce() == pytest.approx(math.log(len(arithmetic_tokenizer)), rel=1e-5)


def test_zero_log_and_save_intervals_mean_only_at_the_end(
    arithmetic_task, arithmetic_tokenizer, tiny_policy, tmp_path
):
    config = tiny_model_config(
        "sft", SFTConfig, batch_size=16, max_steps=3, log_every=0, save_every=0, heldout_fraction=0
    )
    sft = SFT(
        tiny_policy, arithmetic_tokenizer, list(arithmetic_task.demonstrations), config, tmp_path
    )
    history = sft.learn()
    assert [h["step"] for h in history] == [3]
    assert load_checkpoint_state(tmp_path / "checkpoint")["step"] == 3
