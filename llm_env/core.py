"""The token-MDP rules, written once for one or many sequences.

``TokenBatch`` holds B sequences as numpy arrays and applies the rules of the MDP:
one token = one action (appended deterministically); EOS ends the episode (terminated); the
``max_new_tokens``-th token ends it too (truncated, unless that token is EOS); the reward is 0 on
every step except the last, which carries ``reward_model.score([prompt], [completion])`` — every
sequence that finishes in a step is scored in ONE batched call. An optional process reward
(``llm_env.process``) adds a reward on the tokens that close a step. Both ``TokenMDPEnv`` (B = 1)
and ``TokenMDPVectorEnv`` delegate to it, so a vector env and B single envs agree token for token.

Observation layout (length ``max_prompt_tokens + max_new_tokens``): the prompt tokens, then the
generated tokens, then pad tokens; ``attention_mask`` is 1 on real tokens. Prompts longer than
``max_prompt_tokens`` are truncated from the left (their end is what the policy continues) with
a warning naming the prompt. An episode may start from a prefix: token ids written after the
prompt as if generated (they count toward ``max_new_tokens``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces
from transformers import PreTrainedTokenizerBase

from llm_env.process import ProcessRewards, ProcessSetup, StepBoundary, resolve_process
from llm_env.tasks import Task, make_task
from llm_env.tokenizer import check_tokenizer, load_tokenizer
from reward_models.base import RewardModel, checked_score, load_reward_model


@dataclass
class EnvSetup:
    """Everything an env needs, resolved from the user's (mostly optional) arguments."""

    task: Task
    tokenizer: PreTrainedTokenizerBase
    reward_model: RewardModel
    gold_reward_model: RewardModel | None
    max_new_tokens: int
    max_prompt_tokens: int
    vocab_size: int
    split: str
    process: ProcessSetup | None = None


def check_positive_int(name: str, value) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer >= 1 (a bool is not)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"{name} must be a positive integer (>= 1), got {value!r} ({type(value).__name__})"
        )


def resolve_setup(
    task: str | Task,
    task_kwargs: dict | None,
    tokenizer,
    reward_model,
    gold_reward_model,
    max_new_tokens: int | None,
    max_prompt_tokens: int | None,
    vocab_size: int | None,
    split: str,
    process_reward_model=None,
    step_boundary: StepBoundary | None = None,
    process_reward_mode: str = "step",
) -> EnvSetup:
    """Fill in defaults from the task and check every argument, naming the one that is wrong."""
    if task_kwargs is not None and not isinstance(task_kwargs, dict):
        raise TypeError(
            "task_kwargs must be a dict of task options (e.g. {'max_operand': 9}), got "
            f"{type(task_kwargs).__name__} {task_kwargs!r}"
        )
    for name, value in (
        ("max_new_tokens", max_new_tokens),
        ("max_prompt_tokens", max_prompt_tokens),
        ("vocab_size", vocab_size),
    ):
        if value is not None:
            check_positive_int(name, value)
    task = make_task(task, **(task_kwargs or {}))
    task.prompts(split)  # validates the split name
    tokenizer = task.tokenizer() if tokenizer is None else load_tokenizer(tokenizer)
    check_tokenizer(tokenizer)
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
        max_new_tokens=int(max_new_tokens or task.max_new_tokens),
        max_prompt_tokens=int(max_prompt_tokens or task.max_prompt_tokens),
        vocab_size=int(vocab_size),
        split=split,
        process=resolve_process(
            task, tokenizer, process_reward_model, step_boundary, process_reward_mode
        ),
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


def check_prefix(prefix, setup: EnvSetup, eos_id: int, name: str) -> np.ndarray:
    """Validate a reset prefix: integer token ids of the action space, no EOS, shorter than
    ``max_new_tokens`` (a token is left to generate). Errors name ``name`` and the bad id."""
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
    eos = np.flatnonzero(arr == eos_id)
    if eos.size:
        raise ValueError(
            f"{name}: EOS (id {eos_id}) at position {int(eos[0])}: a prefix cannot contain EOS "
            "(the episode would already have ended)"
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
        self.pad_id = setup.tokenizer.pad_token_id
        self.eos_id = setup.tokenizer.eos_token_id
        width = setup.max_prompt_tokens + setup.max_new_tokens
        self.input_ids = np.full((batch_size, width), self.pad_id, dtype=np.int64)
        self.attention_mask = np.zeros((batch_size, width), dtype=np.int64)
        self.prompt_len = np.zeros(batch_size, dtype=np.int64)
        self.num_new = np.zeros(batch_size, dtype=np.int64)
        self.started = np.zeros(batch_size, dtype=bool)
        self.finished = np.zeros(batch_size, dtype=bool)
        self.finish_reason: list[str | None] = [None] * batch_size
        self.prompt_text = [""] * batch_size
        self._warned_truncation = False
        self.process: ProcessRewards | None = None
        if setup.process is not None:
            self.process = ProcessRewards(setup.process, batch_size, self.eos_id)

    # -- episode start -------------------------------------------------------------------------
    def start(
        self,
        index: Sequence[int],
        prompts: Sequence[str],
        prefixes: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Begin new episodes for sequences ``index`` with ``prompts`` (one batched tokenizer
        call), each continued by its checked prefix (``check_prefix``) when given."""
        if len(index) == 0:
            return
        encoded = self.setup.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        limit = self.setup.max_prompt_tokens
        for i, prompt, ids in zip(index, prompts, encoded):
            if not ids:
                raise ValueError(f"prompt {prompt!r} is empty after tokenization")
            if len(ids) > limit:
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
            self.prompt_text[i] = self.setup.tokenizer.decode(ids, skip_special_tokens=True)
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
        terminated = active & (tokens == self.eos_id)
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
        """Generated token ids of sequence ``i`` (EOS included if emitted)."""
        start = self.prompt_len[i]
        return self.input_ids[i, start : start + self.num_new[i]]

    def completion_text(self, i: int) -> str:
        """Text such that ``prompt_text + completion_text == decode(prompt + completion)``."""
        return self.completion_texts([i])[0]

    def completion_texts(
        self, rows: Sequence[int], lengths: Sequence[int] | None = None
    ) -> list[str]:
        """``completion_text`` of each of ``rows`` (one batched decode), or of its first
        ``lengths[k]`` generated tokens; by default all of them, a final EOS excluded."""
        if lengths is None:
            lengths = [self.num_new[i] - (self.finish_reason[i] == "eos") for i in rows]
        ends = [self.prompt_len[i] + n for i, n in zip(rows, lengths)]
        full_ids = [self.input_ids[i, :end].tolist() for i, end in zip(rows, ends)]
        decode = self.setup.tokenizer.batch_decode
        texts = []
        for i, end, full in zip(rows, ends, decode(full_ids, skip_special_tokens=True)):
            prompt = self.prompt_text[i]
            if not full.startswith(prompt):
                ids = self.input_ids[i, self.prompt_len[i] : end]
                full = prompt + self.setup.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(full[len(prompt) :])
        return texts

    def _score(self, done: np.ndarray) -> tuple[np.ndarray, dict[int, dict]]:
        prompts = [self.prompt_text[i] for i in done]
        completions = self.completion_texts(done.tolist())
        rewards = checked_score(self.setup.reward_model, prompts, completions)
        gold_model = self.setup.gold_reward_model
        if gold_model is None:
            gold = None
        elif gold_model is self.setup.reward_model:
            gold = rewards
        else:
            gold = checked_score(gold_model, prompts, completions)
        infos = {}
        for k, i in enumerate(done):
            info = {
                "prompt": prompts[k],
                "completion": completions[k],
                "finish_reason": self.finish_reason[i],
                "length": int(self.num_new[i]),
            }
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
