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
(``--lora-r``), as declared by ``group(...)``. Library code only builds parsers; the scripts
call ``parse_args``.
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


def _parser_type(annotation) -> tuple[Callable, bool]:
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


def _fields(cls: type, prefix: str = "", path: str = "", defaults: Any = None) -> list[tuple]:
    """``(option name, dotted field path, annotation, default, doc)`` of every leaf field."""
    docs, hints, out = field_docs(cls), typing.get_type_hints(cls), []
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


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, title: str | None = None
) -> None:
    """One ``--option`` per leaf field of ``cls`` (nested groups flattened), defaulting to the
    field's default."""
    group_ = parser.add_argument_group(title or cls.__name__)
    for name, dest, annotation, default, doc in _fields(cls):
        convert, optional = _parser_type(annotation)
        flag, dest = f"--{name.replace('_', '-')}", "cfg:" + dest
        text = f"{doc} (default: {default})"
        if convert is _bool and not optional:
            group_.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue

        def parse(text: str, convert=convert, optional=optional):
            return None if optional and text.lower() == "none" else convert(text)

        metavar = {_bool: "BOOL"}.get(convert, convert.__name__.upper())
        group_.add_argument(
            flag, dest=dest, type=parse, default=default, metavar=metavar, help=text
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
    hints, kwargs = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            inner = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(f.name + ".")}
            kwargs[f.name] = dataclasses.replace(f.default_factory(), **inner)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)
