"""``tokenmdp pipeline``: the whole RLHF-vs-DPO study on a built-in task or your own data
(``--prompts``, ``--corpus``, ``--gold-reward``), end to end, offline.

Stages are keyed by their inputs: the options and stage sizes a stage uses and the keys of the
stages it builds on, hashed (sha256 of canonical JSON). A finished stage leaves
``stages/<stage>.json`` holding its key and is reused only while the key matches; an unfinished
stage with the same key resumes (its agent from its last checkpoint). When the key changed, the
stage's outputs (its agent's run directory, the models or pairs it wrote) are deleted and it is
rerun from scratch, and so, through their keys, are the stages downstream of it.
``stages/<stage>.inputs.json`` records the inputs of the stage's latest attempt, to say what
changed. The stages:

1. ``sft``: build the task tokenizer and a tiny GPT-2; pre-train / SFT it on the task corpus.
   ``judge``: another tiny GPT-2, another seed, fewer steps: the fluency judge of step 4.
2. ``preferences``: sample k completions per prompt from the SFT policy through the env, label
   pairs with Bradley–Terry noise on the gold reward.  ``reward_model``: train the BT model.
   ``best_of_n``: N samples per held-out prompt from the SFT policy, scored by the learned and
   the gold reward: the best-of-n curve (``scripts.frontier``).
3. ``ppo``, ``reinforce``, ``grpo`` (against the learned reward model) and ``dpo`` (on the
   pairs), from the same SFT checkpoint with the same prompt budget, each at every β of the
   sweep (default 0.03, 0.1, 0.3, 1: the points of its frontier); optionally ``ppo_gold``.
   On a verifiable task (``--task arithmetic``: two-digit sums, SFT on 500 demonstrations)
   there is no reward model: the RL methods train against the verifier itself and DPO's pairs
   are labelled by it (RL from verifiable rewards); the evaluation adds pass@k.
4. ``evaluate``: every final policy and the SFT policy on held-out prompts through the env, by
   the evaluation suite (``agents.common.evaluate.evaluate_policies``).
5. ``report``: ``report.md``, ``results.json`` and PNG plots in the run directory, with the
   frontier section (best-of-n, Gao et al. fits) of ``scripts.frontier``.

A user's own task is the ``jsonl`` task with a corpus: the corpus trains the tokenizer and the
policy, the gold reward labels the pairs and grades the study; the built-in tasks are presets
(``TaskPreset``) of the same path. The run prints an estimate of its time first, from measured
per-stage rates (``Budget.seconds``) and the stages its keys say will run. Every agent trains
the study's tiny GPT-2s with the tiny-model settings of ``agents.presets`` (the agents' own
defaults are a pretrained checkpoint's).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agents.common.config import add_dataclass_args, build_config, dataclass_from_args
from scripts.options import check_writable

METHODS = ("ppo", "reinforce", "grpo", "dpo")


@dataclass
class PipelineConfig:
    """Options of the whole study."""

    out: str = "runs/pipeline"
    """Run directory: agents' TensorBoard events, models, report.md, results.json, plots."""
    task: str = ""
    """Built-in task to run the study on (empty: sentiment, or your own task with --prompts)."""
    prompts: str = ""
    """Your own task: a JSONL file of {"prompt": ...} lines (with --corpus and --gold-reward)."""
    corpus: str = ""
    """Your own task's text: a JSONL file of {"text": ...} lines; it trains the tokenizer and
    pre-trains (SFT) the policy."""
    gold_reward: str = ""
    """Your own task's gold reward: a registered name, a saved reward-model directory, or
    file.py:callable / module:callable (a class, an object with score(), or a function
    f(prompts, completions, **kwargs) -> list[float]); from Python, the function itself."""
    eval_prompts: str = ""
    """Your own task's held-out prompts (JSONL like --prompts); default: the training prompts."""
    seed: int = 0
    """Seed for every stage."""
    quick: bool = False
    """A miniature study (well under two minutes) for smoke tests."""
    methods: str = "ppo,reinforce,grpo,dpo"
    """Comma-separated methods trained from the SFT policy."""
    ppo_gold: bool = False
    """Also run PPO against the gold reward directly (no learned reward model)."""
    betas: str = ""
    """Comma-separated KL coefficients every method runs at: the points of its frontier (empty:
    the task's default sweep, 0.03,0.1,0.3,1 on sentiment and your own task; "default": one run
    per method at its own default β)."""
    prompt_budget: int = 0
    """Prompts per RL method (DPO: preference pairs consumed); 0 = the default for the mode."""
    eval_size: int = 0
    """Held-out completions (prompts cycled) per evaluated policy; 0 = the default for the mode."""
    best_of_n: int = -1
    """Largest n of the best-of-n reference curve (a power of two; 0: none; -1: the default)."""
    precision: str = "fp32"
    """Matmul precision for training: fp32, bf16 or auto (bf16 where supported). The tiny default
    models train faster in fp32 on CPU; bf16 pays off for larger models."""

    def __post_init__(self):
        """Reject bad options before any stage runs, naming the option, value and choices."""
        from agents.common.precision import PRECISIONS
        from llm_env.tasks import TASKS

        self.check_own_task()
        tasks = sorted(set(TASKS) - {"jsonl"})  # jsonl: through --prompts/--corpus/--gold-reward
        if self.task not in tasks and not self.prompts:
            raise ValueError(f"--task {self.task!r}: unknown task; choose from {', '.join(tasks)}"
                             " (or bring your own with --prompts, --corpus, --gold-reward)")  # fmt: skip
        unknown = [m for m in split_list(self.methods) if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods {self.methods!r}: unknown method {', '.join(unknown)}; "
                             f"choose from {', '.join(METHODS)}")  # fmt: skip
        parse_betas(self.betas)
        for option, value in (("--prompt-budget", self.prompt_budget),
                              ("--eval-size", self.eval_size)):  # fmt: skip
            if value < 0:
                raise ValueError(f"{option} {value}: must be >= 0 (0 = the default for the mode)")
        if self.best_of_n not in (-1, 0) and not (
            self.best_of_n >= 1 and self.best_of_n & (self.best_of_n - 1) == 0
        ):
            raise ValueError(f"--best-of-n {self.best_of_n}: must be a power of two (1, 2, 4, "
                             "…), 0 (no best-of-n curve) or -1 (the default)")  # fmt: skip
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: choose from {', '.join(PRECISIONS)}")

    def check_own_task(self) -> None:
        """``--prompts`` needs ``--corpus`` and ``--gold-reward`` and excludes ``--task``; every
        file is read (a bad row names its file and line) and the gold reward resolved now."""
        own = {"--prompts": self.prompts, "--corpus": self.corpus,
               "--gold-reward": self.gold_reward, "--eval-prompts": self.eval_prompts}  # fmt: skip
        if not self.prompts:
            given = [option for option, value in own.items() if value]
            if given:
                raise ValueError(f"{given[0]} is an option of your own task: give --prompts "
                                 "(and --corpus, --gold-reward) too")  # fmt: skip
            self.task = self.task or "sentiment"
            return
        missing = [o for o in ("--corpus", "--gold-reward") if not own[o]]
        if missing:
            raise ValueError(f"--prompts needs {' and '.join(missing)}: the corpus trains the "
                             "tokenizer and the policy, the gold reward scores the study")  # fmt: skip
        if self.task not in ("", "jsonl"):
            raise ValueError(f"--task {self.task!r} and --prompts: choose a built-in task or "
                             "your own prompts, not both")  # fmt: skip
        self.task = "jsonl"
        from llm_env.tasks import make_task
        from reward_models import load_reward_model

        make_task("jsonl", **own_task_kwargs(self))
        load_reward_model(self.gold_reward)

    def task_identity(self) -> dict:
        """What the stage keys know of your own task: each file's sha256 (a changed file reruns
        every stage) and the gold reward's name; empty for a built-in task."""
        if not self.prompts:
            return {}
        gold = self.gold_reward
        if not isinstance(gold, str):  # a Python object: its import path, stable across runs
            gold = f"{getattr(gold, '__module__', '?')}.{getattr(gold, '__qualname__', type(gold).__name__)}"
        files = {name: (file_sha256(path) if path else None) for name, path in (
            ("prompts", self.prompts), ("corpus", self.corpus), ("eval_prompts", self.eval_prompts))}  # fmt: skip
        return {"files": files, "gold_reward": gold}


def own_task_kwargs(config: PipelineConfig) -> dict:
    """The ``jsonl`` task of ``--prompts/--corpus/--gold-reward/--eval-prompts``."""
    return {"path": config.prompts, "eval_path": config.eval_prompts or None,
            "corpus": config.corpus, "gold_reward": config.gold_reward}  # fmt: skip


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class TaskPreset:
    """How the study runs on a built-in task."""

    task_kwargs: dict = field(default_factory=dict)
    """Options of the task (e.g. harder arithmetic, few demonstrations)."""
    verifier: bool = False
    """RL from verifiable rewards: the RL methods train against the task's gold reward itself
    (no learned reward model); DPO's pairs are labelled by it (ties dropped)."""
    sft_epochs: float = 2.0
    """Passes over the demonstrations at most (the SFT budget is its steps)."""
    sft_steps: int | None = None
    """SFT steps (None: the budget's)."""
    pref_k: int | None = None
    """Samples per prompt for the preference pairs (None: the budget's)."""
    label_temperature: float = 0.1
    """Bradley–Terry temperature of the preference labels (0: argmax)."""
    samples_per_prompt: int = 1
    """Held-out samples per prompt; > 1 reports pass@k with k = this."""
    ppo: dict = field(default_factory=dict)
    """PPO options on top of the tiny-model settings (``agents.presets``), flat (``"lam"``,
    ``"optim.learning_rate"``)."""
    betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    """The β sweep every method runs at (empty: each method's default β, one run). β = 1 puts
    points at small KL, where best-of-n is the curve to beat; RL runs are ~80% of the study's
    time (measured), DPO runs ~4%."""
    best_of_n: int = 64
    """Largest n of the best-of-n curve (0: none)."""


# PPO on a 0/1 verifier with ~3-token answers: λ = 1 (Monte-Carlo advantages, the critic only a
# baseline) and a 5e-5 learning rate with warm-up. Chosen on seed 0 among six settings (README,
# "RL from verifiable rewards"); PPOConfig's 3e-4 collapsed (pass@1 0.10) and 1e-4 stayed at SFT's.
ARITHMETIC_PPO = {"lam": 1.0, "optim.learning_rate": 5e-5, "optim.warmup_steps": 5}

# Two-digit sums with carries from 500 demonstrations: 600 SFT steps leave pass@1 ≈ 0.43 on
# held-out sums (measured, seed 0), room for RL from the verifier.
PRESETS = {
    "arithmetic": TaskPreset(
        {"max_operand": 99, "num_demonstrations": 500}, verifier=True, sft_epochs=1000.0,
        sft_steps=600, pref_k=4, label_temperature=0.0, samples_per_prompt=4,
        ppo=ARITHMETIC_PPO, betas=(), best_of_n=16,
    ),
    "arithmetic_chain": TaskPreset(
        verifier=True, pref_k=4, label_temperature=0.0, samples_per_prompt=4, betas=(),
        best_of_n=16,
    ),
}  # fmt: skip


QUICK_PRESETS = {"arithmetic": {"task_kwargs": {"max_operand": 9}, "sft_steps": 150}}


def split_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated option."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_betas(text: str) -> list[float]:
    """``--betas`` as floats; a ``ValueError`` names the option and the bad item."""
    betas = []
    if text.strip() == "default":
        return betas
    for item in split_list(text):
        try:
            beta = float(item)
        except ValueError:
            beta = math.nan
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"--betas {text!r}: {item!r} is not a positive number; give "
                             "comma-separated KL coefficients > 0, e.g. 0.02,0.1")  # fmt: skip
        betas.append(beta)
    return betas


def stage_key(inputs: dict) -> str:
    """sha256 of the canonical JSON of a stage's inputs."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def describe_changes(old: dict, new: dict) -> str:
    """``"seed 0 → 1, sft changed"``: the inputs that differ, upstream stages by name."""
    changes = [f"{name} changed" for name in new.get("upstream", {})
               if old.get("upstream", {}).get(name) != new["upstream"][name]]  # fmt: skip
    changes += [f"{k} {old.get(k)} → {new.get(k)}" for k in sorted(old.keys() | new.keys())
                if k != "upstream" and old.get(k) != new.get(k)]  # fmt: skip
    return ", ".join(changes) or "upstream stages removed"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


@dataclass
class Budget:
    """Stage sizes for the default and the quick study."""

    sft_steps: int
    sft_batch: int
    pref_prompts: int
    pref_k: int
    rm_epochs: int
    rl_prompts: int
    rl_batch: int
    dpo_epochs: int
    dpo_eval_every: int
    dpo_eval_prompts: int
    eval_prompts: int
    judge_steps: int
    bon_prompts: int
    bon_n_max: int
    model: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    """Measured wall time of each kind of stage at these sizes on 2 quiet cores (sentiment):
    the estimate printed at the start of a run."""


DEFAULT = Budget(sft_steps=1000, sft_batch=64, pref_prompts=2048, pref_k=2, rm_epochs=2,
                 rl_prompts=4096, rl_batch=64, dpo_epochs=2, dpo_eval_every=16,
                 dpo_eval_prompts=64, eval_prompts=512, judge_steps=100, bon_prompts=64,
                 bon_n_max=64, model={"n_layer": 2, "n_head": 4, "n_embd": 128},
                 seconds={"sft": 49, "judge": 9, "preferences": 4, "reward_model": 8,
                          "best_of_n": 6, "ppo": 47, "reinforce": 50, "grpo": 49, "dpo": 10,
                          "evaluate": 1.5})  # fmt: skip
QUICK = Budget(sft_steps=40, sft_batch=32, pref_prompts=64, pref_k=2, rm_epochs=1,
               rl_prompts=64, rl_batch=16, dpo_epochs=1, dpo_eval_every=1,
               dpo_eval_prompts=16, eval_prompts=32, judge_steps=10, bon_prompts=8,
               bon_n_max=8, model={"n_layer": 1, "n_head": 2, "n_embd": 64},
               seconds={"sft": 3, "judge": 2, "preferences": 0.3, "reward_model": 0.3,
                        "best_of_n": 0.3, "ppo": 0.5, "reinforce": 0.5, "grpo": 0.5, "dpo": 0.3,
                        "evaluate": 0.1})  # fmt: skip


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def measured(run_dir: Path):
    """Write ``resources.json`` (wall time, peak RSS during the block) into ``run_dir``."""
    try:  # reset the peak-RSS counter (Linux >= 4.0) so the peak is this stage's own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    start = time.perf_counter()
    yield
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resources.json").write_text(
        json.dumps({"wall_time_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()})
    )


@dataclass
class Stage:
    """One stage of the study: its inputs (hashed into its key with the keys of the stages
    ``after``), its work, and the outputs deleted when its key changes."""

    name: str
    inputs: dict
    fn: Callable[[], dict]
    outputs: list[Path]
    after: Sequence[str] = ()


class Pipeline:
    """Runs the stages in order, reusing those finished earlier with the same inputs."""

    def __init__(self, config: PipelineConfig):
        check_writable(config.out, "--out")
        self.config = config
        self.budget = QUICK if config.quick else DEFAULT
        if config.prompt_budget:
            self.budget = dataclasses.replace(self.budget, rl_prompts=config.prompt_budget)
        if config.eval_size:
            self.budget = dataclasses.replace(self.budget, eval_prompts=config.eval_size)
        self.out = Path(config.out)
        self.stages = self.out / "stages"
        self.agents_dir = self.out / config.task
        self.sft_dir = self.out / "models" / "sft"
        self.rm_dir = self.out / "models" / "reward_model"
        self.judge_dir = self.out / "models" / "judge"
        self.pairs = self.out / "data" / "preferences.jsonl"
        self.preset = PRESETS.get(config.task, TaskPreset())
        if config.quick:  # the miniature study: quick sizes (single-digit sums on arithmetic)
            self.preset = dataclasses.replace(self.preset, **QUICK_PRESETS.get(config.task, {}))
        self.task_kwargs = own_task_kwargs(config) if config.prompts else self.preset.task_kwargs
        n_max = self.preset.best_of_n if config.best_of_n < 0 else config.best_of_n
        self.bon_n_max = min(n_max, self.budget.bon_n_max) if config.best_of_n < 0 else n_max
        self.bon_path = self.out / "data" / "best_of_n.json"
        self.keys: dict[str, str] = {}  # stage name -> key, filled as the stages run

    # -- stage bookkeeping -----------------------------------------------------------------------
    def finished(self, stage: Stage) -> dict | None:
        """The record of an earlier run of ``stage`` that finished with the same key, or None."""
        marker = self.stages / f"{stage.name}.json"
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        return done if done.get("key") == self.keys[stage.name] else None

    def stage(self, stage: Stage) -> dict:
        """Run ``stage`` unless a finished run of it has the same key (``plan`` set the keys);
        a changed key first deletes its outputs."""
        name, inputs, key = stage.name, stage.inputs, self.keys[stage.name]
        marker = self.stages / f"{name}.json"
        record = self.stages / f"{name}.inputs.json"
        done = self.finished(stage)
        if done is not None:
            print(f"== {name}: done earlier with the same inputs, reusing {marker}")
            return done
        previous = json.loads(record.read_text()) if record.is_file() else {}
        if previous.get("key") == key:
            print(f"== {name}: unfinished earlier with the same inputs, resuming")
        elif previous or marker.is_file() or any(p.exists() for p in stage.outputs):
            why = (f"inputs changed ({describe_changes(previous['inputs'], inputs)})"
                   if previous else "no record of its inputs")  # fmt: skip
            print(f"== {name}: {why}, rerunning")
            marker.unlink(missing_ok=True)
            for path in stage.outputs:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        else:
            print(f"== {name}")
        self.stages.mkdir(parents=True, exist_ok=True)
        write_json(record, {"key": key, "inputs": inputs})
        start = time.perf_counter()
        result = stage.fn() or {}
        result["seconds"] = time.perf_counter() - start
        result["key"] = key
        write_json(marker, result)
        print(f"   {name} finished in {result['seconds']:.0f}s")
        return result

    def methods(self) -> list[tuple[str, str, float | None]]:
        """(agent, run name, beta) for every RL/DPO run of the study."""
        names = split_list(self.config.methods) + (["ppo_gold"] if self.config.ppo_gold else [])
        betas = parse_betas(self.config.betas)
        if not betas and self.config.betas.strip() != "default":
            betas = list(self.preset.betas)
        return [
            (m, m if b is None else f"{m}-beta{b:g}", b) for m in names for b in betas or [None]
        ]

    def method_dir(self, agent: str, name: str) -> Path:
        return self.agents_dir / f"{agent.replace('_gold', '')}-{name}"

    # -- the study -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Every stage, then the report on this study's runs (not stale ones in ``--out``)."""
        evals = self.run_stages()
        bon = json.loads(self.bon_path.read_text()) if self.bon_n_max else None
        from scripts.report import find_agent_runs, markdown_table, write_report

        run_dirs = [self.agents_dir / "sft-pretrain", self.agents_dir / "sft-judge"]
        if not self.preset.verifier:
            run_dirs.append(self.agents_dir / "rm-bradley_terry")
        run_dirs += [self.method_dir(agent, name) for agent, name, _ in self.methods()]
        runs = find_agent_runs(sorted(run_dirs))
        results = write_report(runs, evals, self.out, best_of_n=bon)
        print(markdown_table(
            evals, [("name", "policy", 0), ("gold_reward", "gold", 3),
                    ("learned_reward", "learned", 3), ("kl_ref", "KL", 2), ("length", "len", 1),
                    ("judge_ppl", "judge ppl", 2), ("distinct_2", "distinct-2", 3),
                    ("pass_at_k", "pass@k", 3)],
        ))  # fmt: skip
        print(f"\nreport: {self.out / 'report.md'}   tensorboard --logdir {self.out}")
        return results

    def plan(self) -> list[Stage]:
        """Every stage of the study, in order, with its inputs and the stages it builds on."""
        c, b, preset = self.config, self.budget, self.preset
        sft = {"task": c.task, "seed": c.seed, "precision": c.precision,
               "steps": preset.sft_steps or b.sft_steps, "batch": b.sft_batch, "model": b.model,
               "preset": {"task_kwargs": preset.task_kwargs, "verifier": preset.verifier,
                          "sft_epochs": preset.sft_epochs, "sft_steps": preset.sft_steps,
                          "pref_k": preset.pref_k, "label_temperature": preset.label_temperature,
                          "samples_per_prompt": preset.samples_per_prompt}}  # fmt: skip
        if c.prompts:  # your own task: its files' hashes and gold reward
            sft["own_task"] = c.task_identity()
        judge = {**sft, "seed": c.seed + 1, "steps": b.judge_steps}
        prefs = {"task": c.task, "seed": c.seed, "prompts": b.pref_prompts,
                 "k": preset.pref_k or b.pref_k, "preset": sft["preset"]}  # fmt: skip
        meta = self.pairs.with_name(self.pairs.name + ".meta.json")
        plan = [
            Stage("sft", sft, self.train_sft, [self.agents_dir / "sft-pretrain", self.sft_dir]),
            Stage("judge", judge, self.train_judge, [self.agents_dir / "sft-judge", self.judge_dir]),
            Stage("preferences", prefs, self.make_preferences, [self.pairs, meta], ["sft"]),
        ]  # fmt: skip
        rm_stage = [] if preset.verifier else ["reward_model"]
        if not preset.verifier:
            rm = {"seed": c.seed, "precision": c.precision, "epochs": b.rm_epochs}
            rm_outputs = [self.agents_dir / "rm-bradley_terry", self.rm_dir]
            plan.append(Stage("reward_model", rm, self.train_reward_model, rm_outputs,
                              ["sft", "preferences"]))  # fmt: skip
        if self.bon_n_max:
            bon = {"task": c.task, "seed": c.seed, "prompts": b.bon_prompts,
                   "n_max": self.bon_n_max}  # fmt: skip
            plan.append(
                Stage("best_of_n", bon, self.best_of_n, [self.bon_path], ["sft", *rm_stage])
            )
        for agent, name, beta in self.methods():
            inputs = {"agent": agent, "beta": beta, "task": c.task, "seed": c.seed,
                      "precision": c.precision}  # fmt: skip
            if agent.startswith("ppo") and preset.ppo:
                inputs["ppo"] = preset.ppo
            if agent == "dpo":
                inputs |= {"epochs": b.dpo_epochs, "eval_every": b.dpo_eval_every,
                           "eval_prompts": b.dpo_eval_prompts}  # fmt: skip
                after = ["sft", "preferences"]
            else:
                inputs |= {"prompts": b.rl_prompts, "batch": b.rl_batch}
                after = ["sft"] + ([] if agent == "ppo_gold" else rm_stage)
            train = functools.partial(self.train_method, agent, name, beta)
            plan.append(Stage(name, inputs, train, [self.method_dir(agent, name)], after))
        evaluate = {"task": c.task, "seed": c.seed, "prompts": b.eval_prompts,
                    "samples_per_prompt": preset.samples_per_prompt}  # fmt: skip
        after = ["sft", "judge", *rm_stage] + [name for _, name, _ in self.methods()]
        plan.append(Stage("evaluate", evaluate, self.evaluate, [], after))
        for stage in plan:  # keys: the inputs plus the keys of the stages built on
            stage.inputs["upstream"] = {name: self.keys[name] for name in stage.after}
            self.keys[stage.name] = stage_key(stage.inputs)
        return plan

    def estimate(self, plan: list[Stage]) -> tuple[float, str]:
        """Seconds the stages of ``plan`` not finished with the same key will take, at the
        measured rates of ``Budget.seconds``, and how that adds up."""
        cost = self.budget.seconds
        todo = [stage.name for stage in plan if self.finished(stage) is None]
        kinds = [name.split("-beta")[0].replace("_gold", "") for name in todo]
        policies = (1 + len(self.methods())) if "evaluate" in todo else 0
        kinds = [k for k in kinds if k != "evaluate"] + ["evaluate"] * policies
        total = sum(cost.get(k, 0.0) for k in kinds)
        parts = [f"{k} {cost.get(k, 0.0):.2g}s" + (f" ×{kinds.count(k)}" if kinds.count(k) > 1 else "")
                 for k in dict.fromkeys(kinds)]  # fmt: skip
        return total, ", ".join(parts) or "nothing left to run"

    def run_stages(self) -> list[dict]:
        """Train and evaluate (each stage keyed by its inputs); the evaluations."""
        from agents.common.policy import set_num_threads

        set_num_threads()
        plan = self.plan()
        total, parts = self.estimate(plan)
        print(f"== estimate: ~{total / 60:.1f} min on 2 quiet cores at the sentiment study's "
              f"measured rates ({parts}); finished stages are reused")  # fmt: skip
        results = {stage.name: self.stage(stage) for stage in plan}
        return results["evaluate"]["evaluations"]

    def train_sft(self, name: str = "pretrain", seed_offset: int = 0, steps: int = 0) -> dict:
        """Pre-train a tiny GPT-2 on the task corpus: the SFT policy, or (another seed, fewer
        steps) the fluency judge."""
        from agents.presets import tiny_model_config
        from agents.sft import SFTConfig, pretrain_on_task

        run_dir = self.agents_dir / f"sft-{name}"
        out = self.judge_dir if name == "judge" else self.sft_dir
        config = tiny_model_config(
            "sft", SFTConfig,
            seed=self.config.seed + seed_offset,
            max_steps=steps or self.preset.sft_steps or self.budget.sft_steps,
            epochs=self.preset.sft_epochs,
            batch_size=self.budget.sft_batch,
            precision=self.config.precision,
            resume=True,
        )  # fmt: skip
        with measured(run_dir):
            pretrain_on_task(
                self.config.task, self.task_kwargs, out, config, run_dir, self.budget.model
            )
        return {"policy": str(out)}

    def train_judge(self) -> dict:
        return self.train_sft("judge", seed_offset=1, steps=self.budget.judge_steps)

    def make_preferences(self) -> dict:
        from agents.preferences import PreferenceConfig, sample_preferences

        preset = self.preset
        config = PreferenceConfig(
            seed=self.config.seed, num_prompts=self.budget.pref_prompts,
            k=preset.pref_k or self.budget.pref_k, label_temperature=preset.label_temperature,
            skip_ties=preset.verifier,
        )  # fmt: skip
        sample_preferences(str(self.sft_dir), None, self.env_kwargs(), None, config, self.pairs)
        return {"pairs": str(self.pairs)}

    def train_reward_model(self) -> dict:
        from agents.presets import tiny_model_config
        from agents.reward_model import RewardModelConfig, RewardModelTrainer

        run_dir = self.agents_dir / "rm-bradley_terry"
        config = tiny_model_config(
            "reward_model", RewardModelConfig,
            seed=self.config.seed, epochs=self.budget.rm_epochs, precision=self.config.precision,
        )  # fmt: skip
        with measured(run_dir):
            trainer = RewardModelTrainer(str(self.sft_dir), str(self.pairs), config, run_dir)
            trainer.learn()
            metrics = trainer.summary()
            trainer.save(self.rm_dir)
        return {"reward_model": str(self.rm_dir), **metrics}

    def best_of_n(self) -> dict:
        """Best-of-n from the SFT policy on held-out prompts, selected by the learned reward
        (if the study has one) and by the gold reward."""
        from reward_models import load_reward_model
        from scripts.frontier import best_of_n_curves

        learned = None if self.preset.verifier else load_reward_model(str(self.rm_dir))
        curves = best_of_n_curves(self.sft_dir, self.env_kwargs(), learned,
                                  self.budget.bon_prompts, self.bon_n_max, self.config.seed + 1)  # fmt: skip
        self.bon_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.bon_path, curves)
        return {"best_of_n": str(self.bon_path)}

    def env_kwargs(self, **extra) -> dict:
        """The env of every agent of the study: the task with its preset's options."""
        return {"task": self.config.task, "task_kwargs": self.task_kwargs, **extra}

    def train_method(self, agent: str, name: str, beta: float | None) -> dict:
        """Train one method from the SFT policy: DPO on the pairs; PPO / REINFORCE / GRPO
        against the learned reward model (against the gold reward for ``ppo_gold`` and on
        verifiable tasks)."""
        run_dir = self.method_dir(agent, name)
        common = {"seed": self.config.seed, "precision": self.config.precision, "resume": True}
        with measured(run_dir):
            if agent == "dpo":
                from agents.dpo import DPO, DPOConfig
                from agents.presets import tiny_model_config

                config = tiny_model_config(
                    "dpo", DPOConfig,
                    epochs=self.budget.dpo_epochs, eval_every=self.budget.dpo_eval_every,
                    eval_prompts=self.budget.dpo_eval_prompts, **common,
                    **({"beta": beta} if beta is not None else {}),
                )  # fmt: skip
                trainer = DPO(str(self.sft_dir), None, str(self.pairs), config, run_dir,
                              eval_env_kwargs=self.env_kwargs())  # fmt: skip
            else:
                trainer = self.online_agent(agent, beta, common, run_dir)
            trainer.learn()
        return {"policy": str(run_dir / "final")}

    def online_agent(self, agent: str, beta: float | None, common: dict, run_dir: Path):
        from agents.grpo import GRPO, GRPOConfig
        from agents.ppo import PPO, PPOConfig
        from agents.presets import TINY_MODEL_OPTIONS
        from agents.reinforce import Reinforce, ReinforceConfig
        from llm_env.tasks import make_task

        gold = make_task(self.config.task, **self.task_kwargs).gold_reward
        verifier = agent == "ppo_gold" or self.preset.verifier
        env_kwargs = self.env_kwargs(reward_model=gold if verifier else str(self.rm_dir))
        agent_cls, config_cls = {"reinforce": (Reinforce, ReinforceConfig),
                                 "grpo": (GRPO, GRPOConfig)}.get(agent, (PPO, PPOConfig))  # fmt: skip
        options = {**TINY_MODEL_OPTIONS[agent_cls.agent_name],
                   "total_prompts": self.budget.rl_prompts, "batch_size": self.budget.rl_batch,
                   **common, **(self.preset.ppo if agent.startswith("ppo") else {})}  # fmt: skip
        if beta is not None:
            options["kl.beta"] = beta
        config = build_config(config_cls, options)
        return agent_cls(str(self.sft_dir), None, env_kwargs, config, run_dir)

    def evaluate(self) -> dict:
        from agents.common.evaluate import Judge, SuiteConfig, evaluate_policies, log_evaluation
        from reward_models import load_reward_model

        policies = [("sft", self.sft_dir)]
        policies += [(name, self.method_dir(a, name) / "final") for a, name, _ in self.methods()]
        suite = SuiteConfig(
            task=self.config.task, task_kwargs=self.task_kwargs,
            prompts=self.budget.eval_prompts, seed=self.config.seed + 1,
            samples_per_prompt=self.preset.samples_per_prompt,
        )  # fmt: skip
        learned = {} if self.preset.verifier else {"learned": load_reward_model(str(self.rm_dir))}
        evals = evaluate_policies(
            policies, self.sft_dir, suite, Judge.load(self.judge_dir), learned
        )
        for summary, (name, path) in zip(evals, policies):
            run_dir = self.agents_dir / "sft-pretrain" if name == "sft" else path.parent
            if name != "sft":
                (run_dir / "eval.json").write_text(json.dumps(summary, indent=2, default=float))
            log_evaluation(run_dir, summary)
            print(
                f"   {name:<16} gold {summary['gold_reward']:+.3f}  KL {summary['kl_ref']:.2f}  "
                f"judge ppl {summary['judge_ppl']:.2f}  distinct-2 {summary['distinct_2']:.3f}"
            )
        return {"evaluations": evals}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenmdp pipeline", description=__doc__.split("\n\n")[0])
    add_dataclass_args(parser, PipelineConfig)
    args = parser.parse_args(argv)
    try:
        pipeline = Pipeline(dataclass_from_args(PipelineConfig, args))
    except (ValueError, OSError) as e:  # a bad option, file or row: named, before any stage
        parser.error(str(e))
    pipeline.run()


if __name__ == "__main__":
    main()
