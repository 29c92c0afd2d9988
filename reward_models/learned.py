"""A learned (Bradley–Terry) reward model: a transformers sequence-classification model, one label.

The model reads ``prompt + completion + <eos>`` and its score is the head's output at the last
non-pad token. It is saved with ``save_pretrained`` together with its tokenizer; an optional
``reward_norm.json`` (``{"mean": m, "std": s}``) beside the weights makes ``score`` return
``(raw - m) / s`` — the normalisation the trainer measures on SFT samples.

Scoring only: this module imports nothing from ``agents`` (``agents.reward_model`` trains one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from llm_env.tokenizer import check_tokenizer, load_tokenizer


def load_classifier(path: Path, auto_cls: type, num_labels: int, what: str, kind: str):
    """``auto_cls`` from the local directory ``path`` (safetensors, no remote code), checked to
    have ``num_labels`` outputs; the error names the scorer (``what``) and the ``kind`` of
    model expected."""
    model = auto_cls.from_pretrained(
        path, local_files_only=True, trust_remote_code=False, use_safetensors=True
    )
    if model.config.num_labels != num_labels:
        raise ValueError(
            f"{what} {path}: expected {kind} with num_labels={num_labels}, got "
            f"{model.config.num_labels}"
        )
    return model


NORM_FILE = "reward_norm.json"


def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` of ``prompt + completion + <eos>``.

    Over-long texts keep their last ``max_length`` tokens: the score is read at the end.
    """
    eos = tokenizer.eos_token_id
    rows = [
        tokenizer(p + c, add_special_tokens=False)["input_ids"][-(max_length - 1) :] + [eos]
        for p, c in zip(prompts, completions)
    ]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def sequence_scores(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scalar head at each row's last real token, in fp32: shape (batch,)."""
    hidden = model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state  # (batch, seq, d)
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding: last real position
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return model.score(h).squeeze(-1).float()


class LearnedRewardModel:
    """Scores text with a saved Bradley–Terry model (see module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        mean: float = 0.0,
        std: float = 1.0,
        name: str = "learned",
        batch_size: int = 64,
        max_length: int = 128,
    ):
        check_tokenizer(tokenizer)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.mean, self.std = float(mean), float(std)
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LearnedRewardModel:
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"reward model {str(path)!r} is not a local saved reward-model directory (no "
                "config.json); models load from local directories only, never from a model hub"
            )
        model = load_classifier(path, AutoModelForSequenceClassification, 1, "reward model",
                                "a sequence-classification model")  # fmt: skip
        norm = json.loads((path / NORM_FILE).read_text()) if (path / NORM_FILE).is_file() else {}
        return cls(
            model,
            load_tokenizer(path),
            mean=norm.get("mean", 0.0),
            std=norm.get("std", 1.0),
            name=str(path),
            max_length=model.config.max_position_embeddings,
        )

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            batch = encode_texts(
                self.tokenizer, prompts[start:stop], completions[start:stop], self.max_length
            )
            out.append(sequence_scores(self.model, batch))
        raw = torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)
        return ((raw - self.mean) / self.std).astype(np.float32)
