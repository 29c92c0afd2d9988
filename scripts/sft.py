"""``tokenmdp sft``: fine-tune a policy on ``{"prompt","completion"}`` JSONL, or pre-train a tiny
GPT-2 from scratch on a built-in task's corpus (``--task sentiment``).

  tokenmdp sft --policy runs/pretrained --data demos.jsonl --out runs/sft-policy
  tokenmdp sft --task sentiment --out runs/pretrained --epochs 2
"""

from __future__ import annotations

import argparse

from agents.harness.distributed import print_on_main, set_num_threads
from agents.harness.logging import run_dir_for
from agents.presets import TINY_MODEL_OPTIONS
from agents.sft import SFT, SFTConfig, pretrain_on_task
from scripts.flags import add_dataclass_args, json_object
from scripts.options import config_from_args, reparse_with_defaults, require_writable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmdp sft", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--policy", help="save_pretrained directory of the policy to fine-tune")
    io.add_argument("--tokenizer", help="tokenizer directory (default: the policy's)")
    io.add_argument("--data", help='JSONL file of {"prompt", "completion"} rows')
    io.add_argument(
        "--task", help="pre-train a fresh tiny GPT-2 on this built-in task's corpus instead, "
        "with the tiny-model settings of agents.presets (e.g. a higher --learning-rate) in place "
        "of the pretrained-checkpoint defaults below, unless given",
    )  # fmt: skip
    io.add_argument(
        "--task-kwargs", type=json_object, default="{}", help="task options as JSON (default: {})"
    )
    io.add_argument(
        "--model-kwargs",
        type=json_object,
        default="{}",
        help='tiny_gpt2 options as JSON for --task, e.g. {"n_layer": 2, "n_embd": 128}',
    )
    io.add_argument("--out", required=True, help="directory for the trained policy + tokenizer")
    io.add_argument("--run-dir", help="run directory (default: runs/<task or data>/sft-<name>)")
    io.add_argument("--name", default="default", help="run name for the default run directory")
    add_dataclass_args(parser, SFTConfig, title="training (SFTConfig)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.task is not None:  # a fresh tiny GPT-2: the tiny models' settings
        args = reparse_with_defaults(parser, argv, TINY_MODEL_OPTIONS["sft"])
    set_num_threads()
    config = config_from_args(parser, SFTConfig, args)
    if (args.task is None) == (args.policy is None):
        parser.error("give exactly one of --policy (fine-tune) or --task (pre-train from scratch)")
    if args.task is None and args.data is None:
        parser.error("--policy needs --data")
    run_dir = args.run_dir or (
        run_dir_for("runs", args.task, "pretrain", args.name)
        if args.task is not None
        else run_dir_for("runs", "jsonl", "sft", args.name)
    )
    require_writable(parser, "--out", args.out)
    require_writable(parser, "--run-dir", run_dir)
    if args.task is not None:
        out = pretrain_on_task(
            args.task, args.task_kwargs, args.out, config, run_dir, args.model_kwargs
        )
    else:
        sft = SFT(args.policy, args.tokenizer, args.data, config, run_dir)
        sft.learn()
        out = sft.save(args.out)
    print_on_main(f"saved policy to {out} (run directory {run_dir})")


if __name__ == "__main__":
    main()
