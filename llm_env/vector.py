"""``TokenMDPVectorEnv``: B token-MDP sequences stepped together with numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from llm_env.config import EnvConfig, check_positive_int
from llm_env.core import (
    StepResult,
    TokenBatch,
    as_token_ids,
    check_prefix,
    check_prompt,
    draw_prompt,
    observation_space,
)

_MODES = {m.value.lower(): m for m in AutoresetMode} | {
    "next_step": AutoresetMode.NEXT_STEP,
    "same_step": AutoresetMode.SAME_STEP,
    "disabled": AutoresetMode.DISABLED,
}


class TokenMDPVectorEnv(VectorEnv):
    """B copies of ``TokenMDPEnv`` in one object: same arguments (an ``EnvConfig`` or its fields
    as keywords), same rules (see its docstring).

    Sub-env ``i`` reset with ``seed=s`` draws the same prompts as ``TokenMDPEnv`` reset with
    ``seed=s+i`` (the ``SyncVectorEnv`` convention), so B single envs given the same actions give
    the same observations, rewards and infos. All sequences that finish in one step are scored
    with ONE batched reward-model call; all that close a process step (see ``TokenMDPEnv``'s
    Rewards), with ONE batched process-reward-model call. With a process reward model,
    ``info["outcome_reward"]`` and ``info["process_reward"]`` (float arrays, masked to the
    sequences that stepped) split every step's reward.

    ``autoreset_mode`` (Gymnasium's ``AutoresetMode`` or its name):
    - ``"next_step"`` (default, as Gymnasium): a sequence that finished is reset on the following
      ``step``, whose action for it is ignored.
    - ``"same_step"``: it is reset within the finishing step; ``info["final_obs"]`` and
      ``info["final_info"]`` hold the finished episode.
    - ``"disabled"``: lockstep batch rollouts, what the agents use. All B sequences start at
      ``reset``; a finished sequence stays frozen (its actions are ignored, reward 0,
      ``terminated``/``truncated`` False after the finishing step) until ``reset`` — or
      ``reset(options={"reset_mask": mask})`` for some. ``active`` says which still run; stepping
      when none does raises.

    ``reset(options={"prompts": [...]})`` takes one prompt per (reset) sequence (a string or a
    list of messages);
    ``options={"prompts": [...], "prefixes": [[ids], ...]}`` also starts each from a partial
    completion (as ``TokenMDPEnv``'s ``prefix``; ``info["prefix_length"]`` gives its length).
    Infos follow Gymnasium's vector convention: ``info[key]`` is an array, ``info["_" + key]``
    its mask.
    """

    metadata = {
        "render_modes": ["ansi"],
        "render_fps": 30,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        config: EnvConfig | None = None,
        render_mode: str | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        **options: Any,
    ):
        check_positive_int("num_envs", num_envs)
        if isinstance(autoreset_mode, str):
            autoreset_mode = _MODES.get(autoreset_mode.lower(), autoreset_mode)
        if not isinstance(autoreset_mode, AutoresetMode):
            raise ValueError(
                f"unknown autoreset_mode {autoreset_mode!r}; use 'next_step', 'same_step' or "
                "'disabled'"
            )
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.config = EnvConfig.of(config, **options)
        self.setup = self.config.setup()
        self.tokenizer = self.setup.tokenizer
        self.reward_model = self.setup.reward_model
        self.num_envs = int(num_envs)
        self.render_mode = render_mode
        self.autoreset_mode = autoreset_mode
        self.metadata = {**self.metadata, "autoreset_mode": autoreset_mode}
        self.single_action_space = spaces.Discrete(self.setup.vocab_size)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space(self.setup)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._batch = TokenBatch(self.setup, self.num_envs)
        self._rngs = [seeding.np_random(None)[0] for _ in range(self.num_envs)]
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)

    @property
    def active(self) -> np.ndarray:
        """Which sequences are still generating (bool, shape (num_envs,))."""
        return self._batch.started & ~self._batch.finished

    @property
    def batch(self) -> TokenBatch:
        """The token state (read-only use: prompt lengths, completion ids)."""
        return self._batch

    def _start(self, index: np.ndarray, prompts: list | None, infos: dict, prefixes=None) -> dict:
        if prompts is None:
            if prefixes is not None:
                raise ValueError("options['prefixes'] needs options['prompts'] (one per prefix)")
            pool = self.setup.task.prompts(self.setup.split)
            prompts = [draw_prompt(self._rngs[i], pool) for i in index]
        elif isinstance(prompts, (str, bytes)) or len(prompts) != len(index):
            raise ValueError(
                f"options['prompts'] must be {len(index)} prompts (one per reset sequence: a "
                f"string or a list of messages), got {prompts!r}"
            )
        else:
            prompts = [check_prompt(p, f"options['prompts'][{k}]") for k, p in enumerate(prompts)]
        self._batch.start(list(index), list(prompts), self._check_prefixes(prefixes, prompts))
        self._needs_reset[index] = False
        for i in index:
            infos = self._add_info(infos, self._batch.prompt_info(int(i)), int(i))
        return infos

    def _check_prefixes(self, prefixes, prompts: list[str]) -> list[np.ndarray] | None:
        """``options["prefixes"]`` checked: one valid prefix (``check_prefix``) per prompt."""
        if prefixes is None:
            return None
        if isinstance(prefixes, (str, bytes)) or len(prefixes) != len(prompts):
            raise ValueError(
                f"options['prompts'] has {len(prompts)} prompts but options['prefixes'] has "
                f"{len(prefixes)} entries: give one prefix (a list of token ids) per prompt"
            )
        return [
            check_prefix(p, self.setup, f"options['prefixes'][{k}]") for k, p in enumerate(prefixes)
        ]

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        options = options or {}
        mask = options.get("reset_mask")
        mask = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (self.num_envs,):
            raise ValueError(
                f"options['reset_mask'] must have shape ({self.num_envs},), got {mask.shape}"
            )
        index = np.flatnonzero(mask)
        if seed is not None:
            seeds = (
                [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            )
            if len(seeds) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
            for i in index:
                self._rngs[i] = seeding.np_random(seeds[i])[0]
        infos = self._start(index, options.get("prompts"), {}, options.get("prefixes"))
        return self._batch.observation(), infos

    def step(
        self, actions
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        batch = self._batch
        if not batch.started.any():
            raise RuntimeError("step() called before reset(): call env.reset() first")
        tokens = as_token_ids(actions, self.num_envs, self.setup.vocab_size)
        infos: dict[str, Any] = {}
        restart = np.flatnonzero(self._needs_reset)
        if restart.size:  # NEXT_STEP: finished last step, reset now, action ignored
            infos = self._start(restart, None, infos)
        active = batch.started & ~batch.finished
        active[restart] = False
        if not active.any() and not restart.size:
            raise RuntimeError(
                "step() called but every sequence has finished; call reset() "
                "(or reset(options={'reset_mask': ...}) for some)"
            )
        result = batch.append(tokens, active)
        rewards, terminated, truncated, final_infos = (
            result.rewards, result.terminated, result.truncated, result.final_infos
        )  # fmt: skip
        done = np.flatnonzero(terminated | truncated)
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.size:
            final_obs = self._batch.observation()
            final = {}
            for i in done:
                final = self._add_info(final, final_infos[int(i)], int(i))
            infos = self._start(done, None, infos)
            infos["final_obs"] = np.array(
                [{k: v[i] for k, v in final_obs.items()} if i in done else None
                 for i in range(self.num_envs)], dtype=object,
            )  # fmt: skip
            infos["_final_obs"] = np.isin(np.arange(self.num_envs), done)
            infos["final_info"] = final
            infos["_final_info"] = infos["_final_obs"]
        else:
            for i, info in final_infos.items():
                infos = self._add_info(infos, info, i)
            if self.autoreset_mode == AutoresetMode.NEXT_STEP:
                self._needs_reset[done] = True
        if result.process_rewards is not None:
            infos = self._add_reward_sources(infos, result, active)
        return batch.observation(), rewards.astype(np.float64), terminated, truncated, infos

    @staticmethod
    def _add_reward_sources(infos: dict, result: StepResult, stepped: np.ndarray) -> dict:
        """``outcome_reward`` and ``process_reward`` arrays, masked to the sequences stepped."""
        for key, values in (
            ("outcome_reward", result.outcome_rewards),
            ("process_reward", result.process_rewards),
        ):
            infos[key] = values.astype(np.float64)  # 0 where a sequence did not step
            infos["_" + key] = stepped.copy()
        return infos

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(
            self._batch.render_text(i) if self._batch.started[i] else "(not reset)"
            for i in range(self.num_envs)
        )
