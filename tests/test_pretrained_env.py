"""The env on a pretrained-shaped checkpoint: a chat tokenizer (pad = EOS = ``<|im_end|>``, a
second stop id ``<|endoftext|>`` in ``generation_config.json``) and TRL conversational prompts."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from transformers import AutoTokenizer

from llm_env import TokenMDPEnv, TokenMDPVectorEnv
from llm_env.tasks import JsonlError, make_task
from tests.pretrained import QUESTIONS, chat_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    """A TRL-shaped reward function that records what it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, **kwargs})
        return [float(len(c if isinstance(c, str) else c[0]["content"])) for c in completions]


class TextModel:
    """A reward model object: it must keep getting text."""

    def __init__(self):
        self.calls = []

    def score(self, prompts, completions):
        self.calls.append((prompts, completions))
        return np.zeros(len(prompts), dtype=np.float32)


@pytest.fixture(scope="module")
def tok(pretrained_llama):
    return AutoTokenizer.from_pretrained(pretrained_llama)


def chat_env(pretrained_llama, chat_data, reward=None, **kwargs) -> TokenMDPEnv:
    return TokenMDPEnv(task="jsonl", task_kwargs={"path": str(chat_data["prompts"])},
                       tokenizer=str(pretrained_llama), reward_model=reward or Recorder(),
                       **kwargs)  # fmt: skip


def test_chat_prompt_ids_are_the_chat_templates(pretrained_llama, chat_data, tok):
    env = chat_env(pretrained_llama, chat_data)
    seen = set()
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        expected = tok.apply_chat_template(info["messages"], add_generation_prompt=True,
                                           tokenize=True)["input_ids"]  # fmt: skip
        n = info["prompt_length"]
        assert obs["input_ids"][:n].tolist() == expected and n == len(expected)
        assert obs["attention_mask"].sum() == n
        assert info["prompt"] == tok.decode(expected)  # the rendered text, special tokens kept
        assert info["prompt"].startswith("<|im_start|>user\n")
        assert info["prompt"].endswith("<|im_start|>assistant\n")
        seen.add(info["messages"][0]["content"])
    assert len(seen) > 1 and seen <= set(QUESTIONS)
    # chat_template_kwargs reach the template; a message list given at reset is rendered
    env = chat_env(pretrained_llama, chat_data, chat_template_kwargs={"enable_thinking": False})
    messages = chat_prompts(3)[2]
    obs, info = env.reset(options={"prompt": messages})
    expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       enable_thinking=False)["input_ids"]  # fmt: skip
    assert obs["input_ids"][: info["prompt_length"]].tolist() == expected
    assert info["prompt"].endswith("<think>\n\n</think>\n\n") and info["messages"] == messages


def test_the_second_stop_id_terminates(pretrained_llama, chat_data, tok):
    env = chat_env(pretrained_llama, chat_data)
    eos, other = tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")
    assert env.unwrapped.setup.stop_ids == (eos, other) == (2, 0)
    env.reset(seed=0)
    word = tok.encode("What", add_special_tokens=False)[0]
    _, reward, terminated, truncated, info = env.step(word)
    assert not (terminated or truncated) and info == {}
    _, reward, terminated, truncated, info = env.step(other)
    assert terminated and not truncated
    assert info["finish_reason"] == "eos" and info["stop_token"] == "<|endoftext|>"
    assert info["completion"] == "What" and info["length"] == 2 and reward == 4.0
    with pytest.raises(ValueError, match="stop token '<\\|endoftext\\|>' \\(id 0\\) at position 1"):
        env.reset(options={"prompt": "hi", "prefix": [word, other]})
    # a tokenizer object has no generation_config: only EOS, unless the agent passes its ids
    plain = TokenMDPEnv(task="jsonl", task_kwargs={"path": str(chat_data["prompts"])},
                        tokenizer=tok, reward_model=Recorder())  # fmt: skip
    assert plain.setup.stop_ids == (eos,)
    plain.reset(seed=0)
    assert plain.step(other)[2:4] == (False, False)
    given = TokenMDPEnv(task="jsonl", task_kwargs={"path": str(chat_data["prompts"])},
                        tokenizer=tok, reward_model=Recorder(), stop_token_ids=[other])  # fmt: skip
    assert given.setup.stop_ids == (eos, other)
    # the length limit is still "length", without stop_token
    short = chat_env(pretrained_llama, chat_data, max_new_tokens=1)
    short.reset(seed=0)
    *_, truncated, info = short.step(word)
    assert truncated and info["finish_reason"] == "length" and "stop_token" not in info


def test_eos_that_is_also_pad_ends_the_episode_and_is_masked_in(pretrained_llama, chat_data, tok):
    assert tok.pad_token_id == tok.eos_token_id
    env = chat_env(pretrained_llama, chat_data)
    obs, info = env.reset(seed=1)
    n = info["prompt_length"]
    assert tok.eos_token_id in obs["input_ids"][:n].tolist()  # <|im_end|> inside the prompt
    word = tok.encode("What", add_special_tokens=False)[0]
    env.step(word)
    obs, _, terminated, truncated, info = env.step(tok.eos_token_id)
    assert terminated and not truncated and info["stop_token"] == "<|im_end|>"
    assert obs["input_ids"][n : n + 2].tolist() == [word, tok.eos_token_id]
    assert obs["attention_mask"].tolist() == [1] * (n + 2) + [0] * (len(obs["input_ids"]) - n - 2)
    assert info["completion"] == "What"


def test_stop_tokens_are_checked(pretrained_llama, chat_data):
    with pytest.raises(ValueError, match="'foo-not-a-token' is not a single token"):
        chat_env(pretrained_llama, chat_data, stop_tokens=["foo-not-a-token"])
    with pytest.raises(ValueError, match="stop_tokens: token id 100000 is outside"):
        chat_env(pretrained_llama, chat_data, stop_tokens=[100000])
    with pytest.raises(TypeError, match="stop_tokens must be a list"):
        chat_env(pretrained_llama, chat_data, stop_tokens="<|im_start|>")
    env = chat_env(pretrained_llama, chat_data, stop_tokens=["<|im_start|>", "\n"])
    newline = env.tokenizer.encode("\n", add_special_tokens=False)
    assert env.setup.stop_ids == (2, 0, 1, *newline)
    env.reset(seed=0)
    assert env.step(newline[0])[-1]["stop_token"] == "Ċ"  # the vocabulary's string


def test_a_tokenizer_without_pad_pads_with_eos(chat_data, tok):
    no_pad = AutoTokenizer.from_pretrained(tok.name_or_path)
    no_pad.pad_token = None
    venv = TokenMDPVectorEnv(2, task="jsonl", task_kwargs={"path": str(chat_data["prompts"])},
                             tokenizer=no_pad, reward_model=Recorder())  # fmt: skip
    obs, info = venv.reset(seed=0)
    assert no_pad.pad_token_id is None and venv.setup.pad_id == no_pad.eos_token_id
    n = info["prompt_length"]
    assert (obs["input_ids"][0, n[0] :] == no_pad.eos_token_id).all()
    assert obs["attention_mask"].sum(-1).tolist() == n.tolist()
    _, _, terminated, _, info = venv.step([no_pad.eos_token_id, 5])
    assert terminated.tolist() == [True, False] and info["completion"][0] == ""


def test_reward_functions_get_what_trl_gives_them(pretrained_llama, chat_data, tmp_path, tok):
    word = tok.encode("What", add_special_tokens=False)[0]
    fn, text_model = Recorder(), TextModel()
    env = chat_env(pretrained_llama, chat_data, reward=fn)
    _, info = env.reset(seed=3)
    env.step(word)
    final = env.step(tok.eos_token_id)[-1]
    (call,) = fn.calls
    assert call["prompts"] == [info["messages"]] == [final["messages"]]
    assert call["completions"] == [[{"role": "assistant", "content": "What"}]]
    # the rendered text given as a prompt is that conversation (as agents reset the env)
    env.reset(options={"prompt": info["prompt"]})
    env.step(tok.eos_token_id)
    assert fn.calls[-1]["prompts"] == [info["messages"]]
    assert fn.calls[-1]["completions"] == [[{"role": "assistant", "content": ""}]]
    # a reward model object gets the text; a plain prompt gives a function strings
    env = chat_env(pretrained_llama, chat_data, reward=text_model, gold_reward_model=fn)
    _, info = env.reset(seed=3)
    env.step(word)
    env.step(tok.eos_token_id)
    assert text_model.calls == [([info["prompt"]], ["What"])]
    assert fn.calls[-1]["prompts"] == [info["messages"]]
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "What is 1 plus 2?"}\n')
    env = TokenMDPEnv(task="jsonl", task_kwargs={"path": str(plain)}, tokenizer=tok,
                      reward_model=fn)  # fmt: skip
    _, info = env.reset(seed=0)
    assert "messages" not in info
    env.step(word)
    final = env.step(tok.eos_token_id)[-1]
    assert fn.calls[-1]["prompts"] == ["What is 1 plus 2?"] and "messages" not in final
    assert fn.calls[-1]["completions"] == ["What"]
    # a vector env batch mixing both kinds: each prompt as it came
    venv = TokenMDPVectorEnv(2, task="jsonl", task_kwargs={"path": str(plain)}, tokenizer=tok,
                             reward_model=fn)  # fmt: skip
    messages = chat_prompts(1)[0]
    _, info = venv.reset(options={"prompts": ["What is 1 plus 2?", messages]})
    assert info["_messages"].tolist() == [False, True] and info["messages"][1] == messages
    venv.step([tok.eos_token_id, tok.eos_token_id])
    assert fn.calls[-1]["prompts"] == ["What is 1 plus 2?", messages]
    assert fn.calls[-1]["completions"] == ["", [{"role": "assistant", "content": ""}]]


def test_conversational_jsonl_env_passes_check_env_and_gym_make(pretrained_llama, chat_data):
    env = gym.make("TokenMDP-v0", task="jsonl", task_kwargs={"path": str(chat_data["prompts"])},
                   tokenizer=str(pretrained_llama), reward_model=Recorder())  # fmt: skip
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["messages"][0]["role"] == "user"
    assert env.action_space.n == len(env.unwrapped.tokenizer)


def test_conversational_jsonl_errors(pretrained_llama, chat_data, tmp_path):
    path = tmp_path / "mixed.jsonl"
    row = json.dumps({"prompt": [{"role": "user", "content": "hi"}]})
    path.write_text(f'{row}\n{{"prompt": "plain"}}\n')
    with pytest.raises(JsonlError, match=f"{path}:2: .*line 1 holds a message list.*may not mix"):
        make_task("jsonl", path=str(path))
    path.write_text(f'{row}\n{{"prompt": [{{"role": "user"}}]}}\n')
    with pytest.raises(JsonlError, match=f"{path}:2: key 'prompt': message #0 needs a string"):
        make_task("jsonl", path=str(path))
    path.write_text(f'{row}\n{{"prompt": [{{"role": "user", "content": " "}}]}}\n')
    with pytest.raises(JsonlError, match=f"{path}:2: key 'prompt': every message is blank"):
        make_task("jsonl", path=str(path))
    task = make_task("jsonl", path=str(chat_data["prompts"]))
    assert task.train_messages[0] == chat_prompts(1)[0] and task.eval_messages is None
    assert task.train_prompts[0] == QUESTIONS[0]  # the words, until the env renders them
    from llm_env.tokenizer import train_tokenizer

    no_template = train_tokenizer(QUESTIONS, 64)
    with pytest.raises(ValueError, match="conversational prompts needs a tokenizer with a chat"):
        TokenMDPEnv(task=task, tokenizer=no_template, reward_model=Recorder())
    with pytest.raises(TypeError, match="chat_template_kwargs must be a dict"):
        chat_env(pretrained_llama, chat_data, chat_template_kwargs=["enable_thinking"])


def test_evaluate_a_chat_policy_with_a_reward_file(pretrained_llama, chat_data, tmp_path, capsys):
    from scripts import evaluate

    reward = tmp_path / "reward.py"
    reward.write_text(
        "def reward(prompts, completions, **kwargs):\n"
        "    return [len(p[-1]['content']) + (c[0]['role'] != 'assistant') * 1000.0\n"
        "            for p, c in zip(prompts, completions)]\n"
    )
    out = tmp_path / "eval"
    evaluate.main([str(pretrained_llama), "--task", "jsonl",
                   "--task-kwargs", json.dumps({"path": str(chat_data["prompts"]),
                                                "max_new_tokens": 4}),
                   "--gold-reward", f"{reward}:reward", "--prompts", "6", "--num-envs", "3",
                   "--out", str(out)])  # fmt: skip
    assert "has no corpus to train a judge on" in capsys.readouterr().out
    (result,) = json.loads((out / "results.json").read_text())["evaluations"]
    assert result["n"] == 6
    assert result["gold_reward"] == pytest.approx(np.mean([len(q) for q in QUESTIONS[:6]]))
    assert 1 < result["judge_ppl"] < 1e4  # the policy itself judges: the task has no corpus
