"""The RLHF-vs-DPO study's options (``PipelineConfig``), its task presets (``TaskPreset``) and
stage sizes (``Budget``): what ``tokenmdp pipeline`` takes and the stages are keyed by."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

from agents.registry import names

METHODS = names(role="method")
"""The methods a study trains from the SFT policy: every registered fine-tuning method."""


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
    methods: str = ",".join(METHODS)
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
        from agents.models.precision import PRECISIONS
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
                          "online_dpo": 26, "evaluate": 1.85})  # fmt: skip
# online_dpo and evaluate (per policy): from a full default run on a machine 1.22x slower than
# the reference one (its RL stages' ratio): online DPO 0.54x GRPO's time there (30.8 s vs 56.7 s
# a run), so 0.54 x 49 s; the evaluation 47.6 s for 21 policies, / 1.22. On --quick online DPO
# and GRPO took the same time (27.8 s vs 28.6 s over four β on a busy machine): GRPO's 0.5 s.


QUICK = Budget(sft_steps=40, sft_batch=32, pref_prompts=64, pref_k=2, rm_epochs=1,
               rl_prompts=64, rl_batch=16, dpo_epochs=1, dpo_eval_every=1,
               dpo_eval_prompts=16, eval_prompts=32, judge_steps=10, bon_prompts=8,
               bon_n_max=8, model={"n_layer": 1, "n_head": 2, "n_embd": 64},
               seconds={"sft": 3, "judge": 2, "preferences": 0.3, "reward_model": 0.3,
                        "best_of_n": 0.3, "ppo": 0.5, "reinforce": 0.5, "grpo": 0.5, "dpo": 0.3,
                        "online_dpo": 0.5, "evaluate": 0.1})  # fmt: skip
