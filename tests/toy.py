"""The enumerable toy MDP (``llm_env.tasks.toy``) and helpers computing π(y) exactly and the
closed-form KL-regularised optimum."""

from __future__ import annotations

import numpy as np
import torch

from llm_env.tasks import Task
from llm_env.tasks.toy import (  # noqa: F401  (re-exported for the tests)
    PROMPT,
    TOY_REWARDS,
    completions,
    toy_env_kwargs,
    toy_reward,
    toy_task,
)
from llm_env.vector import TokenMDPVectorEnv


def rewards_of(task: Task, seqs: list[tuple[int, ...]]) -> np.ndarray:
    """The env's reward for each token sequence (stepped through the env itself)."""
    env = TokenMDPVectorEnv(num_envs=len(seqs), autoreset_mode="disabled", **toy_env_kwargs(task))
    env.reset(options={"prompts": [PROMPT] * len(seqs)})
    rewards = np.zeros(len(seqs))
    for t in range(max(len(s) for s in seqs)):
        actions = np.array([s[t] if t < len(s) else 0 for s in seqs])
        active = env.active.copy()
        _, r, *_ = env.step(actions)
        rewards[active] += r[active]
    return rewards


@torch.no_grad()
def sequence_probs(model, tokenizer, seqs: list[tuple[int, ...]]) -> np.ndarray:
    """π(y) for each sequence, exactly, from next-token distributions (temperature 1)."""
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt])
    first = model(ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().softmax(-1)
    vocab = first.shape[0]
    ids = torch.tensor([prompt + [t] for t in range(vocab)])
    logits = model(ids, attention_mask=torch.ones_like(ids)).logits
    second = logits[:, -1].float().softmax(-1)  # (vocab, vocab): row = first token
    probs = [first[s[0]] if len(s) == 1 else first[s[0]] * second[s[0], s[1]] for s in seqs]
    return torch.stack(probs).double().numpy()


def optimum(ref_probs: np.ndarray, rewards: np.ndarray, beta: float) -> np.ndarray:
    """π*(y) ∝ π_ref(y)·exp(r(y)/β): the maximiser of E[r] − β·KL(π‖π_ref)."""
    w = ref_probs * np.exp(rewards / beta)
    return w / w.sum()


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())
