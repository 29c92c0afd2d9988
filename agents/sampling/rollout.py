"""Lockstep rollouts through ``TokenMDPVectorEnv`` with the policy's KV cache.

The env owns the token state and the task reward; the agent owns its model and cache. After the
prompt pre-fill, each step feeds the model only the newest token of every sequence; finished
sequences stay in the batch (fed pad tokens, masked) until all B are done.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from tqdm.auto import tqdm

from agents.models.lora import unwrap
from agents.models.policy import (
    SamplingConfig,
    keep_last_logits,
    model_device,
    position_ids_from_mask,
    process_logits,
)
from agents.models.precision import autocast
from llm_env.vector import TokenMDPVectorEnv


@dataclass
class Rollout:
    """B finished episodes in the layout of the one-pass forward.

    ``input_ids``/``attention_mask``: (B, prompt_width + T) — prompts left-padded to
    ``prompt_width``, then the T generated columns (pad + mask 0 after a sequence ended).
    ``completion_mask``: (B, T) float, 1 on generated tokens (EOS included).
    ``logprobs``: (B, T) fp32 log-probs recorded while sampling (0 on masked positions).
    ``rewards``/``gold_rewards``: (B,) fp32 env reward and gold score (NaN when unknown); the
    env reward is the episode's total: the outcome plus every process reward paid.
    ``process_rewards``: (B, T) fp32 process reward the env paid on each generated token (0 on
    masked positions); None when the env has no process reward model.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_width: int
    completion_mask: torch.Tensor
    logprobs: torch.Tensor
    rewards: torch.Tensor
    gold_rewards: torch.Tensor
    prompts: list[str]
    completions: list[str]
    finish_reasons: list[str]
    group_size: int = 1
    """Consecutive rows sampled from the same prompt (G samples of a prompt, prompt-major)."""
    process_rewards: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        """(B, T) generated token ids."""
        return self.input_ids[:, self.prompt_width :]

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) generated tokens per sequence, EOS included."""
        return self.completion_mask.sum(-1)

    @property
    def terminated(self) -> torch.Tensor:
        """(B,) True where the episode ended on EOS (False: truncated at the length limit)."""
        return torch.tensor([r == "eos" for r in self.finish_reasons], device=self.rewards.device)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum().item())

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) → (B / G, G, ...): one row per prompt, its G samples side by side."""
        return x.view(-1, self.group_size, *x.shape[1:])

    def select_groups(self, groups: list[int]) -> Rollout:
        """The rollout of the given groups only (in that order)."""
        G = self.group_size
        rows = [g * G + i for g in groups for i in range(G)]
        index = torch.tensor(rows, dtype=torch.long, device=self.input_ids.device)
        pick = lambda seq: [seq[r] for r in rows]  # noqa: E731
        return Rollout(
            input_ids=self.input_ids[index], attention_mask=self.attention_mask[index],
            prompt_width=self.prompt_width, completion_mask=self.completion_mask[index],
            logprobs=self.logprobs[index], rewards=self.rewards[index],
            gold_rewards=self.gold_rewards[index], prompts=pick(self.prompts),
            completions=pick(self.completions), finish_reasons=pick(self.finish_reasons),
            group_size=G,
            process_rewards=None if self.process_rewards is None else self.process_rewards[index],
        )  # fmt: skip


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """One rollout from several with the same group size: prompts left-padded to the widest,
    completions right-padded to the longest (pad id 0 under mask 0)."""
    width = max(r.prompt_width for r in parts)
    T = max(r.completion_mask.shape[1] for r in parts)

    def pad(r: Rollout, x: torch.Tensor, completion_only: bool = False) -> torch.Tensor:
        left = 0 if completion_only else width - r.prompt_width
        right = T - r.completion_mask.shape[1]
        return torch.nn.functional.pad(x, (left, right))

    return Rollout(
        input_ids=torch.cat([pad(r, r.input_ids) for r in parts]),
        attention_mask=torch.cat([pad(r, r.attention_mask) for r in parts]),
        prompt_width=width,
        completion_mask=torch.cat([pad(r, r.completion_mask, True) for r in parts]),
        logprobs=torch.cat([pad(r, r.logprobs, True) for r in parts]),
        rewards=torch.cat([r.rewards for r in parts]),
        gold_rewards=torch.cat([r.gold_rewards for r in parts]),
        prompts=[p for r in parts for p in r.prompts],
        completions=[c for r in parts for c in r.completions],
        finish_reasons=[f for r in parts for f in r.finish_reasons],
        group_size=parts[0].group_size,
        process_rewards=None
        if any(r.process_rewards is None for r in parts)
        else torch.cat([pad(r, r.process_rewards, True) for r in parts]),
    )


def cache_argument(model: torch.nn.Module) -> str:
    """The forward() keyword of the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``.

    Read from the ``transformers`` model itself: a LoRA (peft) wrapper's ``forward`` takes
    ``**kwargs`` and passes them on, so its own signature names neither."""
    forward = unwrap(model).forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def left_pad_prompts(obs: dict[str, np.ndarray], prompt_lengths: np.ndarray, pad_id: int):
    """(B, P) left-padded prompt ids and mask from the env's left-aligned observation."""
    width = int(prompt_lengths.max())
    ids = np.full((len(prompt_lengths), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(prompt_lengths):
        ids[i, width - n :] = obs["input_ids"][i, :n]
        mask[i, width - n :] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def sample_tokens(
    logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row of ``logits`` (B, vocab); return ``(tokens, logprobs)``, (B,) each.

    Inverse-CDF sampling: one uniform number per row against the cumulative probabilities
    (``right=True``, so a zero-probability token is never chosen). It draws B random numbers
    instead of B × vocab and is ~20x faster than ``torch.multinomial`` on CPU.
    """
    log_probs = torch.log_softmax(process_logits(logits, sampling), dim=-1)
    cdf = log_probs.exp().cumsum(dim=-1)
    # drawn on the CPU from the (CPU, checkpointed) generator whatever the model's device
    u = torch.rand((cdf.shape[0], 1), generator=generator).to(cdf.device) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)
    return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1)


class Outcomes:
    """What the env reports as B episodes end: reward, gold score, completion, finish reason;
    and the process rewards it pays on every token (when it has a process reward model)."""

    def __init__(self, batch: int, max_new: int):
        self.rewards = torch.zeros(batch, dtype=torch.float32)
        self.gold = torch.full((batch,), float("nan"), dtype=torch.float32)
        self.completions, self.reasons = [""] * batch, [""] * batch
        self.process: torch.Tensor | None = None
        self.max_new = max_new

    def record_process(self, t: int, info: dict) -> None:
        """Token ``t``'s process rewards (0 for the sequences that did not step)."""
        if "process_reward" in info:
            if self.process is None:
                self.process = torch.zeros((len(self.rewards), self.max_new))
            stepped = torch.from_numpy(info["_process_reward"])
            self.process[:, t] = torch.from_numpy(info["process_reward"]).float() * stepped

    def totals(self, T: int, device) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(B, T) process rewards (None without a PRM) and each episode's total reward."""
        if self.process is None:
            return None, self.rewards.to(device)
        process = self.process[:, :T].to(device)
        return process, self.rewards.to(device) + process.sum(-1)

    def record(self, t: int, rewards: np.ndarray, done: np.ndarray, info: dict) -> None:
        """Step ``t``'s process rewards, and the outcome of the episodes ``done`` ended."""
        self.record_process(t, info)
        outcome = info.get("outcome_reward", rewards)  # with process rewards: the outcome alone
        for i in np.flatnonzero(done):
            self.rewards[i] = float(outcome[i])
            self.completions[i] = info["completion"][i]
            self.reasons[i] = info["finish_reason"][i]
            if "gold_reward" in info:
                self.gold[i] = float(info["gold_reward"][i])


def forward_step(model, input_ids, attention_mask, position_ids, precision: str, cache=None):
    """One cached forward pass (the prompt pre-fill, or the newest token with ``cache``) that
    computes the logits of the last position only."""
    extra = {} if cache is None else {cache_argument(model): cache}
    with autocast(precision):
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **keep_last_logits(model, 1),
            **extra,
        )


def prefill(model, prompt_ids, prompt_mask, precision: str, group_size: int):
    """The prompt pre-fill: (B, vocab) logits of the last prompt token and the KV cache.

    Rows come in groups of ``group_size`` copies of one prompt (``rollout``'s prompt-major
    layout): only the first of each group is run through the model and the cache is repeated,
    so a prompt's G samples cost one pre-fill (each row's numbers are the same as a pre-fill of
    every row would give)."""
    B = len(prompt_ids)
    G = group_size if group_size > 1 and B % group_size == 0 else 1
    if G > 1:
        same = all(
            torch.equal(x[::G].repeat_interleave(G, dim=0), x) for x in (prompt_ids, prompt_mask)
        )
        G = G if same else 1
    ids, mask = prompt_ids[::G], prompt_mask[::G]
    out = forward_step(model, ids, mask, position_ids_from_mask(mask), precision)
    cache, logits = output_cache(out), out.logits[:, -1]
    if G > 1:
        cache.batch_repeat_interleave(G)
        logits = logits.repeat_interleave(G, dim=0)
    return logits, cache


def reset_prompts(
    env: TokenMDPVectorEnv,
    prompts: list[str] | None,
    seed: int | None,
    device: torch.device,
    prefixes: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Reset ``env`` on ``prompts`` (or drawn ones), each continued by its ``prefixes`` token ids
    if given (branching from that state): left-padded (B, P) ids and mask of prompt + prefix on
    ``device`` (the context the model continues), and the reset ``info``."""
    options = None
    if prompts is not None:
        options = {"prompts": prompts, **({"prefixes": prefixes} if prefixes is not None else {})}
    obs, info = env.reset(seed=seed, options=options)
    context = info["prompt_length"] + info.get("prefix_length", 0)
    ids, mask = left_pad_prompts(obs, context, env.setup.pad_id)
    return ids.to(device), mask.to(device), info


@torch.no_grad()
def rollout(
    model: torch.nn.Module,
    env: TokenMDPVectorEnv,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    prompts: list[str] | None = None,
    seed: int | None = None,
    precision: str = "fp32",
    group_size: int = 1,
    prefixes: list[list[int]] | None = None,
) -> Rollout:
    """Reset ``env`` (B prompts, drawn or given) and sample one completion per prompt.

    ``group_size`` G: consecutive runs of G prompts are one prompt's samples; ``prefixes``
    (token ids per prompt) start episodes part-way (prompt columns: prompt + prefix)."""
    if env.autoreset_mode != AutoresetMode.DISABLED:
        raise ValueError("rollouts need a lockstep env: autoreset_mode='disabled'")
    was_training = model.training
    pad_id, device = env.setup.pad_id, model_device(model.eval())
    max_new = env.setup.max_new_tokens
    prompt_ids, prompt_mask, info = reset_prompts(env, prompts, seed, device, prefixes)
    (B, width), outcomes = prompt_ids.shape, Outcomes(len(prompt_ids), max_new)
    tokens = torch.full((B, max_new), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((B, max_new), dtype=torch.float32, device=device)
    attention = torch.cat([prompt_mask, prompt_mask.new_zeros((B, max_new))], dim=1)
    positions = prompt_mask.sum(-1, keepdim=True) - 1  # (B, 1) position of the last prompt token
    vocab = len(env.tokenizer)  # the actions: padded embedding rows beyond it are never sampled
    logits, cache = prefill(model, prompt_ids, prompt_mask, precision, group_size)
    for t in range(max_new):
        active = torch.from_numpy(env.active).to(device)
        new, new_logprobs = sample_tokens(logits[:, :vocab], sampling, generator)
        new = torch.where(active, new, pad_id)
        tokens[:, t] = new
        attention[:, width + t] = active.long()
        logprobs[:, t] = torch.where(active, new_logprobs, 0.0)
        _, step_rewards, terminated, truncated, step_info = env.step(new.cpu().numpy())
        outcomes.record(t, step_rewards, terminated | truncated, step_info)
        if not env.active.any():
            break
        # only running sequences advance: a finished one (its pads are masked out) must not walk
        # past the model's positions while a branch with a shorter prefix runs on
        positions = positions + torch.from_numpy(env.active).to(device)[:, None].long()
        mask = attention[:, : width + t + 1]
        out = forward_step(model, new[:, None], mask, positions, precision, cache)
        logits, cache = out.logits[:, -1], output_cache(out)
    model.train(was_training)
    T = t + 1
    process, rewards = outcomes.totals(T, device)
    return Rollout(
        input_ids=torch.cat([prompt_ids, tokens[:, :T]], dim=1),
        attention_mask=attention[:, : width + T],
        prompt_width=width,
        completion_mask=attention[:, width : width + T].float(),
        logprobs=logprobs[:, :T],
        rewards=rewards,
        gold_rewards=outcomes.gold.to(device),
        prompts=[str(p) for p in info["prompt"]],
        completions=outcomes.completions,
        finish_reasons=outcomes.reasons,
        group_size=group_size,
        process_rewards=process,
    )


def rollout_batches(
    model: torch.nn.Module,
    env: TokenMDPVectorEnv,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    prompts: Sequence[str],
    seed: int | None = None,
    precision: str = "fp32",
    prefixes: Sequence[Sequence[int]] | None = None,
    progress: str | None = None,
) -> Iterator[tuple[Rollout, int]]:
    """Every prompt (with its prefix, if given) through the lockstep ``env``, ``env.num_envs``
    at a time, the last batch filled with repeats of its last row: yields each batch's rollout
    and how many of its rows are real (the rest are to be dropped). Batch ``start`` is reset
    with ``seed + start``; ``progress``: a progress bar with this label (None: no bar)."""
    B = env.num_envs
    for start in tqdm(range(0, len(prompts), B), desc=progress, disable=progress is None):
        chunk = list(prompts[start : start + B])
        n = len(chunk)
        chunk += [chunk[-1]] * (B - n)
        rows = None
        if prefixes is not None:
            rows = [list(q) for q in prefixes[start : start + B]]
            rows += [rows[-1]] * (B - n)
        batch_seed = None if seed is None else seed + start
        yield rollout(model, env, sampling, generator, chunk, batch_seed, precision,
                      prefixes=rows), n  # fmt: skip
