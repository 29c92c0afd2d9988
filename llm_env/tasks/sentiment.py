"""``sentiment`` (the default task): continue a movie review; gold reward = VADER compound score.

The corpus comes from a small probabilistic grammar (``sentiment_grammar``) with a mix of
positive, negative and neutral reviews. Prompts are review openings; a policy pre-trained on the
corpus writes reviews of every sentiment, and RL should push it towards positive ones.
"""

from __future__ import annotations

from llm_env.tasks.base import Task
from llm_env.tasks.sentiment_grammar import PROMPT_OPENINGS, generate_corpus
from llm_env.tokenizer import train_tokenizer


def make_sentiment_task(
    corpus_size: int = 20_000, n_eval_openings: int = 8, seed: int = 0, vocab_size: int = 1024
) -> Task:
    """Reviews from the grammar; the last ``n_eval_openings`` openings are held out for evaluation.

    Held-out openings never appear as training prompts (they may still occur inside the corpus,
    which models the pre-training data a real LM has seen).
    """
    corpus = generate_corpus(corpus_size, seed=seed)
    openings = tuple(PROMPT_OPENINGS)
    if not 0 < n_eval_openings < len(openings):
        raise ValueError(
            f"n_eval_openings must be in 1..{len(openings) - 1}, got {n_eval_openings}"
        )
    texts = [opening + continuation for opening, continuation, _ in corpus]
    return Task(
        name="sentiment",
        train_prompts=openings[:-n_eval_openings],
        eval_prompts=openings[-n_eval_openings:],
        demonstrations=tuple((opening, continuation) for opening, continuation, _ in corpus),
        gold_reward="sentiment",
        max_new_tokens=24,
        max_prompt_tokens=12,
        make_tokenizer=lambda: train_tokenizer(texts, vocab_size=vocab_size),
    )
