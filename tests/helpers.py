"""What several test modules share (no test module imports another): the env options of the
arithmetic tasks, the chain tokenizer's ids, a history without its timings, an arbitrary
process scorer."""

from __future__ import annotations

import numpy as np
import torch

ARITH = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}
CHAIN = {"task": "arithmetic_chain", "task_kwargs": {"num_terms": 3, "max_operand": 9}}
PROMPT = "6+7+9="  # = 22; max_new_tokens is 15 for three single-digit terms
VOLATILE = ("perf/", "time/")


def ids(tokenizer, text: str) -> list[int]:
    """One token per character of ``text`` ("$" is EOS): the chain tokenizer's granularity."""
    return [
        tokenizer.eos_token_id if ch == "$" else tokenizer.convert_tokens_to_ids(ch) for ch in text
    ]


def stable(history: list[dict]) -> list[dict]:
    """The history less its timings (what two seeded runs must repeat exactly)."""
    return [{k: v for k, v in h.items() if not k.startswith(VOLATILE)} for h in history]


class Arbitrary:
    """A process score that changes with almost every character: digits summed, length added."""

    name = "arbitrary"

    def score(self, prompts, completions):
        return np.array(
            [sum(int(c) for c in text if c.isdigit()) % 10 / 10 + len(text) / 100
             for text in completions], dtype=np.float32,
        )  # fmt: skip


def sequence_logp(model, tokenizer, prompt: str, completion: str) -> float:
    """log π(completion + <eos> | prompt), one unpadded sequence at a time."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"][len(p) :]
    ids = torch.tensor([p + c + [tokenizer.eos_token_id]])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
    targets = ids[0, 1:]
    return float(logprobs[torch.arange(len(targets)), targets][len(p) - 1 :].sum())
