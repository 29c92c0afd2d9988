"""``TokenMDPEnv``: text generation as a Gymnasium environment, one sequence at a time."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from llm_env.config import EnvConfig
from llm_env.core import (
    TokenBatch,
    as_token_ids,
    check_prefix,
    check_prompt,
    draw_prompt,
    observation_space,
)


class TokenMDPEnv(gym.Env):
    """Generate a completion for a prompt, one token per step; scored by a reward model at the end.

    ## Description
    State = prompt x + tokens generated so far y<t. Each step appends one token. The episode ends
    on a stop token (EOS and the other stop ids, see Episode End) or after ``max_new_tokens``
    tokens, and only then is a reward given: r(x, y) from a
    pluggable reward model (``reward_models.load_reward_model``). The env never runs a policy:
    agents keep their own model and KV cache and feed it the newest token.

    ## Action Space
    ``Discrete(vocab_size)``: the id of the next token (``vocab_size`` defaults to the tokenizer's
    size; it may be larger, e.g. a model's padded embedding table, never smaller).

    ## Observation Space
    ``Dict(input_ids=Box(int64, (L,)), attention_mask=Box(int64, (L,)))`` with
    ``L = max_prompt_tokens + max_new_tokens``: prompt tokens, generated tokens, then pad tokens
    (the tokenizer's pad id, or EOS when it has none; ``env.setup.pad_id``); the mask is 1 on
    real tokens, a generated EOS included even when pad = EOS (it is never derived from the
    ids). Prompts longer than ``max_prompt_tokens`` keep their last tokens (a warning names the
    prompt). A chat prompt is its rendering by the tokenizer's chat template with the generation
    prompt, tokenized without adding special tokens (the ids ``apply_chat_template(messages,
    add_generation_prompt=True, tokenize=True)`` gives).

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
    ``terminated`` when the action is a stop token: the tokenizer's EOS, the ``eos_token_id``
    entries (an int or a list) of the ``generation_config.json`` of a ``tokenizer`` directory,
    ``stop_tokens`` and ``stop_token_ids`` (all of them: ``env.setup.stop_ids``, EOS first);
    ``truncated`` when ``max_new_tokens`` tokens were generated without one. Stepping after the
    end, or before ``reset``, raises ``RuntimeError``.

    ## Info
    ``reset``: ``prompt`` (the prompt text as tokenized, after any truncation; a chat prompt's
    rendered text, special tokens included), ``messages`` (a chat prompt's message list only),
    ``prompt_length`` and ``prefix_length`` (tokens; the prefix follows the prompt in the
    observation). Final step: ``prompt``, ``messages`` (chat prompts), ``completion`` (text, the
    stop token excluded, special tokens skipped, with ``prompt + completion == decode(all
    tokens)`` for a plain prompt; it includes the prefix), ``finish_reason`` ("eos" for every
    stop token | "length"), ``stop_token`` (the vocabulary's string of the stop token that ended
    the episode; absent on "length"), ``length`` (completion tokens, prefix and stop token
    included) and ``gold_reward`` when the task has a gold reward model. With a process reward
    model, every step's info also has ``outcome_reward`` and ``process_reward`` (floats; their
    sum is the reward).

    ## Arguments
    An ``EnvConfig`` (``llm_env.config``), or its fields as keywords (what ``gym.make`` passes);
    ``render_mode`` besides:
    - ``task``: a registered task name ("sentiment" (default), "arithmetic",
      "arithmetic_chain", "jsonl") or a Task;
      ``task_kwargs`` are passed to the task factory (e.g. ``{"max_operand": 9}``). A ``jsonl``
      file of TRL conversational rows (``{"prompt": [{"role": "user", "content": ...}]}``) gives
      chat prompts, rendered with the tokenizer's chat template (it must have one).
    - ``tokenizer``: None (the task's), a tokenizer object, or a ``save_pretrained`` directory
      (its ``generation_config.json`` stop ids are read too). Pad may equal EOS or be absent.
    - ``reward_model``: None (the task's gold reward) or any ``load_reward_model`` spec. A
      plain function ``f(prompts, completions, **kw)`` is called as TRL calls it: for a chat
      prompt, ``prompts`` holds message lists and ``completions``
      ``[{"role": "assistant", "content": text}]``; for a plain one, strings. Reward models
      with a ``score`` method get the text (a chat prompt's rendering).
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
    - ``stop_tokens``: extra stop tokens, token strings of the vocabulary (or texts that are one
      token) or ids; a string that is not one token, or an id outside the vocabulary, is an
      error naming it.
    - ``stop_token_ids``: extra stop ids, e.g. those of the agent's model's
      ``generation_config.eos_token_id``.
    - ``chat_template_kwargs``: options of every chat-template rendering (e.g.
      ``{"enable_thinking": False}``).

    ``reset(options={"prompt": text})`` uses ``text`` (or a list of messages, rendered) instead
    of drawing a prompt (a text that is one of the task's rendered chat prompts, as
    ``env.setup.task.prompts(split)`` lists them, is that conversation);
    ``options={"prompt": text, "prefix": [ids]}`` also appends the token ids as if generated
    (branching from any state: they pay no reward and count toward ``max_new_tokens``; a prefix
    must be shorter than ``max_new_tokens``, hold valid ids and no stop token).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 30}

    def __init__(
        self, config: EnvConfig | None = None, render_mode: str | None = None, **options: Any
    ):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.config = EnvConfig.of(config, **options)
        self.setup = self.config.setup()
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
        prompt = check_prompt(prompt, "options['prompt']")
        prefixes = None
        if prefix is not None:
            prefixes = [check_prefix(prefix, self.setup, "options['prefix']")]
        self._batch.start([0], [prompt], prefixes)
        return self._batch.observation(0), self._batch.prompt_info(0)

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
