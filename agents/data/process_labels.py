"""Stepwise-supervision data for a process reward model, in TRL's format: one JSONL row per
sampled completion, ``{"prompt": str, "completions": [step, ...], "labels": [bool, ...]}``.

Completions are sampled from a policy through the vector env and split into steps at the task's
separator (``reward_models.prm.split_steps``: a trailing empty piece is not a step; completions
without a step are left out, and repeated rows kept once). Each step is labelled

- ``"gold"``: by the task's gold step checker (``STEP_CHECKERS``; ``arithmetic_chain``: each step
  checked locally against the previous written result, ``steps_correct``);
- ``"rollouts"`` (Math-Shepherd, Wang et al. 2024): by what can still come of it. Step k < n is
  good when the mean outcome reward of ``rollouts`` K continuations sampled from the state right
  after its closing token (``rollout(..., prefixes=)`` on the vector env) exceeds
  ``min_success`` (0: at least one continuation reaches the correct final answer, the paper's
  "hard" estimate; 0.5: most do); the last step is good when the completion's own outcome
  reward exceeds it (the completion is its own continuation). The outcome reward is the env's
  (by default the task's gold verifier: 1.0 right, 0.0 wrong).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.checks import check_choice, check_positive, check_range, group
from agents.harness.config import to_jsonable
from agents.models.policy import SamplingConfig, load_policy
from agents.models.precision import PRECISIONS, resolve_precision
from agents.sampling.branching import branch_values, step_ends
from agents.sampling.rollout import rollout_batches
from llm_env.vector import TokenMDPVectorEnv
from reward_models.arithmetic_chain import steps_correct
from reward_models.prm import split_steps

StepChecker = Callable[[str, str], list[bool]]
STEP_CHECKERS: dict[str, StepChecker] = {"arithmetic_chain": steps_correct}
LABELS = ("gold", "rollouts")


@dataclass
class StepLabelConfig:
    """How completions are sampled and their steps labelled."""

    seed: int = 0
    """Seed of the prompt draw and of the sampling."""
    num_prompts: int = 512
    """Prompts drawn (with replacement) from the task's split."""
    samples_per_prompt: int = 1
    """Completions sampled per prompt."""
    labels: str = "gold"
    """gold (the task's step checker) | rollouts (Math-Shepherd: K continuations per step)."""
    rollouts: int = 4
    """K continuations from each step's end (labels=rollouts)."""
    min_success: float = 0.0
    """A step is good when the mean outcome of its continuations exceeds this (0 = any one)."""
    num_envs: int = 64
    """Sequences sampled in lockstep per rollout."""
    sampling: SamplingConfig = group(SamplingConfig)
    split: str = "train"
    """Prompt split of the task: train | eval."""
    precision: str = "fp32"
    """Rollout precision: auto | bf16 | fp32."""

    def __post_init__(self) -> None:
        for name in ("num_prompts", "samples_per_prompt", "rollouts", "num_envs"):
            check_positive(name, getattr(self, name))
        check_choice("labels", self.labels, LABELS)
        check_range("min_success", self.min_success, 0.0, 1.0, "[)")
        check_choice("split", self.split, ("train", "eval"))
        check_choice("precision", self.precision, PRECISIONS)


def gold_step_labels(
    checker: StepChecker, prompts: Sequence[str], completions: Sequence[str], separator: str
) -> list[list[bool]]:
    """The checker's verdict on each step of each completion (one per ``split_steps`` step)."""
    labels = []
    for prompt, completion in zip(prompts, completions):
        verdicts = [bool(v) for v in checker(prompt, completion)]
        steps = split_steps(completion, separator)
        if len(verdicts) != len(steps):
            raise ValueError(
                f"step checker gave {len(verdicts)} verdicts for the {len(steps)} steps of "
                f"{completion!r}: it must split at {separator!r} like split_steps"
            )
        labels.append(verdicts)
    return labels


def rollout_step_labels(
    model: torch.nn.Module,
    env: TokenMDPVectorEnv,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    prompts: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    outcomes: Sequence[float],
    k: int,
    min_success: float = 0.0,
    precision: str = "fp32",
) -> list[list[bool]]:
    """Math-Shepherd labels (module docstring) of the steps of each completion.

    ``completion_ids``: each completion's token ids (no EOS), as the policy generated them;
    ``outcomes``: each completion's own outcome reward (its last step's label).
    """
    tokenizer, separator = env.tokenizer, env.setup.task.step_separator
    texts = tokenizer.batch_decode([list(ids) for ids in completion_ids], skip_special_tokens=True)
    states: list[tuple[int, int]] = []  # (row, prefix length) after steps 1..n-1
    for row, (ids, text) in enumerate(zip(completion_ids, texts)):
        n = len(split_steps(text, separator))
        states += [(row, end) for end in step_ends(tokenizer, ids, separator)[: max(n - 1, 0)]]
    success = branch_values(
        model, env, sampling, generator, [prompts[r] for r, _ in states],
        [list(completion_ids[r][:end]) for r, end in states], k, lambda roll: roll.rewards,
        precision,
    ).mean(-1)  # fmt: skip
    labels: list[list[bool]] = [[] for _ in prompts]
    for (row, _), rate in zip(states, success.tolist()):
        labels[row].append(rate > min_success)
    for row, text in enumerate(texts):
        if split_steps(text, separator):
            labels[row].append(float(outcomes[row]) > min_success)
    return labels


def sample_completions(
    model: torch.nn.Module,
    env: TokenMDPVectorEnv,
    prompts: list[str],
    config: StepLabelConfig,
    generator: torch.Generator,
) -> tuple[list[str], list[list[int]], list[float]]:
    """One completion per prompt (batches of ``env.num_envs``): texts, token ids without EOS,
    outcome rewards."""
    texts, ids, outcomes = [], [], []
    precision = resolve_precision(config.precision, model=model)
    batches = rollout_batches(model, env, config.sampling, generator, prompts, config.seed,
                              precision, progress="sampling")  # fmt: skip
    for roll, n in batches:
        for i in range(n):
            length = int(roll.lengths[i]) - (roll.finish_reasons[i] == "eos")
            ids.append(roll.completion_ids[i, :length].tolist())
        texts += roll.completions[:n]
        outcomes += roll.rewards[:n].tolist()
    return texts, ids, outcomes


def sample_step_data(
    policy: str | Path | PreTrainedModel,
    tokenizer: str | Path | PreTrainedTokenizerBase | None,
    env_kwargs: dict,
    config: StepLabelConfig,
    checker: StepChecker | None = None,
) -> list[dict]:
    """Rows ``{"prompt", "completions", "labels"}`` sampled from ``policy`` and labelled as
    ``config.labels`` says. ``env_kwargs``: ``TokenMDPVectorEnv`` arguments (``task``,
    ``task_kwargs``, the outcome ``reward_model``); ``checker``: the gold step checker
    (default: the task's in ``STEP_CHECKERS``)."""
    model, tokenizer = load_policy(policy, tokenizer)
    kwargs = {**env_kwargs, "tokenizer": tokenizer, "split": config.split}
    env = TokenMDPVectorEnv(num_envs=config.num_envs, autoreset_mode="disabled", **kwargs)
    task = env.setup.task
    if not isinstance(task.step_separator, str):
        raise ValueError(f"task {task.name!r} has no step separator: its completions have no steps")
    if config.labels == "gold" and checker is None and task.name not in STEP_CHECKERS:
        raise ValueError(
            f"labels='gold': task {task.name!r} has no gold step checker (known: "
            f"{sorted(STEP_CHECKERS)}); pass checker= or use labels='rollouts'"
        )
    rng = np.random.default_rng(config.seed)
    pool = task.prompts(config.split)
    drawn = [pool[i] for i in rng.integers(0, len(pool), size=config.num_prompts)]
    prompts = [p for p in drawn for _ in range(config.samples_per_prompt)]
    generator = torch.Generator().manual_seed(config.seed)
    texts, ids, outcomes = sample_completions(model, env, prompts, config, generator)
    if config.labels == "gold":
        checker = checker or STEP_CHECKERS[task.name]
        labels = gold_step_labels(checker, prompts, texts, task.step_separator)
    else:
        labels = rollout_step_labels(
            model, env, config.sampling, generator, prompts, ids, outcomes, config.rollouts,
            config.min_success, resolve_precision(config.precision, model=model),
        )  # fmt: skip
    rows, seen = [], set()
    for prompt, text, verdicts in zip(prompts, texts, labels):
        steps = split_steps(text, task.step_separator)
        if steps and (prompt, text) not in seen:
            seen.add((prompt, text))
            rows.append({"prompt": prompt, "completions": steps, "labels": verdicts})
    return rows


def write_step_data(rows: list[dict], path: str | Path, config: StepLabelConfig) -> Path:
    """Write ``rows`` as JSONL (atomically) and ``<path>.meta.json`` (config and counts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
    labels = [v for r in rows for v in r["labels"]]
    meta = {
        "config": to_jsonable(config),
        "rows": len(rows),
        "steps": len(labels),
        "good_fraction": float(np.mean(labels)) if labels else float("nan"),
    }
    path.with_name(path.name + ".meta.json").write_text(json.dumps(meta, indent=2))
    return path
