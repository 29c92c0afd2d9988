"""Preference data: k completions per prompt sampled through the vector env, labelled by a gold
reward model through the Bradley–Terry model.

For every pair (a, b) of a prompt's k samples, a is preferred with probability
σ((r(a) − r(b)) / label_temperature) — not simply the higher score — so the labels carry the
noise real annotators do; ``label_temperature → 0`` gives argmax labels. Each JSONL row holds
``{"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"}``; a ``.meta.json`` beside
the file records the config and counts.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.checks import check_choice, check_positive, group
from agents.harness.config import to_jsonable
from agents.models.policy import SamplingConfig, load_policy
from agents.models.precision import PRECISIONS, resolve_precision
from agents.sampling.rollout import rollout_batches
from llm_env.vector import TokenMDPVectorEnv
from reward_models.base import RewardModel


@dataclass
class PreferenceConfig:
    """How preference pairs are sampled and labelled."""

    seed: int = 0
    """Seed of the prompt draw, the sampling and the labels."""
    num_prompts: int = 512
    """Prompts drawn (with replacement) from the task's split."""
    k: int = 2
    """Completions sampled per prompt; every pair of them becomes a row (k·(k−1)/2 rows)."""
    label_temperature: float = 0.1
    """Bradley–Terry temperature on the gold scores: P(a ≻ b) = σ((r_a − r_b) / T)."""
    num_envs: int = 64
    """Sequences sampled in lockstep per rollout."""
    sampling: SamplingConfig = group(SamplingConfig)
    split: str = "train"
    """Prompt split of the task: train | eval."""
    precision: str = "fp32"
    """Rollout precision: auto | bf16 | fp32."""
    skip_ties: bool = False
    """Drop pairs whose gold scores are equal (a verifier's 0/0 or 1/1: no preference to learn)."""

    def __post_init__(self) -> None:
        check_positive("num_prompts", self.num_prompts)
        check_positive("k", self.k)
        if self.k < 2:
            raise ValueError(f"k must be >= 2 to form pairs, got {self.k}")
        check_positive("label_temperature", self.label_temperature, float, allow_zero=True)
        check_positive("num_envs", self.num_envs)
        check_choice("split", self.split, ("train", "eval"))
        check_choice("precision", self.precision, PRECISIONS)


def bradley_terry_labels(
    scores_a: np.ndarray, scores_b: np.ndarray, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """True where a is preferred, drawn with P(a ≻ b) = σ((r_a − r_b) / temperature), shape (N,)."""
    if temperature <= 0:
        return scores_a > scores_b
    p = 0.5 * (1.0 + np.tanh((scores_a - scores_b) / (2.0 * temperature)))  # σ, overflow-free
    return rng.random(len(p)) < p


def sample_completions(
    policy: PreTrainedModel,
    env: TokenMDPVectorEnv,
    prompts: list[str],
    sampling: SamplingConfig,
    seed: int,
    precision: str = "fp32",
) -> tuple[list[str], np.ndarray]:
    """One completion per prompt through ``env`` (batches of ``env.num_envs``) and its env reward."""
    generator = torch.Generator().manual_seed(seed)
    completions, rewards = [], []
    batches = rollout_batches(policy, env, sampling, generator, prompts, seed, precision,
                              progress="sampling")  # fmt: skip
    for batch, n in batches:
        completions += batch.completions[:n]
        rewards.append(batch.rewards[:n].cpu().numpy())
    return completions, np.concatenate(rewards)


def label_pairs(
    prompts: list[str],
    completions: list[str],
    gold: np.ndarray,
    config: PreferenceConfig,
    rng: np.random.Generator,
) -> tuple[list[dict], int]:
    """Rows for every pair of each prompt's k samples (prompt-major), labelled by
    Bradley–Terry on the gold scores; pairs of identical texts are skipped and counted."""
    pairs = list(itertools.combinations(range(config.k), 2))
    a = np.array([g * config.k + i for g in range(config.num_prompts) for i, _ in pairs])
    b = np.array([g * config.k + j for g in range(config.num_prompts) for _, j in pairs])
    a_wins = bradley_terry_labels(gold[a], gold[b], config.label_temperature, rng)
    rows, identical = [], 0
    for i, j, a_first in zip(a, b, a_wins):
        if completions[i] == completions[j] or (config.skip_ties and gold[i] == gold[j]):
            identical += 1  # no preference between identical texts (or equal gold scores)
            continue
        win, lose = (i, j) if a_first else (j, i)
        rows.append(
            {
                "prompt": prompts[win],
                "chosen": completions[win],
                "rejected": completions[lose],
                "chosen_gold": float(gold[win]),
                "rejected_gold": float(gold[lose]),
            }
        )
    if not rows:
        raise ValueError("every sampled pair was identical (or tied): no preference rows to write")
    return rows, identical


def sample_preferences(
    policy: str | Path | PreTrainedModel,
    tokenizer: str | Path | PreTrainedTokenizerBase | None,
    env_kwargs: dict,
    gold_reward_model: str | RewardModel | None,
    config: PreferenceConfig,
    out_path: str | Path,
) -> Path:
    """Write preference pairs to ``out_path`` (JSONL) and return the path.

    ``env_kwargs`` are ``TokenMDPVectorEnv`` arguments (``task``, ``task_kwargs``, ...);
    ``gold_reward_model`` (a spec or object) scores the samples — ``None``: the env's reward
    model, by default the task's gold reward.
    """
    model, tokenizer = load_policy(policy, tokenizer)
    kwargs = {**env_kwargs, "tokenizer": tokenizer, "split": config.split}
    if gold_reward_model is not None:
        kwargs["reward_model"] = gold_reward_model
    env = TokenMDPVectorEnv(num_envs=config.num_envs, autoreset_mode="disabled", **kwargs)
    rng = np.random.default_rng(config.seed)
    pool = env.setup.task.prompts(config.split)
    drawn = [pool[i] for i in rng.integers(0, len(pool), size=config.num_prompts)]
    prompts = [p for p in drawn for _ in range(config.k)]  # each prompt k times, side by side
    sampling = config.sampling
    completions, gold = sample_completions(
        model, env, prompts, sampling, config.seed, resolve_precision(config.precision, model=model)
    )

    rows, identical = label_pairs(prompts, completions, gold, config, rng)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out_path)
    strict = [r for r in rows if r["chosen_gold"] != r["rejected_gold"]]
    meta = {
        "config": to_jsonable(config),
        "rows": len(rows),
        "skipped_identical": identical,
        "label_agrees_with_gold": (
            float(np.mean([r["chosen_gold"] > r["rejected_gold"] for r in strict]))
            if strict
            else math.nan
        ),
        "gold_mean": float(np.mean(gold)),
    }
    out_path.with_name(out_path.name + ".meta.json").write_text(json.dumps(meta, indent=2))
    return out_path
