"""What the offline agents (SFT, DPO, the Bradley–Terry reward model, the PRM) share.

- ``load_offline_policy`` / ``with_pad_token``: a checkpoint's tokenizer without a pad token pads
  with EOS (every mask comes from lengths, never from comparing ids with the pad id);
- ``load_examples``: TRL's standard (strings) or conversational (message lists) rows from JSONL
  (through ``read_jsonl``, so errors name file, line, key) or from a list of tuples or dicts;
- ``render_examples`` / ``encode_examples`` / ``pad_batch``: prompt + completion token ids —
  conversational rows rendered with the chat template (the completion ends with its end-of-turn
  token), plain-text completions ended with ``<eos>`` unless they end with a stop id already —
  right-padded per batch to the longest row (dynamic padding), with a mask of the tokens the
  loss reads;
- ``sequence_logprobs``: fp32 per-token log-probs from one forward pass, over the tokenizer's
  vocabulary only (a padded embedding table's extra rows get no probability);
- ``batch_schedule`` and ``offline_step``: a deterministic batch schedule, and one optimiser step
  on its batch — the loop around it is ``agents.harness.run.Agent``'s.

Under ``accelerate launch`` (see ``agents.harness.distributed``) ``batch_size`` is the total over
processes: each process computes the loss on its contiguous part of every batch of the one seeded
schedule, through the agent's DDP-wrapped forward; statistics are reduced over processes and
only the main process evaluates (its result is broadcast), logs and writes checkpoints.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.checks import check_positive
from agents.models.lora import causal_lm
from agents.models.policy import (
    load_policy,
    packed_attention_mask,
    packing_pays,
    packs,
    position_ids_from_mask,
)
from agents.models.precision import autocast
from llm_env.chat import Messages, check_messages, render_completion, render_text
from llm_env.tasks import read_jsonl
from llm_env.tokenizer import load_tokenizer

Text = str | Messages
"""A prompt or completion: plain text, or TRL's conversational form (a list of messages)."""


def check_offline_options(config) -> None:
    """The data options every offline config has, validated (names, values, ranges)."""
    check_positive("batch_size", config.batch_size)
    check_positive("epochs", config.epochs, float)
    check_positive("max_steps", config.max_steps, allow_zero=True)
    check_positive("max_length", config.max_length)
    if config.max_length < 2:
        raise ValueError(
            f"max_length must be >= 2 (a prompt token and <eos>), got {config.max_length}"
        )
    check_positive("eval_every", config.eval_every, allow_zero=True)


def with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """``tokenizer``, or a copy that pads with EOS when it has no pad token (as many pretrained
    checkpoints ship): the offline agents build every mask from lengths, so the pad id's value
    never matters."""
    if tokenizer.pad_token_id is not None or tokenizer.eos_token_id is None:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_offline_policy(
    policy: str | Path | PreTrainedModel,
    tokenizer: str | Path | PreTrainedTokenizerBase | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``load_policy``, accepting a tokenizer without a pad token (``with_pad_token``)."""
    source = tokenizer if tokenizer is not None else policy
    if isinstance(source, PreTrainedTokenizerBase) or (
        isinstance(source, (str, Path)) and (Path(source) / "tokenizer_config.json").is_file()
    ):
        tokenizer = with_pad_token(load_tokenizer(source))
    return load_policy(policy, tokenizer)


def jsonl_rows(
    path: str | Path, required: Sequence[str], messages: Sequence[str] = ()
) -> list[tuple[str, dict]]:
    """``(where, row)`` of every row of ``path`` (``read_jsonl``), ``where`` = ``"path:line"``
    for errors found past the reader's own checks."""
    rows = read_jsonl(path, required=required, messages=messages)
    text = Path(path).read_text(encoding="utf-8")
    lines = [n for n, line in enumerate(io.StringIO(text, newline=None), 1) if line.strip()]
    return [(f"{path}:{n}", row) for n, row in zip(lines, rows)]


def _check_example(row: dict, keys: Sequence[str], where: str) -> None:
    """Every key a string or a list of messages; a conversational completion only after a
    conversational prompt (``keys[0]``)."""
    for key in keys:
        value = row.get(key)
        if isinstance(value, list):
            row[key] = check_messages(value, f"{where}: key {key!r}")
        elif not isinstance(value, str):
            raise ValueError(
                f"{where}: missing or non-string {key!r} (must be a string or a list of "
                f"messages, got {type(value).__name__})"
            )
    prompt_key = keys[0]
    for key in keys[1:]:
        if isinstance(row[key], list) and isinstance(row[prompt_key], str):
            raise ValueError(
                f"{where}: key {key!r} is a list of messages but {prompt_key!r} is a string; a "
                f"conversational row has message lists in {prompt_key!r} too"
            )


def load_examples(
    data: str | Path | Sequence[Sequence[Text]], keys: Sequence[str], what: str
) -> tuple[list[tuple[Text, ...]], list[dict]]:
    """``(tuples of the keys' values, full rows)`` from a JSONL path or a list of tuples/dicts.

    Each value is a string (TRL's standard form) or a list of messages (conversational).
    """
    if isinstance(data, (str, Path)):
        located = jsonl_rows(data, required=keys, messages=keys)
    else:
        located = [
            (
                f"{what} example #{i}",
                dict(item) if isinstance(item, Mapping) else dict(zip(keys, item)),
            )
            for i, item in enumerate(data)
        ]
    for where, row in located:
        _check_example(row, keys, where)
    rows = [row for _, row in located]
    if not rows:
        raise ValueError(f"{what}: the dataset is empty")
    return [tuple(r[k] for k in keys) for r in rows], rows


def load_preference_pairs(
    data: str | Path | Sequence, what: str
) -> tuple[list[tuple[Text, Text, Text]], list[dict], int]:
    """``(prompt, chosen, rejected)`` triples, their full rows, and how many rows had
    ``chosen == rejected`` — those carry no preference and are skipped (with a warning)."""
    triples, rows = load_examples(data, ("prompt", "chosen", "rejected"), what)
    keep = [i for i, (_, c, r) in enumerate(triples) if c != r]
    skipped = len(triples) - len(keep)
    if skipped:
        warnings.warn(f"{what}: skipped {skipped} row(s) whose chosen == rejected", stacklevel=2)
    if not keep:
        raise ValueError(f"{what}: no usable pairs (all {skipped} rows have chosen == rejected)")
    return [triples[i] for i in keep], [rows[i] for i in keep], skipped


def render_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Text],
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str], list[bool]]:
    """Per example the prompt's text, the completion's text, and whether the completion is plain
    text (which ``end_with_eos`` ends with ``<eos>``).

    A conversational prompt is rendered by the chat template with its generation prompt, a
    conversational completion as the rest of the whole conversation's rendering
    (``llm_env.chat``): it ends with the template's end-of-turn token already.
    """
    prompt_texts, completion_texts, plain = [], [], []
    for prompt, completion in zip(prompts, completions):
        is_plain = isinstance(completion, str)
        if not is_plain and isinstance(prompt, str):
            raise ValueError("a conversational completion needs a conversational prompt")
        prompt_texts.append(render_text(tokenizer, prompt, chat_template_kwargs))
        completion_texts.append(
            completion
            if is_plain
            else render_completion(tokenizer, prompt, completion, chat_template_kwargs)
        )
        plain.append(is_plain)
    return prompt_texts, completion_texts, plain


def end_with_eos(ids: list[int], plain: bool, eos: int, stops: Collection[int]) -> list[int]:
    """``ids + [eos]`` for a plain-text completion that does not end with a stop id already (the
    model learns to emit it); a conversational one ends with its end-of-turn token already."""
    return ids + [eos] if plain and not (ids and ids[-1] in stops) else ids


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Text],
    completions: Sequence[Text],
    max_length: int,
    stops: Collection[int] = (),
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[tuple[list[int], int]]:
    """Per example ``(ids of prompt + completion, number of prompt tokens)``, the completion
    ending with ``<eos>`` (``end_with_eos``; ``stops``: the ids besides EOS that end one).

    Texts come from ``render_examples`` and are tokenised without special tokens. The
    completion's ids are what the policy would append after the env's prompt ids: those of
    ``prompt + completion`` past the prompt's own ids (the completion tokenised on its own when a
    token straddles the boundary). Rows longer than ``max_length`` keep at most the prompt's last
    ``max_length // 2`` tokens, then lose the end of the completion.
    """
    if not prompts:
        return []
    eos = tokenizer.eos_token_id
    stops = {eos, *stops}
    prompts, completions, plain = render_examples(
        tokenizer, prompts, completions, chat_template_kwargs
    )
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    joint_ids = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=False)[
        "input_ids"
    ]
    completion_ids = [
        j[len(p) :] if j[: len(p)] == p else tokenizer(c, add_special_tokens=False)["input_ids"]
        for p, j, c in zip(prompt_ids, joint_ids, completions)
    ]
    rows = []
    for p, c, is_plain in zip(prompt_ids, completion_ids, plain):
        c = end_with_eos(c, is_plain, eos, stops)
        if len(p) + len(c) > max_length:
            p = p[-max(1, max_length // 2) :] if p else p
            c = c[: max_length - len(p)]
        rows.append((p + c, len(p)))
    return rows


def right_pad(rows: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` (B, L) right-padded with ``pad_id`` to the longest row, and the
    ``attention_mask`` (B, L) from the rows' lengths (never from comparing ids with the pad id,
    which may be EOS)."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def pad_batch(
    rows: Sequence[tuple[list[int], int]], pad_id: int, train_on_prompt: bool = False
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Returns ``input_ids``/``attention_mask`` (B, L) and
    ``loss_mask`` (B, L - 1): 1 where token t+1 is scored (completion tokens, their closing EOS
    included, or every token after the first one when ``train_on_prompt``), from lengths."""
    batch = right_pad([ids for ids, _ in rows], pad_id)
    loss_mask = torch.zeros((len(rows), batch["input_ids"].shape[1] - 1), dtype=torch.float32)
    for i, (ids, n_prompt) in enumerate(rows):
        first = 0 if train_on_prompt else max(n_prompt - 1, 0)
        loss_mask[i, first : len(ids) - 1] = 1.0
    return {**batch, "loss_mask": loss_mask}


# Architectures whose logits are exactly ``get_output_embeddings()(last_hidden_state)`` (no
# soft-capping or scaling): for them the LM head runs on the scored positions only.
HEAD_ON_SCORED_ONLY = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})


def sequence_logprobs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    precision: str = "fp32",
    vocab_size: int | None = None,
) -> torch.Tensor:
    """fp32 log π(token t+1 | tokens ≤ t) for every position, shape (B, L - 1), 0 where masked.

    The log-softmax is over the first ``vocab_size`` logits (the tokenizer's vocabulary; None =
    all): the rows a padded embedding table has beyond it get no probability. The LM head and
    the log-softmax run only on the scored positions (not on prompt or pad tokens) for the
    architectures in ``HEAD_ON_SCORED_ONLY``; other models go through their full forward.
    ``model`` may be a LoRA policy or its ``BaseWeightsReference`` (``causal_lm``).
    """
    mask = batch["loss_mask"].bool()
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": position_ids_from_mask(batch["attention_mask"]),
    }
    scored = scored_logprobs(model, inputs, lambda x: x[:, :-1][mask],
                             batch["input_ids"][:, 1:][mask], precision, vocab_size)  # fmt: skip
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=scored.device)
    logprobs[mask] = scored
    return logprobs


def scored_logprobs(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    pick: Callable[[torch.Tensor], torch.Tensor],
    targets: torch.Tensor,
    precision: str = "fp32",
    vocab_size: int | None = None,
) -> torch.Tensor:
    """fp32 log-probs of ``targets`` at the positions ``pick`` takes from a (B, L, ·) output
    of ``model(**inputs)``. For ``HEAD_ON_SCORED_ONLY`` architectures the LM head runs on
    those positions only; the log-softmax is over the first ``vocab_size`` logits."""
    with autocast(precision), causal_lm(model) as lm:
        if getattr(lm.config, "model_type", None) in HEAD_ON_SCORED_ONLY:
            hidden = lm.base_model(**inputs, use_cache=False).last_hidden_state
            logits = lm.get_output_embeddings()(pick(hidden))  # (scored tokens, vocab)
        else:
            logits = pick(lm(**inputs, use_cache=False).logits)
    return -F.cross_entropy(logits[:, :vocab_size].float(), targets, reduction="none")


def shared_prompt_pair_logprobs(
    model: torch.nn.Module,
    chosen: Sequence[tuple[list[int], int]],
    rejected: Sequence[tuple[list[int], int]],
    device: torch.device,
    precision: str = "fp32",
    vocab_size: int | None = None,
) -> torch.Tensor | None:
    """(2 · pairs,) sequence log-probs Σ_t log π(y_t | x, y_<t) of the chosen then the rejected
    completions (``encode_examples`` rows), in ONE forward that runs each pair's prompt once.

    Row i of the packed batch: the prompt's p tokens, then the chosen completion's tokens but
    its last, then the rejected one's; a 4-D mask (``packed_attention_mask``) lets each
    completion see the prompt and itself only and positions restart at p for each, so every
    token is computed as in its own row of ``pad_batch`` + ``sequence_logprobs``; the prompt's
    last position predicts both first tokens. The same sums to rounding, gradients included.
    None — use the padded batch — when there are no pairs, a pair's two prompts differ
    (truncated differently), a completion is empty, the kernel takes no 4-D mask, or the
    packed attention would cost over twice the padded batch's."""
    packed_lm = packs(model)
    prompts = [ids[:p] for ids, p in chosen]
    if (
        packed_lm is None
        or not chosen
        or any(
            pc != pr or c[:pc] != r[:pr] or pc < 1 or len(c) == pc or len(r) == pr
            for (c, pc), (r, pr) in zip(chosen, rejected)
        )
    ):
        return None
    n, P = len(chosen), max(len(p) for p in prompts)
    Mc = max(len(c) - pc - 1 for c, pc in chosen)
    Mr = max(len(r) - pr - 1 for r, pr in rejected)
    N, full_width = P + Mc + Mr, max(len(ids) for ids, _ in [*chosen, *rejected])
    if not packing_pays(n, N, 2 * n, full_width):
        return None
    ids = torch.zeros((n, N), dtype=torch.long)
    positions = torch.zeros((n, N), dtype=torch.long)
    real = torch.zeros((n, N), dtype=torch.bool)
    segment = torch.full((n, N), -2, dtype=torch.long)
    rows, columns, targets, sides = [], [], [], []
    for i, prompt in enumerate(prompts):
        p = len(prompt)
        ids[i, :p], positions[i, :p] = torch.tensor(prompt), torch.arange(p)
        real[i, :p], segment[i, :p] = True, -1
        for side, ((seq, _), start) in enumerate(((chosen[i], P), (rejected[i], P + Mc))):
            body = seq[p:-1]  # the completion's tokens but its last: each predicts the next
            end = start + len(body)
            ids[i, start:end], positions[i, start:end] = (
                torch.tensor(body),
                p + torch.arange(len(body)),
            )
            real[i, start:end], segment[i, start:end] = True, side
            predicting = [p - 1, *range(start, end)]  # the prompt's last, then the completion
            rows += [i] * len(predicting)
            columns += predicting
            targets += seq[p:]
            sides += [side * n + i] * len(predicting)
    ids, positions, real, segment = (t.to(device) for t in (ids, positions, real, segment))
    rows, columns, targets, sides = (torch.tensor(x, device=device)
                                     for x in (rows, columns, targets, sides))  # fmt: skip
    inputs = {"input_ids": ids, "attention_mask": packed_attention_mask(segment, real, packed_lm),
              "position_ids": positions}  # fmt: skip
    logprobs = scored_logprobs(model, inputs, lambda x: x[rows, columns], targets, precision,
                               vocab_size)  # fmt: skip
    return torch.zeros(2 * n, device=device).index_add(0, sides, logprobs)


def pair_logprobs(
    model: torch.nn.Module,
    chosen: Sequence[tuple[list[int], int]],
    rejected: Sequence[tuple[list[int], int]],
    pad_id: int,
    device: torch.device,
    precision: str = "fp32",
    vocab_size: int | None = None,
    share_prompts: bool = False,
) -> torch.Tensor:
    """(2 · pairs,) sequence log-probs of the chosen then the rejected completions in one
    forward: ``shared_prompt_pair_logprobs`` if ``share_prompts`` and it applies, else the
    rows right-padded together (``pad_batch``) through ``sequence_logprobs``."""
    if share_prompts:
        shared = shared_prompt_pair_logprobs(model, chosen, rejected, device, precision, vocab_size)
        if shared is not None:
            return shared
    batch = {k: v.to(device) for k, v in pad_batch([*chosen, *rejected], pad_id).items()}
    return sequence_logprobs(model, batch, precision, vocab_size).sum(-1)


def batch_schedule(
    n: int, batch_size: int, epochs: float, max_steps: int, seed: int
) -> list[np.ndarray]:
    """Index arrays of every optimiser step: a fresh seeded permutation per epoch, so the
    schedule is a pure function of its arguments (``resume`` just skips the steps done)."""
    if n == 0:
        raise ValueError("the dataset is empty")
    check_positive("batch_size", batch_size)
    total = max(1, int(round(epochs * n)))
    order = np.concatenate(
        [np.random.default_rng([seed, e]).permutation(n) for e in range(-(-total // n))]
    )[:total]
    steps = [order[i : i + batch_size] for i in range(0, total, batch_size)]
    return steps[:max_steps] if max_steps > 0 else steps


def offline_step(agent, step: int) -> dict[str, float]:
    """One optimiser step of an offline agent on ``agent.schedule[step]``: ``agent.loss(part)``
    on this process's part of the batch, backward, clip, step (the model is the one named by
    ``agent.optimizers``' only key)."""
    (name,) = agent.optimizers
    model = agent._models()[name]
    model.train()
    batch = agent.schedule[step]
    part = agent.dist.split(batch)
    loss, stats = agent.loss(part)
    agent._check_finite("loss/total", loss.detach())
    # DDP averages the processes' gradients; weighting each part's mean loss by its share of
    # the batch makes that average the gradient of the whole batch's mean loss.
    (loss * (len(part) * agent.dist.world_size / len(batch))).backward()
    return {"loss/total": loss.item(), **stats, **agent._apply_gradients(name)}


def offline_schedule(n: int, config, world_size: int) -> list[np.ndarray]:
    """``batch_schedule`` for ``config``, without batches too small to give every process a row."""
    schedule = batch_schedule(n, config.batch_size, config.epochs, config.max_steps, config.seed)
    return [batch for batch in schedule if len(batch) >= world_size]
