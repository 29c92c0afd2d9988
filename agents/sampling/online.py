"""What the online agents (PPO, REINFORCE, GRPO) share, as functions: the rollout env, the frozen
reference, prompt draws, the one-pass re-scoring of a rollout and the metrics every online agent
logs. The training loop itself is ``agents.harness.run.Agent``'s.

Under ``accelerate launch`` each process rolls out its shard of every batch (see
``agents.harness.distributed``); the loop reduces the metrics over processes before logging.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from agents.checks import check_positive
from agents.harness.distributed import Distributed
from agents.maths.advantages import masked_mean
from agents.maths.kl import exact_kl, make_kl_controller, sequence_kl_stats
from agents.maths.losses import entropy_of
from agents.maths.metrics import length_metrics
from agents.models.lora import BaseWeightsReference, is_lora, with_lora
from agents.models.memory import enable_gradient_checkpointing
from agents.models.policy import (
    SamplingConfig,
    check_same_tokenizer,
    completion_logits,
    gather_logprobs,
    load_policy,
    process_logits,
    stop_ids,
)
from agents.models.precision import autocast, resolve_precision
from agents.sampling.rollout import Rollout, rollout
from llm_env.config import EnvConfig
from llm_env.vector import TokenMDPVectorEnv
from reward_models.base import RewardModelError


@dataclass
class RolloutScores:
    """The one-pass re-evaluation of a rollout, (B, T) fp32 each, 0 on masked positions.

    ``logprobs``: π_θ of the sampled distribution; ``ref_logprobs``: π_ref at the same
    temperature, untruncated; ``exact_kl``: Σ_v π_θ(v)(log π_θ(v) − log π_ref(v)) per position;
    ``entropy``: entropy of the sampled distribution per position.
    """

    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor | None
    exact_kl: torch.Tensor | None
    entropy: torch.Tensor


def masked_token_logprobs(
    log_probs: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Gather (B, T) log-probs of ``tokens`` from (B, T, V); 0 where ``mask`` is 0 (never −inf)."""
    return torch.where(mask > 0, gather_logprobs(log_probs, tokens), 0.0)


SCORE_CHUNK_ELEMENTS = 1 << 24
"""fp32 elements (rows × T × vocab) of each chunk of ``distribution_scores``: 64 MiB a copy."""


@torch.no_grad()
def distribution_scores(
    logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    sampling: SamplingConfig,
) -> RolloutScores:
    """Log-probs, entropy and the exact full-vocabulary KL from (B, T, V) policy and reference
    logits (``ref_logits=None``: no reference), a few rows at a time: the fp32 work never holds
    a (B, T, V) copy per quantity, which a 150k vocabulary could not afford."""
    B, T, V = logits.shape
    rows = max(1, SCORE_CHUNK_ELEMENTS // max(1, T * V))
    ref_sampling = SamplingConfig(temperature=sampling.temperature)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, B, rows):
        chunk, m = slice(start, start + rows), mask[start : start + rows]
        log_probs = F.log_softmax(process_logits(logits[chunk], sampling), dim=-1)
        probs = log_probs.exp()
        part = {
            "logprobs": masked_token_logprobs(log_probs, tokens[chunk], m),
            "entropy": entropy_of(log_probs, probs) * m,
        }
        if ref_logits is not None:
            ref_log_probs = F.log_softmax(process_logits(ref_logits[chunk], ref_sampling), dim=-1)
            part["ref_logprobs"] = masked_token_logprobs(ref_log_probs, tokens[chunk], m)
            part["exact_kl"] = exact_kl(log_probs, ref_log_probs, probs) * m
        for key, value in part.items():
            parts.setdefault(key, []).append(value)
    joined = {key: torch.cat(values) for key, values in parts.items()}
    return RolloutScores(
        logprobs=joined["logprobs"],
        ref_logprobs=joined.get("ref_logprobs"),
        exact_kl=joined.get("exact_kl"),
        entropy=joined["entropy"],
    )


@torch.no_grad()
def reference_logits(
    ref: torch.nn.Module | None,
    roll: Rollout,
    precision: str,
    vocab_size: int | None = None,
    share_prompts: bool = False,
) -> torch.Tensor | None:
    """The reference's (B, T, V) completion logits: ONE forward pass (None without a reference;
    ``share_prompts``: ``completion_logits``'s)."""
    if ref is None:
        return None
    with autocast(precision):
        return completion_logits(
            ref, roll.input_ids, roll.attention_mask, roll.prompt_width, vocab_size, share_prompts
        )


@torch.no_grad()
def score_rollout(
    policy: torch.nn.Module,
    ref: torch.nn.Module | None,
    roll: Rollout,
    sampling: SamplingConfig,
    precision: str,
    vocab_size: int | None = None,
) -> RolloutScores:
    """ONE full-sequence forward each of policy and reference over the whole rollout batch
    (``ref=None``: no reference; its log-probs and the KL are then None), each distinct prompt
    run once if ``sampling.share_prompts``."""
    share = sampling.share_prompts
    with autocast(precision):
        logits = completion_logits(
            policy, roll.input_ids, roll.attention_mask, roll.prompt_width, vocab_size, share
        )
    ref_logits = reference_logits(ref, roll, precision, vocab_size, share)
    return distribution_scores(logits, ref_logits, roll.completion_ids, roll.completion_mask,
                               sampling)  # fmt: skip


def training_forward_scores(
    agent, roll: Rollout, order: torch.Tensor, logits: torch.Tensor
) -> RolloutScores:
    """The rollout's scores (in its own row order) from the training forward's detached
    (B, T, V) ``logits`` of the rows ``roll.input_ids[order]``: what a single-pass update (one
    epoch, one minibatch: the sampling policy is the one being updated) reads instead of a
    second policy forward. The reference runs on the same shuffled rows."""
    shuffled = Rollout(
        input_ids=roll.input_ids[order], attention_mask=roll.attention_mask[order],
        prompt_width=roll.prompt_width, completion_mask=roll.completion_mask[order],
        logprobs=roll.logprobs[order], rewards=roll.rewards[order],
        gold_rewards=roll.gold_rewards[order], prompts=[], completions=[], finish_reasons=[],
    )  # fmt: skip
    ref_logits = reference_logits(
        agent.ref, shuffled, agent.precision, agent.vocab_size, agent.sampling.share_prompts
    )
    scores = distribution_scores(logits, ref_logits, shuffled.completion_ids,
                                 shuffled.completion_mask, agent.sampling)  # fmt: skip
    inverse = torch.argsort(order)
    return RolloutScores(**{k: None if v is None else v[inverse] for k, v in vars(scores).items()})


def gold_metric(roll: Rollout) -> dict[str, float]:
    """``{"reward/gold": mean}`` over the sequences with a known gold score (empty if none)."""
    known = torch.isfinite(roll.gold_rewards)
    return {"reward/gold": roll.gold_rewards[known].mean().item()} if known.any() else {}


def draw_prompts(
    pool: tuple[str, ...], n: int, seed: int, iteration: int, round_: int = 0
) -> list[str]:
    """``n`` prompts drawn with replacement; a pure function of (seed, iteration, round), so
    resumable. ``round_`` > 0: further draws within one iteration (dynamic sampling)."""
    rng = np.random.default_rng([seed, iteration, round_] if round_ else [seed, iteration])
    return [pool[i] for i in rng.integers(len(pool), size=n)]


def policy_logits(
    policy: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    precision: str,
    vocab_size: int | None = None,
    share_prompts: bool = False,
) -> torch.Tensor:
    """The training forward pass of a critic-free agent: (B, T, vocab) completion logits
    (``share_prompts``: ``completion_logits``'s)."""
    with autocast(precision):
        return completion_logits(
            policy, input_ids, attention_mask, prompt_width, vocab_size, share_prompts
        )


def policy_train_forward(agent) -> torch.nn.Module:
    """A critic-free agent's training forward: ``policy_logits`` of ``agent.policy``, prompts
    shared as ``agent.sampling`` says, wrapped by ``agent.dist`` (DDP with several processes)."""
    forward = partial(policy_logits, share_prompts=agent.sampling.share_prompts)
    return agent.dist.prepare(forward, policy=agent.policy)


def load_reference(policy, tokenizer, ref_policy: str | None) -> torch.nn.Module:
    """A frozen copy of the initial policy (for a LoRA policy: its base weights, adapters
    disabled, no copy), or the causal LM saved at ``ref_policy``."""
    if ref_policy is None and is_lora(policy):
        ref = BaseWeightsReference(policy)
    elif ref_policy is None:
        ref = copy.deepcopy(policy)
    else:
        ref, ref_tokenizer = load_policy(ref_policy)
        check_same_tokenizer(tokenizer, ref_tokenizer, "policy and reference")
    ref.eval().requires_grad_(False)
    return ref


def make_rollout_env(
    tokenizer, env: EnvConfig | dict | None, reward_model, num_envs: int, dist: Distributed
) -> TokenMDPVectorEnv:
    """The lockstep vector env this process rolls out through (its share of ``num_envs``), on
    the agent's tokenizer; ``env``: an ``EnvConfig`` or a dict of its fields."""
    changes = {"tokenizer": tokenizer}
    if reward_model is not None:
        changes["reward_model"] = reward_model
    config = EnvConfig.of(env, **changes)
    return TokenMDPVectorEnv(num_envs // dist.world_size, config, autoreset_mode="disabled")


def warn_if_truncating(sampling: SamplingConfig) -> None:
    if sampling.truncates:
        warnings.warn(
            f"sampling with top_k={sampling.top_k}, top_p={sampling.top_p}: log-probs and the KL "
            "are computed for this truncated distribution (the one actually sampled from)",
            stacklevel=3,
        )


def rollout_metrics(roll: Rollout, scores: RolloutScores) -> dict[str, float]:
    """What every online agent logs about its samples: reward, gold, KL (every estimator and
    the exact one), entropy of the sampled distribution, length, EOS share, the length picture
    (``metrics.length_metrics``: by termination and by reward), and ``tokens`` for throughput."""
    mask = roll.completion_mask
    kl = {}
    if scores.ref_logprobs is not None:
        kl = sequence_kl_stats(scores.logprobs, scores.ref_logprobs, mask, scores.exact_kl)
    lengths = length_metrics(
        roll.lengths.cpu().numpy(), roll.terminated.cpu().numpy(), roll.rewards.cpu().numpy()
    )
    return {
        "reward/train": roll.rewards.mean().item(),
        **gold_metric(roll),
        **kl,
        "policy/entropy": masked_mean(scores.entropy, mask).item(),
        "episode/length": roll.lengths.mean().item(),
        "episode/eos_fraction": roll.terminated.float().mean().item(),
        **lengths,
        "tokens": float(roll.num_tokens),
    }


def init_online_agent(
    agent,
    policy,
    tokenizer,
    env: EnvConfig | dict | None,
    reward_model,
    num_envs: int,
    needs_reference: bool = True,
) -> None:
    """Set what every online agent holds: ``dist``, ``policy`` (LoRA-wrapped if configured, in
    eval mode so π_θ/π_old is exactly 1 before an update, on ``config.device``, its activations
    checkpointed with ``config.gradient_checkpointing``), ``ref`` (None unless
    ``needs_reference``), ``env``, ``sampling``, ``precision``, ``kl_ctl`` and the sampling
    ``generator`` (seed + rank)."""
    config = agent.config
    agent.dist = Distributed(config.device)
    agent.dist.check_divisible(batch_size=config.batch_size)
    torch.manual_seed(config.seed)
    agent.policy, agent.tokenizer = load_policy(policy, tokenizer)
    agent.policy = with_lora(agent.policy, config.lora).eval()
    agent.dist.place(agent.policy)
    agent.ref = None
    if needs_reference:
        agent.ref = load_reference(agent.policy, agent.tokenizer, config.kl.ref_policy)
        agent.dist.place(agent.ref)
    if config.gradient_checkpointing:  # after the reference's copy: π_ref is never trained
        enable_gradient_checkpointing(agent.policy)
    env = EnvConfig.of(env)  # the checkpoint's own stop ids end episodes too
    stops = stop_ids(agent.tokenizer, getattr(agent.policy, "generation_config", None))
    env = EnvConfig.of(env, stop_token_ids=tuple(sorted(stops | set(env.stop_token_ids))))
    agent.env = make_rollout_env(agent.tokenizer, env, reward_model, num_envs, agent.dist)
    agent.vocab_size = len(agent.tokenizer)  # the actions; a padded embedding's extra rows are not
    agent.sampling = config.sampling
    warn_if_truncating(config.sampling)
    agent.precision = resolve_precision(config.precision, agent.dist.device, agent.policy)
    agent.kl_ctl = make_kl_controller(config.kl)
    agent.generator = torch.Generator().manual_seed(config.seed + agent.dist.rank)


def iteration_prompts(agent, step: int) -> list[str]:
    """This process's shard of iteration ``step``'s ``batch_size`` prompts (a pure function of
    seed and step, so a resumed run draws the same ones)."""
    cfg, setup = agent.config, agent.env.setup
    pool = setup.task.prompts(setup.split)
    return agent.dist.shard(draw_prompts(pool, cfg.batch_size, cfg.seed, step))


def update_kl_controller(agent, metrics: dict[str, float]) -> None:
    """β's controller sees the mean sequence KL of every process's samples."""
    kl = agent.dist.reduce_metrics({"kl/ref": metrics["kl/ref"]})["kl/ref"]
    agent.kl_ctl.update(kl, agent.config.batch_size)


class PromptBudget:
    """What every online agent's run is measured in (mixed into PPO, REINFORCE, GRPO before
    ``Agent``): ``batch_size`` prompts per iteration until ``total_prompts``, the x-axis
    counting prompts, and the KL controller's β carried through checkpoints."""

    def learn(self, total_prompts: int | None = None, callback=None) -> list[dict[str, float]]:
        """Train until ``total_prompts`` prompts (default ``config.total_prompts``) are consumed
        (Stable-Baselines3's ``learn(total_timesteps, callback)``)."""
        if total_prompts is not None:
            online_steps(total_prompts, self.config.batch_size)  # validates it
            self.total_prompts = total_prompts
        return super().learn(callback)

    def _num_steps(self) -> int:
        return online_steps(self.total_prompts, self.config.batch_size)

    def _step_size(self, step: int) -> int:
        return self.config.batch_size

    def _state(self) -> dict:
        return {"kl_controller": self.kl_ctl.state_dict()}

    def _load_state(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl_controller"])


def online_steps(total_prompts: int, batch_size: int) -> int:
    """Iterations to consume ``total_prompts`` prompts, ``batch_size`` per iteration."""
    check_positive("total_prompts", total_prompts)
    return -(-total_prompts // batch_size)


def sample(
    agent, prompts: list[str], group_size: int = 1, model: torch.nn.Module | None = None
) -> Rollout:
    """``group_size`` completions of each prompt through ``agent.env``, rolled out together
    (prompt-major: a prompt's G samples are consecutive rows, ``Rollout.grouped``), from
    ``model`` (default ``agent.policy``; online DPO's Nash-MD mixture). A failing reward model
    stops the run through ``agent._stop`` (on every process), naming it."""
    error, roll = None, None
    repeated = [p for p in prompts for _ in range(group_size)]
    try:
        roll = rollout(
            agent.policy if model is None else model, agent.env, agent.sampling,
            agent.generator, repeated, None, agent.precision, group_size,
        )  # fmt: skip
    except RewardModelError as e:
        error = e
    if agent.dist.any(error is not None):
        agent._stop(f"the reward failed: {error or 'on another process'}")
    return roll
