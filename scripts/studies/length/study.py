"""The length study (``Study``): one SFT policy on ``arithmetic_reasoning``, then GRPO, Dr. GRPO,
DAPO, GSPO and CISPO from it on the same budget and seeds, each evaluated on held-out prompts as
it trains: pass@1, length (of right and of wrong answers), the share of completions that write
steps, the entropy of the sampled tokens (see ``scripts/length_study.py``)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from agents.evaluation import bootstrap_ci
from agents.maths.metrics import length_metrics
from agents.models.policy import SamplingConfig
from agents.sampling.online import score_rollout
from agents.sampling.rollout import rollout_batches
from llm_env.tasks import make_task
from llm_env.tasks.arithmetic_reasoning import writes_steps
from scripts.studies.factory import make_agent, study_config
from scripts.studies.heldout import EvalPoints, HeldoutSet
from scripts.studies.length.report import write_report

TASK = "arithmetic_reasoning"

METHODS: dict[str, tuple[str, dict]] = {
    "grpo": ("GRPO: (r − mean)/std in the group, token mean per sequence",
             {"loss_type": "grpo", "scale_rewards": "group"}),
    "dr_grpo": ("Dr. GRPO: r − mean, token sum over a constant",
                {"loss_type": "dr_grpo", "scale_rewards": "none"}),
    "dapo": ("DAPO: token mean over the batch, clip-higher ε_high 0.28, soft over-long penalty",
             {"loss_type": "dapo", "clip_eps_high": 0.28, "overlong": "soft_penalty"}),
    "gspo": ("GSPO: one clipped sequence-level ratio (ε 3e-4 / 4e-4), sequence mean",
             {"loss_type": "grpo", "importance_sampling_level": "sequence"}),
    "cispo": ("CISPO: stop-gradient weight min(ρ, 5) on log π, token mean",
              {"loss_type": "cispo"}),
}  # fmt: skip
"""name → (description, the ``GRPOConfig`` options that make the variant)."""
Method = Literal[tuple(METHODS)]  # the choices of --methods

OVERLONG_BUFFER = 4
"""Tokens beyond the task's longest step-by-step answer that every run's env allows: DAPO's
soft over-long penalty ramps over them, so no complete answer is ever penalised."""
EVAL_SEED = 12345
"""The evaluation samples' random stream, the same at every point (common random numbers)."""


@dataclass(frozen=True)
class Budget:
    """Sizes of every stage (``DEFAULT`` or ``QUICK``)."""

    model: dict
    task: dict
    sft_steps: int
    rl_prompts: int  # per RL run; each sampled group_size times
    batch_size: int  # prompts per iteration
    group_size: int
    minibatch_size: int  # completions per optimiser step
    eval_every: int  # iterations
    eval_repeats: int  # samples per held-out prompt


# Chosen on seed 0 (GRPO and Dr. GRPO, up to 1,024 prompts): lr 3e-4 with minibatches of 16
# collapsed pass@1 (0.60 → 0.17, KL 8), lr 2e-5–5e-5 left it flat, lr 1e-4 with minibatches of 64
# (two optimiser steps per iteration: the second is off-policy, so the clips act) stayed stable.
DEFAULT = Budget(
    model={"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 64},
    task={"num_terms": 6, "max_operand": 9}, sft_steps=800,
    rl_prompts=768, batch_size=16, group_size=8, minibatch_size=64, eval_every=8,
    eval_repeats=2,
)  # fmt: skip
QUICK = Budget(
    model={"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 64},
    task={"num_terms": 3, "max_operand": 9, "num_problems": 200}, sft_steps=10,
    rl_prompts=8, batch_size=2, group_size=2, minibatch_size=2, eval_every=1, eval_repeats=1,
)  # fmt: skip


@dataclass
class StudyConfig:
    """Options of the length study."""

    out: str = "runs/length_study"
    """Output directory: the SFT model, agents' runs, report.md, results.json, length.png."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of the RL runs (every method runs each; the SFT stage uses the first)."""
    methods: tuple[Method, ...] = tuple(METHODS)
    """The GRPO variants to compare."""
    quick: bool = False
    """A miniature study for smoke tests (seconds)."""
    prompt_budget: int = 0
    """Prompts each RL run trains on (each sampled group_size times); 0 = the mode's."""
    learning_rate: float = 1e-4
    """AdamW learning rate of every RL run."""
    beta: float = 0.0
    """KL coefficient (k3 in the loss) of every RL run; 0, as DAPO, Dr. GRPO and GSPO train."""
    steps_fraction: float = 0.1
    """Share of the SFT demonstrations written step by step (the rest answer directly)."""
    threads: int = 1
    """Torch threads per process (0 = every core; the tiny models gain little from more than
    one)."""
    workers: int = 2
    """RL runs trained at the same time, one process each (1 = in this process, one by one);
    the results are the same whatever the number."""
    task_kwargs: dict = field(default_factory=dict)
    """Task options on top of the mode's (``{"num_terms": 5}``; ``make_task`` checks them)."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"--methods {','.join(self.methods)}: unknown method "
                             f"{', '.join(unknown)}; choose from {', '.join(METHODS)}")  # fmt: skip
        for option, value in (("--prompt-budget", self.prompt_budget), ("--threads", self.threads),
                              ("--beta", self.beta)):  # fmt: skip
            if value < 0:
                raise ValueError(f"{option} {value}: must be >= 0")
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers}: must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate {self.learning_rate}: must be > 0")
        if not 0 <= self.steps_fraction <= 1:
            raise ValueError(f"--steps-fraction {self.steps_fraction}: must be in [0, 1]")


class Evaluator(HeldoutSet):
    """One sample per held-out prompt (× repeats) at temperature 1, the same random stream at
    every call: pass@1 (and its bootstrap CI), mean length in tokens (EOS included), share
    that writes steps, entropy of the sampled tokens (the token mean of π's exact entropy over
    the vocabulary at each generated position), k1 KL to the SFT policy per completion, and the
    length picture (``length_metrics``: right vs wrong answers, share cut at the limit)."""

    sampling = SamplingConfig(share_prompts=False)  # full passes: the published numbers' rounding

    def __call__(self, policy) -> dict:
        vocab = len(self.env.tokenizer)
        generator = torch.Generator().manual_seed(EVAL_SEED)
        gold, lengths, ended, steps, kls = [], [], [], [], []
        entropy_sum, tokens = 0.0, 0.0
        batches = rollout_batches(
            policy, self.env, self.sampling, generator, self.prompts, EVAL_SEED
        )
        for batch, n in batches:
            scores = score_rollout(policy, self.ref, batch, self.sampling, "fp32", vocab)
            mask = batch.completion_mask[:n]
            entropy_sum += float((scores.entropy[:n] * mask).sum())
            tokens += float(mask.sum())
            kl = ((batch.logprobs - scores.ref_logprobs) * batch.completion_mask).sum(-1)
            kls.append(kl[:n].numpy())
            gold.append(batch.gold_rewards[:n].numpy())
            lengths.append(batch.lengths[:n].numpy())
            ended.append(batch.terminated[:n].numpy())
            steps += [writes_steps(c) for c in batch.completions[:n]]
        gold, lengths = np.concatenate(gold), np.concatenate(lengths)
        picture = length_metrics(lengths, np.concatenate(ended), gold)
        low, high = bootstrap_ci(gold)
        return {
            "pass1": float(gold.mean()), "pass1_ci": [low, high],
            "length": float(lengths.mean()), "steps_share": float(np.mean(steps)),
            "entropy": entropy_sum / tokens, "kl": float(np.concatenate(kls).mean()),
            "length_right": picture.get("length/rewarded"),
            "length_wrong": picture.get("length/unrewarded"),
            "clipped_fraction": picture["length/clipped_fraction"],
        }  # fmt: skip


class Study:
    """The stages, in order: sft → every method × seed (evaluated as it trains) → report."""

    def __init__(self, config: StudyConfig):
        self.config = config
        self.budget = QUICK if config.quick else DEFAULT
        if config.prompt_budget:
            self.budget = dataclasses.replace(self.budget, rl_prompts=config.prompt_budget)
        self.out = Path(config.out)
        self.models, self.runs = self.out / "models", self.out / "runs"
        self.task_kwargs = {**self.budget.task, "steps_fraction": config.steps_fraction,
                            **config.task_kwargs}  # fmt: skip
        task = make_task(TASK, **self.task_kwargs)
        self.env_kwargs = {"task": TASK, "task_kwargs": self.task_kwargs,
                           "max_new_tokens": task.max_new_tokens + OVERLONG_BUFFER}  # fmt: skip
        if (
            task.max_prompt_tokens + task.max_new_tokens + OVERLONG_BUFFER
            > self.budget.model["n_positions"]
        ):
            raise ValueError(
                f"task {self.task_kwargs}: prompts of up to {task.max_prompt_tokens} tokens and "
                f"{task.max_new_tokens + OVERLONG_BUFFER} new ones exceed the model's "
                f"{self.budget.model['n_positions']} positions; choose a shorter chain"
            )
        self.results: dict = {
            "config": dataclasses.asdict(config), "budget": dataclasses.asdict(self.budget),
            "methods": {m: METHODS[m][0] for m in config.methods},
            "task": {"name": TASK, **self.task_kwargs, "eval_prompts": len(task.eval_prompts),
                     "max_new_tokens": self.env_kwargs["max_new_tokens"]},
            "runs": [],
        }  # fmt: skip

    def log(self, text: str) -> None:
        print(f"== length-study: {text}", flush=True)

    def train_sft(self) -> Path:
        from agents.sft import pretrain_on_task

        options = {"seed": self.config.seeds[0], "max_steps": self.budget.sft_steps,
                   "batch_size": 32, "epochs": 1000.0, "heldout_fraction": 0.0, "log_every": 0,
                   "save_every": 0, "max_length": self.budget.model["n_positions"]}  # fmt: skip
        path = self.models / "sft"
        pretrain_on_task(TASK, self.task_kwargs, path, study_config("sft", options),
                         self.runs / "sft", self.budget.model)  # fmt: skip
        return path

    def agent(self, method: str, seed: int, sft: Path):
        """The GRPO agent of ``method``: the shared sizes and hyper-parameters, then the
        variant's options (``METHODS``), from the studies' factory."""
        b = self.budget
        config = study_config("grpo", {
            "seed": seed, "total_prompts": b.rl_prompts, "batch_size": b.batch_size,
            "group_size": b.group_size, "minibatch_size": b.minibatch_size, "precision": "fp32",
            "log_every": 1, "save_every": 0, "optim.learning_rate": self.config.learning_rate,
            "optim.warmup_steps": 5, "kl.beta": self.config.beta, "kl.kl_estimator": "k3",
            "overlong_buffer": OVERLONG_BUFFER, **METHODS[method][1],
        })  # fmt: skip
        return make_agent("grpo", sft, None, self.env_kwargs, config,
                          self.runs / f"{method}-seed{seed}")  # fmt: skip

    def train(self, method: str, seed: int, sft: Path, evaluator: Evaluator | None = None) -> dict:
        """One RL run, evaluated (by ``evaluator``, or a new one) every ``eval_every`` iterations
        and at the end."""
        evaluator = evaluator or Evaluator(sft, self.budget.eval_repeats, self.env_kwargs)
        agent = self.agent(method, seed, sft)
        points = EvalPoints(evaluator, self.budget.eval_every, self.budget.group_size)
        tic = time.perf_counter()
        agent.learn(callback=points)
        return {"method": method, "seed": seed, "points": points.points,
                "seconds": time.perf_counter() - tic}  # fmt: skip

    def train_all(self, sft: Path, evaluator: Evaluator) -> list[dict]:
        """Every seed × method, in that order; ``workers`` at a time in their own processes."""
        jobs = [(m, s) for s in self.config.seeds for m in self.config.methods]
        if self.config.workers == 1:
            runs = []
            for method, seed in jobs:
                self.log(f"{method}, seed {seed}")
                runs.append(self.train(method, seed, sft, evaluator))
            return runs
        self.log(f"{len(jobs)} runs, {self.config.workers} at a time")
        context = multiprocessing.get_context("spawn")  # a fresh torch in each worker
        with ProcessPoolExecutor(self.config.workers, mp_context=context) as pool:
            futures = [pool.submit(train_in_worker, self.config, self.budget, m, s, sft)
                       for m, s in jobs]  # fmt: skip
            return [f.result() for f in futures]

    def run(self) -> dict:
        started = time.perf_counter()
        self.log("sft")
        sft = self.train_sft()
        self.results["sft_seconds"] = time.perf_counter() - started
        evaluator = Evaluator(sft, self.budget.eval_repeats, self.env_kwargs)
        self.results["sft"] = {"completions": 0, **evaluator(evaluator.ref)}
        self.results["runs"] = self.train_all(sft, evaluator)
        self.results["seconds"] = time.perf_counter() - started
        write_report(self.results, self.out)
        return self.results


def train_in_worker(config: StudyConfig, budget: Budget, method: str, seed: int, sft: Path):
    """``Study.train`` in a worker process (its own torch threads, the study's budget)."""
    from agents.harness.distributed import set_num_threads

    set_num_threads(config.threads or None)
    study = Study(config)
    study.budget = budget
    study.log(f"{method}, seed {seed}")
    return study.train(method, seed, sft)
