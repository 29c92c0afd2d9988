"""The process study (``Study``): one SFT policy on ``arithmetic_chain``, then PPO with outcome
rewards, the gold step checker, a trained PRM or the implicit PRM as shaping, VinePPO and GRPO
on the same budget and seeds, each evaluated on held-out prompts as it trains (see
``scripts/process_study.py`` for the methods)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.evaluation import bootstrap_ci, evaluate
from scripts.studies.factory import make_agent, study_config
from scripts.studies.heldout import EvalPoints, HeldoutSet
from scripts.studies.process.report import write_report

TASK = "arithmetic_chain"


def chain(num_terms: int) -> dict:
    """The env options of the study's task: ``num_terms`` single-digit terms."""
    return {"task": TASK, "task_kwargs": {"num_terms": num_terms, "max_operand": 9}}


METHODS = {
    "ppo_outcome": "PPO, outcome reward only",
    "ppo_gold_process": "PPO + gold step checker (shaping)",
    "ppo_prm": "PPO + trained PRM (shaping)",
    "ppo_implicit": "PPO + implicit PRM of DPO (shaping)",
    "vineppo": "VinePPO: PPO with Monte-Carlo values",
    "grpo": "GRPO, outcome only, no critic",
}


@dataclass(frozen=True)
class Budget:
    """Sizes of every stage (``DEFAULT`` or ``QUICK``)."""

    model: dict
    sft_steps: int
    prm_prompts: int
    prm_samples: int
    prm_epochs: float
    dpo_prompts: int
    dpo_epochs: float
    rl_prompts: int
    rl_batch: int
    eval_every: int  # iterations
    eval_repeats: int  # samples per held-out prompt
    mc_values: int
    group_size: int


DEFAULT = Budget(
    model={"n_layer": 2, "n_head": 4, "n_embd": 128, "n_positions": 64}, sft_steps=200,
    prm_prompts=1024, prm_samples=2, prm_epochs=4.0, dpo_prompts=512, dpo_epochs=2.0,
    rl_prompts=4096, rl_batch=64, eval_every=8, eval_repeats=4, mc_values=4, group_size=4,
)  # fmt: skip
QUICK = Budget(
    model={"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 64}, sft_steps=10,
    prm_prompts=32, prm_samples=1, prm_epochs=1.0, dpo_prompts=32, dpo_epochs=1.0,
    rl_prompts=16, rl_batch=8, eval_every=1, eval_repeats=1, mc_values=2, group_size=2,
)  # fmt: skip


@dataclass
class StudyConfig:
    """Options of the process-reward study."""

    out: str = "runs/process_study"
    """Output directory: models, agents' runs, report.md, results.json, pass1.png."""
    seeds: str = "0,1"
    """Comma-separated seeds of the RL runs (the SFT, PRM and DPO stages use the first)."""
    methods: str = ",".join(METHODS)
    """Comma-separated methods to compare."""
    quick: bool = False
    """A miniature study for smoke tests (well under a minute)."""
    prompt_budget: int = 0
    """Completions each RL run trains on (PPO: prompts; GRPO: prompts × G); 0 = the mode's."""
    prm_labels: str = "gold"
    """Step labels of the PRM's data: gold (the task's checker) | rollouts (Math-Shepherd)."""
    beta: float = 0.02
    """KL coefficient of every PPO run (GRPO: its k3 term in the loss)."""
    learning_rate: float = 5e-5
    """AdamW learning rate of every RL run (policy and critic)."""
    dpo_beta: float = 0.1
    """β of the DPO run, and of the implicit PRM built from it."""
    threads: int = 1
    """Torch threads (0 = every core; the tiny models gain little from more than one)."""
    num_terms: int = 3
    """Terms per chain (num_terms − 1 steps): longer chains make a right answer rarer and give
    more steps to blame."""

    def __post_init__(self) -> None:
        seeds = self.seeds.split(",")
        if not all(s.strip().lstrip("-").isdigit() for s in seeds):
            raise ValueError(f"--seeds {self.seeds!r}: give comma-separated integers, e.g. 0,1")
        unknown = [m for m in self.method_list if m not in METHODS]
        if unknown or not self.method_list:
            raise ValueError(f"--methods {self.methods!r}: unknown method {', '.join(unknown)}; "
                             f"choose from {', '.join(METHODS)}")  # fmt: skip
        if self.prm_labels not in ("gold", "rollouts"):
            raise ValueError(f"--prm-labels {self.prm_labels!r}: choose gold or rollouts")
        zero_ok = (("--prompt-budget", self.prompt_budget), ("--threads", self.threads),
                   ("--beta", self.beta))  # fmt: skip
        for option, value in zero_ok:
            if value < 0:
                raise ValueError(f"{option} {value}: must be >= 0")
        if not (isinstance(self.num_terms, int) and self.num_terms >= 2):
            raise ValueError(f"--num-terms {self.num_terms!r}: a chain needs at least 2 terms")
        for option, value in (("--dpo-beta", self.dpo_beta),
                              ("--learning-rate", self.learning_rate)):  # fmt: skip
            if not value > 0:
                raise ValueError(f"{option} {value}: must be > 0")

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    @property
    def seed_list(self) -> list[int]:
        return [int(s) for s in self.seeds.split(",")]


class Evaluator(HeldoutSet):
    """Pass@1 and KL to the SFT policy on the held-out prompts, the same samples' random stream
    at every call (common random numbers across methods and points)."""

    def __call__(self, policy) -> dict:
        result = evaluate(policy, self.ref, self.env, self.prompts, seed=12345)
        low, high = bootstrap_ci(result.gold_rewards)
        return {"pass1": float(np.mean(result.gold_rewards)), "pass1_ci": [low, high],
                "kl": float(np.mean(result.kls)), "length": float(np.mean(result.lengths))}  # fmt: skip


class Study:
    """The stages, in order: sft → prm, dpo (as the methods need them) → the RL runs → report."""

    def __init__(self, config: StudyConfig):
        self.config = config
        self.budget = QUICK if config.quick else DEFAULT
        if config.prompt_budget:
            self.budget = dataclasses.replace(self.budget, rl_prompts=config.prompt_budget)
        self.out = Path(config.out)
        self.models, self.runs = self.out / "models", self.out / "runs"
        self.seed = config.seed_list[0]
        self.chain = chain(config.num_terms)
        self.heldout_rows: list[dict] = []  # the PRM's held-out rows, to rank steps on
        self.results: dict = {"config": dataclasses.asdict(config),
                              "budget": dataclasses.asdict(self.budget), "runs": []}  # fmt: skip

    def log(self, text: str) -> None:
        print(f"== process-study: {text}", flush=True)

    def train_sft(self) -> Path:
        from agents.sft import pretrain_on_task

        config = study_config("sft", {"seed": self.seed, "max_steps": self.budget.sft_steps,
                                      "batch_size": 32, "epochs": 100.0, "heldout_fraction": 0.0,
                                      "log_every": 0, "save_every": 0})  # fmt: skip
        path = self.models / "sft"
        pretrain_on_task(
            TASK, self.chain["task_kwargs"], path, config, self.runs / "sft", self.budget.model
        )
        return path

    def train_prm(self, sft: Path) -> Path:
        from agents.data.process_labels import StepLabelConfig, sample_step_data, write_step_data

        b = self.budget
        labels = StepLabelConfig(seed=self.seed, num_prompts=b.prm_prompts,
                                 samples_per_prompt=b.prm_samples, labels=self.config.prm_labels)  # fmt: skip
        rows = sample_step_data(sft, None, self.chain, labels)
        write_step_data(rows, self.out / "data" / "steps.jsonl", labels)
        config = study_config("prm", {"seed": self.seed, "epochs": b.prm_epochs, "log_every": 0,
                                      "save_every": 0})  # fmt: skip
        trainer = make_agent("prm", sft, rows, config, self.runs / "prm")
        last = trainer.learn()[-1]
        self.results["prm"] = {
            "labels": self.config.prm_labels, "rows": len(rows),
            **{k.split("/")[1]: last[k] for k in ("prm/step_accuracy", "prm/bad_step_accuracy",
                                                   "prm/good_fraction")},
        }  # fmt: skip
        self.heldout_rows = [rows[i] for i in trainer.heldout_idx]
        return trainer.save(self.models / "prm")

    def train_dpo(self, sft: Path) -> str:
        """DPO on pairs of SFT samples with different outcomes (right ≻ wrong); → the implicit
        PRM's spec."""
        from agents.data.preferences import PreferenceConfig, sample_preferences

        b = self.budget
        prefs = PreferenceConfig(
            seed=self.seed, num_prompts=b.dpo_prompts, k=4, label_temperature=0.0
        )
        pairs = sample_preferences(
            sft, None, self.chain, None, prefs, self.out / "data" / "pairs.jsonl"
        )
        rows = [json.loads(line) for line in pairs.read_text().splitlines()]
        strict = [r for r in rows if r["chosen_gold"] != r["rejected_gold"]]
        if not strict:  # no sample right (a tiny --quick policy): the pairs' order is arbitrary
            self.log("no pair of SFT samples with different outcomes: DPO on all the pairs")
        text = "".join(json.dumps(r) + "\n" for r in strict or rows)
        (self.out / "data" / "pairs_strict.jsonl").write_text(text)
        config = study_config("dpo", {"seed": self.seed, "beta": self.config.dpo_beta,
                                      "epochs": b.dpo_epochs, "eval_prompts": 0, "log_every": 0,
                                      "save_every": 0, "max_length": 32})  # fmt: skip
        pairs_strict = self.out / "data" / "pairs_strict.jsonl"
        dpo = make_agent("dpo", sft, None, pairs_strict, config, self.runs / "dpo")
        dpo.learn()
        path = dpo.save(self.models / "dpo")
        self.results["implicit"] = {"pairs": len(strict), "beta": self.config.dpo_beta}
        return f"implicit:{path},{sft},{self.config.dpo_beta}"

    def agent(self, method: str, seed: int, sft: Path, extras: dict):
        """The agent of ``method`` (same sizes and hyper-parameters for every PPO variant), from
        the studies' factory."""
        b, run_dir = self.budget, self.runs / f"{method}-seed{seed}"
        # a short warm-up: Adam's first steps on noisy RL gradients move every weight by ~lr
        common = {"seed": seed, "total_prompts": b.rl_prompts, "precision": "fp32",
                  "log_every": 1, "save_every": 0, "optim.learning_rate": self.config.learning_rate,
                  "optim.warmup_steps": 5, "kl.beta": self.config.beta}  # fmt: skip
        if method == "grpo":  # G samples of rl_batch / G prompts: PPO's completions per step
            G = b.group_size
            config = study_config("grpo", {
                **common, "total_prompts": b.rl_prompts // G, "batch_size": b.rl_batch // G,
                "group_size": G, "minibatch_size": b.rl_batch // 2, "kl.kl_estimator": "k3",
            })  # fmt: skip
            return make_agent("grpo", sft, None, self.chain, config, run_dir)
        env_kwargs = dict(self.chain)
        if method in ("ppo_gold_process", "ppo_prm", "ppo_implicit"):
            prm = {"ppo_gold_process": "task", "ppo_prm": str(extras.get("prm")),
                   "ppo_implicit": extras.get("implicit")}[method]  # fmt: skip
            env_kwargs |= {"process_reward_model": prm, "process_reward_mode": "shaping"}
        config = study_config("ppo", {
            **common, "batch_size": b.rl_batch, "minibatch_size": b.rl_batch // 2, "epochs": 2,
            "mc_values": b.mc_values if method == "vineppo" else 0,
        })  # fmt: skip
        return make_agent("ppo", sft, None, env_kwargs, config, run_dir)

    def train(self, method: str, seed: int, sft: Path, extras: dict, evaluator: Evaluator) -> dict:
        agent = self.agent(method, seed, sft, extras)
        per_prompt = self.budget.group_size if method == "grpo" else 1
        points = EvalPoints(evaluator, self.budget.eval_every, per_prompt)
        tic = time.perf_counter()
        history = agent.learn(callback=points)
        seconds = time.perf_counter() - tic
        branches = sum(h.get("value/mc_states", 0.0) for h in history) * self.budget.mc_values
        return {"method": method, "seed": seed, "points": points.points, "seconds": seconds,
                "rollouts": agent.num_timesteps * per_prompt + int(branches)}  # fmt: skip

    def run(self) -> dict:
        methods, started = self.config.method_list, time.perf_counter()
        self.log("sft")
        sft = self.train_sft()
        extras: dict = {}
        if "ppo_prm" in methods:
            self.log(f"prm ({self.config.prm_labels} step labels)")
            extras["prm"] = self.train_prm(sft)
        if "ppo_implicit" in methods:
            self.log("dpo (the implicit PRM)")
            extras["implicit"] = self.train_dpo(sft)
        for name, spec in extras.items():  # how each ranks the PRM's held-out steps
            if self.heldout_rows:
                self.results[name]["step_auc"] = step_auc(*step_scores(spec, self.heldout_rows))
        evaluator = Evaluator(sft, self.budget.eval_repeats, self.chain)
        self.results["sft"] = {"completions": 0, **evaluator(evaluator.ref)}
        for seed in self.config.seed_list:
            for method in methods:
                self.log(f"{method}, seed {seed}")
                self.results["runs"].append(self.train(method, seed, sft, extras, evaluator))
        self.results["seconds"] = time.perf_counter() - started
        write_report(self.results, self.out, METHODS)
        return self.results


def step_scores(spec: str, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) of every step of ``rows``: a learned PRM's P(correct), or an implicit
    PRM's reward of the step's own tokens (its score's change over the step)."""
    from reward_models import load_reward_model

    model = load_reward_model(spec)
    labels = np.array([v for row in rows for v in row["labels"]], dtype=bool)
    if hasattr(model, "step_probabilities"):
        probs = model.step_probabilities(
            [r["prompt"] for r in rows], [r["completions"] for r in rows]
        )
        return np.concatenate(probs), labels
    prompts = [r["prompt"] for r in rows for _ in range(len(r["completions"]) + 1)]
    texts = ["".join(s + ";" for s in r["completions"][:k]) for r in rows
             for k in range(len(r["completions"]) + 1)]  # fmt: skip
    scores, gains, start = model.score(prompts, texts), [], 0
    for row in rows:
        n = len(row["completions"])
        gains.append(np.diff(scores[start : start + n + 1]))
        start += n + 1
    return np.concatenate(gains), labels


def step_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a correct step scores above a wrong one), ties counting half: how well a scorer ranks
    steps, whatever its scale (0.5 = chance)."""
    good, bad = scores[labels][:, None], scores[~labels][None, :]
    if good.size == 0 or bad.size == 0:
        return float("nan")
    return float((good > bad).mean() + 0.5 * (good == bad).mean())
