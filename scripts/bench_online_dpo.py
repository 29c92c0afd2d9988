"""Benchmark one online-DPO iteration against the sum of its primitive passes, on one model and
batch.

Primitives: the rollout (``batch_size`` prompts × ``k`` samples through the env, reward-model
call included), ONE reference forward over the rollout batch, and ONE policy forward + backward
+ optimiser step over the pairs' sequences (with k = 2 and no tie: every row of the rollout).
The iteration adds what joins them: scoring, pairing and labelling, the log-softmax of the
sampled distribution, the DPO loss and the logged statistics (entropy, exact KL). Every timing
is the median of ``--repeats`` runs. Target: iteration ≤ 1.25× the primitives. The last line
reads ``online_dpo_iter_vs_primitives ratio=…``.

  python scripts/bench_online_dpo.py --task sentiment --batch-size 16 --k 2
"""

from __future__ import annotations

import argparse

import torch

import llm_env
from agents.harness.config import OptimConfig
from agents.harness.distributed import set_num_threads
from agents.models.policy import completion_logits
from agents.models.precision import autocast
from agents.online_dpo import OnlineDPO, OnlineDPOConfig, penalise_missing_eos, preference_pairs
from agents.sampling.online import iteration_prompts, sample
from llm_env.tasks import make_task
from scripts.bench_ppo import timed
from scripts.options import parse_args_with_smoke

SMOKE = {"batch_size": 2, "k": 2, "repeats": 1, "threads": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--task", default="sentiment", help="built-in task (default: sentiment)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts (default: 16)")
    parser.add_argument("--k", type=int, default=2, help="samples per prompt (default: 2)")
    parser.add_argument("--precision", default="fp32", help="auto | bf16 | fp32 (default: fp32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default: 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    args = parse_args_with_smoke(parser, argv, SMOKE)
    set_num_threads(args.threads)

    task = make_task(args.task)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer)
    config = OnlineDPOConfig(
        batch_size=args.batch_size, k=args.k, precision=args.precision, save_every=0,
        optim=OptimConfig(learning_rate=1e-5),
    )  # fmt: skip
    agent = OnlineDPO(policy, tokenizer, {"task": args.task}, config,
                      run_dir="/tmp/bench_online_dpo")  # fmt: skip
    prompts = iteration_prompts(agent, 0)
    print(f"model: tiny GPT-2, {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M params; "
          f"task {args.task}; {args.batch_size} prompts x {args.k} samples; "
          f"precision {agent.precision}; threads {torch.get_num_threads()}")  # fmt: skip

    t_roll, roll = timed(lambda: sample(agent, prompts, args.k), args.repeats)
    scores = penalise_missing_eos(roll.rewards, roll.terminated, config.missing_eos_penalty)
    chosen, rejected, ties = preference_pairs(roll.grouped(scores), "argmax", 1.0)
    rows = torch.cat([chosen, rejected])

    def forward(model, idx, grad: bool):
        with torch.set_grad_enabled(grad), autocast(agent.precision):
            return completion_logits(model, roll.input_ids[idx], roll.attention_mask[idx],
                                     roll.prompt_width)  # fmt: skip

    every = torch.arange(len(roll.prompts))
    t_ref, _ = timed(lambda: forward(agent.ref, every, False), args.repeats)
    optimizer = agent.optimizers["policy"][0]

    def train_pass():
        optimizer.zero_grad()
        forward(policy, rows, True).float().mean().backward()
        optimizer.step()

    t_train, _ = timed(train_pass, args.repeats)
    primitives = t_roll + t_ref + t_train
    print(f"primitives: rollout {t_roll:.3f}s + ref fwd {t_ref:.3f}s + fwd/bwd/step of "
          f"{len(chosen)} pairs ({ties} ties) {t_train:.3f}s = {primitives:.3f}s")  # fmt: skip
    t_iter, _ = timed(lambda: agent._train_step(0), args.repeats)
    print(f"online DPO iteration: {t_iter:.3f}s")
    print(f"online_dpo_iter_vs_primitives ratio={t_iter / primitives:.3f} (target <= 1.25)")


if __name__ == "__main__":
    main()
