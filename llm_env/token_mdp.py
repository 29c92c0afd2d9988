"""``TokenMDPEnv``: text generation as a Gymnasium environment, one sequence at a time."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from llm_env.core import (
    TokenBatch,
    as_token_ids,
    check_prefix,
    draw_prompt,
    observation_space,
    resolve_setup,
)
from llm_env.tasks import DEFAULT_TASK, Task


class TokenMDPEnv(gym.Env):
    """Generate a completion for a prompt, one token per step; scored by a reward model at the end.

    ## Description
    State = prompt x + tokens generated so far y<t. Each step appends one token. The episode ends
    on EOS or after ``max_new_tokens`` tokens, and only then is a reward given: r(x, y) from a
    pluggable reward model (``reward_models.load_reward_model``). The env never runs a policy:
    agents keep their own model and KV cache and feed it the newest token.

    ## Action Space
    ``Discrete(vocab_size)``: the id of the next token (``vocab_size`` defaults to the tokenizer's
    size; it may be larger, e.g. a model's padded embedding table, never smaller).

    ## Observation Space
    ``Dict(input_ids=Box(int64, (L,)), attention_mask=Box(int64, (L,)))`` with
    ``L = max_prompt_tokens + max_new_tokens``: prompt tokens, generated tokens, then pad tokens;
    the mask is 1 on real tokens. Prompts longer than ``max_prompt_tokens`` keep their last tokens
    (a warning names the prompt).

    ## Rewards
    ``reward = outcome + process`` on every step. The outcome reward is 0.0 on every step but the
    last, which carries ``reward_model.score([prompt], [completion])``. The process reward is
    always 0.0 without a ``process_reward_model`` (the default). With one, a token closes a step
    when (a) it adds an occurrence of the ``step_boundary`` separator to the decoded completion
    (or ``step_boundary(token_id)`` is True; never for EOS), or (b) it is the episode's last token
    and the completion differs from the text last scored (the final step). On a closing token,
    ``s = process_reward_model.score([prompt], [completion so far])`` (EOS excluded) and it pays
    ``s`` (``process_reward_mode="step"``) or ``s - Φ`` (``"shaping"``), Φ being the previous
    such score (0 at the start); every other token pays 0. Shaping's process rewards of an
    episode thus sum to Φ(final) = the score of the whole completion (0 if it is empty), minus
    the score of a reset prefix's steps. Details: ``llm_env.process``. The KL penalty of RLHF is
    the agent's business; the env's reward is the pure task reward.

    ## Episode End
    ``terminated`` when the action is EOS; ``truncated`` when ``max_new_tokens`` tokens were
    generated without EOS. Stepping after the end, or before ``reset``, raises ``RuntimeError``.

    ## Info
    ``reset``: ``prompt`` (the prompt text as tokenized, after any truncation), ``prompt_length``
    and ``prefix_length`` (tokens; the prefix follows the prompt in the observation). Final step:
    ``prompt``, ``completion`` (text, EOS excluded, with ``prompt + completion == decode(all
    tokens)``; it includes the prefix), ``finish_reason`` ("eos" | "length"), ``length``
    (completion tokens, prefix and EOS included) and ``gold_reward`` when the task has a gold
    reward model. With a process reward model, every step's info also has ``outcome_reward`` and
    ``process_reward`` (floats; their sum is the reward).

    ## Arguments
    - ``task``: a registered task name ("sentiment" (default), "arithmetic",
      "arithmetic_chain", "jsonl") or a Task;
      ``task_kwargs`` are passed to the task factory (e.g. ``{"max_operand": 9}``).
    - ``tokenizer``: None (the task's), a tokenizer object, or a ``save_pretrained`` directory.
    - ``reward_model``: None (the task's gold reward) or any ``load_reward_model`` spec.
    - ``gold_reward_model``: "task" (default: the task's gold reward, reported in ``info`` as
      ``gold_reward``), None, or a spec.
    - ``max_new_tokens``, ``max_prompt_tokens``: episode and prompt length limits (task defaults).
    - ``vocab_size``: size of the action space (default: ``len(tokenizer)``).
    - ``split``: "train" or "eval" prompts.
    - ``render_mode``: "ansi" renders prompt and completion so far as a string.
    - ``process_reward_model``: None (default: no process reward), "task" (the task's gold
      process reward, e.g. ``arithmetic_chain_steps``) or any ``load_reward_model`` spec; it
      scores ``(prompts, completions so far)``.
    - ``step_boundary``: a non-empty separator string (detected in the decoded text, so it need
      not be one token) or a predicate ``f(token_id) -> bool``; default: the task's separator.
    - ``process_reward_mode``: "step" (default) or "shaping".

    ``reset(options={"prompt": text})`` uses ``text`` instead of drawing a prompt;
    ``options={"prompt": text, "prefix": [ids]}`` also appends the token ids as if generated
    (branching from any state: they pay no reward and count toward ``max_new_tokens``; a prefix
    must be shorter than ``max_new_tokens``, hold valid ids and no EOS).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 30}

    def __init__(
        self,
        task: str | Task = DEFAULT_TASK,
        task_kwargs: dict | None = None,
        tokenizer=None,
        reward_model=None,
        gold_reward_model="task",
        max_new_tokens: int | None = None,
        max_prompt_tokens: int | None = None,
        vocab_size: int | None = None,
        split: str = "train",
        render_mode: str | None = None,
        process_reward_model=None,
        step_boundary=None,
        process_reward_mode: str = "step",
    ):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.setup = resolve_setup(
            task, task_kwargs, tokenizer, reward_model, gold_reward_model,
            max_new_tokens, max_prompt_tokens, vocab_size, split,
            process_reward_model, step_boundary, process_reward_mode,
        )  # fmt: skip
        self.tokenizer = self.setup.tokenizer
        self.reward_model = self.setup.reward_model
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(self.setup.vocab_size)
        self.observation_space = observation_space(self.setup)
        self._batch = TokenBatch(self.setup, 1)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        prompt, prefix = options.get("prompt"), options.get("prefix")
        if prompt is None:
            if prefix is not None:
                raise ValueError(
                    "options['prefix'] needs options['prompt'] (the prompt it continues)"
                )
            prompt = draw_prompt(self.np_random, self.setup.task.prompts(self.setup.split))
        elif not isinstance(prompt, str):
            raise TypeError(f"options['prompt'] must be a string, got {type(prompt).__name__}")
        prefixes = None
        if prefix is not None:
            prefixes = [check_prefix(prefix, self.setup, self._batch.eos_id, "options['prefix']")]
        self._batch.start([0], [prompt], prefixes)
        info = {
            "prompt": self._batch.prompt_text[0],
            "prompt_length": int(self._batch.prompt_len[0]),
            "prefix_length": int(self._batch.num_new[0]),
        }
        return self._batch.observation(0), info

    def step(self, action) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        batch = self._batch
        if not batch.started[0]:
            raise RuntimeError("step() called before reset(): call env.reset() first")
        if batch.finished[0]:
            raise RuntimeError(
                f"step() called after the episode ended (finish_reason={batch.finish_reason[0]!r}); "
                "call env.reset() to start a new episode"
            )
        tokens = as_token_ids(action, 1, self.setup.vocab_size)
        result = batch.append(tokens, np.ones(1, dtype=bool))
        info = result.final_infos.get(0, {})
        if result.process_rewards is not None:
            info["outcome_reward"] = float(result.outcome_rewards[0])
            info["process_reward"] = float(result.process_rewards[0])
        return (
            batch.observation(0),
            float(result.rewards[0]),
            bool(result.terminated[0]),
            bool(result.truncated[0]),
            info,
        )

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self._batch.started[0]:
            return "(not reset)"
        return self._batch.render_text(0)
