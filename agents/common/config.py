"""Dataclass configs ↔ command-line options: every field becomes ``--field-name``, its one-line
docstring (the string literal right below the field) becomes the ``--help`` text.

Library code only builds parsers; the scripts call ``parse_args``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` read from the class source (attribute docstrings, PEP 257)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parser_type(annotation) -> tuple[typing.Callable, bool]:
    """(converter, optional) for a field annotation such as ``int``, ``float | None``, ``str``."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    if args:
        annotation = next(a for a in args if a is not type(None))
    if annotation is bool:
        return _bool, optional
    if annotation in (int, float, str):
        return annotation, optional
    raise TypeError(f"no command-line conversion for field type {annotation!r}")


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, title: str | None = None, prefix: str = ""
) -> None:
    """One ``--<prefix><field-name>`` option per field of ``cls``, defaulting to the field's default."""
    group = parser.add_argument_group(title or cls.__name__)
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        convert, optional = _parser_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        dest = f"{prefix.replace('-', '_')}{f.name}"
        text = f"{docs.get(f.name, '')} (default: {default})"
        if convert is _bool and not optional:
            group.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue

        def parse(text: str, convert=convert, optional=optional):
            return None if optional and text.lower() == "none" else convert(text)

        metavar = {_bool: "BOOL"}.get(convert, convert.__name__.upper())
        group.add_argument(flag, dest=dest, type=parse, default=default, metavar=metavar, help=text)


def dataclass_from_args(cls: type, args: argparse.Namespace, prefix: str = ""):
    """Build ``cls`` from the options ``add_dataclass_args`` added."""
    dest = prefix.replace("-", "_")
    return cls(**{f.name: getattr(args, dest + f.name) for f in dataclasses.fields(cls)})
