"""A learned process reward model (PRM): scores the steps of a completion so far.

The model is a ``transformers`` token-classification model with two labels (TRL's
``PRMTrainer`` choice: class 1 = the step is correct), initialised from a policy and trained by
``agents.prm``. It reads ``prompt + step_1 + sep + step_2 + sep + ...`` — the text as the
policy wrote it, every step followed by the separator (the last one too, as TRL writes them) —
tokenised in one piece, and predicts each step's label at the step's *closing token*: the token
holding the last character of the separator that ends it.

As a process reward model (``score(prompts, completions_so_far)``, the env's
``process_reward_model``): the completion is split at the separator (a trailing empty piece is not
a step, as in the gold checker), each step's P(correct) = softmax(logits)[1] at its closing token,
and the score aggregates them — ``"last"`` (the default: the probability that the last step so
far is correct), ``"min"``, ``"product"`` (the chance that every step is right, if independent)
or ``"mean"`` (the expected fraction of correct steps: what ``arithmetic_chain_steps`` scores).
A completion without a step scores 0.0 (as the gold checker does).

Saved with ``save_pretrained`` together with its tokenizer and ``prm.json`` (``separator``,
``aggregate``); ``reward_models.load_reward_model(dir)`` recognises the directory by that file.
Scoring only: this module imports nothing from ``agents``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForTokenClassification, PreTrainedTokenizerBase

from llm_env.tokenizer import check_tokenizer, load_tokenizer
from reward_models.learned import load_classifier

PRM_FILE = "prm.json"
IGNORE = -100  # the label of every token that closes no step (PyTorch's ignore_index)
AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "last": lambda p: float(p[-1]),
    "min": lambda p: float(np.min(p)),
    "product": lambda p: float(np.prod(p)),
    "mean": lambda p: float(np.mean(p)),
}


def split_steps(completion: str, separator: str) -> list[str]:
    """The steps so far: ``completion`` split at ``separator``, a trailing empty piece dropped
    (``"6+7=13;"`` is one step, ``""`` none, ``"a;;b"`` three: the empty one is a step)."""
    pieces = completion.split(separator)
    return pieces[:-1] if pieces[-1] == "" else pieces


def encode_steps(
    tokenizer: PreTrainedTokenizerBase, prompt: str, steps: Sequence[str], separator: str
) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt + Σ (step + separator)`` (one tokenizer call) and, per step, the
    index of its closing token: the token holding the separator's last character (the last token
    starting at or before it, from the fast tokenizer's offsets)."""
    text, closing_chars = prompt, []
    for step in steps:
        text += step + separator
        closing_chars.append(len(text) - 1)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [start for start, _ in encoded["offset_mapping"]]
    ends = [max(i for i, s in enumerate(starts) if s <= c) for c in closing_chars]
    return list(encoded["input_ids"]), ends


def pad_step_rows(
    rows: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int, max_length: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` (B, L) and ``labels`` (B, L): each row's
    ``(ids, closing indices, labels)`` with its labels at the closing tokens, ``IGNORE``
    elsewhere. Rows longer than ``max_length`` keep their first ``max_length`` tokens (and the
    steps that close within them)."""
    width = min(max_length, max(len(ids) for ids, _, _ in rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (ids, ends, values) in enumerate(rows):
        ids = ids[:width]
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        for end, value in zip(ends, values):
            if end < width:
                labels[i, end] = int(value)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def step_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L, 2) fp32 logits of every token (right padding: default positions are right)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out.logits.float()


class LearnedProcessRewardModel:
    """Scores completions so far with a saved PRM (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        separator: str,
        aggregate: str = "last",
        name: str = "prm",
        batch_size: int = 64,
    ):
        check_tokenizer(tokenizer)
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {sorted(AGGREGATES)}, got {aggregate!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.separator, self.aggregate = separator, aggregate
        self.name = name
        self.batch_size = batch_size
        self.max_length = model.config.max_position_embeddings

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LearnedProcessRewardModel:
        path = Path(path)
        if not (path / PRM_FILE).is_file() or not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"process reward model {str(path)!r} is not a directory saved by the PRM trainer "
                f"(no {PRM_FILE} or config.json); models load from local directories only"
            )
        model = load_classifier(path, AutoModelForTokenClassification, 2, "process reward model",
                                "a token-classification model")  # fmt: skip
        meta = json.loads((path / PRM_FILE).read_text())
        return cls(model, load_tokenizer(path), meta["separator"], meta["aggregate"], str(path))

    @torch.no_grad()
    def step_probabilities(
        self, prompts: Sequence[str], steps: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """P(step correct) of every step of every row (a row's steps in order; over-long rows
        keep their last ``max_length`` tokens and the steps closing within them)."""
        out: list[np.ndarray] = []
        for start in range(0, len(prompts), self.batch_size):
            rows, stop = [], start + self.batch_size
            for prompt, row_steps in zip(prompts[start:stop], steps[start:stop]):
                ids, ends = encode_steps(self.tokenizer, prompt, row_steps, self.separator)
                cut = max(0, len(ids) - self.max_length)  # keep the end: the last step counts
                rows.append((ids[cut:], [e - cut for e in ends if e >= cut], []))
            batch = pad_step_rows(rows, self.tokenizer.pad_token_id, self.max_length)
            probs = step_logits(self.model, batch).softmax(-1)[..., 1]  # (B, L)
            out += [probs[i, ends].numpy() for i, (_, ends, _) in enumerate(rows)]
        return out

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        steps = [split_steps(c, self.separator) for c in completions]
        probs = self.step_probabilities(prompts, steps)
        reduce = AGGREGATES[self.aggregate]
        return np.array([reduce(p) if len(p) else 0.0 for p in probs], dtype=np.float32)
