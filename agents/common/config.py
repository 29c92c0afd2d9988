"""Agent configs: small dataclasses composed into one ``XConfig`` per agent, validated on
construction, and turned into command-line options.

Every agent config derives (one level) from ``AgentConfig`` — what every run has: seed,
precision, how often it logs and checkpoints, whether it resumes — and composes the small
option groups it uses as fields: ``optim: OptimConfig``, ``sampling: SamplingConfig``,
``lora: LoraOptions``, ``kl: KLConfig``. Each dataclass checks its own fields in
``__post_init__`` and names the field, the bad value and the valid range.

Command line: every field becomes ``--field-name`` with its one-line docstring (the string
literal right below the field) as ``--help`` text. A nested group's fields become options of
their own, flat (``--learning-rate``, ``--temperature``) or with the group's prefix
(``--lora-r``), as declared by ``group(...)``. Field types: ``int``, ``float``, ``str``,
``bool`` (``--quick`` / ``--no-quick``), ``X | None`` (``none`` on the command line),
``Literal[...]`` (argparse ``choices``, listed in ``--help``), and ``tuple[X, ...]`` /
``list[X]`` (``--betas 0.1 0.3``, or comma-separated ``--betas 0.1,0.3``). Library code only
builds parsers; the scripts call ``parse_args``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import inspect
import json
import math
import textwrap
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from agents.common.precision import DEVICES, PRECISIONS, check_device

# -- validation --------------------------------------------------------------------------------


def _number(name: str, value: Any, kind: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(f"{name} must be {'a number' if kind is float else 'an integer'}, "
                        f"got {value!r}")  # fmt: skip
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def check_positive(name: str, value: Any, kind: type = int, allow_zero: bool = False) -> None:
    """``value`` is a ``kind`` > 0 (>= 0 with ``allow_zero``), else an error naming ``name``."""
    _number(name, value, kind)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_range(name: str, value: Any, low: float, high: float, closed: str = "[]") -> None:
    """``value`` lies in the interval ``low..high`` (``closed`` says which ends are included)."""
    _number(name, value, float)
    above = value >= low if closed[0] == "[" else value > low
    below = value <= high if closed[1] == "]" else value < high
    if not (above and below):
        raise ValueError(f"{name} must be in {closed[0]}{low}, {high}{closed[1]}, got {value!r}")


def local_dir(name: str, path: str | Path) -> Path:
    """``path`` as an existing local ``save_pretrained`` directory, else an error naming the
    option: models load from local directories only, never from a model hub."""
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"{name}: {str(path)!r} is not a local save_pretrained directory (no config.json); "
            "models are loaded from local directories only, never from a model hub"
        )
    return Path(path)


def check_choice(name: str, value: Any, choices: typing.Iterable[str]) -> None:
    choices = sorted(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_literals(config: Any, prefix: str = "") -> None:
    """Every ``Literal[...]`` field of the dataclass ``config`` (also ``Literal[...] | None``,
    and tuples or lists of a ``Literal``) holds one of its choices, else a ``ValueError`` naming
    the field (``prefix`` + name, as on the command line: ``"lora_"``), the value and the
    choices. Call it in ``__post_init__``; the command line checks the same choices."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        annotation, optional = _optional(hints[f.name])
        value, name = getattr(config, f.name), prefix + f.name
        sequence = _sequence(annotation)
        choices = _literal(sequence[1] if sequence else annotation)
        if choices is None or (optional and value is None):
            continue
        if not sequence:
            check_choice(name, value, choices)
            continue
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be a {sequence[0].__name__}, got {value!r}")
        for item in value:
            check_choice(name, item, choices)


# -- the groups every agent composes -------------------------------------------------------------


def group(factory: Callable[[], Any], prefix: str = "") -> Any:
    """A nested option group field: ``prefix`` is put before its options' names on the CLI."""
    return dataclasses.field(default_factory=factory, metadata={"cli_prefix": prefix})


@dataclasses.dataclass
class OptimConfig:
    """The optimiser every agent uses: AdamW, optional warm-up, constant or linear schedule.

    The bare default learning rate is TRL's for GRPO, DPO and RLOO (1e-6), for a pretrained
    checkpoint; each agent sets its own (``agents.presets`` holds the tiny models' values)."""

    learning_rate: float = 1e-6
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up over this many optimiser steps."""
    lr_schedule: str = "constant"
    """After warm-up: constant | linear (decay to 0 at the last step)."""
    max_grad_norm: float = 1.0
    """Clip each model's gradient norm to this (0 = no clipping)."""

    def __post_init__(self) -> None:
        check_positive("learning_rate", self.learning_rate, float)
        check_positive("weight_decay", self.weight_decay, float, allow_zero=True)
        check_positive("warmup_steps", self.warmup_steps, allow_zero=True)
        check_choice("lr_schedule", self.lr_schedule, ("constant", "linear"))
        check_positive("max_grad_norm", self.max_grad_norm, float, allow_zero=True)


@dataclasses.dataclass
class AgentConfig:
    """What every training run has. Agent configs derive from it (one level) and add their own
    fields and option groups."""

    seed: int = 0
    """Seeds initialisation, data order, prompt draws and sampling."""
    precision: str = "fp32"
    """Forward-pass precision: auto | bf16 | fp32 (log-probs, KL and losses stay fp32)."""
    device: str = "auto"
    """Where the models train: auto (CUDA when a GPU is visible) | cpu | cuda; env and reward
    models stay on the CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    log_every: int = 10
    """Write a log point (TensorBoard, metrics.jsonl, summary line) every this many steps,
    averaging the steps since the last one (0 = only at evaluations and the end)."""
    save_every: int = 100
    """Write an atomic checkpoint every this many steps (0 = only at the end)."""
    resume: bool = False
    """Continue from run_dir/checkpoint (an error if it was written by another agent or config)."""

    def __post_init__(self) -> None:
        _number("seed", self.seed, int)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        check_device(self.device)
        if not isinstance(self.gradient_checkpointing, bool):
            raise TypeError(
                f"gradient_checkpointing must be True or False, got {self.gradient_checkpointing!r}"
            )
        check_positive("log_every", self.log_every, allow_zero=True)
        check_positive("save_every", self.save_every, allow_zero=True)
        if not isinstance(self.resume, bool):
            raise TypeError(f"resume must be True or False, got {self.resume!r}")


# Fields that may differ between a run and its resumption (they change no result, or only its
# rounding: the device, recomputed activations).
RESUMABLE_CHANGES = frozenset(
    {"resume", "log_every", "save_every", "total_prompts", "device", "gradient_checkpointing"}
)


def to_jsonable(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config, default=str))


def resume_fingerprint(config: Any) -> dict[str, Any]:
    """The config as plain data, less the fields a resumed run may change."""
    return {k: v for k, v in to_jsonable(config).items() if k not in RESUMABLE_CHANGES}


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


# -- command line -------------------------------------------------------------------------------


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


@cache
def _hints(cls: type) -> dict[str, Any]:
    """The field annotations of ``cls`` evaluated (``from __future__ import annotations`` makes
    them strings), names looked up in the globals of the module defining each class."""
    return typing.get_type_hints(cls)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` or ``Optional[X]``, else ``(annotation, False)``."""
    args = typing.get_args(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if union and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def _literal(annotation: Any) -> tuple | None:
    """The choices of ``Literal[...]``, else ``None``."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def _sequence(annotation: Any) -> tuple[type, Any] | None:
    """``(tuple, X)`` for ``tuple[X, ...]``, ``(list, X)`` for ``list[X]``, else ``None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple, args[0]
    if origin is list and len(args) == 1:
        return list, args[0]
    return None


def _scalar(annotation: Any) -> tuple[Callable[[str], Any], tuple | None]:
    """``(converter, choices)`` for ``int``, ``float``, ``str``, ``bool`` or a ``Literal`` of
    strings or of integers."""
    choices = _literal(annotation)
    if choices is not None and {type(c) for c in choices} in ({str}, {int}):
        return type(choices[0]), choices
    if annotation is bool:
        return _bool, None
    if annotation in (int, float, str):
        return annotation, None
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
    docs, hints, out = field_docs(cls), _hints(cls), []
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
    parser: argparse.ArgumentParser, cls: type, title: str | None = None
) -> None:
    """One ``--option`` per leaf field of ``cls`` (nested groups flattened), defaulting to the
    field's default."""
    group_ = parser.add_argument_group(title or cls.__name__)
    for name, dest, annotation, default, doc in _fields(cls):
        annotation, optional = _optional(annotation)
        flag, dest = f"--{name.replace('_', '-')}", "cfg:" + dest
        sequence = _sequence(annotation)
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


def dataclass_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` (and its groups) from the options ``add_dataclass_args`` added; an invalid
    value is a parser-style error naming the option."""
    values = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:")}
    return build_config(cls, values)


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls`` from flat ``{"field": v, "group.field": v}`` values; a group's fields not in
    ``values`` keep the defaults of ``cls``'s own factory for it (GRPO's ``kl`` group keeps its
    k3 estimator when only ``kl.beta`` is given)."""
    hints, kwargs = _hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            inner = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f.name + ".")}
            group_hints = _hints(hints[f.name])
            inner = {k: _container(group_hints.get(k), v) for k, v in inner.items()}
            kwargs[f.name] = dataclasses.replace(f.default_factory(), **inner)
        elif f.name in values:
            kwargs[f.name] = _container(hints[f.name], values[f.name])
    return cls(**kwargs)


def _container(annotation: Any, value: Any) -> Any:
    """A list or tuple given for a ``tuple[X, ...]`` or ``list[X]`` field as that container
    (the items are the field's validator's to check); any other value as it is."""
    sequence = _sequence(_optional(annotation)[0])
    return sequence[0](value) if sequence and isinstance(value, (tuple, list)) else value
