"""Process reward model (PRM) training, as an agent like the others (Lightman et al. 2023; TRL's
``PRMTrainer``).

Data: TRL's stepwise supervision, ``{"prompt", "completions": [step, ...], "labels": [bool,
...]}`` rows (JSONL or a list of dicts; ``agents.data.process_labels`` samples them from a policy,
labelled by a gold step checker or by Math-Shepherd rollouts). A conversational prompt (a list
of messages) is rendered with the tokenizer's chat template and its generation prompt; the steps
follow it as plain text. The model is a ``transformers`` token-classification model with two
labels (class 1 = the step is correct; TRL's choice, so a TRL-trained PRM and ours read the same
way) initialised from a policy's weights with a new head.
It reads ``prompt + step_1 + sep + ... + step_n + sep`` and is trained with cross-entropy at the
steps' closing tokens only (the token holding the last character of each step's separator;
``reward_models.prm.encode_steps``): every other token is ignored.

``save(path)`` writes what ``reward_models.load_reward_model(path)`` loads as a process reward
model (``reward_models.prm.LearnedProcessRewardModel``: the model, its tokenizer and
``prm.json`` with the separator and the score's ``aggregate``). Held-out step accuracy is logged
as ``prm/step_accuracy`` (and ``prm/bad_step_accuracy``: the accuracy on the steps labelled
wrong, which a PRM saying "correct" everywhere gets 0 on).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForTokenClassification

from agents.checks import check_choice, check_range, group, local_dir
from agents.data.offline import (
    Text,
    check_offline_options,
    jsonl_rows,
    offline_schedule,
    offline_step,
    with_pad_token,
)
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.distributed import Distributed
from agents.harness.run import Agent, make_optimizer
from agents.models.memory import enable_gradient_checkpointing
from agents.models.policy import to_device
from agents.models.precision import autocast, resolve_precision
from llm_env.chat import check_messages, render_text
from llm_env.tasks.jsonl import JsonlError
from llm_env.tokenizer import check_tokenizer, load_tokenizer
from reward_models.prm import AGGREGATES, IGNORE, PRM_FILE, encode_steps, pad_step_rows, step_logits

StepRow = tuple[Text, list[str], list[bool]]  # prompt (text or messages), steps, labels


def _prm_optim() -> OptimConfig:
    return OptimConfig(learning_rate=1e-4, warmup_steps=10, lr_schedule="linear")


@dataclass
class PRMConfig(AgentConfig):
    """Process reward model training.

    Defaults suit a pretrained checkpoint, as the outcome reward model's: learning rate 1e-4
    (TRL ``RewardConfig``), 10 warm-up steps then linear decay. A tiny GPT-2 trained from
    scratch takes ``agents.presets.TINY_MODEL_OPTIONS["prm"]`` (5e-4)."""

    batch_size: int = 32
    """Rows (completions, all their steps) per optimiser step."""
    epochs: float = 3.0
    """Passes over the training rows (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs)."""
    max_length: int = 128
    """Longest prompt + steps in tokens; longer rows lose their last steps."""
    eval_every: int = 0
    """Measure held-out step accuracy every this many steps (0 = only at the end)."""
    heldout_fraction: float = 0.1
    """Share of the rows held out for step accuracy."""
    step_separator: str = ";"
    """Written after every step (the task's separator: ';' for arithmetic_chain)."""
    aggregate: str = "last"
    """Score of a completion so far: last | min | product | mean of its steps' P(correct)."""
    optim: OptimConfig = group(_prm_optim)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_offline_options(self)
        check_range("heldout_fraction", self.heldout_fraction, 0.0, 1.0, "[)")
        if not isinstance(self.step_separator, str) or not self.step_separator:
            raise ValueError(
                f"step_separator must be a non-empty string, got {self.step_separator!r}"
            )
        check_choice("aggregate", self.aggregate, AGGREGATES)


def prm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over the steps' closing tokens (Lightman et al. 2023; TRL's PRM loss).

    ``logits``: (batch, seq_len, 2) fp32; ``labels``: (batch, seq_len), 1/0 (step correct /
    wrong) at closing tokens, ``IGNORE`` (-100) on every other token.
    """
    scored = labels != IGNORE
    scored_logits, scored_labels = logits[scored], labels[scored]  # (steps, 2), (steps,)
    if not scored.any():  # every step cut off by max_length: no signal, a zero loss
        return logits.sum() * 0.0, {"loss/prm": 0.0, "prm/steps": 0.0}
    loss = F.cross_entropy(scored_logits, scored_labels)
    correct = (scored_logits.argmax(-1) == scored_labels).float()
    return loss, {
        "loss/prm": loss.item(),
        "prm/train_step_accuracy": correct.mean().item(),
        "prm/steps": float(scored.sum().item()),
    }


def _check_row(row: dict, where: str) -> StepRow:
    """``(prompt, steps, labels)`` of one row, or an error naming ``where`` (file:line or #i)."""
    prompt, steps, labels = row.get("prompt"), row.get("completions"), row.get("labels")
    if isinstance(prompt, list):
        try:
            prompt = check_messages(prompt, f"{where}: key 'prompt'")
        except ValueError as e:
            raise JsonlError(str(e)) from None
    elif not isinstance(prompt, str):
        raise JsonlError(
            f"{where}: 'prompt' must be a string or a list of messages, got {prompt!r}"
        )
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise JsonlError(f"{where}: 'completions' must be a list of step strings, got {steps!r}")
    if not isinstance(labels, list) or not all(isinstance(v, bool) for v in labels):
        raise JsonlError(f"{where}: 'labels' must be a list of true/false, got {labels!r}")
    if len(steps) != len(labels):
        raise JsonlError(
            f"{where}: {len(steps)} completions (steps) but {len(labels)} labels; every step "
            "needs exactly one label"
        )
    if not steps:
        raise JsonlError(f"{where}: no steps ('completions' is empty)")
    return prompt, steps, labels


def load_step_data(data: str | Path | Sequence[dict]) -> list[StepRow]:
    """Stepwise-supervision rows from JSONL (errors name file and line) or a list of dicts
    (errors name the example's index)."""
    if isinstance(data, (str, Path)):
        out = [_check_row(r, where) for where, r in jsonl_rows(data, ("prompt",), ("prompt",))]
    else:
        out = [_check_row(dict(r), f"PRM example #{i}") for i, r in enumerate(data)]
    if not out:
        raise ValueError("PRM data: the dataset is empty")
    return out


def batch_logits(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str
) -> torch.Tensor:
    """``step_logits`` under the forward-pass precision (the logits themselves are fp32)."""
    with autocast(precision):
        return step_logits(model, batch)


class PRMTrainer(Agent):
    """A PRM initialised from a policy's weights with a two-label token head.

    ``init_policy_dir``: a causal-LM ``save_pretrained`` directory (the SFT policy) or a saved
    PRM (``load``); ``data``: stepwise-supervision rows (module docstring) or None (load only);
    ``chat_template_kwargs`` go to every chat-template rendering.
    """

    agent_name = "prm"

    def __init__(
        self,
        init_policy_dir: str | Path,
        data: str | Path | Sequence[dict] | None,
        config: PRMConfig | None = None,
        run_dir: str | Path = "runs/prm",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.config = config = config or PRMConfig()
        self.run_dir = Path(run_dir)
        init_dir = local_dir("init_policy_dir", init_policy_dir)
        self.tokenizer = with_pad_token(load_tokenizer(init_dir))
        check_tokenizer(self.tokenizer)
        self.chat_template_kwargs = chat_template_kwargs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the new head's initialisation
            self.model = AutoModelForTokenClassification.from_pretrained(
                init_dir, num_labels=2, local_files_only=True, trust_remote_code=False,
                use_safetensors=True, pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
        self.policy = self.model  # what the contract calls the trained model
        rows = load_step_data(data) if data is not None else []
        self.encoded = [self._encode(row) for row in rows]
        order = np.random.default_rng(config.seed).permutation(len(rows))
        n_heldout = int(round(len(rows) * config.heldout_fraction))
        self.heldout_idx, self.train_idx = order[:n_heldout], order[n_heldout:]
        if rows and len(self.train_idx) == 0:
            raise ValueError(f"{len(rows)} row(s): nothing left to train on after hold-out")
        self.dist = Distributed(config.device)
        self.dist.place(self.model)
        self.precision = resolve_precision(config.precision, self.dist.device, self.model)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.train_logits = self.dist.prepare(batch_logits, model=self.model)
        n = len(self.train_idx)
        self.schedule = offline_schedule(n, config, self.dist.world_size) if n else []
        params = list(self.model.parameters())
        self.optimizers = {"model": make_optimizer(params, config.optim, len(self.schedule))}

    def _encode(self, row: StepRow) -> tuple[list[int], list[int], list[bool]]:
        prompt, steps, labels = row
        prompt = render_text(self.tokenizer, prompt, self.chat_template_kwargs)
        ids, ends = encode_steps(self.tokenizer, prompt, steps, self.config.step_separator)
        return ids, ends, labels

    def _models(self):
        return {"model": self.model}

    def batch(
        self, rows: Sequence[tuple[list[int], list[int], list[bool]]]
    ) -> dict[str, torch.Tensor]:
        batch = pad_step_rows(rows, self.tokenizer.pad_token_id, self.config.max_length)
        return to_device(batch, self.dist.device)

    def loss(self, positions: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.batch([self.encoded[i] for i in self.train_idx[positions]])
        loss, stats = prm_loss(self.train_logits(batch, self.precision), batch["labels"])
        return loss, {**stats, "tokens": int(batch["attention_mask"].sum())}

    def _num_steps(self) -> int:
        if not self.schedule:
            raise ValueError("PRM: no stepwise-supervision data (pass data= to train)")
        return len(self.schedule)

    def _step_size(self, step: int) -> int:
        return len(self.schedule[step])

    def _train_step(self, step: int) -> dict[str, float]:
        return offline_step(self, step)

    def _eval_due(self, done: int) -> bool:
        return self.config.eval_every > 0 and done % self.config.eval_every == 0

    @torch.no_grad()
    def step_predictions(self, rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """(P(correct), label) of every step of the encoded ``rows``, flattened."""
        self.model.eval()
        probs, labels = [], []
        for start in range(0, len(rows), 128):
            batch = self.batch(rows[start : start + 128])
            logits = batch_logits(self.model, batch, self.precision)
            scored = batch["labels"] != IGNORE
            probs.append(logits[scored].softmax(-1)[:, 1].cpu().numpy())
            labels.append(batch["labels"][scored].cpu().numpy())
        return np.concatenate(probs), np.concatenate(labels)

    def step_probabilities(self, data: str | Path | Sequence[dict]) -> np.ndarray:
        """P(correct) of every step of stepwise-supervision ``data`` (rows in order, flattened)."""
        return self.step_predictions([self._encode(row) for row in load_step_data(data)])[0]

    def _evaluate(self) -> dict[str, float]:
        """Step accuracy (P(correct) > 0.5 against the label) on the held-out rows (the
        training rows when none is held out), overall and on the steps labelled wrong."""
        idx = self.heldout_idx if len(self.heldout_idx) else self.train_idx
        probs, labels = self.step_predictions([self.encoded[i] for i in idx])
        right = (probs > 0.5) == (labels == 1)
        bad = labels == 0
        return {
            "prm/step_accuracy": float(np.mean(right)),
            "prm/bad_step_accuracy": float(np.mean(right[bad])) if bad.any() else math.nan,
            "prm/good_fraction": float(np.mean(labels == 1)),
        }

    def _save_files(self, path: Path) -> None:
        """Model + tokenizer + ``prm.json`` (separator, aggregate): a process reward model."""
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        meta = {"separator": self.config.step_separator, "aggregate": self.config.aggregate}
        (path / PRM_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(
        cls,
        path: str | Path,
        data: str | Path | Sequence[dict] | None = None,
        config: PRMConfig | None = None,
        run_dir: str | Path = "runs/prm",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> PRMTrainer:
        """A trainer whose model (two-label head included) comes from ``save(path)``."""
        return cls(path, data, config, run_dir, chat_template_kwargs)
