"""Supervised fine-tuning: next-token cross-entropy on ``{"prompt", "completion"}`` examples.

Rows are TRL's standard (strings) or conversational (message lists, rendered with the tokenizer's
chat template: the completion ends with the template's end-of-turn token) form; a plain-text
completion gets ``<eos>`` unless it ends with a stop id already. The loss reads the completion
tokens (and the EOS or end-of-turn token that ends them) only, over the tokenizer's vocabulary
(a padded embedding table's extra rows get no probability); ``train_on_prompt``
scores every token, which turns SFT into plain language-model pre-training on a raw corpus —
``pretrain_on_task`` uses it to train a tiny policy from scratch on a built-in task's corpus.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.checks import check_positive, check_range, group
from agents.data.offline import (
    Text,
    check_offline_options,
    encode_examples,
    load_examples,
    load_offline_policy,
    offline_schedule,
    offline_step,
    pad_batch,
    sequence_logprobs,
)
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.distributed import Distributed
from agents.harness.run import Agent, make_optimizer
from agents.models.memory import enable_gradient_checkpointing
from agents.models.policy import stop_ids, to_device
from agents.models.precision import resolve_precision
from agents.presets import tiny_model_config
from llm_env.models import tiny_gpt2
from llm_env.tasks import make_task


def _sft_optim() -> OptimConfig:
    return OptimConfig(learning_rate=2e-5, weight_decay=0.01, warmup_steps=20, lr_schedule="linear")


@dataclass
class SFTConfig(AgentConfig):
    """Supervised fine-tuning / pre-training options.

    Defaults suit a pretrained checkpoint: learning rate 2e-5 (TRL ``SFTConfig``), AdamW weight
    decay 0.01 (TRL: 0), 20 warm-up steps then linear decay (TRL: linear, no warm-up; the
    warm-up spares the pretrained weights Adam's first, unscaled steps). A tiny GPT-2 trained
    from scratch takes ``agents.presets.TINY_MODEL_OPTIONS["sft"]`` (2e-3)."""

    log_every: int = 25
    """Write a log point every this many steps (0 = only at evaluations and the end)."""
    save_every: int = 200
    """Write an atomic checkpoint every this many steps (0 = only at the end)."""
    batch_size: int = 64
    """Sequences per optimiser step (in total over all processes)."""
    epochs: float = 2.0
    """Passes over the training data (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs)."""
    max_length: int = 64
    """Longest prompt + completion in tokens; longer rows lose the end of the completion."""
    eval_every: int = 0
    """Measure held-out cross-entropy every this many steps (0 = only at the end)."""
    train_on_prompt: bool = False
    """Also score the prompt tokens (pre-training on a raw corpus)."""
    heldout_fraction: float = 0.05
    """Share of the examples held out to measure cross-entropy (0 = none)."""
    max_heldout: int = 512
    """At most this many held-out examples."""
    optim: OptimConfig = group(_sft_optim)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_offline_options(self)
        check_range("heldout_fraction", self.heldout_fraction, 0.0, 1.0, "[)")
        check_positive("max_heldout", self.max_heldout, allow_zero=True)


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over the scored tokens.

    ``logprobs``, ``mask``: (batch, seq_len - 1), log π(x_{t+1} | x_≤t) and 1 where scored.
    """
    n_tokens = mask.sum().clamp(min=1.0)
    loss = -(logprobs * mask).sum() / n_tokens
    return loss, {"loss/policy": loss.item(), "tokens": mask.sum().item()}


class SFT(Agent):
    """Fine-tune ``policy`` (a ``save_pretrained`` directory or a model object) on ``data``
    (a JSONL path or a list of ``(prompt, completion)``, strings or message lists);
    ``learn()`` then ``save(dir)``. ``chat_template_kwargs`` (e.g. ``{"enable_thinking":
    False}``) go to every chat-template rendering."""

    agent_name = "sft"

    def __init__(
        self,
        policy: str | Path | PreTrainedModel,
        tokenizer: str | Path | PreTrainedTokenizerBase | None,
        data: str | Path | list[tuple[Text, Text]] | None,
        config: SFTConfig | None = None,
        run_dir: str | Path = "runs/sft",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.config = config = config or SFTConfig()
        self.run_dir = Path(run_dir)
        self.dist = Distributed(config.device)
        self.policy, self.tokenizer = load_offline_policy(policy, tokenizer)
        self.vocab_size = len(self.tokenizer)
        self.precision = resolve_precision(config.precision, self.dist.device, self.policy)
        self.train_rows, self.heldout = [], []
        if data is not None:
            examples, _ = load_examples(data, ("prompt", "completion"), "SFT data")
            encoded = encode_examples(
                self.tokenizer, *zip(*examples), config.max_length,
                stop_ids(self.tokenizer, getattr(self.policy, "generation_config", None)),
                chat_template_kwargs,
            )  # fmt: skip
            order = np.random.default_rng(config.seed).permutation(len(encoded))
            n_heldout = min(config.max_heldout, int(len(encoded) * config.heldout_fraction))
            self.heldout = [encoded[i] for i in order[:n_heldout]]
            self.train_rows = [encoded[i] for i in order[n_heldout:]]
        self.dist.place(self.policy)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy)
        self.train_logprobs = self.dist.prepare(sequence_logprobs, policy=self.policy)
        self.schedule = (
            offline_schedule(len(self.train_rows), config, self.dist.world_size)
            if self.train_rows
            else []
        )
        self.optimizers = {
            "policy": make_optimizer(
                list(self.policy.parameters()), config.optim, len(self.schedule)
            )
        }

    def batch(self, rows: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(rows, self.tokenizer.pad_token_id, self.config.train_on_prompt)
        return to_device(batch, self.dist.device)

    def loss(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.batch([self.train_rows[i] for i in indices])
        logprobs = self.train_logprobs(batch, self.precision, self.vocab_size)
        return sft_loss(logprobs, batch["loss_mask"])

    @torch.no_grad()
    def heldout_ce(self) -> float:
        """Token-mean cross-entropy (nats) on the held-out examples."""
        self.policy.eval()
        total, count = 0.0, 0.0
        for start in range(0, len(self.heldout), 128):
            batch = self.batch(self.heldout[start : start + 128])
            logprobs = sequence_logprobs(self.policy, batch, self.precision, self.vocab_size)
            total -= logprobs.sum().item()
            count += batch["loss_mask"].sum().item()
        return total / max(count, 1.0)

    def _num_steps(self) -> int:
        if not self.schedule:
            raise ValueError("SFT: no training data (pass data= to train)")
        return len(self.schedule)

    def _step_size(self, step: int) -> int:
        return len(self.schedule[step])

    def _train_step(self, step: int) -> dict[str, float]:
        return offline_step(self, step)

    def _eval_due(self, done: int) -> bool:
        return self.config.eval_every > 0 and done % self.config.eval_every == 0

    def _evaluate(self) -> dict[str, float]:
        return {"sft/heldout_ce": self.heldout_ce()} if self.heldout else {}

    @classmethod
    def load(
        cls,
        path: str | Path,
        data: str | Path | list[tuple[Text, Text]] | None = None,
        config: SFTConfig | None = None,
        run_dir: str | Path = "runs/sft",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> SFT:
        """An agent whose policy and tokenizer come from ``save(path)``."""
        return cls(path, None, data, config, run_dir, chat_template_kwargs)


def pretrain_on_task(
    task_name: str,
    task_kwargs: dict | None,
    out_dir: str | Path,
    config: SFTConfig | None = None,
    run_dir: str | Path = "runs/pretrain",
    model_kwargs: dict | None = None,
) -> Path:
    """Train ``llm_env.tiny_gpt2`` from scratch on the task's demonstrations (loss on every
    token) and save it with the task's tokenizer to ``out_dir``. ``config``: by default the
    tiny-model settings (``agents.presets``); a given one is used as it is."""
    config = replace(config or tiny_model_config("sft", SFTConfig), train_on_prompt=True)
    task = make_task(task_name, **(task_kwargs or {}))
    if not task.demonstrations:
        raise ValueError(f"task {task.name!r} has no demonstrations to pre-train on")
    tokenizer = task.tokenizer()
    model = tiny_gpt2(tokenizer, **{"seed": config.seed, **(model_kwargs or {})})
    sft = SFT(model, tokenizer, list(task.demonstrations), config, run_dir)
    sft.learn()
    return sft.save(out_dir)
