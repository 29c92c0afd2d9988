"""Process reward models: the PRM's encoding and loss against hand-computed numbers, stepwise
labels (gold checker, Math-Shepherd rollouts on a forced policy), bad data named by file and
line, a saved PRM and the implicit PRM as the env's process reward model, and the implicit
score against β·Σ log-ratio computed by hand."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

import llm_env
from agents.data.process_labels import gold_step_labels, rollout_step_labels
from agents.models.policy import SamplingConfig
from agents.presets import tiny_model_config
from agents.prm import PRMConfig, PRMTrainer, load_step_data, prm_loss
from llm_env import TokenMDPEnv, TokenMDPVectorEnv
from llm_env.tasks.jsonl import JsonlError
from reward_models import load_reward_model
from reward_models.arithmetic_chain import steps_correct
from reward_models.base import FunctionRewardModel
from reward_models.implicit import ImplicitProcessRewardModel
from reward_models.prm import IGNORE, encode_steps, pad_step_rows, split_steps
from tests.helpers import CHAIN, ids

PROMPT = "6+7+9="  # 7 tokens: "▁", "6", "+", "7", "+", "9", "="


pytestmark = pytest.mark.usefixtures("one_thread")


def always_eos(tokenizer):
    """A tiny GPT-2 whose every next-token distribution puts all its mass on EOS."""
    model = llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    with torch.no_grad():  # logits = h · E^T: make E[eos] dominate a constant h
        model.lm_head.weight.zero_()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[tokenizer.eos_token_id] = 50.0
    return model


# -- encoding and loss -----------------------------------------------------------------------------


def test_labels_sit_on_each_steps_closing_token(chain_tokenizer):
    ids_, ends = encode_steps(chain_tokenizer, PROMPT, ["6+7=13", "13+9=23"], ";")
    tokens = chain_tokenizer.convert_ids_to_tokens(ids_)
    # prompt: 7 tokens (0-6); "6+7=13;": 7 tokens (7-13); "13+9=23;": 8 tokens (14-21)
    assert len(tokens) == 22 and ends == [13, 21] and tokens[13] == tokens[21] == ";"
    batch = pad_step_rows([(ids_, ends, [True, False]), (ids_[:9], [], [])], 0, max_length=64)
    labels = batch["labels"]
    assert labels.shape == (2, 22) and batch["attention_mask"].sum().item() == 22 + 9
    assert {(i, j): labels[i, j].item() for i, j in (labels != IGNORE).nonzero().tolist()} == {
        (0, 13): 1,
        (0, 21): 0,
    }
    cut = pad_step_rows([(ids_, ends, [True, False])], 0, max_length=20)["labels"]
    assert (cut != IGNORE).nonzero().tolist() == [[0, 13]]  # the step closing past 20 is dropped


def test_prm_loss_is_cross_entropy_at_closing_tokens_only():
    labels = torch.full((2, 4), IGNORE)
    labels[0, 1], labels[0, 3], labels[1, 2] = 1, 0, 1
    logits = torch.randn(2, 4, 2) * 5  # anything: only the three labelled positions count
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # P(correct) = 3/4, label 1
    logits[0, 3] = torch.tensor([0.0, 0.0])  # 1/2, label 0
    logits[1, 2] = torch.tensor([math.log(3.0), 0.0])  # 1/4, label 1
    loss, stats = prm_loss(logits, labels)
    expected = -(math.log(3 / 4) + math.log(1 / 2) + math.log(1 / 4)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # predictions: correct (3/4 > 1/2), a tie → argmax 0 = label 0 → right, 1/4 → wrong
    assert stats["prm/train_step_accuracy"] == pytest.approx(2 / 3)
    assert stats["prm/steps"] == 3
    logits[labels == IGNORE] = 100.0
    assert prm_loss(logits, labels)[0].item() == pytest.approx(expected, abs=1e-6)


# -- step labels -----------------------------------------------------------------------------------


def test_steps_and_gold_labels_extracted_from_completions_by_hand():
    completions = ["6+7=13;13+9=22", "6+7=14;14+9=23", "6+7=13;", "6+7=13;13+", "", "6+7=13;;x"]
    assert [split_steps(c, ";") for c in completions] == [
        ["6+7=13", "13+9=22"],
        ["6+7=14", "14+9=23"],
        ["6+7=13"],  # the separator closes the step; no empty step after it
        ["6+7=13", "13+"],
        [],
        ["6+7=13", "", "x"],
    ]
    labels = gold_step_labels(steps_correct, [PROMPT] * 6, completions, ";")
    assert labels == [
        [True, True],
        [False, True],  # 6+7 is not 14; 14+9=23 is right given the written 14 (checked locally)
        [True],
        [True, False],
        [],
        [True, False, False],
    ]


def test_math_shepherd_labels_on_a_policy_that_always_stops(chain_tokenizer):
    """With an always-EOS policy every continuation is the prefix itself: step k < n is good iff
    the prefix up to its ";" already earns the outcome; the last step is the completion's own."""
    model = always_eos(chain_tokenizer)
    texts = ["6+7=13;13+9=22", "6+7=14;14+9=23", "6+7=13;13+9=2;1", "22"]
    completion_ids = [ids(chain_tokenizer, t) for t in texts]

    def label(reward_model, outcomes):
        env = TokenMDPVectorEnv(4, **CHAIN, reward_model=reward_model, autoreset_mode="disabled")
        return rollout_step_labels(
            model, env, SamplingConfig(), torch.Generator().manual_seed(0), [PROMPT] * 4,
            completion_ids, outcomes, k=3,
        )  # fmt: skip

    # the gold outcome: a prefix ending in ";" never holds the answer → every step k < n is bad
    assert label("arithmetic_chain", [1.0, 0.0, 0.0, 1.0]) == [
        [False, True],
        [False, False],
        [False, False, False],
        [True],
    ]
    first_step_right = FunctionRewardModel(lambda p, c: [float(x == "6+7=13;") for x in c], "f")
    assert label(first_step_right, [0.0, 0.0, 1.0, 0.0]) == [
        [True, False],
        [False, False],
        [True, False, True],
        [False],
    ]


# -- bad data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "1+2+3=", "completions": ["1+2=3", "3+3=6"], "labels": [True]},
         "2 completions (steps) but 1 labels"),
        ({"prompt": "1+2+3=", "completions": "1+2=3", "labels": [True]},
         "'completions' must be a list of step strings"),
        ({"prompt": "1+2+3=", "completions": ["1+2=3"], "labels": [1]},
         "'labels' must be a list of true/false"),
        ({"prompt": "1+2+3=", "completions": [], "labels": []}, "no steps"),
        ({"completions": ["1+2=3"], "labels": [True]}, "missing key 'prompt'"),
    ],
    ids=["lengths-differ", "not-a-list", "not-bools", "no-steps", "no-prompt"],
)  # fmt: skip
def test_a_bad_row_is_named_by_file_and_line(row, message, tmp_path):
    good = {"prompt": "1+2+3=", "completions": ["1+2=3", "3+3=6"], "labels": [True, True]}
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")  # line 2 is blank
    with pytest.raises(JsonlError, match=re.escape(f"{path}:3: ") + ".*" + re.escape(message)):
        load_step_data(path)
    with pytest.raises(JsonlError, match="PRM example #1: "):
        load_step_data([good, row])


# -- a saved PRM and the implicit PRM as process reward models ---------------------------------------


def test_a_saved_prm_is_a_process_reward_model_of_the_env(chain_tokenizer, tmp_path):
    policy_dir = tmp_path / "policy"
    llm_env.tiny_gpt2(
        chain_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=64
    ).save_pretrained(policy_dir)
    chain_tokenizer.save_pretrained(policy_dir)
    rows = [{"prompt": PROMPT, "completions": ["6+7=13", "13+9=22"], "labels": [True, True]},
            {"prompt": PROMPT, "completions": ["6+7=14", "14+9=23"], "labels": [False, True]}]  # fmt: skip
    config = tiny_model_config("prm", PRMConfig, batch_size=2, max_steps=2, heldout_fraction=0.0,
                               aggregate="min")  # fmt: skip
    trainer = PRMTrainer(policy_dir, rows, config, tmp_path / "run")
    history = trainer.learn()
    assert 0.0 <= history[-1]["prm/step_accuracy"] <= 1.0
    prm = load_reward_model(str(tmp_path / "run" / "final"))
    assert type(prm).__name__ == "LearnedProcessRewardModel" and prm.aggregate == "min"
    scores = prm.score([PROMPT] * 3, ["6+7=13;", "6+7=13;13+9=22", ""])
    probs = prm.step_probabilities([PROMPT], [["6+7=13", "13+9=22"]])[0]
    assert scores[0] == pytest.approx(probs[0]) and scores[1] == pytest.approx(probs.min())
    assert scores[2] == 0.0
    env = TokenMDPEnv(**CHAIN, process_reward_model=str(tmp_path / "run" / "final"))
    env.reset(options={"prompt": PROMPT})
    paid = [env.step(t)[4]["process_reward"] for t in ids(chain_tokenizer, "6+7=13;")]
    assert paid[:-1] == [0.0] * 6 and paid[-1] == pytest.approx(probs[0], abs=1e-6)


def test_implicit_prm_is_beta_times_the_summed_log_ratio(chain_tokenizer, tmp_path):
    make = lambda seed: llm_env.tiny_gpt2(  # noqa: E731
        chain_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=64, seed=seed
    )
    policy, ref = make(1), make(2)
    for model, name in ((policy, "policy"), (ref, "ref")):
        model.save_pretrained(tmp_path / name)
        chain_tokenizer.save_pretrained(tmp_path / name)
    prm = load_reward_model(f"implicit:{tmp_path / 'policy'},{tmp_path / 'ref'},0.5")
    assert isinstance(prm, ImplicitProcessRewardModel)
    completions = ["6+7=13;", "6+7=13;13+9=22", "", "9"]
    scores = prm.score([PROMPT] * 4, completions)
    for completion, score in zip(completions, scores):
        prompt_ids = ids(chain_tokenizer, "▁" + PROMPT)
        full = torch.tensor([prompt_ids + ids(chain_tokenizer, completion)])
        by_hand = 0.0
        with torch.no_grad():
            lp = policy(full).logits[0].log_softmax(-1)
            lr = ref(full).logits[0].log_softmax(-1)
        for t in range(len(prompt_ids), full.shape[1]):  # each completion token from its context
            token = full[0, t]
            by_hand += (lp[t - 1, token] - lr[t - 1, token]).item()
        assert score == pytest.approx(0.5 * by_hand, abs=1e-5), completion
    assert scores[2] == 0.0 and abs(scores[1]) > 0
    # paid in shaping mode: the ";" closing step 1 earns step 1's own implicit reward
    env = TokenMDPEnv(**CHAIN, process_reward_model=prm, process_reward_mode="shaping")
    env.reset(options={"prompt": PROMPT})
    paid = [env.step(t)[4]["process_reward"] for t in ids(chain_tokenizer, "6+7=13;")]
    assert paid[-1] == pytest.approx(float(scores[0]), abs=1e-6)


@pytest.mark.parametrize(
    "spec, message",
    [("implicit:a,b", "expected 'implicit:POLICY_DIR,REF_DIR,BETA'"),
     ("implicit:a,b,x", "expected 'implicit:POLICY_DIR,REF_DIR,BETA'"),
     ("implicit:nowhere,b,0.1", "not a local save_pretrained directory")],
)  # fmt: skip
def test_bad_implicit_specs(spec, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_reward_model(spec)


def test_prm_config_rejects_bad_values():
    with pytest.raises(ValueError, match="aggregate must be one of"):
        PRMConfig(aggregate="max")
    with pytest.raises(ValueError, match="step_separator must be a non-empty string"):
        PRMConfig(step_separator="")
    assert np.isclose(PRMConfig().heldout_fraction, 0.1)
