"""What a task is: prompts, a tokenizer, demonstrations for pre-training / SFT, a gold reward."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from llm_env.chat import Messages, check_chat_template, render_prompt


@dataclass
class Task:
    """A prompt source for TokenMDP-v0 plus everything needed to train a policy for it.

    ``demonstrations`` are ``(prompt, completion)`` pairs: the corpus a tiny policy is pre-trained
    / SFT-ed on. ``gold_reward`` is a ``load_reward_model`` spec (or ``None`` when the task has no
    known gold score). ``make_tokenizer`` builds the task's tokenizer; ``tokenizer()`` caches it.
    A multi-step task also names the separator between its steps (``step_separator``, the env's
    default ``step_boundary``) and a gold process reward of the steps so far
    (``gold_process_reward``, a spec; the env's ``process_reward_model="task"``).

    A conversational task (TRL's ``{"prompt": [messages]}`` rows) keeps each split's message
    lists in ``train_messages`` / ``eval_messages``, parallel to its prompts (None: plain
    prompts). Its prompts are only the messages' contents, one per line (the words of the
    conversation, e.g. for a lexicon) until ``rendered`` with a tokenizer's chat template: the
    env renders them (``env.setup.task`` is the rendered task, whose prompts are what the policy
    continues).
    """

    name: str
    train_prompts: tuple[str, ...]
    eval_prompts: tuple[str, ...]
    demonstrations: tuple[tuple[str, str], ...]
    gold_reward: str | None
    max_new_tokens: int
    max_prompt_tokens: int
    make_tokenizer: Callable[[], PreTrainedTokenizerBase] | None = None
    step_separator: str | None = None
    gold_process_reward: str | None = None
    train_messages: tuple[Messages, ...] | None = None
    eval_messages: tuple[Messages, ...] | None = None
    _tokenizer: PreTrainedTokenizerBase | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.train_prompts:
            raise ValueError(f"task {self.name!r} has no training prompts")
        for split, prompts in (("train", self.train_prompts), ("eval", self.eval_prompts)):
            for i, prompt in enumerate(prompts):
                if not isinstance(prompt, str) or not prompt.strip():
                    raise ValueError(
                        f"task {self.name!r}: {split} prompt #{i} is {prompt!r}; every prompt "
                        "must be a non-blank string"
                    )
        for split, prompts, messages in (
            ("train", self.train_prompts, self.train_messages),
            ("eval", self.eval_prompts, self.eval_messages),
        ):
            if messages is not None and len(messages) != len(prompts):
                raise ValueError(
                    f"task {self.name!r}: {len(messages)} {split} message lists for "
                    f"{len(prompts)} prompts; they must be parallel"
                )

    def prompts(self, split: str) -> tuple[str, ...]:
        """The prompts of ``split`` ("train" or "eval"; a task without eval prompts reuses train)."""
        if split == "train":
            return self.train_prompts
        if split == "eval":
            return self.eval_prompts or self.train_prompts
        raise ValueError(f"unknown prompt split {split!r}; expected 'train' or 'eval'")

    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            if self.make_tokenizer is None:
                raise ValueError(
                    f"task {self.name!r} has no built-in tokenizer; pass tokenizer=<directory "
                    "saved with save_pretrained> to the environment"
                )
            self._tokenizer = self.make_tokenizer()
        return self._tokenizer

    @property
    def conversational(self) -> bool:
        """Whether some prompts are message lists, rendered by the env's chat template."""
        return self.train_messages is not None or self.eval_messages is not None

    def messages(self, split: str) -> tuple[Messages | None, ...]:
        """The message list of each prompt of ``split`` (None for a plain prompt)."""
        prompts = self.prompts(split)  # validates the split name
        own = split == "eval" and self.eval_prompts
        messages = self.eval_messages if own else self.train_messages
        return messages if messages is not None else (None,) * len(prompts)

    def rendered(
        self,
        tokenizer: PreTrainedTokenizerBase,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> Task:
        """This task with every conversational prompt rendered by ``tokenizer``'s chat template
        with the generation prompt (``llm_env.chat.render_prompt``); the messages are kept."""
        if not self.conversational:
            return self
        check_chat_template(tokenizer, f"task {self.name!r}'s conversational prompts")

        def render(prompts: tuple[str, ...], messages: tuple[Messages, ...] | None):
            if messages is None:
                return prompts
            return tuple(render_prompt(tokenizer, m, chat_template_kwargs) for m in messages)

        return dataclasses.replace(
            self,
            train_prompts=render(self.train_prompts, self.train_messages),
            eval_prompts=render(self.eval_prompts, self.eval_messages),
        )
