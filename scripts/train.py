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
from llm_env.process import PROCESS_REWARD_MODES
from scripts.flags import add_dataclass_args
from scripts.options import (
    config_from_args,
    json_object,
    reparse_with_defaults,
    require_writable,
)


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
    io.add_argument(
        "--task", default="sentiment", help="built-in task or 'jsonl' (default: sentiment)"
    )
    io.add_argument(
        "--task-kwargs", type=json_object, default="{}", help="task options as JSON (default: {})"
    )
    io.add_argument(
        "--reward-model", help="load_reward_model spec: a registered name, a Bradley-Terry "
        "directory, 'file.py:callable' or 'package.module:callable' (default: the task's gold "
        "reward)",
    )  # fmt: skip
    io.add_argument(
        "--process-reward-model", help="dense rewards: a spec of a scorer of the steps so far "
        "('task' = the task's gold step checker, a PRM directory, "
        "'implicit:POLICY_DIR,REF_DIR,BETA', 'file.py:callable' or 'package.module:callable'), "
        "paid on each step's closing token (default: none)",
    )  # fmt: skip
    io.add_argument(
        "--step-boundary", help="the string that closes a step (default: the task's separator)"
    )
    io.add_argument(
        "--process-reward-mode", choices=PROCESS_REWARD_MODES, default="step",
        help="'step': each step's score on its closing token; 'shaping': potential-based, the "
        "difference of successive scores (default: step)",
    )  # fmt: skip
    io.add_argument(
        "--max-new-tokens", type=int, help="completion length limit (default: the task's)"
    )
    io.add_argument("--runs-root", default="runs", help="root of run directories (default: runs)")
    io.add_argument("--name", default="default", help="run name: runs/<task>/<agent>-<name>")
    io.add_argument("--run-dir", help="explicit run directory (overrides --runs-root/--name)")
    io.add_argument(
        "--out", help="also save the trained agent here (default: <run-dir>/final only)"
    )
    io.add_argument("--threads", type=int, help="torch threads (default: every core)")
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
    run_dir = args.run_dir or run_dir_for(
        args.runs_root, args.task, agent_cls.agent_name, args.name
    )
    require_writable(parser, "--run-dir", run_dir)
    require_writable(parser, "--out", args.out)
    config = config_from_args(parser, config_cls, args)
    set_num_threads(args.threads)
    env_kwargs = {"task": args.task, "task_kwargs": args.task_kwargs}
    if args.reward_model is not None:
        env_kwargs["reward_model"] = args.reward_model
    if args.max_new_tokens is not None:
        env_kwargs["max_new_tokens"] = args.max_new_tokens
    if args.process_reward_model is not None:
        env_kwargs |= {"process_reward_model": args.process_reward_model,
                       "process_reward_mode": args.process_reward_mode}  # fmt: skip
        if args.step_boundary is not None:
            env_kwargs["step_boundary"] = args.step_boundary
    elif args.step_boundary is not None:
        parser.error("--step-boundary needs --process-reward-model (it marks where dense "
                     "rewards are paid)")  # fmt: skip
    policy, tokenizer = args.policy, args.tokenizer
    if policy is None:
        import llm_env
        from llm_env.tasks import make_task

        tokenizer = make_task(args.task, **env_kwargs["task_kwargs"]).tokenizer()
        policy = llm_env.tiny_gpt2(tokenizer, seed=config.seed)
    agent = agent_cls(policy, tokenizer, env_kwargs, config, run_dir)
    history = agent.learn()
    if args.out:
        agent.save(args.out)
    last = history[-1] if history else {}
    summary = {k: round(v, 4) for k, v in last.items() if k.startswith(("reward/", "kl/"))}
    print_on_main(f"done: {json.dumps(summary)}; final policy in {run_dir}/final")
