"""The ground floor every layer may use: option validators that name the field, the bad value
and the valid range; ``group`` (a nested option-group field); and the type introspection of
config fields (``field_types``, ``unwrap_optional``, ``literal_choices``, ``sequence_type``)
that the validators, ``build_config`` and the command-line generator share. Imports nothing
from the project."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any


def check_number(name: str, value: Any, kind: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(f"{name} must be {'a number' if kind is float else 'an integer'}, "
                        f"got {value!r}")  # fmt: skip
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> None:
    """``value`` is True or False (not a truthy string or number), else an error naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def check_positive(name: str, value: Any, kind: type = int, allow_zero: bool = False) -> None:
    """``value`` is a ``kind`` > 0 (>= 0 with ``allow_zero``), else an error naming ``name``."""
    check_number(name, value, kind)
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_range(name: str, value: Any, low: float, high: float, closed: str = "[]") -> None:
    """``value`` lies in the interval ``low..high`` (``closed`` says which ends are included)."""
    check_number(name, value, float)
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
    hints = field_types(type(config))
    for f in dataclasses.fields(config):
        annotation, optional = unwrap_optional(hints[f.name])
        value, name = getattr(config, f.name), prefix + f.name
        sequence = sequence_type(annotation)
        choices = literal_choices(sequence[1] if sequence else annotation)
        if choices is None or (optional and value is None):
            continue
        if not sequence:
            check_choice(name, value, choices)
            continue
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be a {sequence[0].__name__}, got {value!r}")
        for item in value:
            check_choice(name, item, choices)


def group(factory: Callable[[], Any], prefix: str = "") -> Any:
    """A nested option group field: ``prefix`` is put before its options' names on the CLI."""
    return dataclasses.field(default_factory=factory, metadata={"cli_prefix": prefix})


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The field annotations of ``cls`` evaluated (``from __future__ import annotations`` makes
    them strings), names looked up in the globals of the module defining each class."""
    return typing.get_type_hints(cls)


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` or ``Optional[X]``, else ``(annotation, False)``."""
    args = typing.get_args(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    if union and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def literal_choices(annotation: Any) -> tuple | None:
    """The choices of ``Literal[...]``, else ``None``."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def sequence_type(annotation: Any) -> tuple[type, Any] | None:
    """``(tuple, X)`` for ``tuple[X, ...]``, ``(list, X)`` for ``list[X]``, else ``None``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple, args[0]
    if origin is list and len(args) == 1:
        return list, args[0]
    return None


def as_container(annotation: Any, value: Any) -> Any:
    """A list or tuple given for a ``tuple[X, ...]`` or ``list[X]`` field as that container
    (the items are the field's validator's to check); any other value as it is."""
    sequence = sequence_type(unwrap_optional(annotation)[0])
    return sequence[0](value) if sequence and isinstance(value, (tuple, list)) else value
