"""Monte-Carlo estimates by branching: K rollouts from states part-way through episodes.

What VinePPO's values (``agents.ppo``, ``mc_values``) and Math-Shepherd's step labels
(``agents.data.process_labels``) share:

- ``step_ends``: where a completion's steps end — the tokens closing a step by the env's rule
  (``llm_env.process``: a token that adds an occurrence of the separator to the decoded
  completion, or that the predicate flags; never EOS);
- ``branch_values``: for N states ``(prompt, prefix token ids)``, K continuations each through
  the lockstep env (``rollout(..., prefixes=)``: the env replays the prefix, process-reward
  state included, and the continuation is sampled and paid exactly as the rest of an episode
  that generated the prefix), and a value of each continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from agents.models.policy import SamplingConfig
from agents.sampling.rollout import Rollout, rollout_batches
from llm_env.process import StepBoundary
from llm_env.vector import TokenMDPVectorEnv


def step_ends(
    tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], boundary: StepBoundary
) -> list[int]:
    """Lengths of the prefixes of completion ``ids`` that end on a token closing a step.

    ``boundary``: a separator string (the prefix's decoded text holds more occurrences of it
    than every shorter prefix) or a predicate on the token id (EOS never closes a step).
    """
    ids = [int(i) for i in ids]
    if not isinstance(boundary, str):
        eos = tokenizer.eos_token_id
        return [k + 1 for k, i in enumerate(ids) if i != eos and boundary(i)]
    texts = tokenizer.batch_decode(
        [ids[: k + 1] for k in range(len(ids))], skip_special_tokens=True
    )
    ends, most = [], 0
    for k, text in enumerate(texts):
        count = text.count(boundary)
        if count > most:
            ends.append(k + 1)
            most = count
    return ends


def step_start_states(
    tokenizer: PreTrainedTokenizerBase,
    completion_ids: torch.Tensor,
    lengths: torch.Tensor,
    boundary: StepBoundary | None,
) -> list[tuple[int, int]]:
    """``(row, t)`` of every state where a step starts, t = the completion tokens before it: the
    start (t = 0) and the state after each token closing a step (``step_ends``), except the
    terminal one; with no ``boundary``, every state t < length. ``completion_ids``: (B, T);
    ``lengths``: (B,) generated tokens per row, EOS included."""
    states = []
    for i, length in enumerate(lengths.long().tolist()):
        if boundary is None:
            starts = range(length)
        else:
            starts = [0, *step_ends(tokenizer, completion_ids[i, :length].tolist(), boundary)]
        states += [(i, t) for t in starts if t < length]
    return states


def hold_step_values(
    values: torch.Tensor, lengths: torch.Tensor, states: list[tuple[int, int]], starts: torch.Tensor
) -> torch.Tensor:
    """(B, T) ``values`` with every state from a step's start ``states[n]`` (row, t) up to the
    next step's start (or the row's end) set to ``starts[n]``: a step's states share the value
    of its start. ``states``: sorted by row, then t, as ``step_start_states`` gives them."""
    out = values.clone()
    for n, ((row, t), (next_row, next_t)) in enumerate(zip(states, [*states[1:], (-1, 0)])):
        stop = next_t if next_row == row else int(lengths[row])
        out[row, t:stop] = starts[n]
    return out


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Σ_t γ^t r_t of each row of ``rewards`` (B, T), 0 past a sequence's end → (B,)."""
    discount = gamma ** torch.arange(rewards.shape[1], dtype=rewards.dtype, device=rewards.device)
    return (rewards * discount).sum(-1)


def branch_values(
    model: torch.nn.Module,
    env: TokenMDPVectorEnv,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    prompts: Sequence[str],
    prefixes: Sequence[Sequence[int]],
    k: int,
    value_of: Callable[[Rollout], torch.Tensor],
    precision: str = "fp32",
) -> torch.Tensor:
    """``value_of`` each of ``k`` continuations of every state ``(prompts[n], prefixes[n])``:
    (N, k). The N·k continuations are rolled out ``env.num_envs`` at a time (the last batch
    filled with repeats, whose values are dropped); ``value_of(roll)`` → (env.num_envs,)."""
    if len(prompts) != len(prefixes):
        raise ValueError(f"{len(prompts)} prompts but {len(prefixes)} prefixes")
    rows = [(p, list(q)) for p, q in zip(prompts, prefixes) for _ in range(k)]
    batches = rollout_batches(model, env, sampling, generator, [p for p, _ in rows], None,
                              precision, prefixes=[q for _, q in rows])  # fmt: skip
    out = [value_of(roll)[:n].float().cpu() for roll, n in batches]
    if not out:
        return torch.zeros((0, k))
    return torch.cat(out).view(len(prompts), k)
