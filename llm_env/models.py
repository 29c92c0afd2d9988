"""Models built from a config (no download): the tiny GPT-2 policy sized for a 2-core CPU, and
small models of the real pretrained architectures (Llama, Qwen2, Mistral, GPT-2) with a
tokenizer that has what real instruct tokenizers have, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    MistralConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)


def tiny_gpt2(
    tokenizer: PreTrainedTokenizerBase,
    n_layer: int = 2,
    n_head: int = 4,
    n_embd: int = 128,
    n_positions: int = 128,
    seed: int = 0,
) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 whose vocabulary and special ids match ``tokenizer``."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_inner=4 * n_embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


# -- models and tokenizers shaped like the pretrained checkpoints users bring -------------------

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)
"""ChatML (SmolLM2, Qwen2) plus Qwen3's ``enable_thinking=False`` switch."""

CHAT_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def chat_tokenizer(
    texts: Sequence[str], vocab_size: int = 512, total_tokens: int | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with what real instruct tokenizers have: a ChatML chat
    template, pad = EOS = ``<|im_end|>``, ``<|endoftext|>`` as a second stop token (set it in the
    model's ``generation_config.eos_token_id``), no BOS. ``total_tokens`` pads the vocabulary with
    never-matched filler tokens to that size (a benchmark's realistic 49,152)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(CHAT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    if total_tokens is not None and total_tokens > len(tokenizer):
        tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(total_tokens - len(tokenizer))])
    return tokenizer


ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}


def causal_lm(
    architecture: str,
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    padded_vocab: int | None = None,
    tie_word_embeddings: bool = True,
    max_positions: int = 2048,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised Llama / Qwen2 / Mistral (or GPT-2) model for ``tokenizer``, from a
    config (no download): grouped-query attention, and an embedding table of ``padded_vocab``
    rows (> ``len(tokenizer)``, as real checkpoints pad theirs to a multiple of 64 or 128).
    ``generation_config.eos_token_id`` lists every stop token the tokenizer has."""
    vocab = padded_vocab or len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"padded_vocab={vocab} is smaller than the tokenizer's {len(tokenizer)}")
    stops = [tokenizer.eos_token_id] + [
        i for i in tokenizer.convert_tokens_to_ids(["<|endoftext|>"]) if i is not None
        and i != tokenizer.unk_token_id and i != tokenizer.eos_token_id
    ]  # fmt: skip
    special = {"bos_token_id": None, "eos_token_id": stops, "pad_token_id": tokenizer.pad_token_id}
    if architecture == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_positions=max_positions, n_embd=hidden_size, n_layer=num_layers,
            n_head=num_heads, n_inner=intermediate_size, tie_word_embeddings=tie_word_embeddings,
            **special,
        )  # fmt: skip
    elif architecture in ARCHITECTURES:
        config = ARCHITECTURES[architecture](
            vocab_size=vocab, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            intermediate_size=intermediate_size, max_position_embeddings=max_positions,
            tie_word_embeddings=tie_word_embeddings, **special,
        )  # fmt: skip
    else:
        raise ValueError(
            f"unknown architecture {architecture!r}; use one of {['gpt2', *ARCHITECTURES]}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=stops, pad_token_id=tokenizer.pad_token_id
    )
    return model
