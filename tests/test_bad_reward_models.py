"""A reward model that raises or returns something unusable is a RewardModelError naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_env import TokenMDPEnv
from reward_models import RewardModelError, checked_score, load_reward_model

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}


class Returns:
    """Returns ``output(n)`` for n texts (or raises it, if it is an exception)."""

    def __init__(self, output, name="bad-rm"):
        self.output, self.name = output, name

    def score(self, prompts, completions):
        if isinstance(self.output, Exception):
            raise self.output
        return self.output(len(prompts))


CASES = {
    "raises": (
        Returns(RuntimeError("CUDA out of memory")),
        "raised RuntimeError: CUDA out of memory",
    ),
    "raises-key-error": (Returns(KeyError("label")), "raised KeyError: 'label'"),
    "strings": (Returns(lambda n: ["a"] * n), r"returned non-numeric scores \['a'\] \(dtype <U1\)"),
    "numeric-strings": (Returns(lambda n: ["1.5"] * n), r"returned non-numeric scores \['1.5'\]"),
    "objects": (
        Returns(lambda n: [object()] * n),
        r"returned non-numeric scores .*\(dtype object\)",
    ),
    "none": (Returns(lambda n: None), r"returned non-numeric scores None"),
    "complex": (
        Returns(lambda n: [1 + 2j] * n),
        r"returned non-numeric scores .*\(dtype complex128\)",
    ),
    "ragged": (
        Returns(lambda n: [[1.0], [2.0, 3.0]]),
        r"returned \[\[1.0\], \[2.0, 3.0\]\], not an array",
    ),
    "scalar": (Returns(lambda n: 1.0), r"returned shape \(\) for 1 texts"),
    "too-many": (Returns(lambda n: [0.0] * (n + 1)), r"returned shape \(2,\) for 1 texts"),
    "tensor-with-grad": (
        Returns(lambda n: torch.zeros(n, requires_grad=True)),
        r"returned tensor\(.*\), not an array of scores",
    ),
}


@pytest.mark.parametrize("rm, message", CASES.values(), ids=CASES.keys())
def test_checked_score_names_the_reward_model(rm, message):
    with pytest.raises(RewardModelError, match=f"reward model 'bad-rm' {message}"):
        checked_score(rm, ["1+1="], ["2"])


@pytest.mark.parametrize("rm, message", CASES.values(), ids=CASES.keys())
def test_env_step_raises_reward_model_error(rm, message, arithmetic_tokenizer):
    env = TokenMDPEnv(**ARITH, reward_model=rm)
    env.reset(seed=0)
    with pytest.raises(RewardModelError, match=f"reward model 'bad-rm' {message}"):
        env.step(arithmetic_tokenizer.eos_token_id)


@pytest.mark.parametrize("rm, message", CASES.values(), ids=CASES.keys())
def test_gold_reward_model_goes_through_the_same_check(rm, message, arithmetic_tokenizer):
    env = TokenMDPEnv(**ARITH, gold_reward_model=rm)  # the training reward is fine
    env.reset(seed=0)
    with pytest.raises(RewardModelError, match=f"reward model 'bad-rm' {message}"):
        env.step(arithmetic_tokenizer.eos_token_id)


def test_the_original_exception_is_kept_as_the_cause():
    error = ZeroDivisionError("division by zero")
    with pytest.raises(RewardModelError) as info:
        checked_score(Returns(error), ["p"], ["c"])
    assert info.value.__cause__ is error


def returns_strings(prompts, completions):
    return ["0.5" for _ in completions]


def returns_ragged(prompts, completions):
    return [[1.0, 2.0], [3.0]]


@pytest.mark.parametrize(
    "function, message",
    [
        ("returns_strings", r"returned non-numeric scores .*'0.5'.* \(dtype <U3\)"),
        ("returns_ragged", "raised ValueError: .*inhomogeneous"),
    ],
)
def test_function_reward_model_output_is_checked(function, message):
    spec = f"tests.test_bad_reward_models:{function}"
    with pytest.raises(RewardModelError, match=f"reward model '{spec}' {message}"):
        checked_score(load_reward_model(spec), ["p"], ["c"])


def test_good_outputs_still_pass():
    for output in ([1, 2], [0.5, 1.5], np.array([1.0, 2.0], dtype=np.float64), torch.ones(2)):
        scores = checked_score(Returns(lambda n, out=output: out), ["a", "b"], ["c", "d"])
        assert scores.dtype == np.float32 and scores.shape == (2,)


@pytest.mark.parametrize(("model_cls", "extra_file", "message"), [
    ("GPT2ForSequenceClassification", None,
     "reward model {}: expected a sequence-classification model with num_labels=1, got 3"),
    ("GPT2ForTokenClassification", "prm.json",
     "process reward model {}: expected a token-classification model with num_labels=2, got 3"),
])  # fmt: skip
def test_a_saved_scorer_with_the_wrong_head_is_named(tmp_path, model_cls, extra_file, message):
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_head=1, n_embd=8, vocab_size=10, num_labels=3,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    getattr(transformers, model_cls)(config).save_pretrained(tmp_path)
    if extra_file:
        (tmp_path / extra_file).write_text('{"separator": ";", "aggregate": "last"}')
    with pytest.raises(ValueError) as error:
        load_reward_model(str(tmp_path))
    assert str(error.value) == message.format(tmp_path)
