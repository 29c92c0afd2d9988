"""What the reward hides: fluency, diversity, length and length hacking of a policy's completions.

Pure functions of texts and numbers; the one that needs a model, the judge's log-probs, is
``agents.evaluation.judge_nll``. A *word* is a whitespace-separated token (the built-in
tasks write punctuation as separate tokens: ``"great , but slow ."``). Statistics pooled over
texts weight every word (or token) equally. A value that is undefined (no words, a constant
series) is NaN, never a made-up 0.
"""

from __future__ import annotations

import math
from collections.abc import Container, Sequence

import numpy as np

from llm_env.tasks import Task


def words(text: str) -> list[str]:
    """The whitespace-separated words of ``text``."""
    return text.split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The ``n``-grams of ``tokens`` in order (none when there are fewer than ``n`` tokens)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct word n-grams / all word n-grams, pooled over
    ``texts``. 1 = no n-gram repeats anywhere; NaN when the texts hold no n-gram."""
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def unique_fraction(texts: Sequence[str]) -> float:
    """Distinct texts / texts (exact string match); NaN for no texts."""
    return len(set(texts)) / len(texts) if texts else math.nan


def self_bleu(texts: Sequence[str], max_texts: int = 128) -> float:
    """Self-BLEU (Zhu et al., 2018, Texygen): the mean BLEU-4 of each text against the others.

    The sample is the first ``max_texts`` non-empty texts (the cost grows with its square, and
    the value with its size: compare policies on samples of one size). Each is scored with
    NLTK's ``sentence_bleu`` (uniform weights over 1- to 4-grams, smoothing method 1, words as
    tokens) with the rest of the sample as references. 1 = every text repeats another; lower =
    more diverse. NaN for fewer than two texts.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    sample = [words(t) for t in texts if words(t)][:max_texts]
    if len(sample) < 2:
        return math.nan
    smoothing = SmoothingFunction().method1
    scores = [
        sentence_bleu(sample[:i] + sample[i + 1 :], hypothesis, smoothing_function=smoothing)
        for i, hypothesis in enumerate(sample)
    ]
    return float(np.mean(scores))


def lexicon_fraction(texts: Sequence[str], lexicon: Container[str]) -> float:
    """Words found in ``lexicon`` / all words, pooled over ``texts``; NaN when there are no
    words. Well below the SFT policy's value: the policy drifts into non-words."""
    all_words = [w for text in texts for w in words(text)]
    return sum(w in lexicon for w in all_words) / len(all_words) if all_words else math.nan


def perplexity(nll: np.ndarray, n_tokens: np.ndarray) -> float:
    """exp(Σ nll / Σ n_tokens): the per-token perplexity pooled over texts.

    ``nll``: (texts,) summed negative log-likelihoods in nats; ``n_tokens``: (texts,) tokens
    scored in each. NaN when no token was scored.
    """
    total = float(np.sum(n_tokens))
    return math.exp(float(np.sum(nll)) / total) if total > 0 else math.nan


def eos_rate(finish_reasons: Sequence[str]) -> float:
    """Share of episodes that ended on EOS (``"eos"``; the rest hit the length limit)."""
    return (
        sum(r == "eos" for r in finish_reasons) / len(finish_reasons)
        if finish_reasons
        else math.nan
    )


def length_metrics(
    lengths: np.ndarray, terminated: np.ndarray, rewards: np.ndarray
) -> dict[str, float]:
    """The length picture of a batch of completions, under the tags every online agent logs.

    ``lengths``: (B,) generated tokens (stop token included); ``terminated``: (B,) True where
    the completion ended on a stop id, False where the length limit cut it; ``rewards``: (B,)
    the reward each completion earned.

    - ``length/terminated``: mean length of the completions that ended on a stop id;
    - ``length/clipped_fraction``: share cut at the length limit;
    - ``length/rewarded`` / ``length/unrewarded``: mean length of the rewarded / unrewarded
      completions. When every reward is 0 or 1 (a verifier), rewarded means reward 1 and
      unrewarded reward 0. Otherwise rewarded means reward strictly above the batch median
      (``np.median``: the mean of the two middle values for an even count) and unrewarded
      strictly below it; completions tied with the median count as neither.

    A mean over no completion (none terminated, none rewarded, ...) is left out of the dict,
    not NaN: the log point averages each tag over the steps that report it, and a NaN would
    poison that average and the logs (as ``reward/gold`` is left out when unknown).
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    terminated = np.asarray(terminated, dtype=bool)
    rewards = np.asarray(rewards, dtype=np.float64)
    if not len(lengths) == len(terminated) == len(rewards):
        raise ValueError(f"length_metrics: {len(lengths)} lengths, {len(terminated)} "
                         f"terminated flags and {len(rewards)} rewards")  # fmt: skip
    if len(lengths) == 0:
        return {}
    if np.isin(rewards, (0.0, 1.0)).all():
        rewarded, unrewarded = rewards == 1.0, rewards == 0.0
    else:
        median = np.median(rewards)
        rewarded, unrewarded = rewards > median, rewards < median
    out = {"length/clipped_fraction": float(np.mean(~terminated))}
    for tag, chosen in (("terminated", terminated), ("rewarded", rewarded),
                        ("unrewarded", unrewarded)):  # fmt: skip
        if chosen.any():
            out[f"length/{tag}"] = float(lengths[chosen].mean())
    return out


def pass_at_k(correct: np.ndarray, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021, eq. 1), averaged over problems:
    1 − C(n − c, k) / C(n, k) for a problem with c correct of n samples.
    ``correct``: (problems, n) booleans, n >= k."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples per problem, got k={k}, n={n}")
    c = correct.sum(axis=1)
    # C(n − c, k) / C(n, k) = Π_{i = n−c+1}^{n} (1 − k / i), the numerically stable form
    fail = np.array([np.prod(1.0 - k / np.arange(n - ci + 1, n + 1)) if n - ci >= k else 0.0
                     for ci in c])  # fmt: skip
    return float(np.mean(1.0 - fail))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equally long series; NaN when either is constant or shorter
    than two. corr(reward, length) near ±1 says the reward could be raised by length alone."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"pearson: series of lengths {len(x)} and {len(y)}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / math.sqrt((dx * dx).sum() * (dy * dy).sum()))


class CharacterLexicon:
    """A lexicon of every non-empty word spelled with ``characters`` only (e.g. numbers)."""

    def __init__(self, characters: str):
        self.characters = frozenset(characters)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and bool(word) and set(word) <= self.characters

    def __repr__(self) -> str:
        return f"CharacterLexicon({''.join(sorted(self.characters))!r})"


def corpus_lexicon(task: Task) -> frozenset[str]:
    """Every word of the task's corpus: its prompts and demonstrations (for ``sentiment``, the
    vocabulary of the review grammar)."""
    texts = [*task.train_prompts, *task.eval_prompts, *(p + c for p, c in task.demonstrations)]
    return frozenset(w for text in texts for w in words(text))


def task_lexicon(task: Task) -> Container[str] | None:
    """The lexicon of a built-in task: the sentiment grammar's words; for arithmetic, words of
    digits and operators. None for other tasks (no lexicon is known)."""
    if task.name == "sentiment":
        return corpus_lexicon(task)
    if task.name == "arithmetic":
        return CharacterLexicon("0123456789+-=")
    return None
