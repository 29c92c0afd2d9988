"""``tokenmdp evaluate POLICY... --task T``: the evaluation suite on any saved policies.

Each policy samples one completion per held-out prompt of the task, the same prompts and seed
for every policy, through the env. Reported per policy: gold (and learned) reward with a 95%
bootstrap interval, KL to ``--reference``, length, EOS rate, the completions' perplexity under
a judge LM (``--judge``; else one trained on the task corpus; a task without a corpus, e.g. your
own ``jsonl`` prompts, is judged by the reference policy, or the first policy without one),
lexicon fraction, distinct-1/2, unique fraction, self-BLEU, corr(reward, length), and the
failures each shows against the reference's numbers. Writes ``report.md``, ``results.json`` and
``fluency_vs_kl.png`` to ``--out``.

  tokenmdp evaluate runs/pipeline/sentiment/ppo-ppo-beta0.1/final dpo=runs/pipeline/sentiment/dpo-dpo-beta0.1/final \\
      --task sentiment --reference runs/pipeline/models/sft --judge runs/pipeline/models/judge
  tokenmdp evaluate runs/grpo/final --task jsonl --task-kwargs '{"path": "prompts.jsonl"}' \\
      --gold-reward reward.py:reward --reference models/instruct
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts.flags import json_object
from scripts.options import require_writable

DEFAULT_JUDGE_STEPS = 100


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options, shared with ``tokenmdp compare --evaluate``."""
    group = parser.add_argument_group("evaluation suite")
    group.add_argument("--task", default="sentiment", help="task whose held-out prompts are used")
    group.add_argument("--task-kwargs", type=json_object, default="{}", help="task options as JSON")
    group.add_argument("--reference", help="policy directory for KL and the failure checks; "
                       "evaluated too, as 'reference' (default: none, KL 0)")  # fmt: skip
    group.add_argument("--judge", help="judge LM directory (default: pre-train one on the task "
                       "corpus for --judge-steps steps into OUT/judge; a task without a corpus: "
                       "the reference, else the first policy)")  # fmt: skip
    group.add_argument("--judge-steps", type=int, default=DEFAULT_JUDGE_STEPS,
                       help="pre-training steps of the judge without --judge (0: no judge)")  # fmt: skip
    group.add_argument("--gold-reward", help="gold reward, any reward-model spec (e.g. "
                       "reward.py:reward), instead of the task's: a jsonl task needs it")  # fmt: skip
    group.add_argument("--reward-model", help="learned reward model also scored, as 'learned'")
    group.add_argument("--prompts", type=int, default=512, help="completions per policy")
    group.add_argument("--seed", type=int, default=0, help="sampling seed, the same for all")
    group.add_argument("--num-envs", type=int, default=64, help="sequences per rollout batch")


def policy_name(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after its directory, or its run's for ``.../final``)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec).name if Path(spec).name != "final" else Path(spec).resolve().parent.name
    return name, Path(path)


def run_suite(
    parser: argparse.ArgumentParser, args: argparse.Namespace, policies: list[tuple[str, Path]]
) -> list[dict]:
    """Check the options (a bad one is a parser error, before any work), then evaluate
    ``policies`` (the reference first, when given)."""
    from agents.evaluation import Judge, SuiteConfig, evaluate_policies
    from agents.harness.distributed import set_num_threads
    from llm_env.tasks import make_task

    try:
        suite = SuiteConfig(task=args.task, task_kwargs=args.task_kwargs, prompts=args.prompts,
                            seed=args.seed, num_envs=args.num_envs,
                            gold_reward=args.gold_reward)  # fmt: skip
        task = make_task(args.task, **args.task_kwargs)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    if args.reference is not None:
        policies = [("reference", Path(args.reference)), *policies]
    for name, path in policies:
        if not (path / "config.json").is_file():
            parser.error(f"policy {name!r}: {str(path)!r} is not a save_pretrained directory")
    names = [name for name, _ in policies]
    if len(set(names)) < len(names):
        parser.error(f"policy names repeat ({', '.join(names)}); name them with NAME=PATH")
    if args.judge is not None and not (Path(args.judge) / "config.json").is_file():
        parser.error(f"--judge {args.judge!r}: not a save_pretrained directory")
    if args.judge_steps < 0:
        parser.error(f"--judge-steps {args.judge_steps}: must be >= 0")
    set_num_threads()
    from reward_models import load_reward_model

    reward_models = None
    try:
        if args.gold_reward is not None:
            load_reward_model(args.gold_reward)  # a bad spec fails here, before any work
        if args.reward_model is not None:
            reward_models = {"learned": load_reward_model(args.reward_model)}
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    judge_dir = args.judge
    if judge_dir is None and args.judge_steps > 0:
        if task.demonstrations and task.make_tokenizer is not None:
            judge_dir = train_judge(args, Path(args.out))
        else:
            name, judge_dir = policies[0]
            print(f"judge: policy {name!r} ({judge_dir}): task {task.name!r} has no corpus to "
                  "train a judge on (pass --judge to choose one)")  # fmt: skip
    judge = Judge.load(judge_dir) if judge_dir is not None else None
    return evaluate_policies(policies, args.reference, suite, judge, reward_models)


def train_judge(args: argparse.Namespace, out: Path) -> Path:
    """A tiny GPT-2 pre-trained on the task corpus (seed + 1, the tiny-model settings of
    ``agents.presets``), saved to ``out/judge``."""
    from agents.presets import tiny_model_config
    from agents.sft import SFTConfig, pretrain_on_task

    config = tiny_model_config(
        "sft", SFTConfig, seed=args.seed + 1, max_steps=args.judge_steps, log_every=0
    )
    return pretrain_on_task(args.task, args.task_kwargs, out / "judge", config, out / "sft-judge")


def main(argv: list[str] | None = None) -> None:
    from scripts.studies.report.tables import EVAL_COLUMNS, eval_table
    from scripts.studies.report.writer import write_report

    parser = argparse.ArgumentParser(
        prog="tokenmdp evaluate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("policies", nargs="+", metavar="POLICY",
                        help="save_pretrained policy directories, as PATH or NAME=PATH")  # fmt: skip
    parser.add_argument("--out", default="runs/evaluate", help="where the report is written")
    add_suite_arguments(parser)
    args = parser.parse_args(argv)
    require_writable(parser, "--out", args.out)
    evals = run_suite(parser, args, [policy_name(spec) for spec in args.policies])
    write_report([], evals, Path(args.out))
    print(eval_table(evals, [c for c in EVAL_COLUMNS if c[0] != "gold_ci"]))
    print(f"\nreport: {Path(args.out) / 'report.md'}")


if __name__ == "__main__":
    main()
