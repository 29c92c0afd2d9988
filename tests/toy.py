"""An enumerable toy token MDP: one prompt, completions of 1–2 tokens over an 8-token vocabulary,
known rewards; helpers computing π(y) exactly and the closed-form KL-regularised optimum."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from llm_env.tasks import Task
from llm_env.tokenizer import train_tokenizer
from llm_env.vector import TokenMDPVectorEnv
from reward_models.base import FunctionRewardModel

PROMPT = "a"
TOY_REWARDS = {"b": 1.0, "c": 0.5, "bd": 1.5, "cc": 1.0}


def toy_reward(prompts, completions):
    return [TOY_REWARDS.get(c, 0.0) for c in completions]


def toy_task(max_new_tokens: int) -> Task:
    tokenizer = train_tokenizer(["abcd"], vocab_size=8)
    return Task(
        name="toy",
        train_prompts=(PROMPT,),
        eval_prompts=(PROMPT,),
        demonstrations=(),
        gold_reward=None,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=4,
        make_tokenizer=lambda: tokenizer,
    )


def toy_env_kwargs(task: Task) -> dict:
    return {"task": task, "reward_model": FunctionRewardModel(toy_reward, "toy")}


def completions(vocab: int, eos: int, max_new_tokens: int) -> list[tuple[int, ...]]:
    """Every token sequence the MDP can produce (EOS ends a sequence early)."""
    seqs = [(t,) for t in range(vocab)] if max_new_tokens == 1 else []
    if max_new_tokens == 2:
        seqs = [(eos,)] + [(a, b) for a, b in itertools.product(range(vocab), repeat=2) if a != eos]
    return seqs


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
