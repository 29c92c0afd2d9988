"""Every bad input of the environment gets a clear error naming what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_env import TokenMDPEnv, TokenMDPVectorEnv
from llm_env.tasks import JsonlError, make_task, read_jsonl
from reward_models import RewardModelError, load_reward_model

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}


def test_token_id_outside_the_vocabulary():
    env = TokenMDPEnv(**ARITH)
    env.reset(seed=0)
    n = env.action_space.n
    with pytest.raises(ValueError, match=f"token id {n} .*Discrete\\({n}\\)"):
        env.step(n)
    with pytest.raises(ValueError, match="token id -1"):
        env.step(-1)
    with pytest.raises(TypeError, match="integer token ids"):
        env.step(1.5)
    venv = TokenMDPVectorEnv(3, **ARITH)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"token id 999 \(sequence 2\)"):
        venv.step([4, 4, 999])
    with pytest.raises(ValueError, match="expected 3 token ids"):
        venv.step([4, 4])


def test_step_before_reset_and_after_the_end(arithmetic_tokenizer):
    env = TokenMDPEnv(**ARITH)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(4)
    with pytest.raises(RuntimeError, match="before reset"):
        TokenMDPVectorEnv(2, **ARITH).step([4, 4])
    env.reset(seed=0)
    env.step(arithmetic_tokenizer.eos_token_id)
    with pytest.raises(RuntimeError, match="after the episode ended .*'eos'"):
        env.step(4)


def test_tokenizer_without_pad_or_eos(arithmetic_tokenizer):
    import copy

    no_pad = copy.deepcopy(arithmetic_tokenizer)
    no_pad.pad_token = None  # no pad token: observations are padded with EOS, masks say where
    env = TokenMDPEnv(**ARITH, tokenizer=no_pad)
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.setup.pad_id == no_pad.eos_token_id
    assert (obs["input_ids"][obs["attention_mask"] == 0] == no_pad.eos_token_id).all()
    no_eos = copy.deepcopy(arithmetic_tokenizer)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        TokenMDPEnv(**ARITH, tokenizer=no_eos)


def test_tokenizer_larger_than_the_action_space(arithmetic_tokenizer):
    n = len(arithmetic_tokenizer)
    with pytest.raises(ValueError, match=f"vocab_size={n - 1} .* {n} tokens"):
        TokenMDPEnv(**ARITH, vocab_size=n - 1)
    env = TokenMDPEnv(**ARITH, vocab_size=n + 7)  # a padded embedding table is fine
    assert env.action_space.n == n + 7


def test_long_prompt_is_truncated_from_the_left_with_a_warning():
    env = TokenMDPEnv(**ARITH, max_prompt_tokens=4)
    with pytest.warns(UserWarning, match="'12\\+34=' has 7 tokens > max_prompt_tokens=4"):
        obs, info = env.reset(options={"prompt": "12+34="})
    assert info["prompt"] == "+34=" and info["prompt_length"] == 4


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"\n')
    with pytest.raises(JsonlError, match=f"{path}:3: not valid JSON"):
        read_jsonl(path, ["prompt"])
    path.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(JsonlError, match=f"{path}:2: missing key 'prompt'"):
        make_task("jsonl", path=str(path))
    path.write_text('{"prompt": 3}\n')
    with pytest.raises(JsonlError, match=f"{path}:1: key 'prompt' must be a string"):
        read_jsonl(path, ["prompt"])
    path.write_text("\n")
    with pytest.raises(JsonlError, match="no rows"):
        read_jsonl(path, ["prompt"])


def test_jsonl_task_with_any_reward_model(tmp_path, arithmetic_tokenizer):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "1+2="}\n{"prompt": "3+3=", "completion": "6"}\n')
    env = TokenMDPEnv(task="jsonl", task_kwargs={"path": str(path)},
                      tokenizer=arithmetic_tokenizer, reward_model="arithmetic")  # fmt: skip
    prompts = {env.reset(seed=s)[1]["prompt"] for s in range(10)}
    assert prompts == {"1+2=", "3+3="}
    assert env.setup.task.demonstrations == (("3+3=", "6"),)
    with pytest.raises(ValueError, match="has no gold reward: pass reward_model"):
        TokenMDPEnv(task="jsonl", task_kwargs={"path": str(path)}, tokenizer=arithmetic_tokenizer)


def test_jsonl_task_with_a_corpus_is_self_contained(tmp_path):
    """A corpus trains the task's tokenizer and becomes demonstrations (empty prompt); the gold
    reward spec rides along, so the env needs no tokenizer= or reward_model=."""
    prompts, corpus = tmp_path / "p.jsonl", tmp_path / "c.jsonl"
    prompts.write_text('{"prompt": "the cat"}\n{"prompt": "a dog", "completion": " ran"}\n')
    corpus.write_text("".join(json.dumps({"text": t}) + "\n"
                              for t in ["the cat sat .", "a dog ran far ."] * 20))  # fmt: skip
    task = make_task("jsonl", path=str(prompts), corpus=str(corpus), gold_reward="length")
    assert task.demonstrations[0] == ("a dog", " ran")
    assert task.demonstrations[1:3] == (("", "the cat sat ."), ("", "a dog ran far ."))
    tokenizer = task.tokenizer()
    ids = tokenizer("the cat sat .")["input_ids"]
    assert tokenizer.decode(ids) == "the cat sat ." and tokenizer.unk_token_id not in ids
    env = TokenMDPEnv(task=task)
    _, info = env.reset(seed=0)
    assert env.setup.tokenizer is tokenizer and task.gold_reward == "length"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "  "}\n')
    with pytest.raises(JsonlError, match=r"bad.jsonl:2: key 'text' is blank"):
        make_task("jsonl", path=str(prompts), corpus=str(bad))


def test_reward_model_from_a_python_file(tmp_path):
    """``path/to/file.py:callable``: a user's reward function without a package or sys.path."""
    (tmp_path / "my_reward.py").write_text(
        "def score(prompts, completions, **kwargs):\n    return [len(c) / 10 for c in completions]\n"
    )
    model = load_reward_model(f"{tmp_path / 'my_reward.py'}:score")
    np.testing.assert_allclose(model.score(["p", "q"], ["ab", "abcde"]), [0.2, 0.5])
    with pytest.raises(ValueError, match=r"cannot import 'nope' .*my_reward\.py"):
        load_reward_model(f"{tmp_path / 'my_reward.py'}:nope")
    with pytest.raises(ValueError, match="no Python file .*missing.py"):
        load_reward_model(f"{tmp_path / 'missing.py'}:score")


def test_unknown_reward_model_lists_registered_names():
    with pytest.raises(
        ValueError,
        match=r"unknown reward model 'vibes'.*\['arithmetic', 'arithmetic_chain', "
        r"'arithmetic_chain_steps', 'length', 'sentiment'\]",
    ):
        load_reward_model("vibes")
    with pytest.raises(ValueError, match="cannot import"):
        load_reward_model("no_such_module_xyz:fn")


def test_unknown_task_lists_registered_names():
    with pytest.raises(ValueError, match=r"unknown task 'poetry'.*'arithmetic'"):
        TokenMDPEnv(task="poetry")


class BadRewardModel:
    name = "bad-rm"

    def __init__(self, value, shape_fn=lambda n: (n,)):
        self.value, self.shape_fn = value, shape_fn

    def score(self, prompts, completions):
        return np.full(self.shape_fn(len(prompts)), self.value, dtype=np.float32)


@pytest.mark.parametrize(
    "rm, message",
    [
        (BadRewardModel(np.nan), "reward model 'bad-rm' returned nan for text #0"),
        (BadRewardModel(np.inf), "reward model 'bad-rm' returned inf"),
        (BadRewardModel(1.0, lambda n: (n, 2)), r"'bad-rm' returned shape \(1, 2\) for 1 texts"),
    ],
)
def test_bad_reward_model_output_names_the_reward_model(rm, message, arithmetic_tokenizer):
    env = TokenMDPEnv(**ARITH, reward_model=rm)
    env.reset(seed=0)
    with pytest.raises(RewardModelError, match=message):
        env.step(arithmetic_tokenizer.eos_token_id)


def score_by_length(prompts, completions):
    return [float(len(c)) for c in completions]


def test_reward_model_from_import_path(arithmetic_tokenizer):
    rm = load_reward_model("tests.test_env_bad_input:score_by_length")
    assert rm.score(["p"], ["abc"]).tolist() == [3.0]
    env = TokenMDPEnv(**ARITH, reward_model="tests.test_env_bad_input:score_by_length")
    env.reset(options={"prompt": "1+1="})
    env.step(arithmetic_tokenizer.convert_tokens_to_ids("2"))
    assert env.step(arithmetic_tokenizer.eos_token_id)[1] == 1.0


def test_bad_autoreset_mode_and_num_envs():
    with pytest.raises(ValueError, match="unknown autoreset_mode 'sometimes'"):
        TokenMDPVectorEnv(2, **ARITH, autoreset_mode="sometimes")
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        TokenMDPVectorEnv(0, **ARITH)
