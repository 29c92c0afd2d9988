"""VADER sentiment (the ``vaderSentiment`` package) as a reward model: compound score in [-1, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class VaderRewardModel:
    """Scores the completion alone with VADER's compound sentiment (the prompt is neutral text)."""

    name = "sentiment"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.array(
            [self.analyzer.polarity_scores(c)["compound"] for c in completions], dtype=np.float32
        )
