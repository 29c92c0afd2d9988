"""Reward models: registered names, a saved Bradley-Terry directory, normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from reward_models import checked_score, load_reward_model
from reward_models.arithmetic import solve
from reward_models.learned import NORM_FILE, encode_texts


def test_arithmetic_reward_is_exact_match():
    rm = load_reward_model("arithmetic")
    scores = rm.score(["37+48=", "9-3=", "6*7=", "1+1="], ["85", " 6", "42", "3"])
    assert scores.tolist() == [1.0, 1.0, 1.0, 0.0] and scores.dtype == np.float32
    with pytest.raises(ValueError, match="not of the form"):
        solve("hello")


def test_sentiment_reward_is_vader_compound():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["a wonderful , moving film .", "dull and awful .", "it is a film ."]
    scores = load_reward_model("sentiment").score([""] * 3, texts)
    vader = SentimentIntensityAnalyzer()
    assert scores.tolist() == pytest.approx([vader.polarity_scores(t)["compound"] for t in texts])
    assert scores[0] > 0.5 > 0 > scores[1]


def test_saved_bradley_terry_directory_loads_and_scores(tmp_path, arithmetic_tokenizer):
    tok = arithmetic_tokenizer
    config = GPT2Config(vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                        num_labels=1, pad_token_id=tok.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    prompts, completions = ["1+2=", "3+4=", "5+5="], ["3", "70", "10"]
    rm = load_reward_model(str(tmp_path))
    scores = rm.score(prompts, completions)
    with torch.no_grad():  # the same texts, one at a time, through the plain transformers API
        expected = [
            model(**encode_texts(tok, [p], [c], 32)).logits[0, 0].item()
            for p, c in zip(prompts, completions)
        ]
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(np.round(scores, 5))) == 3

    (tmp_path / NORM_FILE).write_text(json.dumps({"mean": 0.5, "std": 2.0}))
    normed = load_reward_model(tmp_path).score(prompts, completions)
    assert normed == pytest.approx((np.array(expected) - 0.5) / 2.0, abs=1e-5)


def test_a_directory_that_is_not_a_reward_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_reward_model(str(tmp_path))


def test_scoring_text_loads_no_training_code():
    """Scorers score, trainers train: importing the reward models (learned scorer included)
    loads nothing from ``agents`` or ``peft`` nor the env's code, and no file in ``reward_models/`` imports
    ``agents``. (``accelerate`` is imported by ``transformers.modeling_utils`` itself.)"""
    import re
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, reward_models, reward_models.learned, reward_models.prm\n"
        "import reward_models.implicit\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'agents', 'peft'}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('llm_env')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # nor does it run the env package: its re-exports load on first use, the tokenizer alone
    assert out.stdout.split("\n")[:2] == ["[]", "['llm_env', 'llm_env.tokenizer']"]
    package = Path(__file__).resolve().parents[1] / "reward_models"
    importers = [
        f.name
        for f in package.glob("*.py")
        if re.search(r"^\s*(from|import)\s+agents\b", f.read_text(), re.M)
    ]
    assert importers == []


def trl_style(completions, **kwargs):
    """TRL's documented reward-function shape: completions first, the prompts in kwargs."""
    return [
        float(len(c)) + 0.5 * (kwargs["prompts"][i] == "2+2=") for i, c in enumerate(completions)
    ]


def plain(prompts, completions):
    return [1.0 if c == "4" else 0.0 for c in completions]


def positional(p, c):
    return [float(len(x)) for x in c]


@pytest.mark.parametrize(
    ("fn", "expected"),
    [(trl_style, [1.5, 2.0]), (plain, [1.0, 0.0]), (positional, [1.0, 2.0])],
    ids=["trl-kwargs", "prompts-completions", "positional"],
)
def test_plain_functions_are_reward_models(fn, expected):
    rm = load_reward_model(fn)
    scores = checked_score(rm, ["2+2=", "1+1="], ["4", "22"])
    assert scores.tolist() == expected and rm.name.endswith(fn.__name__)


def test_the_env_takes_a_plain_function(arithmetic_tokenizer):
    """The env (and so every agent, through it) takes the function itself, as TRL does."""
    import gymnasium as gym

    env = gym.make("TokenMDP-v0", task="arithmetic", reward_model=trl_style)
    env.reset(seed=0, options={"prompt": "2+2="})
    done, reward = False, 0.0
    while not done:
        _, reward, terminated, truncated, info = env.step(arithmetic_tokenizer.eos_token_id)
        done = terminated or truncated
    assert reward == 0.5 and info["completion"] == ""
