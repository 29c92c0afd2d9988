"""What the offline trainers (SFT, DPO, the Bradley–Terry reward model) share.

- ``load_examples``: rows from JSONL (through ``read_jsonl``, so errors name file, line, key) or
  from a list of tuples;
- ``encode_example`` / ``pad_batch``: ``prompt + completion + <eos>`` token ids, right-padded per
  batch to the longest row (dynamic padding), with a mask of the tokens the loss reads;
- ``sequence_logprobs``: fp32 per-token log-probs from one forward pass;
- ``fit``: the training loop itself — a deterministic batch schedule, AdamW with linear warmup /
  decay, gradient clipping, logging (TensorBoard + ``metrics.jsonl``), atomic checkpoints every
  ``save_every`` steps, exact ``resume``, and a clear stop on a non-finite loss.

Under ``accelerate launch`` (see ``agents.common.distributed``) ``batch_size`` is the total over
processes: each process computes the loss on its contiguous part of every batch of the one seeded
schedule, through the trainer's DDP-wrapped forward; statistics are reduced over processes and
only the main process evaluates (its result is broadcast), logs and writes checkpoints.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from agents.common.callbacks import CallbackRunner
from agents.common.checkpoint import (
    has_checkpoint,
    load_checkpoint_state,
    load_weights_into,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from agents.common.distributed import Distributed
from agents.common.logging import RunLogger
from agents.common.lora import causal_lm, trainable_parameters
from agents.common.policy import position_ids_from_mask
from agents.common.precision import autocast
from llm_env.tasks import read_jsonl

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"


@dataclass
class OfflineConfig:
    """Options every offline trainer shares."""

    seed: int = 0
    """Seed of the data order, initialisation and evaluation sampling."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warm-up steps; the rate then decays linearly to 0 at the last step."""
    batch_size: int = 64
    """Examples (pairs for DPO and the reward model) per optimiser step, over all processes."""
    epochs: float = 1.0
    """Passes over the training data (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    max_length: int = 64
    """Longest prompt + completion in tokens; longer rows lose the end of the completion."""
    precision: str = "fp32"
    """Forward-pass precision: auto | bf16 | fp32 (log-probs and losses stay fp32; bf16
    autocast is ~10x slower than fp32 for tiny models on CPU)."""
    log_every: int = 10
    """Log every this many steps (0 = only at evaluations and the end)."""
    eval_every: int = 0
    """Evaluate every this many steps (0 = only at the end)."""
    save_every: int = 100
    """Write an atomic checkpoint every this many steps (0 = only at the end)."""
    resume: bool = False
    """Continue from the run directory's last checkpoint."""


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/inf loss or gradient; the last good checkpoint is left untouched."""


def load_examples(
    data: str | Path | Sequence[Sequence[str]], keys: Sequence[str], what: str
) -> tuple[list[tuple[str, ...]], list[dict]]:
    """``(tuples of the keys' values, full rows)`` from a JSONL path or a list of tuples/dicts."""
    if isinstance(data, (str, Path)):
        rows = read_jsonl(data, required=keys)
    else:
        rows = []
        for i, item in enumerate(data):
            row = dict(item) if isinstance(item, dict) else dict(zip(keys, item))
            missing = [k for k in keys if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"{what} example #{i}: missing or non-string {missing[0]!r}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{what}: the dataset is empty")
    return [tuple(r[k] for k in keys) for r in rows], rows


def load_preference_pairs(
    data: str | Path | Sequence, what: str
) -> tuple[list[tuple[str, str, str]], list[dict], int]:
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


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
) -> list[tuple[list[int], int]]:
    """Per example ``(ids of prompt + completion + <eos>, number of prompt tokens)``.

    The completion's ids are what the policy would append after the env's prompt ids: those of
    ``prompt + completion`` past the prompt's own ids (the completion tokenised on its own when a
    token straddles the boundary). Rows longer than ``max_length`` keep at most the prompt's last
    ``max_length // 2`` tokens, then lose the end of the completion.
    """
    if not prompts:
        return []
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    joint_ids = tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=False)[
        "input_ids"
    ]
    completion_ids = [
        j[len(p) :] if j[: len(p)] == p else tokenizer(c, add_special_tokens=False)["input_ids"]
        for p, j, c in zip(prompt_ids, joint_ids, completions)
    ]
    rows = []
    for p, c in zip(prompt_ids, completion_ids):
        c = c + [eos]
        if len(p) + len(c) > max_length:
            p = p[-max(1, max_length // 2) :] if p else p
            c = c[: max_length - len(p)]
        rows.append((p + c, len(p)))
    return rows


def pad_batch(
    rows: Sequence[tuple[list[int], int]], pad_id: int, train_on_prompt: bool = False
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Returns ``input_ids``/``attention_mask`` (B, L) and
    ``loss_mask`` (B, L - 1): 1 where token t+1 is scored (completion tokens, or every token
    after the first one when ``train_on_prompt``)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        first = 0 if train_on_prompt else max(n_prompt - 1, 0)
        loss_mask[i, first : len(ids) - 1] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


# Architectures whose logits are exactly ``get_output_embeddings()(last_hidden_state)`` (no
# soft-capping or scaling): for them the LM head runs on the scored positions only.
HEAD_ON_SCORED_ONLY = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})


def sequence_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], precision: str = "fp32"
) -> torch.Tensor:
    """fp32 log π(token t+1 | tokens ≤ t) for every position, shape (B, L - 1), 0 where masked.

    The LM head and the log-softmax run only on the scored positions (not on prompt or pad
    tokens) for the architectures in ``HEAD_ON_SCORED_ONLY``; other models go through their
    full forward. ``model`` may be a LoRA policy or its ``BaseWeightsReference`` (``causal_lm``).
    """
    mask = batch["loss_mask"].bool()
    targets = batch["input_ids"][:, 1:][mask]
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "position_ids": position_ids_from_mask(batch["attention_mask"]),
        "use_cache": False,
    }
    with autocast(precision), causal_lm(model) as lm:
        if getattr(lm.config, "model_type", None) in HEAD_ON_SCORED_ONLY:
            hidden = lm.base_model(**inputs).last_hidden_state[:, :-1]
            logits = lm.get_output_embeddings()(hidden[mask])  # (scored tokens, vocab)
        else:
            logits = lm(**inputs).logits[:, :-1][mask]
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    logprobs[mask] = -F.cross_entropy(logits.float(), targets, reduction="none")
    return logprobs


def batch_schedule(
    n: int, batch_size: int, epochs: float, max_steps: int, seed: int
) -> list[np.ndarray]:
    """Index arrays of every optimiser step: a fresh seeded permutation per epoch, so the
    schedule is a pure function of its arguments (``resume`` just skips the steps done)."""
    if n == 0:
        raise ValueError("the dataset is empty")
    total = max(1, int(round(epochs * n)))
    order = np.concatenate(
        [np.random.default_rng([seed, e]).permutation(n) for e in range(-(-total // n))]
    )[:total]
    steps = [order[i : i + batch_size] for i in range(0, total, batch_size)]
    return steps[:max_steps] if max_steps > 0 else steps


def make_optimizer(
    model: torch.nn.Module, config: OfflineConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW; linear warm-up over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    warmup = max(config.warmup_steps, 0)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    loss_fn: Callable[[np.ndarray], tuple[torch.Tensor, dict[str, float]]],
    n_examples: int,
    config: OfflineConfig,
    run_dir: Path,
    logger: RunLogger,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    extra_state: dict | None = None,
    desc: str = "train",
    dist: Distributed | None = None,
    callback: Any = None,
    agent: Any = None,
) -> list[dict[str, float]]:
    """Train ``model`` on ``loss_fn(indices) -> (loss, stats)`` over a seeded batch schedule.

    Logs ``stats`` plus ``loss/total``, ``perf/*`` every ``log_every`` steps and ``evaluate(step)``
    every ``config.eval_every`` steps and at the end, at x = examples consumed. Returns one dict per log
    point (the same lines as ``run_dir/metrics.jsonl``). ``extra_state`` (tensors, numbers) is
    stored in every checkpoint and available again after ``resume``.

    ``dist``: the process group (default: a single process). ``loss_fn`` then gets this
    process's part of each batch, and its loss must carry gradients through a forward made by
    ``dist.prepare``; batches too small to give every process a row are dropped.

    ``callback``: Stable-Baselines3 callback(s) driven with ``agent`` as their model, called
    after every optimiser step (see ``agents.common.callbacks``); a stop ends training there,
    with a last log point, evaluation and checkpoint.
    """
    dist = dist or Distributed()
    main = dist.is_main
    schedule = batch_schedule(
        n_examples, config.batch_size, config.epochs, config.max_steps, config.seed
    )
    schedule = [batch for batch in schedule if len(batch) >= dist.world_size]
    optimizer, scheduler = make_optimizer(model, config, len(schedule))
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    start, history, window, tokens = 0, [], [], 0
    if config.resume and dist.found_checkpoint(ckpt):
        state = load_checkpoint_state(ckpt)
        load_weights_into(model, ckpt / "policy")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        own = dist.own_rng(state["rng"])
        if own is not None:
            set_rng_state(own)
        start, history = int(state["step"]), list(state["history"])
        window, tokens = list(state["window"]), int(state["window_tokens"])
    metrics_path = Path(run_dir) / METRICS_FILE
    if main:
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    def save(step: int) -> None:
        rngs = dist.gather_object(rng_state())  # one per process
        state = {
            "step": step,
            "window": window,  # the steps since the last log point, so a resumed log matches
            "window_tokens": tokens,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rngs,
            "history": history,
            **(extra_state or {}),
        }
        dist.on_main(lambda: save_checkpoint(ckpt, {"policy": model}, state, tokenizer=tokenizer))

    def record(step: int, metrics: dict[str, float]) -> None:
        metrics = {"step": step, "examples": examples_at(step), **metrics}
        history.append(metrics)
        logger.log(metrics["examples"], {k: v for k, v in metrics.items() if "/" in k})
        if main:
            with metrics_path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")

    consumed = np.cumsum([0] + [len(b) for b in schedule])  # examples after each step

    def examples_at(step: int) -> int:
        return int(consumed[step])

    hooks = CallbackRunner(callback, agent, dist, logger)
    hooks.start(examples_at(start), locals())
    model.train()
    tic = time.perf_counter()
    bar = tqdm(
        range(start, len(schedule)), desc=desc, initial=start, total=len(schedule),
        disable=not main,
    )  # fmt: skip
    for step in bar:
        batch = schedule[step]
        part = dist.split(batch)
        loss, stats = loss_fn(part)
        if dist.any(not torch.isfinite(loss)):
            raise NonFiniteLossError(stop_message("loss", loss.item(), step, ckpt))
        optimizer.zero_grad(set_to_none=True)
        # DDP averages the processes' gradients; weighting each part's mean loss by its share
        # of the batch makes that average the gradient of the whole batch's mean loss.
        (loss * (len(part) * dist.world_size / len(batch))).backward()
        clip = config.grad_clip if config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteLossError(stop_message("gradient norm", grad_norm.item(), step, ckpt))
        optimizer.step()
        scheduler.step()
        tokens += int(stats.pop("tokens", 0))
        window.append({"loss/total": loss.item(), "optim/grad_norm": grad_norm.item(), **stats})
        done = step + 1
        stop = not hooks.step(examples_at(done), {"stats": window[-1], "loss": loss})
        last = done == len(schedule) or stop
        eval_due = evaluate is not None and (
            (config.eval_every > 0 and done % config.eval_every == 0) or last
        )
        if (config.log_every > 0 and done % config.log_every == 0) or eval_due or last:
            seconds = time.perf_counter() - tic
            metrics = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            metrics["tokens"] = tokens
            metrics = dist.reduce_metrics(metrics)
            tokens = metrics.pop("tokens")
            metrics["optim/lr"] = scheduler.get_last_lr()[0]
            metrics["perf/seconds_per_iter"] = seconds / len(window)
            metrics["perf/tokens_per_s"] = tokens / max(seconds, 1e-9)
            if eval_due:
                metrics.update(dist.broadcast_object(evaluate(done) if main else None))
                model.train()
            record(done, metrics)
            bar.set_postfix(loss=f"{metrics['loss/total']:.4f}")
            window, tic, tokens = [], time.perf_counter(), 0
        if (config.save_every > 0 and done % config.save_every == 0) or last:
            save(done)
        if stop:
            break
    bar.close()
    hooks.end()
    return history


def stop_message(what: str, value: float, step: int, ckpt: Path) -> str:
    kept = (
        f"the last good checkpoint {ckpt} is kept (continue with resume=True / --resume, e.g. "
        "with a lower learning rate)"
        if has_checkpoint(ckpt)
        else "no checkpoint had been written yet"
    )
    return f"non-finite {what} ({value}) at step {step + 1}; training stopped; {kept}"


def training_state(run_dir: Path, dist: Distributed) -> dict | None:
    """The last checkpoint's state of an offline run (``None`` when there is none)."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    return load_checkpoint_state(ckpt) if dist.found_checkpoint(ckpt) else None
