"""``tokenmdp prm``: train a process reward model (a token-classification PRM initialised from a
policy) on stepwise supervision — TRL's ``{"prompt", "completions": [steps], "labels": [bools]}``
JSONL, or rows sampled here from the policy through the env and labelled by the task's gold step
checker (``--labels gold``) or by Math-Shepherd rollouts (``--labels rollouts``); then
``load_reward_model(<out>)`` is a process reward model (``--process-reward-model <out>``).

  tokenmdp prm --policy runs/sft --data steps.jsonl --out runs/prm
  tokenmdp prm --policy runs/sft --task arithmetic_chain --labels rollouts --rollouts 4 --out runs/prm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.data.process_labels import LABELS, StepLabelConfig, sample_step_data, write_step_data
from agents.harness.distributed import print_on_main, set_num_threads
from agents.harness.logging import run_dir_for
from agents.prm import PRMConfig, PRMTrainer
from scripts.flags import add_dataclass_args, json_object
from scripts.options import config_from_args, require_writable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmdp prm", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--policy", required=True, help="save_pretrained policy to initialise from")
    io.add_argument("--data", help="stepwise-supervision JSONL (else: sample it, see --task)")
    io.add_argument("--out", required=True, help="directory for the trained PRM")
    io.add_argument("--run-dir", help="run directory (default: runs/<task or steps>/prm-<name>)")
    io.add_argument("--name", default="default", help="run name for the default run directory")
    io.add_argument("--threads", type=int, help="torch threads (default: every core)")
    data = parser.add_argument_group("sampled data (without --data)")
    data.add_argument("--task", help="built-in task to sample completions of (arithmetic_chain)")
    data.add_argument(
        "--task-kwargs", type=json_object, default="{}", help="task options as JSON (default: {})"
    )
    data.add_argument("--labels", default="gold", choices=LABELS, help="gold | rollouts")
    for name in ("num_prompts", "samples_per_prompt", "rollouts", "min_success"):
        default = getattr(StepLabelConfig(), name)
        data.add_argument(
            f"--{name.replace('_', '-')}", type=type(default), default=default,
            help=f"StepLabelConfig.{name} (default: {default})",
        )  # fmt: skip
    add_dataclass_args(parser, PRMConfig, title="training (PRMConfig)")
    return parser


def step_data(parser, args, config: PRMConfig, run_dir: str) -> str:
    """``--data``, or rows sampled from the policy and written to ``<run-dir>/steps.jsonl``."""
    if args.data is not None:
        return args.data
    if args.task is None:
        parser.error("give --data (stepwise-supervision JSONL) or --task (sample it)")
    try:
        labels = StepLabelConfig(
            seed=config.seed, num_prompts=args.num_prompts,
            samples_per_prompt=args.samples_per_prompt, labels=args.labels,
            rollouts=args.rollouts, min_success=args.min_success, precision=config.precision,
        )  # fmt: skip
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    env_kwargs = {"task": args.task, "task_kwargs": args.task_kwargs}
    rows = sample_step_data(args.policy, None, env_kwargs, labels)
    path = write_step_data(rows, Path(run_dir) / "steps.jsonl", labels)
    print_on_main(f"sampled {len(rows)} rows of {args.labels} step labels to {path}")
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = args.run_dir or run_dir_for("runs", args.task or "steps", "prm", args.name)
    require_writable(parser, "--out", args.out)
    require_writable(parser, "--run-dir", run_dir)
    config = config_from_args(parser, PRMConfig, args)
    set_num_threads(args.threads)
    trainer = PRMTrainer(args.policy, step_data(parser, args, config, run_dir), config, run_dir)
    history = trainer.learn()
    out = trainer.save(args.out)
    metrics = {k: v for k, v in history[-1].items() if k.startswith("prm/")}
    print_on_main(json.dumps({"prm": str(out), **metrics}))


if __name__ == "__main__":
    main()
