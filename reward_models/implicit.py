"""Implicit process rewards (PRIME: Yuan et al. 2024, "Free Process Rewards without Process
Labels"; Cui et al. 2025): a policy π_φ trained with DPO from π_ref is a reward model at every
token, r_φ(y_t) = β·log π_φ(y_t | x, y_<t) / π_ref(y_t | x, y_<t) (Rafailov et al. 2024).

``ImplicitProcessRewardModel.score(prompts, completions_so_far)`` is the sum over the tokens so
far, β·Σ_t log π_φ(y_t)/π_ref(y_t) (raw log-probs, temperature 1; the completion tokenised as the
policy appends it after the prompt; EOS, which the env leaves out of the completion so far, is
not counted). Used as the env's ``process_reward_model`` in ``"shaping"`` mode, a step's closing
token earns Φ(after) − Φ(before): exactly the implicit reward of that step's own tokens.

Spec for ``load_reward_model``: ``"implicit:POLICY_DIR,REF_DIR,BETA"`` (two local
``save_pretrained`` directories sharing one tokenizer, e.g. a DPO run's ``final`` policy and the
SFT policy it started from, and DPO's β; paths may not contain commas). Scoring only: this
module imports nothing from ``agents``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from llm_env.tokenizer import check_tokenizer, load_tokenizer

SPEC_PREFIX = "implicit:"


def completion_token_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str
) -> tuple[list[int], list[int]]:
    """``(prompt ids, completion ids)``: the completion's ids are those of ``prompt +
    completion`` past the prompt's own (the completion tokenised alone when a token straddles
    the boundary) — the ids the policy appended after the env's prompt ids."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    joint = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    if joint[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, joint[len(prompt_ids) :]
    return prompt_ids, tokenizer(completion, add_special_tokens=False)["input_ids"]


def completion_logprob_sums(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Σ_t log π(y_t | y_<t) over the tokens where ``mask`` (B, L - 1) is 1: the tokens
    ``input_ids[:, 1:]`` predicted from their left context; → (B,) fp32. Right padding."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logprobs = F.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logprobs * mask).sum(-1)


def load_causal_lm(path: str | Path, what: str) -> torch.nn.Module:
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"implicit PRM {what} {str(path)!r} is not a local save_pretrained directory (no "
            "config.json); models load from local directories only, never from a model hub"
        )
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, trust_remote_code=False, use_safetensors=True
    )
    return model.eval().requires_grad_(False)


class ImplicitProcessRewardModel:
    """β·Σ_t log π_φ(y_t)/π_ref(y_t) over the completion so far (see the module docstring)."""

    def __init__(
        self,
        policy: torch.nn.Module,
        ref: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        beta: float,
        name: str = "implicit",
        batch_size: int = 64,
    ):
        check_tokenizer(tokenizer)
        if not (isinstance(beta, (int, float)) and np.isfinite(beta) and beta > 0):
            raise ValueError(f"implicit PRM: beta must be a number > 0, got {beta!r}")
        self.policy, self.ref = policy.eval(), ref.eval()
        self.tokenizer, self.beta = tokenizer, float(beta)
        self.name, self.batch_size = name, batch_size

    @classmethod
    def from_dirs(
        cls, policy_dir: str | Path, ref_dir: str | Path, beta: float
    ) -> ImplicitProcessRewardModel:
        """π_φ and π_ref from local directories; their tokenizers must agree."""
        policy, ref = load_causal_lm(policy_dir, "policy"), load_causal_lm(ref_dir, "reference")
        tokenizer = load_tokenizer(policy_dir)
        if load_tokenizer(ref_dir).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"implicit PRM: {policy_dir} and {ref_dir} have different tokenizers")
        name = f"{SPEC_PREFIX}{policy_dir},{ref_dir},{beta:g}"
        return cls(policy, ref, tokenizer, beta, name)

    @classmethod
    def from_spec(cls, spec: str) -> ImplicitProcessRewardModel:
        """``"implicit:POLICY_DIR,REF_DIR,BETA"``."""
        parts = spec[len(SPEC_PREFIX) :].split(",")
        try:
            beta = float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            beta = None
        if beta is None:
            raise ValueError(
                f"reward model {spec!r}: expected 'implicit:POLICY_DIR,REF_DIR,BETA' (two "
                "directories and a number, comma-separated), e.g. 'implicit:runs/dpo/final,"
                "runs/sft,0.1'"
            )
        return cls.from_dirs(parts[0], parts[1], beta)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            rows = [
                completion_token_ids(self.tokenizer, p, c)
                for p, c in zip(prompts[start:stop], completions[start:stop])
            ]
            width = max(len(p) + len(c) for p, c in rows)
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros_like(ids)
            mask = torch.zeros((len(rows), width - 1), dtype=torch.float32)
            for i, (p, c) in enumerate(rows):
                ids[i, : len(p) + len(c)] = torch.tensor(p + c)
                attention[i, : len(p) + len(c)] = 1
                mask[i, len(p) - 1 : len(p) + len(c) - 1] = 1.0  # predicts the completion tokens
            logratio = completion_logprob_sums(self.policy, ids, attention, mask)
            logratio -= completion_logprob_sums(self.ref, ids, attention, mask)
            out.append(self.beta * logratio)
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros(0, np.float32)
