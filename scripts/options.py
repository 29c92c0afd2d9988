"""Command-line helpers the scripts share: checks that make bad options fail before any work
(JSON-valued options, output locations that cannot be written, config values out of range) and
the benchmarks' ``--smoke``, and the tiny-model defaults of a run without ``--policy``."""

from __future__ import annotations

import argparse
import os
from typing import Any

from scripts.flags import dataclass_from_args
from scripts.studies.stages import check_writable


def require_writable(
    parser: argparse.ArgumentParser, option: str, path: str | os.PathLike | None, file: bool = False
) -> None:
    """``check_writable`` as a command-line error (exit status 2); ``None`` paths are skipped."""
    if path is None:
        return
    try:
        check_writable(path, option, file)
    except ValueError as e:
        parser.error(str(e))


def parse_args_with_smoke(
    parser: argparse.ArgumentParser, argv: list[str] | None, smoke: dict
) -> argparse.Namespace:
    """Parse ``argv`` with a ``--smoke`` flag that swaps in the tiny sizes ``smoke`` as defaults
    (options given explicitly still win): a run of seconds that checks the script end to end."""
    sizes = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in smoke.items())
    parser.add_argument("--smoke", action="store_true", help=f"tiny sizes, seconds ({sizes})")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def reparse_with_defaults(
    parser: argparse.ArgumentParser, argv: list[str] | None, options: dict[str, Any]
) -> argparse.Namespace:
    """Parse ``argv`` again with ``options`` (flat config options such as
    ``agents.presets.TINY_MODEL_OPTIONS[agent]``) as the defaults of their command-line
    options; options given explicitly still win."""
    parser.set_defaults(**{"cfg:" + key: value for key, value in options.items()})
    return parser.parse_args(argv)


def config_from_args(
    parser: argparse.ArgumentParser, cls: type, args: argparse.Namespace, namespace: str = "cfg"
) -> Any:
    """``dataclass_from_args(cls, args)``; a value the config rejects (``ValueError``,
    ``TypeError``, a missing directory) is a command-line error (exit status 2) naming the
    option, as argparse's own are, before any work starts — never a traceback."""
    try:
        return dataclass_from_args(cls, args, namespace)
    except (ValueError, TypeError, FileNotFoundError) as e:
        message = str(e)
        # config errors start with the field's name ("max_grad_norm must be >= 0, got -1.0";
        # a group's prefixed field as "lora_r"): the option is --max-grad-norm, --lora-r
        flags = [
            flag
            for action in parser._actions
            if action.dest.startswith(namespace + ":")
            for flag in action.option_strings
            if flag.startswith("--")
            and not flag.startswith("--no-")
            and message.startswith(flag[2:].replace("-", "_"))
            and message[len(flag) - 2 : len(flag) - 1] in (" ", ":")
        ]
        if flags:
            parser.error(f"argument {max(flags, key=len)}: {message}")
        parser.error(message)
