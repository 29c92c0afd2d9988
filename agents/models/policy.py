"""Policies: load any ``AutoModelForCausalLM``; log-probs of the distribution actually sampled.

``SamplingConfig`` is applied identically while sampling (token by token, with the KV cache) and
in the one full-sequence forward pass after the rollout, so recorded and recomputed log-probs
agree. The policy's log-probs are those of the distribution sampled from: logits divided by the
temperature, then top-k / top-p truncation (renormalised). The reference model is evaluated at
the same temperature without truncation, so log π_θ − log π_ref is finite and KL(π_θ‖π_ref)
has a non-negative expectation under the samples.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from agents.checks import check_bool
from agents.models.lora import BaseWeightsReference, unwrap
from llm_env.tokenizer import check_tokenizer, eos_id_list, load_tokenizer


@dataclass
class SamplingConfig:
    """How completions are sampled."""

    temperature: float = 1.0
    """Logits are divided by this before softmax (and before log-probs)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens with cumulative probability >= top_p (1.0 = all)."""
    share_prompts: bool = True
    """Score the samples (policy and reference forwards, the training forward included) with
    each distinct prompt run once, its completions packed after it in one row
    (``shared_prompt_logits``): G samples of a prompt pay for its prompt once. The same
    numbers up to rounding; False: one full pass per row (the tiny models' presets, for their
    results bit for bit). The rollout's pre-fill shares a group's prompt either way."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        check_bool("share_prompts", self.share_prompts)

    @property
    def truncates(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0


def load_policy(
    policy: str | Path | PreTrainedModel,
    tokenizer: str | Path | PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, from objects or a local ``save_pretrained`` directory."""
    if isinstance(policy, (str, Path)):
        path = Path(policy)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"policy {str(path)!r} is not a save_pretrained directory")
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True
        )
        tokenizer = load_tokenizer(tokenizer if tokenizer is not None else path)
    else:
        model = policy
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a policy model object")
        tokenizer = load_tokenizer(tokenizer)
    check_tokenizer(tokenizer)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(
            f"policy has {model.get_input_embeddings().num_embeddings} token embeddings but the "
            f"tokenizer has {len(tokenizer)} tokens"
        )
    return model, tokenizer


def check_same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase, what: str) -> None:
    """Policy and reference must share a vocabulary: compare the full token→id maps."""
    if a.get_vocab() != b.get_vocab() or a.eos_token_id != b.eos_token_id:
        raise ValueError(f"tokenizer mismatch between {what}: vocabularies or EOS ids differ")


def process_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """fp32 logits of the distribution sampled from: temperature, then top-k/top-p (-inf outside).

    ``logits``: (..., vocab). Returns (..., vocab) in fp32.
    """
    logits = logits.float()
    if sampling.temperature != 1.0:  # x / 1 == x exactly: skip the (..., vocab) copy
        logits = logits / sampling.temperature
    if sampling.top_k > 0 and sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass strictly before it already reaches top_p
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= sampling.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding gets position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def gather_logprobs(log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log_probs``: (batch, T, vocab); ``tokens``: (batch, T) → (batch, T)."""
    return log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s weights (where its inputs must be)."""
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of ``batch`` on ``device``."""
    return {k: v.to(device) for k, v in batch.items()}


def keep_last_logits(model: torch.nn.Module, n: int) -> dict[str, int]:
    """``{"logits_to_keep": n}`` when ``model``'s forward takes it (every ``transformers``
    causal LM; a LoRA wrapper passes it on), else ``{}``: the output head then runs on the last
    ``n`` positions only."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"logits_to_keep": n} if _takes_logits_to_keep(type(inner)) else {}


@lru_cache(maxsize=64)
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def completion_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    vocab_size: int | None = None,
    share_prompts: bool = False,
) -> torch.Tensor:
    """Logits predicting each completion token, from ONE forward pass over the full sequences.

    ``input_ids``/``attention_mask``: (batch, prompt_width + T), prompts left-padded to
    ``prompt_width``. Returns (batch, T, vocab_size) in the model's dtype: the output head runs
    on the T predicting positions only (``logits_to_keep``), and ``vocab_size`` (the tokenizer's
    size; None = all) drops a padded embedding table's rows beyond the vocabulary, so they get
    no probability anywhere (sampling, log-probs, exact KL, entropy).

    ``share_prompts``: where rows repeat a prompt (a group's G samples, in any row order), each
    distinct prompt runs once with its completions packed after it (``shared_prompt_logits``);
    the same logits up to rounding, gradients included.
    """
    if share_prompts:
        shared = shared_prompt_logits(model, input_ids, attention_mask, prompt_width, vocab_size)
        if shared is not None:
            return shared
    T = input_ids.shape[1] - prompt_width
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **keep_last_logits(model, T + 1),
    )
    if out.logits.shape[1] != T + 1:  # a model without logits_to_keep: all positions
        return out.logits[:, prompt_width - 1 : -1, :vocab_size]
    return out.logits[:, :-1, :vocab_size]


def distinct_prompts(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The rows' distinct prompts: (U,) one row holding each and (B,) each row's index into
    them; None when no two rows share a prompt (ids and mask both equal)."""
    keys, inverse = torch.unique(
        torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1), dim=0, return_inverse=True
    )
    if len(keys) == len(prompt_ids):
        return None
    rows = torch.arange(len(prompt_ids), device=prompt_ids.device)
    first = torch.full((len(keys),), len(prompt_ids), dtype=torch.long, device=rows.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin"), inverse


def packed_attention_mask(
    segment: torch.Tensor, real: torch.Tensor, lm: torch.nn.Module
) -> torch.Tensor:
    """The (U, 1, N, N) attention mask of packed rows, as ``lm``'s kernel takes it (bool for
    sdpa, additive for eager). ``segment`` (U, N): −1 for the shared prefix (the prompt), s ≥ 0
    for slot s (one continuation of it), −2 for unused columns; ``real`` (U, N): the columns
    holding tokens. A slot's token sees the whole prefix and its own slot up to itself; the
    prefix is causal; no query sees a column that is not ``real`` (the full pass's padding
    mask), and a query that would see nothing sees itself (an empty row's softmax is NaN)."""
    N, device = segment.shape[1], segment.device
    q, k = torch.arange(N, device=device)[:, None], torch.arange(N, device=device)[None, :]
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]
    sees = (seg_k == -1) & ((seg_q >= 0) | (k <= q))  # the prefix: all of it from a slot
    sees |= (seg_q == seg_k) & (seg_q >= 0) & (k <= q)  # its own slot, causally
    sees &= real[:, None, :]
    sees |= ~sees.any(-1, keepdim=True) & (q == k)
    mask = sees[:, None]
    if lm.config._attn_implementation == "eager":
        dtype = next(lm.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(
            ~mask, torch.finfo(dtype).min
        )
    return mask


def packing_pays(packed_rows: int, packed_width: int, rows: int, width: int) -> bool:
    """False when the packed rows' attention and mask (rows · width² entries) would cost over
    twice the full pass's: many long continuations of a short prefix, where attention, not the
    prefix, is the cost."""
    return packed_rows * packed_width**2 <= 2 * rows * width**2


def packs(model: torch.nn.Module) -> torch.nn.Module | None:
    """The ``transformers`` model computing ``model`` (a plain or LoRA model, or a LoRA
    reference) when its attention kernel takes a 4-D mask (sdpa, eager); else None."""
    lm = unwrap(model.policy if isinstance(model, BaseWeightsReference) else model)
    kernel = getattr(getattr(lm, "config", None), "_attn_implementation", None)
    return lm if kernel in ("sdpa", "eager") else None


def shared_prompt_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    vocab_size: int | None = None,
) -> torch.Tensor | None:
    """``completion_logits`` in ONE forward that runs each distinct prompt once.

    Row u of the packed batch holds prompt u and then, slot after slot, the first T − 1 tokens
    of each of its completions; a 4-D mask lets every completion token see its prompt and its
    own earlier tokens only, and position ids restart after the prompt, so each token is
    computed as in its own row of the full pass. With G samples per prompt the prompt columns
    cost 1/G of the full pass, every weight is used once (one gradient, no accumulation), and
    no KV cache is involved (gradient checkpointing applies unchanged). None — run the full
    pass — when no prompt repeats, a completion has one token, the attention kernel takes no
    4-D mask (only ``sdpa`` and ``eager`` do), or the packed rows' attention (U·N² for rows
    of N tokens) would exceed twice the full pass's (B·(W + T)²): many long completions of a
    short prompt, where attention, not the prompt, is the cost."""
    W, T = prompt_width, input_ids.shape[1] - prompt_width
    groups = distinct_prompts(input_ids[:, :W], attention_mask[:, :W]) if T > 1 else None
    lm = packs(model)
    if groups is None or lm is None:
        return None
    first, inverse = groups
    U, L, device = len(first), T - 1, input_ids.device
    # each row's slot among the rows of its prompt (0, 1, ... in row order)
    order = torch.sort(inverse, stable=True).indices
    counts = torch.bincount(inverse, minlength=U)
    starts = counts.cumsum(0) - counts
    slot = torch.empty_like(inverse)
    slot[order] = torch.arange(len(inverse), device=device) - starts[inverse[order]]
    N = W + int(counts.max()) * L
    if not packing_pays(U, N, *input_ids.shape):
        return None
    columns = W + slot[:, None] * L + torch.arange(L, device=device)  # (B, L) packed columns
    rows = inverse[:, None].expand(-1, L)
    positions = position_ids_from_mask(attention_mask)
    ids = torch.zeros((U, N), dtype=input_ids.dtype, device=device)
    ids[:, :W] = input_ids[first, :W]
    ids[rows, columns] = input_ids[:, W:-1]
    packed_positions = torch.zeros_like(ids)
    packed_positions[:, :W] = positions[first, :W]
    packed_positions[rows, columns] = positions[:, W:-1]
    real = torch.zeros((U, N), dtype=torch.bool, device=device)  # keys that are tokens
    real[:, :W] = attention_mask[first, :W] > 0
    real[rows, columns] = attention_mask[:, W:-1] > 0
    segment = torch.full((U, N), -2, dtype=torch.long, device=device)  # -2: an unused slot
    segment[:, :W] = -1  # the prompt
    segment[rows, columns] = slot[:, None].expand(-1, L)
    mask = packed_attention_mask(segment, real, lm)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=packed_positions,
        **keep_last_logits(model, N - W + 1),
    )
    logits = out.logits[:, -(N - W + 1) :]  # (U, 1 + slots·L, V): prompt's last, then slots
    head = logits[inverse, :1]
    tail = logits[rows, columns - (W - 1)]
    return torch.cat([head, tail], dim=1)[..., :vocab_size]


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, sampling: SamplingConfig | None
) -> torch.Tensor:
    """fp32 log-probs of ``tokens`` under ``process_logits(logits, sampling)``.

    ``sampling=None`` means the raw distribution (temperature 1, no truncation).
    """
    processed = logits.float() if sampling is None else process_logits(logits, sampling)
    return gather_logprobs(F.log_softmax(processed, dim=-1), tokens)


def stop_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None = None
) -> frozenset[int]:
    """The ids that end a completion: the tokenizer's EOS and ``generation_config.eos_token_id``
    (an int or a list: instruct checkpoints list their end-of-turn tokens there)."""
    extra = eos_id_list(getattr(generation_config, "eos_token_id", None))
    return frozenset([tokenizer.eos_token_id, *extra])
