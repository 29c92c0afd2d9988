"""TokenMDP-v0: Gymnasium/SB3 contracts, determinism, rewards, vector == single envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import llm_env
from llm_env import TokenMDPEnv, TokenMDPVectorEnv
from reward_models import load_reward_model

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}


def answer_tokens(tokenizer, prompt: str) -> list[int]:
    a, b = prompt[:-1].split("+")
    return [tokenizer.convert_tokens_to_ids(ch) for ch in str(int(a) + int(b))]


@pytest.mark.parametrize("kwargs", [ARITH, {}], ids=["arithmetic", "default-sentiment"])
def test_registered_env_passes_gymnasium_and_sb3_checkers(kwargs):
    env = gym.make("TokenMDP-v0", **kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(gym.make("TokenMDP-v0", **kwargs).unwrapped, warn=False)
    assert env.unwrapped.action_space.n == len(env.unwrapped.tokenizer)


def test_default_make_is_sentiment_with_vader_reward():
    env = gym.make("TokenMDP-v0")
    assert env.unwrapped.setup.task.name == "sentiment"
    assert type(env.unwrapped.reward_model).__name__ == "VaderRewardModel"


def test_correct_answer_earns_one_and_wrong_answer_zero(arithmetic_tokenizer):
    env = TokenMDPEnv(**ARITH, render_mode="ansi")
    obs, info = env.reset(seed=3)
    prompt = info["prompt"]
    rewards = []
    for token in answer_tokens(arithmetic_tokenizer, prompt):
        obs, r, terminated, truncated, step_info = env.step(token)
        rewards.append(r)
        assert not (terminated or truncated) and step_info == {}
    obs, r, terminated, truncated, final = env.step(arithmetic_tokenizer.eos_token_id)
    assert rewards == [0.0] * len(rewards) and r == 1.0 and terminated and not truncated
    assert final["finish_reason"] == "eos" and final["gold_reward"] == 1.0
    assert final["prompt"] + final["completion"] == arithmetic_tokenizer.decode(
        obs["input_ids"][obs["attention_mask"] == 1][:-1]
    )
    assert prompt in env.render()

    obs, info = env.reset(options={"prompt": "2+2="})
    env.step(arithmetic_tokenizer.convert_tokens_to_ids("5"))
    *_, r, terminated, truncated, final = env.step(arithmetic_tokenizer.eos_token_id)
    assert (r, final["completion"]) == (0.0, "5")


def test_length_limit_truncates(arithmetic_tokenizer):
    env = TokenMDPEnv(**ARITH, max_new_tokens=3)
    env.reset(seed=0)
    seven = arithmetic_tokenizer.convert_tokens_to_ids("7")
    flags = [env.step(seven)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_observation_layout(arithmetic_tokenizer):
    env = TokenMDPEnv(**ARITH)
    obs, info = env.reset(options={"prompt": "3+4="})
    n = info["prompt_length"]
    ids = arithmetic_tokenizer("3+4=", add_special_tokens=False)["input_ids"]
    assert obs["input_ids"][:n].tolist() == ids and obs["attention_mask"].sum() == n
    assert (obs["input_ids"][n:] == arithmetic_tokenizer.pad_token_id).all()
    obs, *_ = env.step(5)
    assert obs["input_ids"][n] == 5 and obs["attention_mask"].sum() == n + 1


def test_sentiment_episode_reward_is_the_reward_models_score_of_the_completion():
    env = gym.make("TokenMDP-v0").unwrapped
    tok = env.tokenizer
    words = tok(" was a truly wonderful and moving film", add_special_tokens=False)["input_ids"]
    env.reset(seed=1)
    for t in words:
        *_, reward, terminated, truncated, info = env.step(t)
    *_, reward, terminated, truncated, info = env.step(tok.eos_token_id)
    expected = load_reward_model("sentiment").score([info["prompt"]], [info["completion"]])[0]
    assert info["completion"] == " was a truly wonderful and moving film"
    assert reward == pytest.approx(float(expected)) and reward > 0.5


def test_reset_is_deterministic_under_a_seed():
    env = TokenMDPEnv(**ARITH)
    prompts = [env.reset(seed=s)[1]["prompt"] for s in (0, 1, 2, 0, 1, 2)]
    assert prompts[:3] == prompts[3:] and len(set(prompts[:3])) > 1
    venv = TokenMDPVectorEnv(8, **ARITH)
    a = venv.reset(seed=5)[1]["prompt"].tolist()
    assert venv.reset(seed=5)[1]["prompt"].tolist() == a


def run_vector(venv, actions):
    """Step ``venv`` through ``actions`` (T, B); return what it reports."""
    log = []
    for t in range(actions.shape[0]):
        if venv.autoreset_mode.value == "Disabled" and not venv.active.any():
            break
        obs, rew, term, trunc, info = venv.step(actions[t])
        log.append((obs["input_ids"].copy(), rew, term, trunc, info))
    return log


@pytest.mark.parametrize("mode", ["next_step", "same_step", "disabled"])
def test_vector_env_equals_single_envs(mode, arithmetic_tokenizer):
    B, T, seed = 6, 12, 11
    rng = np.random.default_rng(0)
    digits = [arithmetic_tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    eos = arithmetic_tokenizer.eos_token_id
    actions = rng.choice(digits + [eos] * 4, size=(T, B))
    venv = gym.make_vec(
        "TokenMDP-v0", num_envs=B, vectorization_mode="vector_entry_point",
        autoreset_mode=mode, **ARITH,
    )  # fmt: skip
    assert isinstance(venv, TokenMDPVectorEnv)
    obs0, info0 = venv.reset(seed=seed)
    vlog = run_vector(venv, actions)
    for i in range(B):
        env = TokenMDPEnv(**ARITH)
        obs, info = env.reset(seed=seed + i)
        assert info["prompt"] == info0["prompt"][i]
        np.testing.assert_array_equal(obs["input_ids"], obs0["input_ids"][i])
        finished = pending_reset = False
        for t in range(len(vlog)):
            v_obs, v_rew, v_term, v_trunc, v_info = vlog[t]
            if finished and mode == "disabled":  # frozen
                assert (v_rew[i], v_term[i], v_trunc[i]) == (0.0, False, False)
                continue
            if pending_reset:  # NEXT_STEP: this step resets, action ignored
                obs, info = env.reset()
                assert v_info["prompt"][i] == info["prompt"] and v_rew[i] == 0.0
                np.testing.assert_array_equal(obs["input_ids"], v_obs[i])
                pending_reset = False
                continue
            obs, rew, term, trunc, info = env.step(actions[t, i])
            assert (v_rew[i], v_term[i], v_trunc[i]) == (rew, term, trunc)
            if term or trunc:
                key = "final_info" if mode == "same_step" else None
                vinfo = v_info[key] if key else v_info
                assert vinfo["completion"][i] == info["completion"]
                assert vinfo["gold_reward"][i] == info["gold_reward"]
                if mode == "same_step":
                    np.testing.assert_array_equal(
                        v_info["final_obs"][i]["input_ids"], obs["input_ids"]
                    )
                    obs, info = env.reset()
                    assert v_info["prompt"][i] == info["prompt"]
                finished = True
                pending_reset = mode == "next_step"
            np.testing.assert_array_equal(obs["input_ids"], v_obs[i])


class CountingRewardModel:
    name = "counting"

    def __init__(self):
        self.calls = []

    def score(self, prompts, completions):
        self.calls.append(len(prompts))
        return np.array([len(c) for c in completions], dtype=np.float32)


def test_vector_env_scores_all_finishers_of_a_step_in_one_call(arithmetic_tokenizer):
    rm = CountingRewardModel()
    venv = TokenMDPVectorEnv(5, **ARITH, reward_model=rm, autoreset_mode="disabled")
    venv.reset(seed=0)
    one, eos = arithmetic_tokenizer.convert_tokens_to_ids("1"), arithmetic_tokenizer.eos_token_id
    venv.step([one, eos, one, eos, eos])
    _, rew, term, trunc, info = venv.step([eos, one, one, one, one])
    assert rm.calls == [3, 1] and venv.active.tolist() == [False] * 2 + [True] + [False] * 2
    assert (
        rew.tolist() == [1.0, 0, 0, 0, 0] and info["_completion"].tolist() == [True] + [False] * 4
    )
    venv.step([eos] * 5)
    assert rm.calls == [3, 1, 1] and not venv.active.any()
    with pytest.raises(RuntimeError, match="every sequence has finished"):
        venv.step([eos] * 5)
    venv.reset(options={"reset_mask": [False, True, False, False, False], "prompts": ["1+1="]})
    assert venv.active.tolist() == [False, True, False, False, False]


def test_tokenizer_round_trips_through_save_pretrained(tmp_path, arithmetic_tokenizer):
    from llm_env.tokenizer import load_tokenizer

    arithmetic_tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    text = "37+48=85"
    assert loaded(text)["input_ids"] == arithmetic_tokenizer(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.pad_token_id != loaded.eos_token_id
    env = TokenMDPEnv(**ARITH, tokenizer=str(tmp_path))
    assert env.action_space.n == len(arithmetic_tokenizer)


def test_tiny_gpt2_matches_tokenizer(arithmetic_tokenizer):
    model = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_embd=32, n_head=2)
    assert model.config.vocab_size == len(arithmetic_tokenizer)
    assert model.config.eos_token_id == arithmetic_tokenizer.eos_token_id
    assert model.config.pad_token_id == arithmetic_tokenizer.pad_token_id
