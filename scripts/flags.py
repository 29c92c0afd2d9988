"""Dataclass configs as command-line options: every field becomes ``--field-name`` with its
one-line docstring (the string literal right below the field) as ``--help`` text.

A nested group's fields become options of their own, flat (``--learning-rate``,
``--temperature``) or with the group's prefix (``--lora-r``), as declared by
``agents.checks.group``. Field types: ``int``, ``float``, ``str``, ``bool`` (``--quick`` /
``--no-quick``), ``X | None`` (``none`` on the command line), ``Literal[...]`` (argparse
``choices``, listed in ``--help``), and ``tuple[X, ...]`` / ``list[X]`` (``--betas 0.1 0.3``, or
comma-separated ``--betas 0.1,0.3``). The agent configs and ``llm_env.config.EnvConfig`` go
through the same generator.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

from agents.checks import field_types, literal_choices, sequence_type, unwrap_optional
from agents.harness.config import build_config


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


_ITEM_NAMES = {int: "an int", float: "a float", str: "a string", _bool: "true/false"}


def json_object(text: str) -> dict:
    """``type=`` for options taking a JSON object, e.g. ``--task-kwargs '{"max_operand": 9}'``
    (argparse names the option in the error)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(
            f"invalid JSON {text!r} ({e.msg} at column {e.colno}); "
            "expected an object such as '{\"max_operand\": 9}'"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


def _scalar(annotation: Any) -> tuple[Callable[[str], Any], tuple | None]:
    """``(converter, choices)`` for ``int``, ``float``, ``str``, ``bool`` or a ``Literal`` of
    strings or of integers."""
    choices = literal_choices(annotation)
    if choices is not None and {type(c) for c in choices} in ({str}, {int}):
        return type(choices[0]), choices
    if annotation is bool:
        return _bool, None
    if annotation in (int, float, str):
        return annotation, None
    if annotation is dict or typing.get_origin(annotation) is dict:
        return json_object, None
    raise TypeError(f"no command-line conversion for field type {annotation!r}")


class _SequenceAction(argparse.Action):
    """A tuple or list option: values space- or comma-separated (``--betas 0.1 0.3``,
    ``--betas 0.1,0.3``, ``--betas 0.1, 0.3``), each converted and checked against the item
    choices; ``none`` alone is ``None`` for an optional field, an empty string an empty one."""

    def __init__(self, option_strings, dest, kind, convert, choices, optional, **kwargs):
        super().__init__(option_strings, dest, nargs="+", **kwargs)
        self.kind, self.convert, self.item_choices = kind, convert, choices
        self.optional = optional

    def __call__(self, parser, namespace, values, option_string=None):
        items = [item.strip() for value in values for item in value.split(",")]
        if self.optional and [item.lower() for item in items] == ["none"]:
            setattr(namespace, self.dest, None)
            return
        setattr(namespace, self.dest, self.kind(self._item(i) for i in items if i))

    def _item(self, text: str) -> Any:
        try:
            value = self.convert(text)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentError(
                self, f"{text!r} is not {_ITEM_NAMES[self.convert]}"
            ) from None
        if self.item_choices is not None and value not in self.item_choices:
            choices = ", ".join(map(str, self.item_choices))
            raise argparse.ArgumentError(self, f"{text!r} is not one of {choices}")
        return value


def _fields(cls: type, prefix: str = "", path: str = "", defaults: Any = None) -> list[tuple]:
    """``(option name, dotted field path, annotation, default, doc)`` of every leaf field."""
    docs, hints, out = field_docs(cls), field_types(cls), []
    for f in dataclasses.fields(cls):
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()
        if dataclasses.is_dataclass(hints[f.name]):
            inner_prefix = prefix + f.metadata.get("cli_prefix", "")
            out += _fields(hints[f.name], inner_prefix, f"{path}{f.name}.", default)
        else:
            doc = docs.get(f.name, "")
            out.append((prefix + f.name, path + f.name, hints[f.name], default, doc))
    return out


def _metavar(convert: Callable, choices: tuple | None, optional: bool) -> str:
    if choices is not None:
        return "{" + ",".join(map(str, choices + (("none",) if optional else ()))) + "}"
    return {_bool: "BOOL"}.get(convert, convert.__name__.upper())


def _shown(default: Any) -> Any:
    """A default as ``--help`` shows it: a tuple or list as it is typed (``0.1 0.3``)."""
    if isinstance(default, (tuple, list)):
        return " ".join(map(str, default)) or "empty"
    return default


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    title: str | None = None,
    exclude: tuple[str, ...] = (),
    namespace: str = "cfg",
) -> None:
    """One ``--option`` per leaf field of ``cls`` (nested groups flattened) but those in
    ``exclude``, defaulting to the field's default; ``namespace`` keeps two configs' options
    apart on one parser (the agent's ``cfg``, the env's ``env``)."""
    group_ = parser.add_argument_group(title or cls.__name__)
    for name, dest, annotation, default, doc in _fields(cls):
        if dest in exclude:
            continue
        annotation, optional = unwrap_optional(annotation)
        flag, dest = f"--{name.replace('_', '-')}", f"{namespace}:{dest}"
        sequence = sequence_type(annotation)
        text = f"{doc} (default: {_shown(default)})"
        if sequence:
            convert, choices = _scalar(sequence[1])
            group_.add_argument(
                flag,
                dest=dest,
                action=_SequenceAction,
                kind=sequence[0],
                convert=convert,
                choices=choices,
                optional=optional,
                default=default,
                metavar=_metavar(convert, choices, False),
                help=text,
            )
            continue
        convert, choices = _scalar(annotation)
        if convert is _bool and not optional:
            group_.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue

        def parse(text: str, convert=convert, optional=optional):
            return None if optional and text.lower() == "none" else convert(text)

        parse.__name__ = convert.__name__  # argparse's "invalid int value: 'x'"
        metavar = _metavar(convert, choices, optional)
        if choices is not None and optional:
            choices += (None,)
        group_.add_argument(
            flag,
            dest=dest,
            type=parse,
            choices=choices,
            default=default,
            metavar=metavar,
            help=text,
        )


def dataclass_from_args(cls: type, args: argparse.Namespace, namespace: str = "cfg") -> Any:
    """Build ``cls`` (and its groups) from the options ``add_dataclass_args`` added under
    ``namespace``; an invalid value is a parser-style error naming the option."""
    prefix = namespace + ":"
    values = {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}
    return build_config(cls, values)
