"""Process (dense) rewards: a reward model of the steps so far, paid on the token closing a step.

A completion is a sequence of steps. ``step_boundary`` says where one ends:

- a separator string such as ``";"`` or ``"\\n"``: a token closes a step when, after appending
  it, the decoded completion holds more occurrences of the separator than ever before in the
  episode (``str.count``, non-overlapping). Detection works on the decoded text, so the separator
  need not be a single token of the tokenizer: a token that carries it inside (``";1"``) or
  completes it (the second ``"\\n"`` of ``"\\n\\n"``) closes the step. A separator containing a
  character that no token decodes to can never occur: the env warns at construction;
- a predicate ``f(token_id) -> bool``: the token closes a step when ``f`` returns True (EOS never
  does: the end of the episode is the rule below).

The episode's last token (EOS or the ``max_new_tokens``-th) also closes the final step — the text
after the last separator — when the completion differs from the text last scored: a completion
without any separator is one step, scored on its last token.

On a closing token the process reward model (``score(prompts, completions_so_far) -> float32
[N]``, validated by ``checked_score``) scores the completion so far (EOS excluded), in ONE
batched call for every sequence of the batch that closes a step in that step. What is paid on
that token (every other token gets 0):

- ``"step"``: the score itself, ``r_t = PRM(x, y_<=t)``;
- ``"shaping"``: potential-based shaping (Ng et al. 1999), ``r_t = Φ(s_t+1) - Φ(s_t)`` with Φ(s)
  the score at the last closing token (0 at the start) and Φ(terminal) = 0: on a closing token
  the increase of the score, and on the episode's last token ``-Φ`` of the state before it (so
  the final step's score, which the outcome reward judges, is not paid twice). The total over
  every episode telescopes to Φ(s_0) − Φ(terminal) = 0: the shaped return equals the outcome
  reward, and the optimal policy is the outcome-only one; the process reward only moves credit
  earlier, to the tokens that raised the score.

A prefix given at ``reset`` is replayed with the same rules but pays nothing: Φ starts at the
score of its steps (one batched call), so a branched episode continues exactly as one that
generated the prefix itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from transformers import PreTrainedTokenizerBase

from reward_models.base import RewardModel, checked_score, load_reward_model

if TYPE_CHECKING:
    from llm_env.core import TokenBatch
    from llm_env.tasks import Task

PROCESS_REWARD_MODES = ("step", "shaping")
StepBoundary = str | Callable[[int], bool]


@dataclass(frozen=True)
class ProcessSetup:
    """A resolved process reward: the model, where steps end, and what is paid (see module doc)."""

    model: RewardModel
    boundary: StepBoundary
    mode: str


def resolve_process(
    task: Task,
    tokenizer: PreTrainedTokenizerBase,
    process_reward_model,
    step_boundary: StepBoundary | None,
    process_reward_mode: str,
) -> ProcessSetup | None:
    """The process reward's scorer and step boundary; None when no process reward is asked for.
    The options' shapes (the mode, a boundary or mode without a model) are ``EnvConfig``'s to
    check, before this runs."""
    if process_reward_model is None:
        return None
    if isinstance(process_reward_model, str) and process_reward_model == "task":
        if task.gold_process_reward is None:
            raise ValueError(f"task {task.name!r} has no gold process reward: pass a spec")
        process_reward_model = task.gold_process_reward
    model = load_reward_model(process_reward_model)
    boundary = task.step_separator if step_boundary is None else step_boundary
    check_step_boundary(boundary, task.name)
    if isinstance(boundary, str):
        warn_if_unproducible(boundary, tokenizer)
    return ProcessSetup(model=model, boundary=boundary, mode=process_reward_mode)


def check_step_boundary(boundary, task_name: str) -> None:
    """A non-empty separator string or a callable; None means the task has no separator."""
    if boundary is None:
        raise ValueError(
            f"process_reward_model needs step_boundary (a separator such as ';' or '\\n', or a "
            f"predicate on the token id): task {task_name!r} defines no step separator"
        )
    if isinstance(boundary, str):
        if not boundary:
            raise ValueError("step_boundary must be a non-empty separator string, got ''")
    elif not callable(boundary):
        raise TypeError(
            "step_boundary must be a separator string or a callable f(token_id) -> bool, got "
            f"{type(boundary).__name__} {boundary!r}"
        )


def warn_if_unproducible(separator: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Warn when a character of ``separator`` is in no decoded token: it can never occur.

    Each token is decoded twice in a row, so a decoder that drops a leading space on the first
    token (Metaspace) still shows it.
    """
    pairs = [[i, i] for i in range(len(tokenizer))]
    chars = set("".join(tokenizer.batch_decode(pairs, skip_special_tokens=True)))
    missing = [c for c in separator if c not in chars]
    if missing:
        warnings.warn(
            f"step_boundary {separator!r} can never occur: no token of the tokenizer decodes to "
            f"{missing[0]!r}. Every completion will be one step, scored on its last token",
            stacklevel=5,
        )


def boundary_says(boundary: Callable[[int], bool], token: int) -> bool:
    """The predicate's verdict on ``token``; anything but a bool is a TypeError naming it."""
    verdict = boundary(token)
    if not isinstance(verdict, (bool, np.bool_)):
        name = getattr(boundary, "__name__", repr(boundary))
        raise TypeError(
            f"step_boundary {name}({token}) returned {verdict!r} ({type(verdict).__name__}); "
            "expected a bool"
        )
    return bool(verdict)


class ProcessRewards:
    """Process-reward state of a ``TokenBatch``'s B sequences, and the rewards it pays."""

    def __init__(self, setup: ProcessSetup, batch_size: int, eos_id: int):
        self.setup = setup
        self.eos_id = eos_id
        self.separators = np.zeros(batch_size, dtype=np.int64)  # most seen in the completion
        self.phi = np.zeros(batch_size, dtype=np.float32)  # score at the last closing token
        self.scored_text = [""] * batch_size  # completion at the last closing token

    def start(self, batch: TokenBatch, index: Sequence[int]) -> None:
        """Reset sequences ``index``; replay the prefix tokens already in ``batch`` (no pay)."""
        index = np.asarray(index, dtype=np.int64)
        self.separators[index] = 0
        self.phi[index] = 0.0
        for i in index:
            self.scored_text[i] = ""
        last = {int(i): self._last_closing(batch, int(i)) for i in index if batch.num_new[i]}
        rows = [i for i, k in last.items() if k]
        if rows:
            texts = batch.completion_texts(rows, [last[i] for i in rows])
            self._score(batch, np.asarray(rows), texts)

    def _last_closing(self, batch: TokenBatch, i: int) -> int:
        """Length of the prefix of sequence ``i`` up to its last closing token (0: none)."""
        n = int(batch.num_new[i])
        ids = batch.completion_ids(i)
        if not isinstance(self.setup.boundary, str):
            closing = [k + 1 for k in range(n) if boundary_says(self.setup.boundary, int(ids[k]))]
            return closing[-1] if closing else 0
        last = 0
        for k, text in enumerate(batch.completion_texts([i] * n, range(1, n + 1)), start=1):
            count = text.count(self.setup.boundary)
            if count > self.separators[i]:
                self.separators[i], last = count, k
        return last

    def step(
        self, batch: TokenBatch, rows: np.ndarray, tokens: np.ndarray, done: np.ndarray
    ) -> np.ndarray:
        """Process rewards (float32, shape (B,)) after ``tokens[rows]`` were appended to ``rows``
        and the sequences ``done`` ended: one model call for all closing sequences."""
        rewards = np.zeros(len(self.phi), dtype=np.float32)
        before = self.phi.copy()
        closing, texts = self._closing(batch, rows, tokens, set(done.tolist()))
        if closing.size:
            scores = self._score(batch, closing, texts)
            rewards[closing] = scores if self.setup.mode == "step" else scores - before[closing]
        if self.setup.mode == "shaping" and done.size:  # Φ(terminal) = 0
            rewards[done] = -before[done]
        return rewards

    def _closing(
        self, batch: TokenBatch, rows: np.ndarray, tokens: np.ndarray, done: set[int]
    ) -> tuple[np.ndarray, list[str]]:
        """The sequences whose newest token closes a step, and their completions so far."""
        boundary = self.setup.boundary
        if isinstance(boundary, str):
            candidates = rows.tolist()
        else:
            flagged = self._flagged(rows, tokens)
            candidates = sorted(flagged | done)
        closing, closing_texts = [], []
        for i, text in zip(candidates, batch.completion_texts(candidates)):
            if isinstance(boundary, str):
                count = text.count(boundary)
                closes = count > self.separators[i]
                self.separators[i] = max(self.separators[i], count)
            else:
                closes = i in flagged
            if closes or (i in done and text != self.scored_text[i]):
                closing.append(i)
                closing_texts.append(text)
        return np.asarray(closing, dtype=np.int64), closing_texts

    def _flagged(self, rows: np.ndarray, tokens: np.ndarray) -> set[int]:
        """The sequences whose newest token the predicate says closes a step (EOS never does)."""
        predicate = self.setup.boundary
        return {
            int(i)
            for i in rows
            if tokens[i] != self.eos_id and boundary_says(predicate, int(tokens[i]))
        }

    def _score(self, batch: TokenBatch, rows: np.ndarray, texts: list[str]) -> np.ndarray:
        """One model call on ``rows``' completions ``texts``; Φ and the scored text move on."""
        prompts = [batch.prompt_text[i] for i in rows]
        scores = checked_score(self.setup.model, prompts, texts)
        self.phi[rows] = scores
        for i, text in zip(rows, texts):
            self.scored_text[i] = text
        return scores
