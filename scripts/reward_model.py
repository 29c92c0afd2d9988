"""``tokenmdp reward-model``: train a Bradley–Terry reward model on preference pairs, initialised
from a policy's weights with a scalar head; ``load_reward_model(<out>)`` then scores text.

  tokenmdp reward-model --policy runs/sft-policy --pairs data/pairs.jsonl --out runs/rm
"""

from __future__ import annotations

import argparse
import json

from agents.harness.distributed import print_on_main, set_num_threads
from agents.harness.logging import run_dir_for
from agents.reward_model import RewardModelConfig, RewardModelTrainer
from scripts.flags import add_dataclass_args
from scripts.options import config_from_args, require_writable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmdp reward-model",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--policy", required=True, help="save_pretrained policy to initialise from")
    io.add_argument("--pairs", required=True, help='JSONL of {"prompt","chosen","rejected"} rows')
    io.add_argument("--out", required=True, help="directory for the trained reward model")
    io.add_argument("--run-dir", help="run directory (default: runs/pairs/rm-<name>)")
    io.add_argument(
        "--name", default="bradley_terry", help="run name for the default run directory"
    )
    add_dataclass_args(parser, RewardModelConfig, title="training (RewardModelConfig)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    run_dir = args.run_dir or run_dir_for("runs", "pairs", "rm", args.name)
    require_writable(parser, "--out", args.out)
    require_writable(parser, "--run-dir", run_dir)
    set_num_threads()
    config = config_from_args(parser, RewardModelConfig, args)
    trainer = RewardModelTrainer(args.policy, args.pairs, config, run_dir)
    trainer.learn()
    metrics = trainer.summary()
    out = trainer.save(args.out)
    print_on_main(json.dumps({"reward_model": str(out), **metrics}))


if __name__ == "__main__":
    main()
