"""Bradley–Terry reward-model training (Ouyang et al. 2022, stage 2), as an agent like the others.

The model is a ``transformers`` sequence-classification model with one label, initialised from
the SFT policy's weights (a new scalar head), trained on ``{"prompt","chosen","rejected"}`` pairs
with loss −log σ(r(x, y_w) − r(x, y_l)). Pairs are TRL's standard (strings) or conversational
(message lists, rendered with the tokenizer's chat template) rows; the model reads prompt +
completion and the EOS or end-of-turn token that ends it (``encode_scored``). ``save(path)``
writes what ``reward_models.load_reward_model(path)`` scores text with
(``reward_models.learned``), plus a normalisation measured on the pairs' completions (the SFT
samples) at save time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForSequenceClassification,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from agents.checks import check_range, group, local_dir
from agents.data.offline import (
    Text,
    check_offline_options,
    end_with_eos,
    load_preference_pairs,
    offline_schedule,
    offline_step,
    render_examples,
    right_pad,
    with_pad_token,
)
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.distributed import Distributed
from agents.harness.run import Agent, make_optimizer
from agents.models.memory import enable_gradient_checkpointing
from agents.models.policy import stop_ids, to_device
from agents.models.precision import autocast, resolve_precision
from llm_env.tokenizer import check_tokenizer, load_tokenizer
from reward_models.learned import NORM_FILE, sequence_scores


def _rm_optim() -> OptimConfig:
    return OptimConfig(learning_rate=1e-4, warmup_steps=10, lr_schedule="linear")


@dataclass
class RewardModelConfig(AgentConfig):
    """Bradley–Terry reward-model training.

    Defaults suit a pretrained checkpoint: learning rate 1e-4 (TRL ``RewardConfig``), 10
    warm-up steps then linear decay (TRL: linear, no warm-up; the warm-up is kept). A tiny GPT-2
    trained from scratch takes ``agents.presets.TINY_MODEL_OPTIONS["reward_model"]`` (5e-4)."""

    batch_size: int = 32
    """Preference pairs per optimiser step (chosen and rejected in one forward pass)."""
    epochs: float = 2.0
    """Passes over the training pairs (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs)."""
    max_length: int = 64
    """Longest prompt + completion in tokens; longer texts keep their end."""
    eval_every: int = 0
    """Measure held-out pairwise accuracy every this many steps (0 = only at the end)."""
    heldout_fraction: float = 0.1
    """Share of the pairs held out for pairwise accuracy."""
    normalize: bool = True
    """Store a mean/std normalisation so scores on the SFT samples (the pairs' completions)
    have mean 0 and std 1."""
    optim: OptimConfig = group(_rm_optim)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_offline_options(self)
        check_range("heldout_fraction", self.heldout_fraction, 0.0, 1.0, "[)")


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """−log σ(r(x, y_w) − r(x, y_l)), averaged over pairs (the Bradley–Terry likelihood).

    ``chosen_rewards``, ``rejected_rewards``: (pairs,) fp32 scalar-head outputs.
    """
    margin = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margin).mean()
    return loss, {
        "loss/reward_model": loss.item(),
        "rm/accuracy": (margin > 0).float().mean().item(),
        "rm/margin": margin.mean().item(),
    }


def through_last_stop(ids: list[int], stops: Collection[int]) -> list[int]:
    """``ids`` up to and including the last stop id: a chat template's text after the
    assistant's end-of-turn token (ChatML's newline) is not part of what the env scores, where
    the score is read at the completion's stop token."""
    ends = [i for i, t in enumerate(ids) if t in stops]
    return ids[: ends[-1] + 1] if ends else ids


def encode_scored(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Text],
    max_length: int,
    stops: Collection[int] = (),
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` (masks from lengths) of prompt + completion
    tokenised in one piece (``render_examples``), a plain-text one ended with ``<eos>`` unless it
    ends with a stop id (``end_with_eos``), a conversational one cut after its end-of-turn stop
    id (``through_last_stop``): what ``reward_models.learned`` scores through the env.
    Over-long texts keep their last ``max_length`` tokens: the score is read at the end."""
    eos = tokenizer.eos_token_id
    prompts, completions, plain = render_examples(
        tokenizer, prompts, completions, chat_template_kwargs
    )
    joint = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=False)
    stops = {eos, *stops}
    rows = [  # an empty completion ends with <eos> whatever ends the prompt
        end_with_eos(ids if is_plain else through_last_stop(ids, stops), is_plain, eos,
                     stops if c else ())
        for ids, c, is_plain in zip(joint["input_ids"], completions, plain)
    ]  # fmt: skip
    return right_pad([ids[-max_length:] for ids in rows], tokenizer.pad_token_id)


def batch_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str
) -> torch.Tensor:
    """``sequence_scores`` under the forward-pass precision (the scores themselves are fp32)."""
    with autocast(precision):
        return sequence_scores(model, batch).float()


class RewardModelTrainer(Agent):
    """Bradley–Terry reward model initialised from a policy's weights with a scalar head.

    ``init_policy_dir``: a causal-LM ``save_pretrained`` directory (the SFT policy), or a saved
    reward model (``load``); ``pairs``: ``{"prompt","chosen","rejected"}`` JSONL or a list,
    strings or message lists (``chosen_gold``/``rejected_gold`` optional);
    ``chat_template_kwargs`` go to every chat-template rendering. After ``learn()``,
    ``summary()`` gives held-out pairwise accuracy and agreement with gold.
    """

    agent_name = "reward_model"

    def __init__(
        self,
        init_policy_dir: str | Path,
        pairs: str | Path | Sequence | None,
        config: RewardModelConfig | None = None,
        run_dir: str | Path = "runs/reward_model",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.config = config = config or RewardModelConfig()
        self.run_dir = Path(run_dir)
        init_dir = local_dir("init_policy_dir", init_policy_dir)
        self.tokenizer = with_pad_token(load_tokenizer(init_dir))
        check_tokenizer(self.tokenizer)
        self.chat_template_kwargs = chat_template_kwargs
        generation = init_dir / "generation_config.json"
        self.stops = stop_ids(
            self.tokenizer,
            GenerationConfig.from_pretrained(init_dir) if generation.is_file() else None,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the scalar head's initialisation
            self.model = AutoModelForSequenceClassification.from_pretrained(
                init_dir, num_labels=1, local_files_only=True, trust_remote_code=False,
                use_safetensors=True, pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
        self.policy = self.model  # what the contract calls the trained model
        self.pairs, self.gold, self.skipped_identical = [], None, 0
        if pairs is not None:
            self.pairs, rows, self.skipped_identical = load_preference_pairs(
                pairs, "reward-model pairs"
            )
            gold = [(r.get("chosen_gold"), r.get("rejected_gold")) for r in rows]
            if all(None not in g for g in gold):
                self.gold = np.array(gold, dtype=np.float64)
        order = np.random.default_rng(config.seed).permutation(len(self.pairs))
        n_heldout = int(round(len(self.pairs) * config.heldout_fraction))
        self.heldout_idx, self.train_idx = order[:n_heldout], order[n_heldout:]
        if self.pairs and len(self.train_idx) == 0:
            raise ValueError(f"{len(self.pairs)} pair(s): nothing left to train on after hold-out")
        self.mean, self.std = 0.0, 1.0
        self.dist = Distributed(config.device)
        self.dist.place(self.model)
        self.precision = resolve_precision(config.precision, self.dist.device, self.model)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.model)
        self.train_scores = self.dist.prepare(batch_scores, model=self.model)
        n = len(self.train_idx)
        self.schedule = offline_schedule(n, config, self.dist.world_size) if n else []
        params = list(self.model.parameters())
        self.optimizers = {"model": make_optimizer(params, config.optim, len(self.schedule))}

    def _models(self):
        return {"model": self.model}

    def encode(
        self, prompts: Sequence[Text], completions: Sequence[Text]
    ) -> dict[str, torch.Tensor]:
        """``encode_scored`` with this trainer's options, on its device."""
        batch = encode_scored(
            self.tokenizer, prompts, completions, self.config.max_length, self.stops,
            self.chat_template_kwargs,
        )  # fmt: skip
        return to_device(batch, self.dist.device)

    def scores(self, prompts: Sequence[Text], completions: Sequence[Text]) -> torch.Tensor:
        """Raw (unnormalised) fp32 scores, shape (N,)."""
        return batch_scores(self.model, self.encode(prompts, completions), self.precision)

    def pair_rewards(
        self, indices: np.ndarray, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(chosen, rejected) rewards, (pairs,) each, from ONE forward pass; and its token count.

        ``train``: through the (DDP-wrapped) training forward, whose gradients are synchronised.
        """
        prompts = [self.pairs[i][0] for i in indices]
        chosen = [self.pairs[i][1] for i in indices]
        rejected = [self.pairs[i][2] for i in indices]
        batch = self.encode(prompts + prompts, chosen + rejected)
        forward = self.train_scores if train else lambda b, p: batch_scores(self.model, b, p)
        rewards = forward(batch, self.precision)
        n = len(indices)
        return rewards[:n], rewards[n:], int(batch["attention_mask"].sum())

    def loss(self, positions: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, tokens = self.pair_rewards(self.train_idx[positions], train=True)
        loss, stats = bradley_terry_loss(chosen, rejected)
        return loss, {**stats, "tokens": tokens}

    def _num_steps(self) -> int:
        if not self.schedule:
            raise ValueError("reward model: no preference pairs (pass pairs= to train)")
        return len(self.schedule)

    def _step_size(self, step: int) -> int:
        return len(self.schedule[step])

    def _train_step(self, step: int) -> dict[str, float]:
        return offline_step(self, step)

    def _eval_due(self, done: int) -> bool:
        return self.config.eval_every > 0 and done % self.config.eval_every == 0

    @torch.no_grad()
    def _evaluate(self) -> dict[str, float]:
        """Held-out pairwise accuracy (vs the labels) and agreement with gold (vs the gold
        ordering, on pairs whose gold scores differ)."""
        self.model.eval()
        idx = self.heldout_idx if len(self.heldout_idx) else self.train_idx
        margins = torch.cat(
            [torch.sub(*self.pair_rewards(idx[s : s + 128])[:2]) for s in range(0, len(idx), 128)]
        )
        margins = margins.cpu().numpy()
        out = {"rm/heldout_accuracy": float(np.mean(margins > 0))}
        if self.gold is not None:
            gold_margin = self.gold[idx, 0] - self.gold[idx, 1]
            strict = gold_margin != 0
            agree = (margins[strict] > 0) == (gold_margin[strict] > 0)
            labels_right = gold_margin[strict] > 0
            out["rm/gold_agreement"] = float(np.mean(agree)) if strict.any() else math.nan
            out["rm/label_gold_agreement"] = (
                float(np.mean(labels_right)) if strict.any() else math.nan
            )
        return out

    @torch.no_grad()
    def measure_normalization(self) -> tuple[float, float]:
        """Mean and std of the raw scores on the distinct completions of the pairs (SFT samples)."""
        self.model.eval()
        distinct = {
            (_key(p), _key(c)): (p, c)
            for p, chosen, rejected in self.pairs
            for c in (chosen, rejected)
        }
        texts = [distinct[k] for k in sorted(distinct)]
        raw = torch.cat([self.scores(*zip(*texts[s : s + 128])) for s in range(0, len(texts), 128)])
        raw = raw.cpu().numpy()
        return float(raw.mean()), float(max(raw.std(), 1e-6))

    def summary(self) -> dict[str, float]:
        """The last evaluation (held-out accuracy, gold agreement), loss and normalisation."""
        last = self.history[-1] if self.history else {}
        return {
            "heldout_accuracy": last.get("rm/heldout_accuracy", math.nan),
            "gold_agreement": last.get("rm/gold_agreement", math.nan),
            "label_gold_agreement": last.get("rm/label_gold_agreement", math.nan),
            "train_loss": last.get("loss/total", math.nan),
            "norm_mean": self.mean,
            "norm_std": self.std,
            "skipped_identical": self.skipped_identical,
        }

    def _save_files(self, path: Path) -> None:
        """Model + tokenizer (+ ``reward_norm.json``, measured now on the pairs' completions)."""
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        if self.config.normalize and self.pairs:
            self.mean, self.std = self.measure_normalization()
            (path / NORM_FILE).write_text(json.dumps({"mean": self.mean, "std": self.std}))

    @classmethod
    def load(
        cls,
        path: str | Path,
        pairs: str | Path | Sequence | None = None,
        config: RewardModelConfig | None = None,
        run_dir: str | Path = "runs/reward_model",
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> RewardModelTrainer:
        """A trainer whose model (scalar head included) comes from ``save(path)``."""
        return cls(path, pairs, config, run_dir, chat_template_kwargs)


def _key(value: Text) -> tuple[bool, str]:
    """A sortable, hashable key of a text or a message list (plain texts sort as themselves)."""
    return (False, value) if isinstance(value, str) else (True, json.dumps(value))
