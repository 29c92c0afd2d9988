"""The token-MDP rules, written once for one or many sequences.

``TokenBatch`` holds B sequences as numpy arrays and applies the rules of the MDP:
one token = one action (appended deterministically); a stop token (EOS, the checkpoint's
``generation_config`` stop ids, ``stop_tokens``) ends the episode (terminated); the
``max_new_tokens``-th token ends it too (truncated, unless that token is a stop token); the
reward is 0 on every step except the last, which carries ``reward_model.score([prompt],
[completion])`` — every sequence that finishes in a step is scored in ONE batched call. An optional process reward
(``llm_env.process``) adds a reward on the tokens that close a step. Both ``TokenMDPEnv`` (B = 1)
and ``TokenMDPVectorEnv`` delegate to it, so a vector env and B single envs agree token for token.

Observation layout (length ``max_prompt_tokens + max_new_tokens``): the prompt tokens, then the
generated tokens, then pad tokens (the pad id, or EOS without one); ``attention_mask`` is 1 on
real tokens and is tracked, never derived from the ids (pad may equal EOS, and a chat prompt
holds EOS-like tokens). Prompts longer than ``max_prompt_tokens`` are truncated from the left
(their end is what the policy continues) with a warning naming the prompt. An episode may start
from a prefix: token ids written after the prompt as if generated (they count toward
``max_new_tokens``). A prompt is a string or a list of messages, rendered with the tokenizer's
chat template (``llm_env.chat``); a string that is one of the task's rendered prompts is that
conversation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gymnasium import spaces
from transformers import PreTrainedTokenizerBase

from llm_env.chat import Messages, check_messages, render_prompt
from llm_env.config import EnvConfig
from llm_env.process import ProcessRewards, ProcessSetup, resolve_process
from llm_env.tasks import Task, make_task
from llm_env.tokenizer import check_tokenizer, load_tokenizer, pad_id, resolve_stop_ids
from reward_models.base import RewardModel, checked_score, load_reward_model


@dataclass
class EnvSetup:
    """Everything an env needs, resolved from the user's (mostly optional) arguments.

    ``task`` is rendered (``Task.rendered``): its prompts are the text the policy continues.
    ``stop_ids``: every id that ends an episode, EOS first. ``pad_id``: the observation padding
    (the tokenizer's pad, or EOS without one). ``conversations``: rendered prompt → its messages.
    """

    task: Task
    tokenizer: PreTrainedTokenizerBase
    reward_model: RewardModel
    gold_reward_model: RewardModel | None
    max_new_tokens: int
    max_prompt_tokens: int
    vocab_size: int
    split: str
    stop_ids: tuple[int, ...]
    pad_id: int
    process: ProcessSetup | None = None
    chat_template_kwargs: dict | None = None
    conversations: dict[str, Messages] = field(default_factory=dict, repr=False)

    def prompt(self, value: str | Messages) -> tuple[str, Messages | None]:
        """A prompt's text and messages: a message list rendered with the chat template and
        the generation prompt; a string as is, with the messages of the task's prompt it is."""
        if isinstance(value, str):
            return value, self.conversations.get(value)
        return render_prompt(self.tokenizer, value, self.chat_template_kwargs), value


def resolve_setup(config: EnvConfig) -> EnvSetup:
    """Fill in defaults from the task and check what needs loading, naming what is wrong (the
    options' shapes were checked by ``EnvConfig``)."""
    c = config
    task, tokenizer, reward_model, gold_reward_model = (
        c.task,
        c.tokenizer,
        c.reward_model,
        c.gold_reward_model,
    )
    vocab_size, split = c.vocab_size, c.split
    task = make_task(task, **c.task_kwargs)
    task.prompts(split)  # validates the split name
    directory = tokenizer if isinstance(tokenizer, (str, Path)) else None
    tokenizer = task.tokenizer() if tokenizer is None else load_tokenizer(tokenizer)
    check_tokenizer(tokenizer)
    stop_ids = resolve_stop_ids(tokenizer, directory, c.stop_tokens, c.stop_token_ids)
    task = task.rendered(tokenizer, c.chat_template_kwargs)
    n_tokens = len(tokenizer)
    if vocab_size is None:
        vocab_size = n_tokens
    if vocab_size < n_tokens:
        raise ValueError(
            f"vocab_size={vocab_size} (the action space) is smaller than the tokenizer's "
            f"{n_tokens} tokens: every token id must be an action"
        )
    if reward_model is None:
        if task.gold_reward is None:
            raise ValueError(f"task {task.name!r} has no gold reward: pass reward_model=...")
        reward_model = task.gold_reward
    rm = load_reward_model(reward_model)
    if gold_reward_model == "task":
        gold_reward_model = task.gold_reward
    if gold_reward_model is None:
        gold = None
    elif gold_reward_model == reward_model or gold_reward_model is rm:
        gold = rm
    else:
        gold = load_reward_model(gold_reward_model)
    return EnvSetup(
        task=task,
        tokenizer=tokenizer,
        reward_model=rm,
        gold_reward_model=gold,
        max_new_tokens=int(c.max_new_tokens or task.max_new_tokens),
        max_prompt_tokens=int(c.max_prompt_tokens or task.max_prompt_tokens),
        vocab_size=int(vocab_size),
        split=split,
        stop_ids=stop_ids,
        pad_id=pad_id(tokenizer),
        process=resolve_process(
            task, tokenizer, c.process_reward_model, c.step_boundary, c.process_reward_mode
        ),
        chat_template_kwargs=c.chat_template_kwargs,
        conversations={
            text: messages
            for part in ("train", "eval")
            for text, messages in zip(task.prompts(part), task.messages(part))
            if messages is not None
        },
    )


def observation_space(setup: EnvSetup) -> spaces.Dict:
    length = setup.max_prompt_tokens + setup.max_new_tokens
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, setup.vocab_size - 1, shape=(length,), dtype=np.int64),
            "attention_mask": spaces.Box(0, 1, shape=(length,), dtype=np.int64),
        }
    )


def draw_prompt(rng: np.random.Generator, prompts: Sequence[str]) -> str:
    return prompts[int(rng.integers(len(prompts)))]


def check_prompt(value, name: str) -> str | Messages:
    """A reset prompt: a string, or a list of ``{"role", "content"}`` messages (rendered with
    the chat template); else an error naming ``name``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return check_messages(value, name)
    raise TypeError(
        f"{name} must be a string or a list of messages, got {type(value).__name__} {value!r}"
    )


def as_token_ids(actions, batch_size: int, vocab_size: int) -> np.ndarray:
    """Validate actions: integers in ``[0, vocab_size)``, one per sequence."""
    arr = np.asarray(actions)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"actions must be integer token ids, got dtype {arr.dtype} ({actions!r})")
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.shape != (batch_size,):
        raise ValueError(
            f"expected {batch_size} token ids (one per sequence), got shape {arr.shape}"
        )
    return arr.astype(np.int64)


def check_prefix(prefix, setup: EnvSetup, name: str) -> np.ndarray:
    """Validate a reset prefix: integer token ids of the action space, no stop token, shorter
    than ``max_new_tokens`` (a token is left to generate). Errors name ``name`` and the bad id."""
    try:
        arr = np.asarray(prefix)
    except ValueError:  # ragged
        arr = np.asarray(None)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be a list of integer token ids, got {prefix!r}")
    limit, vocab = setup.max_new_tokens, setup.vocab_size
    if len(arr) >= limit:
        raise ValueError(
            f"{name} has {len(arr)} tokens but max_new_tokens={limit}: a prefix must be shorter "
            "than max_new_tokens (at least one token is left to generate)"
        )
    bad = np.flatnonzero((arr < 0) | (arr >= vocab))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"{name}: token id {int(arr[k])} at position {k} is outside the action space "
            f"Discrete({vocab}): valid ids are 0..{vocab - 1}"
        )
    stops = np.flatnonzero(np.isin(arr, setup.stop_ids))
    if stops.size:
        k = int(stops[0])
        what = "EOS" if arr[k] == setup.stop_ids[0] else "stop token"
        token = setup.tokenizer.convert_ids_to_tokens(int(arr[k]))
        raise ValueError(
            f"{name}: {what} {token!r} (id {int(arr[k])}) at position {k}: a prefix cannot "
            f"contain EOS or another stop token (the episode would already have ended)"
        )
    return arr.astype(np.int64)


@dataclass
class StepResult:
    """What ``TokenBatch.append`` reports, per sequence: ``rewards = outcome + process``."""

    rewards: np.ndarray  # (B,) float32
    terminated: np.ndarray  # (B,) bool
    truncated: np.ndarray  # (B,) bool
    final_infos: dict[int, dict]  # final info of each sequence that ended, by index
    outcome_rewards: np.ndarray  # (B,) float32, non-zero only where an episode ended
    process_rewards: np.ndarray | None = None  # (B,) float32; None: no PRM


class TokenBatch:
    """B sequences being generated; applies the token-MDP rules (see module docstring)."""

    def __init__(self, setup: EnvSetup, batch_size: int):
        self.setup = setup
        self.batch_size = batch_size
        self.pad_id = setup.pad_id
        self.eos_id = setup.tokenizer.eos_token_id
        self.stop_ids = np.asarray(setup.stop_ids, dtype=np.int64)
        width = setup.max_prompt_tokens + setup.max_new_tokens
        self.input_ids = np.full((batch_size, width), self.pad_id, dtype=np.int64)
        self.attention_mask = np.zeros((batch_size, width), dtype=np.int64)
        self.prompt_len = np.zeros(batch_size, dtype=np.int64)
        self.num_new = np.zeros(batch_size, dtype=np.int64)
        self.started = np.zeros(batch_size, dtype=bool)
        self.finished = np.zeros(batch_size, dtype=bool)
        self.finish_reason: list[str | None] = [None] * batch_size
        self.prompt_text = [""] * batch_size
        self.messages: list[Messages | None] = [None] * batch_size
        self._prompt_plain = [""] * batch_size  # decoded without special tokens, as completions
        self._warned_truncation = False
        self.process: ProcessRewards | None = None
        if setup.process is not None:
            self.process = ProcessRewards(setup.process, batch_size, self.eos_id)

    # -- episode start -------------------------------------------------------------------------
    def start(
        self,
        index: Sequence[int],
        prompts: Sequence[str | Messages],
        prefixes: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Begin new episodes for sequences ``index`` with ``prompts`` (strings or checked
        message lists, ``EnvSetup.prompt``; one batched tokenizer call, no special tokens added:
        a rendered chat prompt has them), each continued by its checked prefix (``check_prefix``)
        when given."""
        if len(index) == 0:
            return
        texts, messages = zip(*(self.setup.prompt(p) for p in prompts))
        tokenizer = self.setup.tokenizer
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        limit = self.setup.max_prompt_tokens
        for i, prompt, conversation, ids in zip(index, texts, messages, encoded):
            if not ids:
                raise ValueError(f"prompt {prompt!r} is empty after tokenization")
            truncated = len(ids) > limit
            if truncated:
                if not self._warned_truncation:
                    warnings.warn(
                        f"prompt {prompt!r} has {len(ids)} tokens > max_prompt_tokens={limit}; "
                        "keeping its last tokens (further truncations are not reported)",
                        stacklevel=4,
                    )
                    self._warned_truncation = True
                ids = ids[-limit:]
            self.input_ids[i] = self.pad_id
            self.attention_mask[i] = 0
            self.input_ids[i, : len(ids)] = ids
            self.attention_mask[i, : len(ids)] = 1
            self.prompt_len[i] = len(ids)
            self._prompt_plain[i] = tokenizer.decode(ids, skip_special_tokens=True)
            self.messages[i] = conversation
            if conversation is None:
                self.prompt_text[i] = self._prompt_plain[i]
            else:  # the rendered text, its special tokens kept
                self.prompt_text[i] = tokenizer.decode(ids) if truncated else prompt
        index = np.asarray(index)
        self.num_new[index] = 0
        self.started[index] = True
        self.finished[index] = False
        for i in index:
            self.finish_reason[i] = None
        for i, prefix in zip(index, prefixes or ()):
            self._write_prefix(int(i), prefix)
        if self.process is not None:
            self.process.start(self, index)

    def prompt_info(self, i: int) -> dict:
        """Sequence ``i``'s reset info: the prompt text, its messages if any, the lengths."""
        info = {
            "prompt": self.prompt_text[i],
            "prompt_length": int(self.prompt_len[i]),
            "prefix_length": int(self.num_new[i]),
        }
        if self.messages[i] is not None:
            info["messages"] = [dict(m) for m in self.messages[i]]
        return info

    def _write_prefix(self, i: int, prefix: np.ndarray) -> None:
        """Append ``prefix`` to sequence ``i`` as if generated (no reward, no end check)."""
        start, n = self.prompt_len[i], len(prefix)
        self.input_ids[i, start : start + n] = prefix
        self.attention_mask[i, start : start + n] = 1
        self.num_new[i] = n

    # -- one step --------------------------------------------------------------------------------
    def append(self, tokens: np.ndarray, active: np.ndarray) -> StepResult:
        """Append ``tokens[i]`` to every ``active`` sequence; the rewards, ends and final infos.

        Process rewards (when set up) are computed first, in one model call, then the outcome
        rewards of the sequences that ended, in another.
        """
        vocab = self.setup.vocab_size
        bad = active & ((tokens < 0) | (tokens >= vocab))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"token id {int(tokens[i])} (sequence {i}) is outside the action space "
                f"Discrete({vocab}): valid ids are 0..{vocab - 1}"
            )
        rows = np.flatnonzero(active)
        self.input_ids[rows, self.prompt_len[rows] + self.num_new[rows]] = tokens[rows]
        self.attention_mask[rows, self.prompt_len[rows] + self.num_new[rows]] = 1
        self.num_new[rows] += 1
        terminated = active & np.isin(tokens, self.stop_ids)
        truncated = active & ~terminated & (self.num_new >= self.setup.max_new_tokens)
        done = np.flatnonzero(terminated | truncated)
        self.finished[done] = True
        for i in done:
            self.finish_reason[i] = "eos" if terminated[i] else "length"
        process = None if self.process is None else self.process.step(self, rows, tokens, done)
        outcome = np.zeros(self.batch_size, dtype=np.float32)
        final_infos: dict[int, dict] = {}
        if done.size:
            outcome[done], final_infos = self._score(done)
        rewards = outcome if process is None else outcome + process
        return StepResult(rewards, terminated, truncated, final_infos, outcome, process)

    def completion_ids(self, i: int) -> np.ndarray:
        """Generated token ids of sequence ``i`` (the stop token included if emitted)."""
        start = self.prompt_len[i]
        return self.input_ids[i, start : start + self.num_new[i]]

    def completion_text(self, i: int) -> str:
        """Text such that ``prompt_text + completion_text == decode(prompt + completion)``
        (special tokens skipped; a chat prompt's text keeps its own)."""
        return self.completion_texts([i])[0]

    def completion_texts(
        self, rows: Sequence[int], lengths: Sequence[int] | None = None
    ) -> list[str]:
        """``completion_text`` of each of ``rows`` (one batched decode), or of its first
        ``lengths[k]`` generated tokens; by default all of them, a final stop token excluded."""
        if lengths is None:
            lengths = [self.num_new[i] - (self.finish_reason[i] == "eos") for i in rows]
        ends = [self.prompt_len[i] + n for i, n in zip(rows, lengths)]
        full_ids = [self.input_ids[i, :end].tolist() for i, end in zip(rows, ends)]
        decode = self.setup.tokenizer.batch_decode
        texts = []
        for i, end, full in zip(rows, ends, decode(full_ids, skip_special_tokens=True)):
            prompt = self._prompt_plain[i]
            if not full.startswith(prompt):
                ids = self.input_ids[i, self.prompt_len[i] : end]
                full = prompt + self.setup.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(full[len(prompt) :])
        return texts

    def _score(self, done: np.ndarray) -> tuple[np.ndarray, dict[int, dict]]:
        prompts = [self.prompt_text[i] for i in done]
        completions = self.completion_texts(done.tolist())
        messages = [self.messages[i] for i in done]
        conversations = None  # copies for the reward functions (they may edit them)
        if any(m is not None for m in messages):
            conversations = [None if m is None else [dict(x) for x in m] for m in messages]
        rewards = checked_score(self.setup.reward_model, prompts, completions, conversations)
        gold_model = self.setup.gold_reward_model
        if gold_model is None:
            gold = None
        elif gold_model is self.setup.reward_model:
            gold = rewards
        else:
            gold = checked_score(gold_model, prompts, completions, conversations)
        infos = {}
        for k, i in enumerate(done):
            info = {
                "prompt": prompts[k],
                "completion": completions[k],
                "finish_reason": self.finish_reason[i],
                "length": int(self.num_new[i]),
            }
            if self.finish_reason[i] == "eos":
                last = int(self.input_ids[i, self.prompt_len[i] + self.num_new[i] - 1])
                info["stop_token"] = self.setup.tokenizer.convert_ids_to_tokens(last)
            if messages[k] is not None:
                info["messages"] = [dict(m) for m in messages[k]]
            if gold is not None:
                info["gold_reward"] = float(gold[k])
            infos[int(i)] = info
        return rewards, infos

    def observation(self, i: int | None = None) -> dict[str, np.ndarray]:
        if i is None:
            return {
                "input_ids": self.input_ids.copy(),
                "attention_mask": self.attention_mask.copy(),
            }
        return {
            "input_ids": self.input_ids[i].copy(),
            "attention_mask": self.attention_mask[i].copy(),
        }

    def render_text(self, i: int) -> str:
        ids = self.completion_ids(i)
        text = self.setup.tokenizer.decode(ids, skip_special_tokens=True)
        status = f"  [{self.finish_reason[i]}]" if self.finished[i] else ""
        return f"{self.prompt_text[i]} ⟨{text}⟩{status}"
