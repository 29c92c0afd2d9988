"""Branching: ``reset`` from a prompt plus a partial completion is the state reached by
generating that completion, and bad prefixes are rejected naming what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from llm_env import TokenMDPEnv, TokenMDPVectorEnv
from tests.helpers import CHAIN, PROMPT, Arbitrary, ids

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}
PROCESS = {
    "none": {},
    "step": {"process_reward_model": Arbitrary(), "process_reward_mode": "step"},
    "shaping": {"process_reward_model": Arbitrary(), "process_reward_mode": "shaping"},
}


def state(env) -> dict:
    """Everything the env carries about sequence 0 (process-reward state included)."""
    batch = env._batch
    out = {
        "obs": batch.observation(0),
        "prompt_len": int(batch.prompt_len[0]),
        "num_new": int(batch.num_new[0]),
    }
    if batch.process is not None:
        out |= {
            "phi": float(batch.process.phi[0]),
            "separators": int(batch.process.separators[0]),
            "scored_text": batch.process.scored_text[0],
        }
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            for k in a[key]:
                np.testing.assert_array_equal(a[key][k], b[key][k])
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("process", PROCESS, ids=PROCESS)
@pytest.mark.parametrize("prefix", ["6+7=13;1", "6+7=13", "6+7=13;13+", "6", ""])
def test_a_prefixed_reset_is_the_state_of_generating_the_prefix(prefix, process, chain_tokenizer):
    rest = ids(chain_tokenizer, "6+7=13;13+9=22$")[len(prefix) :]
    plain, branched = (
        TokenMDPEnv(**CHAIN, **PROCESS[process]),
        TokenMDPEnv(**CHAIN, **PROCESS[process]),
    )
    plain.reset(options={"prompt": PROMPT})
    for t in ids(chain_tokenizer, prefix):
        plain.step(t)
    obs, info = branched.reset(options={"prompt": PROMPT, "prefix": ids(chain_tokenizer, prefix)})
    assert_same(state(plain), state(branched))
    np.testing.assert_array_equal(obs["input_ids"], plain._batch.observation(0)["input_ids"])
    assert info == {"prompt": PROMPT, "prompt_length": 7, "prefix_length": len(prefix)}
    assert obs["attention_mask"].sum() == 7 + len(prefix)
    for t in rest:  # the same continuation is paid the same from both
        a, b = plain.step(t), branched.step(t)
        np.testing.assert_array_equal(a[0]["input_ids"], b[0]["input_ids"])
        assert a[1:] == b[1:]
    assert b[4]["completion"] == "6+7=13;13+9=22" and b[4]["length"] == 15


def test_a_prefix_pays_nothing_and_shaping_counts_from_its_steps(chain_tokenizer):
    env = TokenMDPEnv(**CHAIN, process_reward_model="task", process_reward_mode="shaping")
    env.reset(options={"prompt": PROMPT, "prefix": ids(chain_tokenizer, "6+7=14;")})
    assert env._batch.process.phi[0] == 0.0  # its one step is wrong
    paid = [env.step(t)[4]["process_reward"] for t in ids(chain_tokenizer, "14+9=23$")]
    assert paid == [0.0] * 8  # Φ: 0 -> Φ(terminal) = 0 (the last step is the outcome's to judge)
    env.reset(options={"prompt": PROMPT, "prefix": ids(chain_tokenizer, "6+7=13;")})
    assert env._batch.process.phi[0] == 1.0
    paid = [env.step(t)[4]["process_reward"] for t in ids(chain_tokenizer, "13+9=23$")]
    assert paid == [0.0] * 7 + [-1.0]  # Φ: 1 (the prefix's step, not paid again) -> 0


def test_a_prefix_counts_toward_max_new_tokens(chain_tokenizer):
    env = TokenMDPEnv(**CHAIN, max_new_tokens=5)
    env.reset(options={"prompt": PROMPT, "prefix": ids(chain_tokenizer, "6+7")})
    flags = [env.step(ids(chain_tokenizer, "=")[0])[2:4] for _ in range(2)]
    assert flags == [(False, False), (False, True)]


@pytest.mark.parametrize("process", PROCESS, ids=PROCESS)
def test_vector_env_prefixes_equal_single_env_prefixes(process, chain_tokenizer):
    prefixes = ["6+7=13;1", "", "2+2", "1;1;"]
    prompts = [PROMPT, "1+2+3=", "2+2+5=", "9+9+9="]
    venv = TokenMDPVectorEnv(4, **CHAIN, **PROCESS[process], autoreset_mode="disabled")
    obs, info = venv.reset(
        options={"prompts": prompts, "prefixes": [ids(chain_tokenizer, p) for p in prefixes]}
    )
    assert info["prefix_length"].tolist() == [8, 0, 3, 4] and info["_prefix_length"].all()
    for i, (prompt, prefix) in enumerate(zip(prompts, prefixes)):
        env = TokenMDPEnv(**CHAIN, **PROCESS[process])
        single, _ = env.reset(options={"prompt": prompt, "prefix": ids(chain_tokenizer, prefix)})
        np.testing.assert_array_equal(obs["input_ids"][i], single["input_ids"])
        n = info["prompt_length"][i] + info["prefix_length"][i]
        # what a rollout pre-fills: prompt + prefix, i.e. every real token of the observation
        np.testing.assert_array_equal(
            obs["input_ids"][i, :n], obs["input_ids"][i][obs["attention_mask"][i] == 1]
        )
        if process != "none":
            assert venv.batch.process.phi[i] == env._batch.process.phi[0]
            assert venv.batch.process.scored_text[i] == env._batch.process.scored_text[0]


def test_prefixes_with_a_reset_mask(chain_tokenizer):
    venv = TokenMDPVectorEnv(3, **CHAIN, autoreset_mode="disabled")
    venv.reset(seed=0)
    obs, info = venv.reset(
        options={
            "reset_mask": [False, True, False],
            "prompts": [PROMPT],
            "prefixes": [ids(chain_tokenizer, "6+")],
        }
    )
    assert info["_prefix_length"].tolist() == [False, True, False]
    assert info["prefix_length"][1] == 2 and venv.batch.num_new.tolist() == [0, 2, 0]


BAD_PREFIXES = {
    "too-long": (list(range(4, 19)), ValueError, "has 15 tokens but max_new_tokens=15"),
    "longer": (list(range(4, 20)), ValueError, "has 16 tokens but max_new_tokens=15"),
    "id-too-large": ([4, 5, 17, 4], ValueError, r"token id 17 at position 2 is outside .*\(17\)"),
    "negative-id": ([-1], ValueError, "token id -1 at position 0 is outside"),
    "eos-inside": ([4, 1, 5], ValueError, "EOS '<eos>' \\(id 1\\) at position 1: a prefix cannot"),
    "eos-at-the-end": ([4, 5, 1], ValueError, "EOS '<eos>' \\(id 1\\) at position 2"),
    "floats": ([4.0, 5.0], TypeError, "must be a list of integer token ids"),
    "text": ("6+7", TypeError, "must be a list of integer token ids"),
    "nested": ([[4], [5]], TypeError, "must be a list of integer token ids"),
}


@pytest.mark.parametrize("prefix, error, message", BAD_PREFIXES.values(), ids=BAD_PREFIXES)
def test_bad_prefixes_name_what_is_wrong(prefix, error, message):
    env = TokenMDPEnv(**CHAIN)
    with pytest.raises(error, match=f"options\\['prefix'\\]:? {message}"):
        env.reset(options={"prompt": PROMPT, "prefix": prefix})
    venv = TokenMDPVectorEnv(2, **CHAIN)
    with pytest.raises(error, match=f"options\\['prefixes'\\]\\[1\\]:? {message}"):
        venv.reset(options={"prompts": [PROMPT] * 2, "prefixes": [[4], prefix]})


def test_prefixes_must_match_the_prompts():
    venv = TokenMDPVectorEnv(2, **CHAIN)
    with pytest.raises(ValueError, match="has 2 prompts but options\\['prefixes'\\] has 1"):
        venv.reset(options={"prompts": [PROMPT] * 2, "prefixes": [[4]]})
    with pytest.raises(ValueError, match="options\\['prefixes'\\] needs options\\['prompts'\\]"):
        venv.reset(options={"prefixes": [[4], [4]]})
    with pytest.raises(ValueError, match="options\\['prefix'\\] needs options\\['prompt'\\]"):
        TokenMDPEnv(**CHAIN).reset(options={"prefix": [4]})


def test_a_prefix_of_ids_past_the_tokenizer_but_inside_the_action_space_is_fine(
    arithmetic_tokenizer,
):
    n = len(arithmetic_tokenizer)
    env = TokenMDPEnv(**ARITH, vocab_size=n + 4)
    obs, info = env.reset(options={"prompt": "1+1=", "prefix": [n + 3]})
    assert info["prefix_length"] == 1 and obs["input_ids"][info["prompt_length"]] == n + 3


def test_a_rollout_continues_from_a_prefix(chain_tokenizer):
    """The agents' rollout branches from prompt + prefix: the model sees the prefix as context,
    and with a model that always says EOS the completion is the prefix itself."""
    import torch

    import llm_env
    from agents.models.policy import SamplingConfig
    from agents.sampling.rollout import rollout

    model = llm_env.tiny_gpt2(chain_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    with torch.no_grad():  # every position predicts EOS: logits = h · E^T, make E[eos] dominate
        model.lm_head.weight.zero_()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[chain_tokenizer.eos_token_id] = 50.0
    venv = TokenMDPVectorEnv(2, **CHAIN, autoreset_mode="disabled")
    prefix = ids(chain_tokenizer, "6+7=13;")
    roll = rollout(model, venv, SamplingConfig(), prompts=[PROMPT] * 2, prefixes=[prefix, []])
    assert roll.completions == ["6+7=13;", ""]
    prompt_length = venv.reset(options={"prompts": [PROMPT] * 2})[1]["prompt_length"][0]
    assert roll.prompt_width == prompt_length + len(prefix)
    assert roll.lengths.tolist() == [1.0, 1.0]  # the new tokens: EOS only


def test_branches_of_unequal_prefixes_stay_within_the_models_positions(chain_tokenizer):
    """A batch mixing a long prefix (done after a few tokens) with an empty one (runs up to
    max_new_tokens): the finished row must not keep advancing its position. A model with
    exactly prompt + max_new_tokens positions is enough for every branch."""
    import torch

    from agents.models.policy import SamplingConfig
    from agents.sampling.rollout import rollout
    from llm_env import tiny_gpt2

    venv = TokenMDPVectorEnv(2, **CHAIN, tokenizer=chain_tokenizer, autoreset_mode="disabled")
    setup = venv.setup
    n_positions = setup.max_prompt_tokens + setup.max_new_tokens
    model = tiny_gpt2(chain_tokenizer, n_layer=1, n_head=2, n_embd=16, n_positions=n_positions)
    long = ids(chain_tokenizer, "6+7=13;13+9=2")[: setup.max_new_tokens - 1]
    for seed in range(3):  # an untrained model rarely stops early: the empty branch runs long
        roll = rollout(model, venv, SamplingConfig(), torch.Generator().manual_seed(seed),
                       prompts=[PROMPT, PROMPT], prefixes=[long, []])  # fmt: skip
        # (without the fix the finished row's position passed n_positions: IndexError)
        assert (roll.attention_mask.sum(-1) <= n_positions).all()  # real tokens of each row
        assert roll.completion_mask[1].sum() > roll.completion_mask[0].sum()
