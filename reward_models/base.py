"""The reward-model protocol and ``load_reward_model(spec)``.

A reward model scores text: ``score(prompts, completions) -> np.ndarray`` (float32, shape [N]).
Text in, so a reward model with another tokenizer than the policy swaps in freely. A process
reward model has the same protocol, called with the completions so far (the env's
``process_reward_model``), and its scores go through the same ``checked_score``.

``load_reward_model(spec)`` accepts
- a registered name (``"sentiment"``, ``"arithmetic"``, ``"arithmetic_chain"``, its process
  reward ``"arithmetic_chain_steps"``, ...; see ``REWARD_MODELS``),
- a directory saved by the Bradley–Terry trainer (a sequence-classification model, one label),
  or by the PRM trainer (a token-classification process reward model, ``reward_models.prm``;
  recognised by its ``prm.json``),
- ``"implicit:POLICY_DIR,REF_DIR,BETA"``: the implicit process reward β·Σ log π_φ/π_ref of a
  DPO-trained policy and its reference (``reward_models.implicit``),
- ``"package.module:attr"`` where ``attr`` is a RewardModel object, a class whose no-argument
  instance is one, or a plain function ``f(prompts, completions) -> sequence of floats``; or
  ``"path/to/file.py:attr"``, the same from a Python file (no need to be on ``sys.path``),
- an object that already has a ``score`` method (returned as is),
- or a plain function with TRL's reward-function signature, ``f(prompts, completions, **kwargs)
  -> list[float]`` (``def f(completions, **kwargs)`` too), wrapped in ``FunctionRewardModel``.
  For a conversational prompt it is called as TRL calls it: the prompt's message list and the
  completion as ``[{"role": "assistant", "content": text}]`` (``checked_score``'s ``messages``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import reprlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RewardModel(Protocol):
    """Anything with ``score(prompts, completions) -> float32 array of shape [N]``."""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray: ...


class RewardModelError(ValueError):
    """A reward model failed or returned something unusable; the message names the reward model.

    The online agents stop training on exactly this error, keeping the last good checkpoint.
    """


def _real(dtype: np.dtype) -> bool:
    """Integer or floating point: what can become a float32 score (not bool, complex, text)."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


class FunctionRewardModel:
    """Wraps a plain function as a reward model, called the way TRL calls reward functions:
    ``f(prompts=..., completions=...)`` when it takes those names or ``**kwargs`` (so TRL's
    ``def reward(completions, **kwargs)`` works as is), else ``f(prompts, completions)``.

    As TRL does for a conversational dataset, a prompt that came from a message list is passed
    as that list and its completion as ``[{"role": "assistant", "content": text}]``
    (``messages``, parallel to the prompts: the message list of each, None for a plain one)."""

    def __init__(self, fn: Callable[..., Sequence[float]], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", None) or repr(fn)
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # builtins without a signature: positional
            params = {}
        self.by_keyword = "completions" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        )

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        messages: Sequence[list[dict[str, str]] | None] | None = None,
    ) -> np.ndarray:
        """float32 scores; anything but real numbers is returned as is, for ``checked_score``
        to reject (a cast would turn ``"1.5"`` into 1.5)."""
        prompts, completions = list(prompts), list(completions)
        if messages is not None:
            from llm_env.chat import as_assistant  # the env is loaded: it passed the messages

            prompts = [p if m is None else m for p, m in zip(prompts, messages)]
            completions = [
                c if m is None else as_assistant(c) for c, m in zip(completions, messages)
            ]
        if self.by_keyword:
            out = self.fn(prompts=prompts, completions=completions)
        else:
            out = self.fn(prompts, completions)
        scores = np.asarray(out)
        return scores.astype(np.float32) if _real(scores.dtype) else scores

    def __repr__(self) -> str:
        return f"FunctionRewardModel({self.name})"


def reward_model_name(model: object) -> str:
    return str(getattr(model, "name", None) or type(model).__name__)


def checked_score(
    model: RewardModel,
    prompts: Sequence[str],
    completions: Sequence[str],
    messages: Sequence[list[dict[str, str]] | None] | None = None,
) -> np.ndarray:
    """``model.score(...)`` validated: float32, shape ``[len(prompts)]``, every value finite.

    ``messages``: the message list each prompt was rendered from (None for a plain prompt). A
    plain function (``FunctionRewardModel``) gets them as TRL passes conversations; any other
    reward model scores the text.

    Whatever goes wrong — the model raises, or returns non-numbers, a wrong shape, NaN/inf — is
    a ``RewardModelError`` naming the model (an exception it raised is the ``__cause__``).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    name = reward_model_name(model)
    if messages is not None and len(messages) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(messages)} message lists")
    extra = {"messages": messages} if isinstance(model, FunctionRewardModel) and messages else {}
    try:
        raw = model.score(list(prompts), list(completions), **extra)
    except Exception as e:
        raise RewardModelError(f"reward model {name!r} raised {type(e).__name__}: {e}") from e
    try:
        scores = np.asarray(raw)
    except Exception as e:  # ragged lists, tensors that require grad, ...
        raise RewardModelError(
            f"reward model {name!r} returned {reprlib.repr(raw)}, not an array of scores ({e})"
        ) from e
    if not _real(scores.dtype):
        raise RewardModelError(
            f"reward model {name!r} returned non-numeric scores {reprlib.repr(raw)} "
            f"(dtype {scores.dtype}); expected {len(prompts)} real numbers"
        )
    if scores.shape != (len(prompts),):
        raise RewardModelError(
            f"reward model {name!r} returned shape {scores.shape} for {len(prompts)} texts; "
            f"expected ({len(prompts)},)"
        )
    scores = scores.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise RewardModelError(
            f"reward model {name!r} returned {scores[i]} for text #{i} "
            f"(prompt={prompts[i]!r}, completion={completions[i]!r}); {bad.size} non-finite score(s)"
        )
    return scores


def _sentiment() -> RewardModel:
    from reward_models.sentiment import VaderRewardModel

    return VaderRewardModel()


def _arithmetic() -> RewardModel:
    from reward_models.arithmetic import ArithmeticRewardModel

    return ArithmeticRewardModel()


def _arithmetic_chain() -> RewardModel:
    from reward_models.arithmetic_chain import ArithmeticChainRewardModel

    return ArithmeticChainRewardModel()


def _arithmetic_chain_steps() -> RewardModel:
    from reward_models.arithmetic_chain import ArithmeticChainStepsRewardModel

    return ArithmeticChainStepsRewardModel()


def _length() -> RewardModel:
    from reward_models.arithmetic import LengthRewardModel

    return LengthRewardModel()


REWARD_MODELS: dict[str, Callable[[], RewardModel]] = {
    "sentiment": _sentiment,
    "arithmetic": _arithmetic,
    "arithmetic_chain": _arithmetic_chain,
    "arithmetic_chain_steps": _arithmetic_chain_steps,
    "length": _length,
}


def register_reward_model(name: str, factory: Callable[[], RewardModel]) -> None:
    """Make ``load_reward_model(name)`` return ``factory()``."""
    REWARD_MODELS[name] = factory


def _import_module(name: str):
    """``name`` imported as a module, or, if it names a ``.py`` file, that file loaded as one."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    path = Path(name)
    if not path.is_file():
        raise ImportError(f"no Python file {name!r}")
    module_spec = importlib.util.spec_from_file_location(f"_reward_file_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _from_import_path(spec: str) -> RewardModel:
    module_name, _, attr = spec.rpartition(":")
    try:
        obj = getattr(_import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"reward model {spec!r}: cannot import {attr!r} from {module_name!r} ({e})"
        ) from e
    if inspect.isclass(obj):
        obj = obj()
    if hasattr(obj, "score"):
        return obj
    if callable(obj):
        return FunctionRewardModel(obj, name=spec)
    raise ValueError(f"reward model {spec!r} is neither a reward model, a class nor a function")


def load_reward_model(spec: str | Path | RewardModel) -> RewardModel:
    """Resolve ``spec`` (see the module docstring) to a reward model."""
    if not isinstance(spec, (str, Path)):
        if hasattr(spec, "score"):
            return spec
        if callable(spec):  # a plain function, TRL's reward-function signature
            return FunctionRewardModel(spec)
        raise TypeError(
            "reward model must be a spec string, an object with score() or a function "
            f"f(prompts, completions, **kwargs) -> list[float]; got {spec!r}"
        )
    text = str(spec)
    if text in REWARD_MODELS:
        return REWARD_MODELS[text]()
    if text.startswith("implicit:"):
        from reward_models.implicit import ImplicitProcessRewardModel

        return ImplicitProcessRewardModel.from_spec(text)
    if Path(text).is_dir() and (Path(text) / "prm.json").is_file():
        from reward_models.prm import LearnedProcessRewardModel

        return LearnedProcessRewardModel.from_pretrained(text)
    if Path(text).is_dir():
        from reward_models.learned import LearnedRewardModel

        return LearnedRewardModel.from_pretrained(text)
    if ":" in text and not Path(text).exists():
        return _from_import_path(text)
    raise ValueError(
        f"unknown reward model {text!r}: expected one of the registered names {sorted(REWARD_MODELS)}, "
        "a directory saved by the Bradley-Terry or PRM trainer, 'implicit:POLICY_DIR,REF_DIR,BETA' "
        "'package.module:callable' or 'path/to/file.py:callable'"
    )
