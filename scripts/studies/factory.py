"""The studies' agent factory: one way to build any registered agent for a study's tiny models.

``study_config(agent, options)`` is the agent's config with the tiny-model settings of
``agents.presets`` (the agents' own defaults are a pretrained checkpoint's) and the study's flat
options on top (``"seed"``, ``"kl.beta"``, ``"optim.learning_rate"``); ``config_fingerprint`` is
what a stage key holds of it, so a changed agent default or preset reruns the stage that trains
it; ``make_agent`` constructs the agent from the registry.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from agents.harness.config import build_config, fingerprint_hash, resume_fingerprint
from agents.presets import TINY_MODEL_OPTIONS
from agents.registry import agent_spec


def option_names(cls: type) -> set[str]:
    """The flat option names ``build_config`` takes for ``cls``: fields and ``group.field``."""
    hints, found = typing.get_type_hints(cls), set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found |= {f"{f.name}.{inner.name}" for inner in dataclasses.fields(hints[f.name])}
        else:
            found.add(f.name)
    return found


def study_config(agent: str, options: dict[str, Any]) -> Any:
    """``agent``'s config: its tiny-model preset, then ``options`` (flat); an option the config
    does not have is an error naming it."""
    cls = agent_spec(agent).config_class()
    unknown = sorted(set(options) - option_names(cls))
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(unknown)}")
    return build_config(cls, {**TINY_MODEL_OPTIONS.get(agent, {}), **options})


def config_fingerprint(config: Any) -> str:
    """The config's class and the hash of every field a result depends on (the fields a resumed
    run may change, such as ``resume`` and ``log_every``, left out)."""
    return f"{type(config).__name__}:{fingerprint_hash(resume_fingerprint(config))}"


def make_agent(agent: str, *args: Any, **kwargs: Any) -> Any:
    """The registered ``agent``'s class called with the arguments of its constructor."""
    return agent_spec(agent).agent_class()(*args, **kwargs)
