"""The tiny-model settings (``agents.presets``) as command-line options, for tests that run a
CLI on a tiny GPT-2 given with ``--policy`` (without it, the CLIs apply them themselves)."""

from __future__ import annotations

from agents.presets import TINY_MODEL_OPTIONS


def tiny_model_argv(agent: str) -> list[str]:
    """``agent``'s tiny-model options as ``--option value`` pairs, a boolean as ``--option`` or
    ``--no-option`` (its optimiser's options are flat on the command line:
    ``optim.learning_rate`` is ``--learning-rate``)."""
    argv = []
    for key, value in TINY_MODEL_OPTIONS[agent].items():
        flag = key.rsplit(".", 1)[-1].replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", repr(value)]
    return argv
