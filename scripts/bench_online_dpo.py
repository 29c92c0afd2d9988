"""Benchmark one online-DPO iteration against the sum of its primitive passes, on one model and
batch.

Primitives: the rollout (``batch_size`` prompts × ``k`` samples through the env, reward-model
call included), ONE reference forward over the rollout batch, and ONE policy forward + backward
+ optimiser step over the pairs' sequences (with k = 2 and no tie: every row of the rollout).
The iteration adds what joins them: scoring, pairing and labelling, the log-softmax of the
sampled distribution, the DPO loss and the logged statistics (entropy, exact KL). Every timing
is the median of ``--repeats`` rounds, each round running the four once in turn (after one
warm-up of each): a machine whose speed drifts slows both sides of the ratio alike. Target:
iteration ≤ 1.25× the primitives. The last line
reads ``online_dpo_iter_vs_primitives ratio=…``.

  python scripts/bench_online_dpo.py --task sentiment --batch-size 16 --k 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import llm_env
from agents.harness.distributed import set_num_threads
from agents.models.policy import completion_logits
from agents.models.precision import autocast
from agents.online_dpo import OnlineDPO, OnlineDPOConfig, penalise_missing_eos, preference_pairs
from agents.presets import tiny_model_config
from agents.sampling.online import iteration_prompts, sample
from llm_env.tasks import make_task
from scripts.options import parse_args_with_smoke

SMOKE = {"batch_size": 2, "k": 2, "repeats": 1, "threads": 1}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each of ``fns`` over ``repeats`` rounds that run each once in turn
    (after one untimed warm-up round)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--task", default="sentiment", help="built-in task (default: sentiment)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts (default: 16)")
    parser.add_argument("--k", type=int, default=2, help="samples per prompt (default: 2)")
    parser.add_argument("--precision", default="fp32", help="auto | bf16 | fp32 (default: fp32)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (default: 9)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    args = parse_args_with_smoke(parser, argv, SMOKE)
    set_num_threads(args.threads)

    task = make_task(args.task)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer)
    # a tiny GPT-2 of a built-in task: its preset (agents.presets), as the pipeline runs it
    config = tiny_model_config(
        "online_dpo", OnlineDPOConfig, batch_size=args.batch_size, k=args.k,
        precision=args.precision, save_every=0,
    )  # fmt: skip
    agent = OnlineDPO(policy, tokenizer, {"task": args.task}, config,
                      run_dir="/tmp/bench_online_dpo")  # fmt: skip
    prompts = iteration_prompts(agent, 0)
    print(f"model: tiny GPT-2, {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M params; "
          f"task {args.task}; {args.batch_size} prompts x {args.k} samples; "
          f"precision {agent.precision}; threads {torch.get_num_threads()}")  # fmt: skip

    roll = sample(agent, prompts, args.k)
    scores = penalise_missing_eos(roll.rewards, roll.terminated, config.missing_eos_penalty)
    chosen, rejected, ties = preference_pairs(roll.grouped(scores), "argmax", 1.0)
    rows = torch.cat([chosen, rejected])

    def forward(model, idx, grad: bool):
        with torch.set_grad_enabled(grad), autocast(agent.precision):
            return completion_logits(model, roll.input_ids[idx], roll.attention_mask[idx],
                                     roll.prompt_width)  # fmt: skip

    every = torch.arange(len(roll.prompts))
    optimizer = agent.optimizers["policy"][0]

    def train_pass():
        optimizer.zero_grad()
        forward(policy, rows, True).float().mean().backward()
        optimizer.step()

    times = interleaved({
        "rollout": lambda: sample(agent, prompts, args.k),
        "ref": lambda: forward(agent.ref, every, False),
        "train": train_pass,
        "iteration": lambda: agent._train_step(0),
    }, args.repeats)  # fmt: skip
    t_roll, t_ref, t_train, t_iter = (times[k] for k in ("rollout", "ref", "train", "iteration"))
    primitives = t_roll + t_ref + t_train
    print(f"primitives: rollout {t_roll:.3f}s + ref fwd {t_ref:.3f}s + fwd/bwd/step of "
          f"{len(chosen)} pairs ({ties} ties) {t_train:.3f}s = {primitives:.3f}s")  # fmt: skip
    print(f"online DPO iteration: {t_iter:.3f}s")
    print(f"online_dpo_iter_vs_primitives ratio={t_iter / primitives:.3f} (target <= 1.25)")


if __name__ == "__main__":
    main()
