"""Conversational data, as TRL takes it: message lists rendered with the tokenizer's chat template.

A conversational prompt is a list of ``{"role": ..., "content": ...}`` messages; a
conversational completion (SFT rows, DPO's ``chosen``/``rejected``) is the list of messages that
follows it, usually one ``{"role": "assistant", ...}``. The prompt is rendered with
``add_generation_prompt=True`` (the text the model continues); a completion is the rest of the
whole conversation's rendering after that prompt text, so prompt + completion render exactly as
the template renders the conversation (the end-of-turn token included: it is what the model
must learn to emit to stop). ``chat_template_kwargs`` (e.g. ``{"enable_thinking": False}``)
are passed to every rendering.

This module imports no env code, so reward models and trainers may use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def is_conversational(value: Any) -> bool:
    """True for a non-empty list of messages (dicts with a ``role``), TRL's conversational form."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, Mapping) and "role" in m for m in value)
    )


def check_messages(value: Any, where: str) -> Messages:
    """``value`` as a list of ``{"role": str, "content": str}`` messages, else a ``ValueError``
    that names ``where`` (e.g. ``"prompts.jsonl:3: key 'prompt'"``) and the bad message."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {value!r}")
    for k, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}: message #{k} is {message!r}, not an object")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(
                    f"{where}: message #{k} needs a string {key!r}, got {message.get(key)!r}"
                )
    return [dict(m) for m in value]


def check_chat_template(tokenizer: PreTrainedTokenizerBase, what: str = "conversational data"):
    """A clear error when the tokenizer cannot render messages."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"{what} needs a tokenizer with a chat template, but {type(tokenizer).__name__} has "
            "none (tokenizer.chat_template is None); use the instruct model's own tokenizer "
            "directory or give plain-string prompts"
        )


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The text the model continues: the messages and the assistant's generation prompt."""
    check_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=True,
        **dict(chat_template_kwargs or {}),
    )  # fmt: skip


def render_completion(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Mapping[str, str]],
    completion: Sequence[Mapping[str, str]],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The completion's text: the conversation ``prompt + completion`` rendered, less the
    rendered prompt (``render_prompt``). A template that renders the prompt differently inside
    the whole conversation (so no suffix exists) is an error naming the first message."""
    prompt_text = render_prompt(tokenizer, prompt, chat_template_kwargs)
    full = tokenizer.apply_chat_template(
        list(prompt) + list(completion), tokenize=False, **dict(chat_template_kwargs or {})
    )
    if not full.startswith(prompt_text):
        raise ValueError(
            "the chat template renders the prompt differently inside the whole conversation "
            f"(starting {prompt[0]!r}); cannot split it into prompt and completion"
        )
    return full[len(prompt_text) :]


def as_assistant(completion: str) -> Messages:
    """A completion as TRL hands it to a reward function of a conversational dataset."""
    return [{"role": "assistant", "content": completion}]


def render_text(
    tokenizer: PreTrainedTokenizerBase | None,
    value: str | Sequence[Mapping[str, str]],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """A prompt as text: a string unchanged, a message list rendered with ``render_prompt``."""
    if isinstance(value, str):
        return value
    if tokenizer is None:
        raise ValueError("a conversational prompt needs a tokenizer with a chat template")
    return render_prompt(tokenizer, value, chat_template_kwargs)
