"""``tokenmdp preferences``: sample k completions per prompt from a policy through the vector env,
score them with a gold reward model and write Bradley–Terry-labelled preference pairs.

  tokenmdp preferences --policy runs/sft-policy --task sentiment --out data/pairs.jsonl
"""

from __future__ import annotations

import argparse
import json

from agents.data.preferences import PreferenceConfig, sample_preferences
from agents.harness.distributed import set_num_threads
from scripts.flags import add_dataclass_args, json_object
from scripts.options import config_from_args, require_writable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmdp preferences",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--policy", required=True, help="save_pretrained directory of the policy")
    io.add_argument("--tokenizer", help="tokenizer directory (default: the policy's)")
    io.add_argument(
        "--task", default="sentiment", help="built-in task or 'jsonl' (default: sentiment)"
    )
    io.add_argument(
        "--task-kwargs", type=json_object, default="{}", help="task options as JSON (default: {})"
    )
    io.add_argument(
        "--gold-reward-model",
        help="reward model spec scoring the samples (default: the task's gold reward)",
    )
    io.add_argument("--out", required=True, help="output JSONL of preference pairs")
    add_dataclass_args(parser, PreferenceConfig, title="sampling and labels (PreferenceConfig)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    require_writable(parser, "--out", args.out, file=True)
    set_num_threads()
    config = config_from_args(parser, PreferenceConfig, args)
    env_kwargs = {"task": args.task, "task_kwargs": args.task_kwargs}
    out = sample_preferences(
        args.policy, args.tokenizer, env_kwargs, args.gold_reward_model, config, args.out
    )
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    print(
        f"wrote {meta['rows']} pairs to {out} (skipped {meta['skipped_identical']} identical; "
        f"labels agree with gold on {meta['label_agrees_with_gold']:.3f} of strict pairs)"
    )


if __name__ == "__main__":
    main()
