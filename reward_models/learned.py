"""A learned (Bradley–Terry) reward model: a transformers sequence-classification model, one label.

The model reads ``prompt + completion + <eos>`` and its score is the head's output at the last
non-pad token. It is saved with ``save_pretrained`` together with its tokenizer; an optional
``reward_norm.json`` (``{"mean": m, "std": s}``) beside the weights makes ``score`` return
``(raw - m) / s`` — the normalisation the trainer measures on SFT samples.

``RewardModelTrainer`` trains one: initialised from the SFT policy's weights (a new scalar head),
loss −log σ(r(x, y_w) − r(x, y_l)) on ``{"prompt","chosen","rejected"}`` pairs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from agents.common.callbacks import OfflineModel
from agents.common.distributed import Distributed
from agents.common.logging import RunLogger
from agents.common.offline import OfflineConfig, fit, load_preference_pairs
from agents.common.policy import to_device
from agents.common.precision import autocast, resolve_precision
from llm_env.tokenizer import check_tokenizer, load_tokenizer

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


def batch_scores(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str
) -> torch.Tensor:
    """``sequence_scores`` under the forward-pass precision (the scores themselves are fp32)."""
    with autocast(precision):
        return sequence_scores(model, batch).float()


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
                f"{path} has no config.json: not a saved reward model directory"
            )
        model = AutoModelForSequenceClassification.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
        if model.config.num_labels != 1:
            raise ValueError(
                f"reward model {path}: expected a sequence-classification model with num_labels=1, "
                f"got {model.config.num_labels}"
            )
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


# --- training -------------------------------------------------------------------------------


@dataclass
class RewardModelConfig(OfflineConfig):
    """Bradley–Terry reward-model training (defaults: ~1 min on the ``sentiment`` pairs)."""

    learning_rate: float = 5e-4
    """Peak AdamW learning rate."""
    batch_size: int = 32
    """Preference pairs per optimiser step (chosen and rejected in one forward pass)."""
    epochs: float = 2.0
    """Passes over the training pairs (fractions allowed)."""
    log_every: int = 10
    """Log every this many steps."""
    heldout_fraction: float = 0.1
    """Share of the pairs held out for pairwise accuracy."""
    normalize: bool = True
    """Store a mean/std normalisation so scores on the SFT samples (the pairs' completions)
    have mean 0 and std 1."""


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


class RewardModelTrainer(OfflineModel):
    """Bradley–Terry reward model initialised from a policy's weights with a scalar head.

    ``init_policy_dir``: a causal-LM ``save_pretrained`` directory (the SFT policy);
    ``pairs_path``: ``{"prompt","chosen","rejected"}`` JSONL (``chosen_gold``/``rejected_gold``
    optional). ``learn()`` returns held-out pairwise accuracy and agreement with gold.
    """

    def __init__(
        self,
        init_policy_dir: str | Path,
        pairs_path: str | Path | Sequence,
        config: RewardModelConfig | None = None,
        run_dir: str | Path = "runs/reward_model",
    ):
        self.config = config or RewardModelConfig()
        self.run_dir = Path(run_dir)
        self.precision = resolve_precision(self.config.precision)
        if not (Path(init_policy_dir) / "config.json").is_file():
            raise FileNotFoundError(f"{init_policy_dir} is not a save_pretrained policy directory")
        self.tokenizer = load_tokenizer(init_policy_dir)
        check_tokenizer(self.tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)  # the scalar head's initialisation
            self.model = AutoModelForSequenceClassification.from_pretrained(
                init_policy_dir, num_labels=1, local_files_only=True, trust_remote_code=False,
                use_safetensors=True, pad_token_id=self.tokenizer.pad_token_id,
            )  # fmt: skip
        self.pairs, rows, self.skipped_identical = load_preference_pairs(
            pairs_path, "reward-model pairs"
        )
        gold = [(r.get("chosen_gold"), r.get("rejected_gold")) for r in rows]
        self.gold = np.array(gold, dtype=np.float64) if all(None not in g for g in gold) else None
        order = np.random.default_rng(self.config.seed).permutation(len(self.pairs))
        n_heldout = int(round(len(self.pairs) * self.config.heldout_fraction))
        self.heldout_idx, self.train_idx = order[:n_heldout], order[n_heldout:]
        if len(self.train_idx) == 0:
            raise ValueError(f"{len(self.pairs)} pair(s): nothing left to train on after hold-out")
        self.mean, self.std = 0.0, 1.0
        self.dist = Distributed()
        self.dist.place(self.model)
        self.train_scores = self.dist.prepare(batch_scores, model=self.model)

    def scores(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """Raw (unnormalised) fp32 scores, shape (N,), with gradients."""
        batch = encode_texts(self.tokenizer, prompts, completions, self.config.max_length)
        batch = to_device(batch, self.dist.device)
        return batch_scores(self.model, batch, self.precision)

    def pair_rewards(
        self, indices: np.ndarray, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(chosen, rejected) rewards, (pairs,) each, from ONE forward pass; and its token count.

        ``train``: through the (DDP-wrapped) training forward, whose gradients are synchronised.
        """
        prompts = [self.pairs[i][0] for i in indices]
        chosen = [self.pairs[i][1] for i in indices]
        rejected = [self.pairs[i][2] for i in indices]
        batch = encode_texts(
            self.tokenizer, prompts + prompts, chosen + rejected, self.config.max_length
        )
        batch = to_device(batch, self.dist.device)
        if train:
            rewards = self.train_scores(batch, self.precision)
        else:
            rewards = batch_scores(self.model, batch, self.precision)
        n = len(indices)
        return rewards[:n], rewards[n:], int(batch["attention_mask"].sum())

    def loss(self, positions: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, tokens = self.pair_rewards(self.train_idx[positions], train=True)
        loss, stats = bradley_terry_loss(chosen, rejected)
        return loss, {**stats, "tokens": tokens}

    @torch.no_grad()
    def evaluate(self, step: int = 0) -> dict[str, float]:
        """Held-out pairwise accuracy (vs the labels) and agreement with gold (vs the gold
        ordering, on pairs whose gold scores differ)."""
        self.model.eval()
        idx = self.heldout_idx if len(self.heldout_idx) else self.train_idx
        margins = (
            torch.cat(
                [
                    torch.sub(*self.pair_rewards(idx[s : s + 128])[:2])
                    for s in range(0, len(idx), 128)
                ]
            )
            .cpu()
            .numpy()
        )
        out = {"rm/heldout_accuracy": float(np.mean(margins > 0))}
        if self.gold is not None:
            gold_margin = self.gold[idx, 0] - self.gold[idx, 1]
            strict = gold_margin != 0
            out["rm/gold_agreement"] = float(
                np.mean((margins[strict] > 0) == (gold_margin[strict] > 0))
            ) if strict.any() else math.nan  # fmt: skip
            out["rm/label_gold_agreement"] = float(np.mean(gold_margin[strict] > 0))
        return out

    @torch.no_grad()
    def measure_normalization(self) -> tuple[float, float]:
        """Mean and std of the raw scores on the distinct completions of the pairs (SFT samples)."""
        self.model.eval()
        texts = sorted({(p, c) for p, chosen, rejected in self.pairs for c in (chosen, rejected)})
        raw = (
            torch.cat([self.scores(*zip(*texts[s : s + 128])) for s in range(0, len(texts), 128)])
            .cpu()
            .numpy()
        )
        return float(raw.mean()), float(max(raw.std(), 1e-6))

    def learn(self, callback=None) -> dict[str, float]:
        """Train; returns ``heldout_accuracy``, ``gold_agreement`` (NaN without gold scores), the
        normalisation and ``skipped_identical``. ``callback``: Stable-Baselines3 callback(s),
        see ``agents.common.callbacks``."""
        logger = RunLogger(self.run_dir, self.config, enabled=self.dist.is_main)
        try:
            history = fit(
                self.model, self.tokenizer, self.loss, len(self.train_idx), self.config,
                self.run_dir, logger, evaluate=self.evaluate, desc="reward model", dist=self.dist, callback=callback, agent=self,
            )  # fmt: skip
        finally:
            logger.close()
        if self.config.normalize:
            self.mean, self.std = self.measure_normalization()
        last = history[-1]
        return {
            "heldout_accuracy": last["rm/heldout_accuracy"],
            "gold_agreement": last.get("rm/gold_agreement", math.nan),
            "label_gold_agreement": last.get("rm/label_gold_agreement", math.nan),
            "train_loss": last["loss/total"],
            "norm_mean": self.mean,
            "norm_std": self.std,
            "skipped_identical": self.skipped_identical,
        }

    def save(self, path: str | Path) -> Path:
        """``save_pretrained`` model + tokenizer (+ ``reward_norm.json``): ``load_reward_model``
        (path) then scores text with it. Written by the main process; every process returns
        once it exists."""
        path = Path(path)

        def write() -> None:
            self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
            (path / NORM_FILE).unlink(missing_ok=True)
            if self.config.normalize:
                (path / NORM_FILE).write_text(json.dumps({"mean": self.mean, "std": self.std}))

        self.dist.on_main(write)
        return path
