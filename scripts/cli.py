"""``tokenmdp <command> [options]``: one entry point for every script (``--help`` on each)."""

from __future__ import annotations

import importlib
import sys

from agents.registry import AGENTS

COMMANDS = {
    "pipeline": ("scripts.pipeline", "the whole RLHF-vs-DPO study on a built-in task"),
    "compare": ("scripts.compare", "report and plots from any run directories"),
    "evaluate": ("scripts.evaluate", "fluency, diversity, length and reward of saved policies"),
    "demo": ("scripts.demo", "roll out a fresh tiny policy through TokenMDP-v0 and print it"),
    "preferences": ("scripts.preferences", "sample preference pairs through the env"),
    # one command per agent of the registry: scripts/<command>.py
    **{spec.command: (f"scripts.{spec.command.replace('-', '_')}", spec.summary)
       for spec in AGENTS.values()},
    "kl-study": ("scripts.kl_study", "KL estimators k1/k2/k3 in the reward vs the loss, exactly"),
    "process-study": ("scripts.process_study", "do process rewards help PPO? (arithmetic_chain)"),
    "length-study": ("scripts.length_study", "length, steps and entropy under GRPO variants"),
}  # fmt: skip


def usage() -> str:
    lines = ["usage: tokenmdp <command> [options]", "", "commands:"]
    lines += [f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        sys.exit(f"tokenmdp: unknown command {argv[0]!r}\n\n{usage()}")
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
