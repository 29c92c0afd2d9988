"""``tokenmdp dpo``: direct preference optimisation (or IPO / conservative DPO) of a policy on
``{"prompt","chosen","rejected"}`` JSONL; evaluation points sample through the env so the run
lands on the same reward/gold – kl/ref axes as PPO and REINFORCE.

  tokenmdp dpo --policy runs/sft-policy --pairs data/pairs.jsonl --task sentiment
"""

from __future__ import annotations

import argparse
import json

from agents.dpo import DPO, DPOConfig
from agents.harness.distributed import print_on_main, set_num_threads
from agents.harness.logging import run_dir_for
from agents.harness.run import FINAL_DIR
from scripts.flags import add_dataclass_args, json_object
from scripts.options import config_from_args, require_writable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmdp dpo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--policy", required=True, help="save_pretrained directory of the policy")
    io.add_argument("--tokenizer", help="tokenizer directory (default: the policy's)")
    io.add_argument("--ref-policy", help="reference policy directory (default: --policy)")
    io.add_argument("--pairs", required=True, help='JSONL of {"prompt","chosen","rejected"} rows')
    io.add_argument(
        "--task",
        default="sentiment",
        help="task whose held-out prompts are sampled at evaluation points; 'none' = no "
        "evaluation (default: sentiment)",
    )
    io.add_argument(
        "--task-kwargs", type=json_object, default="{}", help="task options as JSON (default: {})"
    )
    io.add_argument("--run-dir", help="run directory (default: runs/<task>/dpo-<name>)")
    io.add_argument("--name", default="default", help="run name for the default run directory")
    add_dataclass_args(parser, DPOConfig, title="training (DPOConfig)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = args.run_dir or run_dir_for("runs", args.task, "dpo", args.name)
    require_writable(parser, "--run-dir", run_dir)
    set_num_threads()
    config = config_from_args(parser, DPOConfig, args)
    env_kwargs = (
        None if args.task == "none" else {"task": args.task, "task_kwargs": args.task_kwargs}
    )
    dpo = DPO(args.policy, args.tokenizer, args.pairs, config, run_dir, env_kwargs, args.ref_policy)
    history = dpo.learn()
    print_on_main(json.dumps({"final_policy": str(dpo.run_dir / FINAL_DIR), **history[-1]}))


if __name__ == "__main__":
    main()
