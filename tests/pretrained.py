"""A small model of a real pretrained architecture, shaped like the checkpoints users bring.

A Llama (grouped-query attention, tied embeddings) whose tokenizer has what real instruct
tokenizers have: byte-level BPE, a ChatML chat template, pad = EOS = ``<|im_end|>``, a second stop
token ``<|endoftext|>`` listed in ``generation_config.eos_token_id``, and an embedding table
padded beyond the tokenizer (``PADDED_ROWS`` extra rows, as real checkpoints pad to a multiple
of 64). Its chat data is TRL's conversational format.
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_env.models import causal_lm, chat_tokenizer

QUESTIONS = [f"What is {a} plus {b}?" for a in range(6) for b in range(6)]
ANSWERS = [f"{a + b}" for a in range(6) for b in range(6)]
PADDED_ROWS = 37


def chat_prompts(n: int = len(QUESTIONS)) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in QUESTIONS[:n]]


def build_pretrained(path: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """Save a random small ``architecture`` model and its chat tokenizer to ``path``."""
    texts = [f"{q} {a}" for q, a in zip(QUESTIONS, ANSWERS)] * 4
    tokenizer = chat_tokenizer(texts, vocab_size=300)
    model = causal_lm(
        architecture, tokenizer, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, padded_vocab=len(tokenizer) + PADDED_ROWS, seed=seed,
    )  # fmt: skip
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_chat_data(folder: Path) -> dict[str, Path]:
    """TRL-format conversational files: prompts, SFT prompt-completion rows, preference pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.jsonl" for name in ("prompts", "sft", "pairs")}
    prompts = chat_prompts()
    rows = {
        "prompts": [{"prompt": p} for p in prompts],
        "sft": [
            {"prompt": p, "completion": [{"role": "assistant", "content": a}]}
            for p, a in zip(prompts, ANSWERS)
        ],
        "pairs": [
            {
                "prompt": p,
                "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": "I do not know."}],
            }
            for p, a in zip(prompts, ANSWERS)
        ],
    }
    for name, path in files.items():
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[name]))
    return files
