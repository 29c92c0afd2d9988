"""The RLHF-vs-DPO study (``Pipeline``): every stage from the SFT policy to the report, keyed and
resumable (``scripts.studies.stages``).

1. ``sft``: build the task tokenizer and a tiny GPT-2; pre-train / SFT it on the task corpus.
   ``judge``: another tiny GPT-2, another seed, fewer steps: the fluency judge of step 4.
2. ``preferences``: sample k completions per prompt from the SFT policy through the env, label
   pairs with Bradley–Terry noise on the gold reward.  ``reward_model``: train the BT model.
   ``best_of_n``: N samples per held-out prompt from the SFT policy, scored by the learned and
   the gold reward: the best-of-n curve (``scripts.studies.report.frontier``).
3. Every fine-tuning method of ``agents.registry`` (PPO, REINFORCE, GRPO against the learned
   reward model; DPO on the pairs), from the same SFT checkpoint with the same prompt budget,
   each at every β of the sweep (default 0.03, 0.1, 0.3, 1: the points of its frontier);
   optionally ``ppo_gold``. On a verifiable task (``--task arithmetic``: two-digit sums, SFT on
   500 demonstrations) there is no reward model: the RL methods train against the verifier
   itself and DPO's pairs are labelled by it (RL from verifiable rewards); the evaluation adds
   pass@k.
4. ``evaluate``: every final policy and the SFT policy on held-out prompts through the env, by
   the evaluation suite (``agents.evaluation.evaluate_policies``).
5. ``report``: ``report.md``, ``results.json`` and PNG plots in the run directory, with the
   frontier section (best-of-n, Gao et al. fits) of ``scripts.studies.report.frontier``.

Each stage's key holds the fingerprint of the agent config it builds
(``scripts.studies.factory``): a changed agent default or preset reruns the stages it trains.
A user's own task is the ``jsonl`` task with a corpus: the corpus trains the tokenizer and the
policy, the gold reward labels the pairs and grades the study; the built-in tasks are presets
(``TaskPreset``) of the same path. The run prints an estimate of its time first, from measured
per-stage rates (``Budget.seconds``) and the stages its keys say will run. Every agent trains
the study's tiny GPT-2s with the tiny-model settings of ``agents.presets`` (the agents' own
defaults are a pretrained checkpoint's).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

from agents.registry import agent_spec
from scripts.studies.factory import config_fingerprint, make_agent, study_config
from scripts.studies.pipeline.config import (
    DEFAULT,
    PRESETS,
    QUICK,
    QUICK_PRESETS,
    PipelineConfig,
    TaskPreset,
    own_task_kwargs,
    parse_betas,
    split_list,
)
from scripts.studies.report.frontier import best_of_n_curves
from scripts.studies.report.runs import find_agent_runs
from scripts.studies.report.tables import markdown_table
from scripts.studies.report.writer import write_report
from scripts.studies.stages import Clock, Stage, StageRunner, check_writable, measured, write_json


def base_agent(method: str) -> str:
    """The registered agent a study method runs: ``ppo_gold`` is PPO against the gold reward."""
    return method.removesuffix("_gold")


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
        self.runner = StageRunner(self.out / "stages")

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
        return self.agents_dir / f"{base_agent(agent)}-{name}"

    # -- the study -------------------------------------------------------------------------------
    def run(self) -> dict:
        """Every stage, then the report on this study's runs (not stale ones in ``--out``)."""
        evals = self.run_stages()
        bon = json.loads(self.bon_path.read_text()) if self.bon_n_max else None
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
        judge = {**sft, "seed": c.seed + 1, "steps": b.judge_steps,
                 "config": config_fingerprint(self.sft_config("judge"))}  # fmt: skip
        sft["config"] = config_fingerprint(self.sft_config("pretrain"))
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
            rm = {"seed": c.seed, "precision": c.precision, "epochs": b.rm_epochs,
                  "config": config_fingerprint(self.rm_config())}  # fmt: skip
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
            inputs["config"] = config_fingerprint(self.method_config(agent, beta))
            if agent_spec(base_agent(agent)).kind == "offline":
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
        return self.runner.key(plan)

    def stage_seconds(self, plan: list[Stage]) -> dict[str, float]:
        """Reference seconds of each stage of ``plan`` not finished with the same key, at the
        rates of ``Budget.seconds`` (SFT scaled by its steps; the evaluation by its policies)."""
        cost, left = self.budget.seconds, {}
        for stage in plan:
            if self.runner.finished(stage) is not None:
                continue
            kind = stage.name.split("-beta")[0].replace("_gold", "")
            seconds = cost.get(kind, 0.0)
            if kind == "sft":
                seconds *= (self.preset.sft_steps or self.budget.sft_steps) / self.budget.sft_steps
            elif kind == "evaluate":
                seconds *= 1 + len(self.methods())
            left[stage.name] = seconds
        return left

    def estimate(self, plan: list[Stage]) -> tuple[float, str]:
        """Seconds the stages of ``plan`` not finished with the same key will take, at the
        measured rates of ``Budget.seconds``, and how that adds up."""
        cost = self.budget.seconds
        left = self.stage_seconds(plan)
        kinds = [name.split("-beta")[0].replace("_gold", "") for name in left]
        policies = (1 + len(self.methods())) if "evaluate" in left else 0
        kinds = [k for k in kinds if k != "evaluate"] + ["evaluate"] * policies
        parts = [f"{k} {cost.get(k, 0.0):.2g}s" + (f" ×{kinds.count(k)}" if kinds.count(k) > 1 else "")
                 for k in dict.fromkeys(kinds)]  # fmt: skip
        return sum(left.values()), ", ".join(parts) or "nothing left to run"

    def run_stages(self) -> list[dict]:
        """Train and evaluate (each stage keyed by its inputs); the evaluations. The estimate
        printed first is at the reference machine's rates; after each stage that ran, the time
        left is recalibrated by this machine's measured speed (``Clock``), and ``time.json``
        in the run directory keeps the estimates beside the time it took."""
        import time

        from agents.harness.distributed import set_num_threads

        set_num_threads()
        start = time.perf_counter()
        plan = self.plan()
        total, parts = self.estimate(plan)
        clock = Clock(self.stage_seconds(plan))
        print(f"== estimate: ~{total / 60:.1f} min at the reference rates (2 quiet cores, the "
              f"sentiment study: {parts}); recalibrated on this machine as stages finish; "
              "finished stages are reused")  # fmt: skip
        timing = {"estimate_s": total, "calibrated": []}
        results = {}
        for stage in plan:
            ran = self.runner.finished(stage) is None
            results[stage.name] = self.runner.run(stage)
            if ran and stage.name in clock.reference:
                clock.record(stage.name, results[stage.name]["seconds"])
                elapsed = time.perf_counter() - start
                timing["calibrated"].append({"after": stage.name, "elapsed_s": elapsed,
                                             "slowdown": clock.slowdown,
                                             "estimate_s": elapsed + clock.left()})  # fmt: skip
                if clock.reference:
                    print(f"   ~{clock.left() / 60:.1f} min left on this machine "
                          f"({clock.slowdown:.2f}× the reference time so far)")  # fmt: skip
        timing["took_s"] = time.perf_counter() - start
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / "time.json", timing)
        return results["evaluate"]["evaluations"]

    def sft_config(self, name: str):
        """The SFT config of the policy (``pretrain``) or of the fluency judge (another seed,
        fewer steps)."""
        judge = name == "judge"
        return study_config("sft", {
            "seed": self.config.seed + judge,
            "max_steps": self.budget.judge_steps if judge
            else self.preset.sft_steps or self.budget.sft_steps,
            "epochs": self.preset.sft_epochs, "batch_size": self.budget.sft_batch,
            "precision": self.config.precision, "resume": True,
        })  # fmt: skip

    def train_sft(self, name: str = "pretrain") -> dict:
        """Pre-train a tiny GPT-2 on the task corpus: the SFT policy, or the fluency judge."""
        from agents.sft import pretrain_on_task

        run_dir = self.agents_dir / f"sft-{name}"
        out = self.judge_dir if name == "judge" else self.sft_dir
        with measured(run_dir):
            pretrain_on_task(self.config.task, self.task_kwargs, out, self.sft_config(name),
                             run_dir, self.budget.model)  # fmt: skip
        return {"policy": str(out)}

    def train_judge(self) -> dict:
        return self.train_sft("judge")

    def make_preferences(self) -> dict:
        from agents.data.preferences import PreferenceConfig, sample_preferences

        preset = self.preset
        config = PreferenceConfig(
            seed=self.config.seed, num_prompts=self.budget.pref_prompts,
            k=preset.pref_k or self.budget.pref_k, label_temperature=preset.label_temperature,
            skip_ties=preset.verifier,
        )  # fmt: skip
        sample_preferences(str(self.sft_dir), None, self.env_kwargs(), None, config, self.pairs)
        return {"pairs": str(self.pairs)}

    def rm_config(self):
        return study_config("reward_model", {
            "seed": self.config.seed, "epochs": self.budget.rm_epochs,
            "precision": self.config.precision,
        })  # fmt: skip

    def train_reward_model(self) -> dict:
        run_dir = self.agents_dir / "rm-bradley_terry"
        with measured(run_dir):
            trainer = make_agent("reward_model", str(self.sft_dir), str(self.pairs),
                                 self.rm_config(), run_dir)  # fmt: skip
            trainer.learn()
            metrics = trainer.summary()
            trainer.save(self.rm_dir)
        return {"reward_model": str(self.rm_dir), **metrics}

    def best_of_n(self) -> dict:
        """Best-of-n from the SFT policy on held-out prompts, selected by the learned reward
        (if the study has one) and by the gold reward."""
        from reward_models import load_reward_model

        learned = None if self.preset.verifier else load_reward_model(str(self.rm_dir))
        curves = best_of_n_curves(self.sft_dir, self.env_kwargs(), learned,
                                  self.budget.bon_prompts, self.bon_n_max, self.config.seed + 1)  # fmt: skip
        self.bon_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.bon_path, curves)
        return {"best_of_n": str(self.bon_path)}

    def env_kwargs(self, **extra) -> dict:
        """The env of every agent of the study: the task with its preset's options."""
        return {"task": self.config.task, "task_kwargs": self.task_kwargs, **extra}

    def method_config(self, agent: str, beta: float | None):
        """The config of one method's run: its tiny-model preset, the study's sizes, β."""
        name = base_agent(agent)
        options = {"seed": self.config.seed, "precision": self.config.precision, "resume": True}
        if agent_spec(name).kind == "offline":  # DPO: epochs over the pairs
            options |= {"epochs": self.budget.dpo_epochs, "eval_every": self.budget.dpo_eval_every,
                        "eval_prompts": self.budget.dpo_eval_prompts}  # fmt: skip
            beta_option = "beta"
        else:
            options |= {"total_prompts": self.budget.rl_prompts, "batch_size": self.budget.rl_batch,
                        **(self.preset.ppo if name == "ppo" else {})}  # fmt: skip
            beta_option = "kl.beta"
        if beta is not None:
            options[beta_option] = beta
        return study_config(name, options)

    def train_method(self, agent: str, name: str, beta: float | None) -> dict:
        """Train one method from the SFT policy: DPO on the pairs; PPO / REINFORCE / GRPO
        against the learned reward model (against the gold reward for ``ppo_gold`` and on
        verifiable tasks)."""
        run_dir = self.method_dir(agent, name)
        config = self.method_config(agent, beta)
        with measured(run_dir):
            if agent_spec(base_agent(agent)).kind == "offline":
                trainer = make_agent(agent, str(self.sft_dir), None, str(self.pairs), config,
                                     run_dir, eval_env_kwargs=self.env_kwargs())  # fmt: skip
            else:
                from llm_env.tasks import make_task

                gold = make_task(self.config.task, **self.task_kwargs).gold_reward
                verifier = agent == "ppo_gold" or self.preset.verifier
                env = self.env_kwargs(reward_model=gold if verifier else str(self.rm_dir))
                trainer = make_agent(base_agent(agent), str(self.sft_dir), None, env, config,
                                     run_dir)  # fmt: skip
            trainer.learn()
        return {"policy": str(run_dir / "final")}

    def evaluate(self) -> dict:
        from agents.evaluation import Judge, SuiteConfig, evaluate_policies, log_evaluation
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
