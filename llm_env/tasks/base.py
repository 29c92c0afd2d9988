"""What a task is: prompts, a tokenizer, demonstrations for pre-training / SFT, a gold reward."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase


@dataclass
class Task:
    """A prompt source for TokenMDP-v0 plus everything needed to train a policy for it.

    ``demonstrations`` are ``(prompt, completion)`` pairs: the corpus a tiny policy is pre-trained
    / SFT-ed on. ``gold_reward`` is a ``load_reward_model`` spec (or ``None`` when the task has no
    known gold score). ``make_tokenizer`` builds the task's tokenizer; ``tokenizer()`` caches it.
    A multi-step task also names the separator between its steps (``step_separator``, the env's
    default ``step_boundary``) and a gold process reward of the steps so far
    (``gold_process_reward``, a spec; the env's ``process_reward_model="task"``).
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
