"""Supervised fine-tuning: next-token cross-entropy on ``{"prompt", "completion"}`` examples.

The loss reads the completion tokens (and the EOS that ends them) only; ``train_on_prompt``
scores every token, which turns SFT into plain language-model pre-training on a raw corpus —
``pretrain_on_task`` uses it to train a tiny policy from scratch on a built-in task's corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.common.callbacks import OfflineModel
from agents.common.distributed import Distributed
from agents.common.logging import RunLogger
from agents.common.lora import save_policy
from agents.common.offline import (
    OfflineConfig,
    encode_examples,
    fit,
    load_examples,
    pad_batch,
    sequence_logprobs,
)
from agents.common.policy import load_policy, to_device
from agents.common.precision import resolve_precision
from llm_env.models import tiny_gpt2
from llm_env.tasks import make_task


@dataclass
class SFTConfig(OfflineConfig):
    """Supervised fine-tuning / pre-training options (defaults: a tiny GPT-2 on ``sentiment``)."""

    learning_rate: float = 2e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 20
    """Linear warm-up steps; the rate then decays linearly to 0 at the last step."""
    batch_size: int = 64
    """Sequences per optimiser step."""
    epochs: float = 2.0
    """Passes over the training data (fractions allowed)."""
    log_every: int = 25
    """Log every this many steps."""
    save_every: int = 200
    """Write an atomic checkpoint every this many steps (and at the end)."""
    train_on_prompt: bool = False
    """Also score the prompt tokens (pre-training on a raw corpus)."""
    heldout_fraction: float = 0.05
    """Share of the examples held out to measure cross-entropy (0 = none)."""
    max_heldout: int = 512
    """At most this many held-out examples."""


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over the scored tokens.

    ``logprobs``, ``mask``: (batch, seq_len - 1), log π(x_{t+1} | x_≤t) and 1 where scored.
    """
    n_tokens = mask.sum().clamp(min=1.0)
    loss = -(logprobs * mask).sum() / n_tokens
    return loss, {"loss/policy": loss.item(), "tokens": mask.sum().item()}


class SFT(OfflineModel):
    """Fine-tune ``policy`` (a ``save_pretrained`` directory or a model object) on ``data``
    (a JSONL path or a list of ``(prompt, completion)``); ``learn()`` then ``save(dir)``."""

    def __init__(
        self,
        policy: str | Path | PreTrainedModel,
        tokenizer: str | Path | PreTrainedTokenizerBase | None,
        data: str | Path | list[tuple[str, str]],
        config: SFTConfig | None = None,
        run_dir: str | Path = "runs/sft",
    ):
        self.config = config or SFTConfig()
        self.run_dir = Path(run_dir)
        self.policy, self.tokenizer = load_policy(policy, tokenizer)
        self.precision = resolve_precision(self.config.precision)
        examples, _ = load_examples(data, ("prompt", "completion"), "SFT data")
        encoded = encode_examples(
            self.tokenizer, *zip(*examples), max_length=self.config.max_length
        )
        order = np.random.default_rng(self.config.seed).permutation(len(encoded))
        n_heldout = min(self.config.max_heldout, int(len(encoded) * self.config.heldout_fraction))
        self.heldout = [encoded[i] for i in order[:n_heldout]]
        self.train_rows = [encoded[i] for i in order[n_heldout:]]
        self.dist = Distributed()
        self.dist.place(self.policy)
        self.train_logprobs = self.dist.prepare(sequence_logprobs, policy=self.policy)

    def batch(self, rows: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(rows, self.tokenizer.pad_token_id, self.config.train_on_prompt)
        return to_device(batch, self.dist.device)

    def loss(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.batch([self.train_rows[i] for i in indices])
        return sft_loss(self.train_logprobs(batch, self.precision), batch["loss_mask"])

    @torch.no_grad()
    def heldout_ce(self) -> float:
        """Token-mean cross-entropy (nats) on the held-out examples."""
        self.policy.eval()
        total, count = 0.0, 0.0
        for start in range(0, len(self.heldout), 128):
            batch = self.batch(self.heldout[start : start + 128])
            logprobs = sequence_logprobs(self.policy, batch, self.precision)
            total -= logprobs.sum().item()
            count += batch["loss_mask"].sum().item()
        return total / max(count, 1.0)

    def learn(self, callback=None) -> list[dict[str, float]]:
        """Train; returns one metrics dict per log point (also in ``run_dir/metrics.jsonl``).
        ``callback``: Stable-Baselines3 callback(s), see ``agents.common.callbacks``."""
        torch.manual_seed(self.config.seed)
        logger = RunLogger(self.run_dir, self.config, enabled=self.dist.is_main)
        evaluate = (lambda step: {"sft/heldout_ce": self.heldout_ce()}) if self.heldout else None
        try:
            return fit(
                self.policy,
                self.tokenizer,
                self.loss,
                len(self.train_rows),
                self.config,
                self.run_dir,
                logger,
                evaluate=evaluate,
                desc="sft",
                dist=self.dist,
                callback=callback,
                agent=self,
            )
        finally:
            logger.close()

    def save(self, path: str | Path) -> Path:
        """``save_pretrained`` (safetensors) policy + tokenizer: loadable with ``load_policy``.
        Written by the main process; every process returns once it exists."""
        path = Path(path)
        self.dist.on_main(lambda: save_policy(self.policy, path, self.tokenizer))
        return path

    @staticmethod
    def load(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        return load_policy(path)


def pretrain_on_task(
    task_name: str,
    task_kwargs: dict | None,
    out_dir: str | Path,
    config: SFTConfig | None = None,
    run_dir: str | Path = "runs/pretrain",
    model_kwargs: dict | None = None,
) -> Path:
    """Train ``llm_env.tiny_gpt2`` from scratch on the task's demonstrations (loss on every
    token) and save it with the task's tokenizer to ``out_dir``."""
    config = replace(config or SFTConfig(), train_on_prompt=True)
    task = make_task(task_name, **(task_kwargs or {}))
    if not task.demonstrations:
        raise ValueError(f"task {task.name!r} has no demonstrations to pre-train on")
    tokenizer = task.tokenizer()
    model = tiny_gpt2(tokenizer, **{"seed": config.seed, **(model_kwargs or {})})
    sft = SFT(model, tokenizer, list(task.demonstrations), config, run_dir)
    sft.learn()
    return sft.save(out_dir)
