"""The review grammar behind the ``sentiment`` task: determinism, label mix, VADER agreement."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from llm_env.tasks.sentiment_grammar import PROMPT_OPENINGS, generate_corpus, generate_review

N = 2000
LABELS = ("positive", "negative", "neutral")


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str, str]]:
    return generate_corpus(N, seed=0)


@pytest.fixture(scope="module")
def analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def test_deterministic_for_a_seed():
    assert generate_corpus(300, seed=7) == generate_corpus(300, seed=7)
    assert generate_corpus(300, seed=7) != generate_corpus(300, seed=8)
    a = [generate_review(np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]


def test_review_format(corpus):
    token = re.compile(r"( [a-z]+| [,.!])+")
    for opening, continuation, label in corpus:
        assert opening in PROMPT_OPENINGS
        assert label in LABELS
        assert continuation.isascii()
        assert token.fullmatch(continuation), continuation
        assert continuation.rstrip()[-1] in ".!"
        n_words = sum(tok not in {",", ".", "!"} for tok in continuation.split())
        assert 6 <= n_words <= 30, continuation


def test_openings_are_distinct_short_and_vader_neutral(analyzer):
    assert 30 <= len(PROMPT_OPENINGS) <= 60
    assert len(set(PROMPT_OPENINGS)) == len(PROMPT_OPENINGS)
    for opening in PROMPT_OPENINGS:
        assert opening.isascii() and opening == opening.strip()
        assert 2 <= len(opening.split()) <= 6, opening
        assert analyzer.polarity_scores(opening)["compound"] == 0.0, opening


def test_label_mix(corpus):
    counts = Counter(label for _, _, label in corpus)
    assert abs(counts["positive"] / N - 0.4) < 0.05
    assert abs(counts["negative"] / N - 0.4) < 0.05
    assert abs(counts["neutral"] / N - 0.2) < 0.05


@pytest.mark.parametrize("label", ["positive", "negative"])
def test_labels_agree_with_vader(corpus, analyzer, label):
    scores = [
        analyzer.polarity_scores(continuation)["compound"]
        for _, continuation, lab in corpus
        if lab == label
    ]
    sign = 1.0 if label == "positive" else -1.0
    agree = sum(sign * s > 0.05 for s in scores) / len(scores)
    assert agree >= 0.9, f"{label}: only {agree:.1%} agree with VADER"
    assert sign * float(np.mean(scores)) > 0.4


def test_diversity(corpus):
    continuations = [continuation for _, continuation, _ in corpus]
    assert len(set(continuations)) / len(continuations) >= 0.5
    vocab = {word for opening, cont, _ in corpus for word in (opening + cont).lower().split()}
    assert len(vocab) >= 300
    assert len({opening for opening, _, _ in corpus}) == len(PROMPT_OPENINGS)
