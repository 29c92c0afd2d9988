"""Process rewards: which token is paid what, in both modes, single and vector env; shaping
telescopes; one batched call per step; the default env is unchanged; bad process arguments."""

from __future__ import annotations

import hashlib

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from llm_env import TokenMDPEnv, TokenMDPVectorEnv
from reward_models import RewardModelError, load_reward_model
from tests.helpers import ARITH, CHAIN, PROMPT, Arbitrary, ids


class Recording:
    """Wraps a reward model; records every call's completions."""

    def __init__(self, model, name="recording"):
        self.model, self.name, self.calls = model, name, []

    def score(self, prompts, completions):
        self.calls.append(list(completions))
        return self.model.score(prompts, completions)


# completion ("$" = EOS): (step-mode process reward by token index, shaping's, outcome reward).
# The closing tokens are the keys: ";" and, at the end, a last token after unscored text.
# Shaping pays the score's increase on closing tokens and −Φ(before) on the last token
# (Φ(terminal) = 0), so every episode's shaping rewards sum to 0.
PLACEMENT = {
    "6+7=13;13+9=22$": ({6: 1.0, 14: 1.0}, {6: 1.0, 14: -1.0}, 1.0),
    "6+7=13;13+9=23$": ({6: 1.0, 14: 0.5}, {6: 1.0, 14: -1.0}, 0.0),
    "6+7=14;14+9=23$": ({6: 0.0, 14: 0.5}, {6: 0.0, 14: 0.0}, 0.0),
    "6+7=13;$": ({6: 1.0}, {6: 1.0, 7: -1.0}, 0.0),  # EOS right after ";": nothing new to score
    "6+7=13;13+9=222": ({6: 1.0, 14: 0.5}, {6: 1.0, 14: -1.0}, 0.0),  # truncated
    "6+7=13;13+9=22;": ({6: 1.0, 14: 1.0}, {6: 1.0, 14: -1.0}, 0.0),  # truncated on ";": once
    "22$": ({2: 0.0}, {2: 0.0}, 1.0),  # no separator: one step, scored on the last token
    "$": ({}, {}, 0.0),  # empty completion: nothing scored
}


def expected(completion: str, mode: str):
    step, shaping, outcome = PLACEMENT[completion]
    paid = step if mode == "step" else shaping
    n = len(completion)
    process = [paid.get(t, 0.0) for t in range(n)]
    outcomes = [0.0] * (n - 1) + [outcome]
    scored = [completion[: t + 1].rstrip("$") for t in sorted(step)]  # the closing tokens
    return process, outcomes, scored


def chain_env(mode, prm=None, **kwargs):
    prm = prm or Recording(load_reward_model("arithmetic_chain_steps"))
    return TokenMDPEnv(**CHAIN, process_reward_model=prm, process_reward_mode=mode, **kwargs)


@pytest.mark.parametrize("mode", ["step", "shaping"])
@pytest.mark.parametrize("completion", PLACEMENT)
def test_single_env_pays_each_closing_token_as_documented(completion, mode, chain_tokenizer):
    env = chain_env(mode)
    env.reset(options={"prompt": PROMPT})
    steps = [env.step(t) for t in ids(chain_tokenizer, completion)]
    process, outcomes, scored = expected(completion, mode)
    assert [info["process_reward"] for *_, info in steps] == pytest.approx(process, abs=1e-6)
    assert [info["outcome_reward"] for *_, info in steps] == outcomes
    rewards = [r for _, r, *_ in steps]
    assert rewards == pytest.approx([p + o for p, o in zip(process, outcomes)], abs=1e-6)
    assert env.setup.process.model.calls == [[text] for text in scored]  # one call per closing
    assert steps[-1][2] or steps[-1][3]  # the episode ended on the last token


@pytest.mark.parametrize("mode", ["step", "shaping"])
def test_vector_env_pays_the_same_with_one_call_per_step(mode, chain_tokenizer):
    completions = list(PLACEMENT)
    prm = Recording(load_reward_model("arithmetic_chain_steps"))
    venv = TokenMDPVectorEnv(len(completions), **CHAIN, process_reward_model=prm,
                             process_reward_mode=mode, autoreset_mode="disabled")  # fmt: skip
    venv.reset(options={"prompts": [PROMPT] * len(completions)})
    tokens = [ids(chain_tokenizer, c) for c in completions]
    log = []
    for t in range(max(map(len, tokens))):
        actions = [row[t] if t < len(row) else 0 for row in tokens]  # ended rows: ignored
        calls_before = len(prm.calls)
        _, rewards, *_, info = venv.step(actions)
        log.append((rewards, info, prm.calls[calls_before:]))
    for i, completion in enumerate(completions):
        process, outcomes, _ = expected(completion, mode)
        n = len(completion)
        assert [log[t][1]["process_reward"][i] for t in range(n)] == pytest.approx(
            process, abs=1e-6
        )
        assert [log[t][1]["outcome_reward"][i] for t in range(n)] == outcomes
        assert [log[t][0][i] for t in range(n)] == pytest.approx(
            [p + o for p, o in zip(process, outcomes)], abs=1e-6
        )
        assert not any(log[t][1]["_process_reward"][i] for t in range(n, len(log)))  # frozen
    for t, (*_, calls) in enumerate(log):
        closing = sorted(
            completion[: t + 1].rstrip("$")
            for completion in completions
            if t in PLACEMENT[completion][0]
        )
        assert [sorted(c) for c in calls] == ([closing] if closing else [])
    assert [len(c) for c in prm.calls] == [1, 6, 5]  # t=2: "22$"; t=6: six ";"; t=14: five ends


def reference_closing(tokens: list[int], semicolon: int, eos: int) -> list[bool]:
    """Where a step closes, written independently for a one-character-per-token tokenizer: on
    ";", and on the last token if the completion then has text after its last ";"."""
    text = "".join("x" if t != semicolon else ";" for t in tokens if t != eos)
    closes = [t == semicolon for t in tokens]
    closes[-1] = closes[-1] or (text != "" and not text.endswith(";"))
    return closes


def random_episodes(tokenizer, n: int, length: int, seed: int) -> np.ndarray:
    """(n, length) random chain-vocabulary tokens, EOS about one time in twelve."""
    vocab = ids(tokenizer, "0123456789+=;;;") + [tokenizer.eos_token_id]
    weights = np.array([1.0] * (len(vocab) - 1) + [1.3])
    return np.random.default_rng(seed).choice(vocab, size=(n, length), p=weights / weights.sum())


def play(env, prompt, tokens):
    """Step ``env`` from ``prompt`` until the episode ends; the (reward, info) of each step."""
    env.reset(options={"prompt": prompt})
    out = []
    for t in tokens:
        _, reward, terminated, truncated, info = env.step(int(t))
        out.append((reward, info))
        if terminated or truncated:
            return out
    raise AssertionError("the episode did not end")


@pytest.mark.parametrize("boundary", [";", "predicate"])
def test_random_episodes_single_equals_vector_and_shaping_telescopes(boundary, chain_tokenizer):
    semicolon, eos = ids(chain_tokenizer, ";")[0], chain_tokenizer.eos_token_id
    step_boundary = (lambda t: t == semicolon) if boundary == "predicate" else ";"
    B, prm = 24, Arbitrary()
    episodes = random_episodes(chain_tokenizer, B, 15, seed=0)
    prompts = [f"{i % 10}+{(3 * i) % 10}+{(7 * i) % 10}=" for i in range(B)]
    for mode in ("step", "shaping"):
        kwargs = dict(CHAIN, process_reward_model=prm, step_boundary=step_boundary,
                      process_reward_mode=mode)  # fmt: skip
        venv = TokenMDPVectorEnv(B, **kwargs, autoreset_mode="disabled")
        venv.reset(options={"prompts": prompts})
        vlog = [venv.step(episodes[:, t])[1:] for t in range(15) if venv.active.any()]
        env = TokenMDPEnv(**kwargs)
        for i in range(B):
            single = play(env, prompts[i], episodes[i])
            n = len(single)
            assert [vlog[t][0][i] for t in range(n)] == [r for r, _ in single]
            assert [vlog[t][3]["process_reward"][i] for t in range(n)] == [
                info["process_reward"] for _, info in single
            ]
            tokens = list(episodes[i, :n])
            completion = single[-1][1]["completion"]
            closes = reference_closing(tokens, semicolon, eos)
            texts = [completion[: k + 1] for k in range(n)]  # one character per token
            scores = [float(prm.score([""], [text])[0]) for text in texts]
            paid = [info["process_reward"] for _, info in single]
            if mode == "step":
                want = [s if c else 0.0 for s, c in zip(scores, closes)]
                assert paid == pytest.approx(want, abs=1e-6)
            else:  # the telescoping sum: Φ(s_0) − Φ(terminal) = 0, every episode
                assert sum(paid) == pytest.approx(0.0, abs=1e-5)
                want = [s if c else 0.0 for s, c in zip(scores, closes)]
                last_scores = [0.0]
                for s, c in zip(scores, closes):
                    last_scores.append(s if c else last_scores[-1])
                increases = [w - last_scores[k] if c else 0.0
                             for k, (w, c) in enumerate(zip(want, closes))]  # fmt: skip
                assert paid[:-1] == pytest.approx(increases[:-1], abs=1e-5)
                assert paid[-1] == pytest.approx(-last_scores[-2], abs=1e-5)


def test_a_separator_spanning_two_tokens_closes_on_the_token_completing_it(chain_tokenizer):
    prm = Recording(Arbitrary())
    env = TokenMDPEnv(**CHAIN, process_reward_model=prm, step_boundary=";1")
    env.reset(options={"prompt": PROMPT})
    paid = [env.step(t)[4]["process_reward"] for t in ids(chain_tokenizer, "6+7=13;13+9=22$")]
    assert prm.calls == [["6+7=13;1"], ["6+7=13;13+9=22"]]
    assert [k for k, p in enumerate(paid) if p] == [7, 14]


def test_a_token_carrying_the_separator_inside_closes_a_step():
    """Sentiment BPE tokens hold whole words: with separator "e", every token whose text
    contains an "e" closes a step (counting occurrences, so "ee" closes once)."""
    prm = Recording(Arbitrary())
    env = TokenMDPEnv(process_reward_model=prm, step_boundary="e", max_new_tokens=12)
    tok = env.tokenizer
    words = tok(" the movie was great and the acting was fine", add_special_tokens=False)
    env.reset(seed=0)
    closing = [k for k, t in enumerate(words["input_ids"]) if env.step(t)[4]["process_reward"]]
    pieces = [tok.decode([t]) for t in words["input_ids"]]
    assert closing == [k for k, piece in enumerate(pieces) if "e" in piece] and len(closing) >= 4
    assert all(call[0].endswith(pieces[k].strip()) for call, k in zip(prm.calls, closing))


def test_prm_calls_only_on_steps_that_close_one(chain_tokenizer):
    prm = Recording(Arbitrary())
    venv = TokenMDPVectorEnv(3, **CHAIN, process_reward_model=prm, autoreset_mode="disabled")
    venv.reset(options={"prompts": [PROMPT] * 3})
    plus, semi, one = ids(chain_tokenizer, "+;1")
    for actions, calls in [
        ([one, one, one], []),
        ([semi, plus, semi], [["1;", "1;"]]),  # rows 0 and 2 close: one call
        ([one, one, one], [["1;", "1;"]]),
        ([semi, semi, semi], [["1;", "1;"], ["1;1;", "1+1;", "1;1;"]]),  # three: still one call
    ]:
        venv.step(actions)
        assert prm.calls == calls


ROLLOUT_DIGEST = "deb97728832d9c75d85a166045afbc7ef98633b978bcbd2a14e164f9057b8208"


def rollout_fingerprint() -> str:
    """sha256 of every observation, reward, flag and info (but the new ``prefix_length``) of a
    seeded random rollout through the vector env (3 autoreset modes) and the single env.

    ``ROLLOUT_DIGEST`` is this function's value on the code before process rewards and prefixes
    (commit 6d8ef4b, run with ``PYTHONPATH`` at an export of its ``llm_env``/``reward_models``).
    """
    digest = hashlib.sha256()

    def feed(*items):
        for x in items:
            digest.update(
                x.tobytes() + str(x.dtype).encode()
                if isinstance(x, np.ndarray)
                else repr(x).encode()
            )

    def feed_info(info):
        # keys added later (prefix_length; stop_token, which names the stop id that ended
        # an episode) are left out: every value the digest was taken over is unchanged
        for key in sorted(k for k in info if "prefix_length" not in k and "stop_token" not in k):
            value = info[key]
            if isinstance(value, dict):  # same_step's final_info
                value = {k: v for k, v in value.items() if "stop_token" not in k}
            feed(key, value.tolist() if isinstance(value, np.ndarray) else value)

    rng = np.random.default_rng(0)
    for mode in ("next_step", "same_step", "disabled"):
        venv = TokenMDPVectorEnv(4, **ARITH, autoreset_mode=mode)
        obs, info = venv.reset(seed=7)
        feed(obs["input_ids"], obs["attention_mask"])
        feed_info(info)
        for _ in range(14):
            if mode == "disabled" and not venv.active.any():
                break
            obs, r, te, tr, info = venv.step(rng.integers(0, len(venv.tokenizer), size=4))
            feed(obs["input_ids"], obs["attention_mask"], r, te, tr)
            feed_info(info)
    env = TokenMDPEnv(**ARITH)
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        feed(obs["input_ids"])
        feed_info(info)
        done = False
        while not done:
            obs, r, te, tr, info = env.step(int(rng.integers(0, env.action_space.n)))
            feed(obs["input_ids"], r, te, tr)
            feed_info(info)
            done = te or tr
    return digest.hexdigest()


def test_default_env_is_bit_identical_to_before_process_rewards():
    assert rollout_fingerprint() == ROLLOUT_DIGEST


def test_a_zero_process_reward_changes_no_reward_or_observation(chain_tokenizer):
    zero = Recording(load_reward_model("tests.test_process_rewards:zero_score"))
    episodes = random_episodes(chain_tokenizer, 6, 15, seed=1)
    logs = []
    for prm in (None, zero):
        venv = TokenMDPVectorEnv(6, **CHAIN, process_reward_model=prm, autoreset_mode="next_step")
        obs, _ = venv.reset(seed=3)
        log = [obs["input_ids"]]
        for t in range(15):
            obs, reward, terminated, truncated, info = venv.step(episodes[:, t])
            log += [obs["input_ids"], reward, terminated, truncated, info.get("gold_reward")]
            if prm is None:
                assert "process_reward" not in info and "outcome_reward" not in info
            else:
                np.testing.assert_array_equal(info["outcome_reward"], reward)
        logs.append(log)
    assert len(zero.calls) > 3
    for a, b in zip(*logs):
        np.testing.assert_array_equal(a, b)


def zero_score(prompts, completions):
    return [0.0] * len(completions)


@pytest.mark.parametrize("mode", ["step", "shaping"])
def test_check_env_passes_with_process_rewards(mode):
    env = gym.make("TokenMDP-v0", **CHAIN, process_reward_model="task", process_reward_mode=mode)
    check_env(env.unwrapped, skip_render_check=True)
    env = gym.make("TokenMDP-v0", **ARITH, process_reward_model="length",
                   step_boundary=lambda t: t % 2 == 0, process_reward_mode=mode)  # fmt: skip
    check_env(env.unwrapped, skip_render_check=True)


# -- bad process-reward arguments and models ---------------------------------------------------

BAD_ARGUMENTS = {
    "unknown-mode": (
        dict(CHAIN, process_reward_model="task", process_reward_mode="dense"),
        ValueError, r"unknown process_reward_mode 'dense'; use one of \['step', 'shaping'\]",
    ),
    "empty-separator": (
        dict(CHAIN, process_reward_model="task", step_boundary=""),
        ValueError, "step_boundary must be a non-empty separator string",
    ),
    "boundary-not-callable": (
        dict(CHAIN, process_reward_model="task", step_boundary=3),
        TypeError, "step_boundary must be a separator string or a callable .* got int 3",
    ),
    "boundary-without-prm": (
        dict(CHAIN, step_boundary=";"), ValueError, "given without process_reward_model",
    ),
    "shaping-without-prm": (
        dict(CHAIN, process_reward_mode="shaping"), ValueError, "given without process_reward",
    ),
    "task-has-no-prm": (
        dict(ARITH, process_reward_model="task"),
        ValueError, "task 'arithmetic' has no gold process reward",
    ),
    "task-has-no-separator": (
        dict(ARITH, process_reward_model="length"),
        ValueError, "needs step_boundary .* task 'arithmetic' defines no step separator",
    ),
    "unknown-prm": (
        dict(CHAIN, process_reward_model="vibes"), ValueError, "unknown reward model 'vibes'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS)
def test_bad_process_arguments_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        TokenMDPEnv(**kwargs)
    with pytest.raises(error, match=message):
        TokenMDPVectorEnv(2, **kwargs)


class Failing:
    name = "bad-prm"

    def __init__(self, output):
        self.output = output

    def score(self, prompts, completions):
        if isinstance(self.output, Exception):
            raise self.output
        return self.output(len(prompts))


@pytest.mark.parametrize(
    "output, message",
    [
        (RuntimeError("judge offline"), "raised RuntimeError: judge offline"),
        (lambda n: [np.nan] * n, "returned nan for text #0"),
        (lambda n: [1.0] * (n + 1), r"returned shape \(2,\) for 1 texts"),
        (lambda n: ["good"] * n, "returned non-numeric scores"),
    ],
)
def test_a_failing_process_reward_model_is_a_reward_model_error_naming_it(
    output, message, chain_tokenizer
):
    env = chain_env("step", prm=Failing(output))
    env.reset(options={"prompt": PROMPT})
    for t in ids(chain_tokenizer, "6+7=13"):
        env.step(t)  # no step closes: the model is not called
    with pytest.raises(RewardModelError, match=f"reward model 'bad-prm' {message}"):
        env.step(ids(chain_tokenizer, ";")[0])
    venv = TokenMDPVectorEnv(2, **CHAIN, process_reward_model=Failing(output))
    prefixes = [ids(chain_tokenizer, "1;"), ids(chain_tokenizer, "1")]  # one closed step
    with pytest.raises(RewardModelError, match=f"reward model 'bad-prm' {message}"):
        venv.reset(options={"prompts": [PROMPT] * 2, "prefixes": prefixes})


def test_eos_never_closes_a_step_through_the_predicate(chain_tokenizer):
    prm = Recording(Arbitrary())
    env = TokenMDPEnv(**CHAIN, process_reward_model=prm, step_boundary=lambda t: True)
    env.reset(options={"prompt": PROMPT})
    paid = [env.step(t)[4]["process_reward"] for t in ids(chain_tokenizer, "12$")]
    assert prm.calls == [["1"], ["12"]] and paid == pytest.approx([0.11, 0.32, 0.0])


def test_a_predicate_returning_a_non_bool_is_a_type_error(chain_tokenizer):
    def every_third(token):
        return token % 3

    env = TokenMDPEnv(**CHAIN, process_reward_model="task", step_boundary=every_third)
    env.reset(options={"prompt": PROMPT})
    with pytest.raises(TypeError, match=r"step_boundary every_third\(\d+\) returned \d"):
        env.step(ids(chain_tokenizer, "1")[0])


def test_a_separator_that_cannot_occur_warns_and_makes_the_completion_one_step(
    arithmetic_tokenizer,
):
    prm = Recording(Arbitrary())
    with pytest.warns(UserWarning, match="step_boundary ';' can never occur: no token .* ';'"):
        env = TokenMDPEnv(**ARITH, process_reward_model=prm, step_boundary=";")
    env.reset(options={"prompt": "2+3="})
    paid = [env.step(t)[4]["process_reward"] for t in ids(arithmetic_tokenizer, "15$")]
    assert prm.calls == [["15"]] and paid == pytest.approx([0.0, 0.0, 0.62])
