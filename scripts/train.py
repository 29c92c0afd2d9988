"""The online agents' command line (``tokenmdp ppo``, ``reinforce``, ``grpo``): the env's
options, one option per field of the agent's config, then train and save.

Events, config.json, metrics.jsonl, checkpoints and the final policy go to
runs/<task>/<agent>-<name>/ (``--resume`` continues a killed run from its last checkpoint).
"""

from __future__ import annotations

import argparse
import json

from agents.harness.distributed import print_on_main, set_num_threads
from agents.harness.logging import run_dir_for
from agents.presets import TINY_MODEL_OPTIONS
from agents.registry import agent_spec
from llm_env.config import EnvConfig
from scripts.flags import add_dataclass_args
from scripts.options import config_from_args, reparse_with_defaults, require_writable


def build_parser(config_cls: type, prog: str, doc: str) -> argparse.ArgumentParser:
    """Inputs/outputs options plus one option per field of ``config_cls``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawTextHelpFormatter
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument(
        "--policy", help="save_pretrained directory of the initial policy (default: a fresh, "
        "untrained tiny GPT-2 for the task's tokenizer — for smoke tests only — trained with the "
        "tiny-model settings of agents.presets, e.g. a higher --learning-rate, in place of the "
        "pretrained-checkpoint defaults below, unless given)",
    )  # fmt: skip
    io.add_argument("--tokenizer", help="tokenizer directory (default: the policy's)")
    io.add_argument("--runs-root", default="runs", help="root of run directories (default: runs)")
    io.add_argument("--name", default="default", help="run name: runs/<task>/<agent>-<name>")
    io.add_argument("--run-dir", help="explicit run directory (overrides --runs-root/--name)")
    io.add_argument(
        "--out", help="also save the trained agent here (default: <run-dir>/final only)"
    )
    io.add_argument("--threads", type=int, help="torch threads (default: every core)")
    add_dataclass_args(parser, EnvConfig, "environment (EnvConfig)", ("tokenizer",), "env")
    add_dataclass_args(parser, config_cls, title=f"training ({config_cls.__name__})")
    return parser


def run(agent: str, argv: list[str] | None, doc: str) -> None:
    """Parse ``argv`` for the registered online ``agent``, build it, train it, save it."""
    spec = agent_spec(agent)
    agent_cls, config_cls = spec.agent_class(), spec.config_class()
    parser = build_parser(config_cls, f"tokenmdp {spec.command}", doc)
    args = parser.parse_args(argv)
    if args.policy is None:  # a fresh tiny GPT-2: the tiny models' settings
        args = reparse_with_defaults(parser, argv, TINY_MODEL_OPTIONS[agent_cls.agent_name])
    env = config_from_args(parser, EnvConfig, args, "env")
    run_dir = args.run_dir or run_dir_for(args.runs_root, env.task, agent_cls.agent_name, args.name)
    require_writable(parser, "--run-dir", run_dir)
    require_writable(parser, "--out", args.out)
    config = config_from_args(parser, config_cls, args)
    set_num_threads(args.threads)
    policy, tokenizer = args.policy, args.tokenizer
    if policy is None:
        import llm_env
        from llm_env.tasks import make_task

        tokenizer = make_task(env.task, **env.task_kwargs).tokenizer()
        policy = llm_env.tiny_gpt2(tokenizer, seed=config.seed)
    agent = agent_cls(policy, tokenizer, env, config, run_dir)
    history = agent.learn()
    if args.out:
        agent.save(args.out)
    last = history[-1] if history else {}
    summary = {k: round(v, 4) for k, v in last.items() if k.startswith(("reward/", "kl/"))}
    print_on_main(f"done: {json.dumps(summary)}; final policy in {run_dir}/final")
