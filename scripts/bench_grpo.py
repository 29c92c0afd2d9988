"""Benchmark one GRPO iteration against the sum of its primitive passes, on one model and batch.

Primitives: the group rollout (``batch_size`` prompts × ``group_size`` samples through the env,
reward-model call included), ONE forward each of policy and reference over the rollout batch,
and ``num_iterations`` × minibatches of policy forward/backward/optimiser step. Every timing is
the median of ``--repeats`` runs. Target: iteration ≤ 1.25× the primitives. The last line reads
``grpo_iter_vs_primitives ratio=…``.

  python scripts/bench_grpo.py --task sentiment --batch-size 16 --group-size 4
"""

from __future__ import annotations

import argparse

import torch

import llm_env
from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import OptimConfig
from agents.harness.distributed import set_num_threads
from agents.models.policy import completion_logits
from agents.models.precision import autocast
from agents.presets import tiny_model_config
from agents.sampling.online import iteration_prompts, sample
from llm_env.tasks import make_task
from scripts.bench_ppo import timed
from scripts.options import parse_args_with_smoke

SMOKE = {"batch_size": 2, "group_size": 2, "minibatch_size": 4, "repeats": 1, "threads": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--task", default="sentiment", help="built-in task (default: sentiment)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts (default: 16)")
    parser.add_argument("--group-size", type=int, default=4, help="samples per prompt (default: 4)")
    parser.add_argument("--minibatch-size", type=int, default=32, help="sequences (default: 32)")
    parser.add_argument("--num-iterations", type=int, default=2, help="μ passes (default: 2)")
    parser.add_argument("--precision", default="fp32", help="auto | bf16 | fp32 (default: fp32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default: 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    args = parse_args_with_smoke(parser, argv, SMOKE)
    set_num_threads(args.threads)

    task = make_task(args.task)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer)
    # a tiny GPT-2 of a built-in task: its preset (agents.presets), as the pipeline runs it
    config = tiny_model_config(
        "grpo", GRPOConfig, batch_size=args.batch_size, group_size=args.group_size,
        minibatch_size=args.minibatch_size, num_iterations=args.num_iterations,
        precision=args.precision, save_every=0, optim=OptimConfig(learning_rate=1e-5),
    )  # fmt: skip
    agent = GRPO(policy, tokenizer, {"task": args.task}, config, run_dir="/tmp/bench_grpo")
    prompts = iteration_prompts(agent, 0)
    print(f"model: tiny GPT-2, {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M params; "
          f"task {args.task}; {args.batch_size} prompts x {args.group_size} samples; "
          f"precision {agent.precision}; threads {torch.get_num_threads()}")  # fmt: skip

    t_roll, roll = timed(lambda: sample(agent, prompts, args.group_size), args.repeats)

    def forward(model):
        with torch.no_grad(), autocast(agent.precision):
            return completion_logits(model, roll.input_ids, roll.attention_mask, roll.prompt_width)

    t_pol, _ = timed(lambda: forward(policy), args.repeats)
    t_ref, _ = timed(lambda: forward(agent.ref), args.repeats)
    optimizer = agent.optimizers["policy"][0]

    def train_passes():
        for _ in range(args.num_iterations):
            for idx in torch.randperm(len(roll.prompts)).split(args.minibatch_size):
                with autocast(agent.precision):
                    logits = completion_logits(
                        policy, roll.input_ids[idx], roll.attention_mask[idx], roll.prompt_width
                    )
                optimizer.zero_grad()
                logits.float().mean().backward()
                optimizer.step()

    t_train, _ = timed(train_passes, args.repeats)
    primitives = t_roll + t_pol + t_ref + t_train
    print(f"primitives: rollout {t_roll:.3f}s + policy fwd {t_pol:.3f}s + ref fwd {t_ref:.3f}s "
          f"+ {args.num_iterations} passes fwd/bwd/step {t_train:.3f}s = {primitives:.3f}s")  # fmt: skip
    t_iter, _ = timed(lambda: agent._train_step(0), args.repeats)
    print(f"GRPO iteration: {t_iter:.3f}s")
    print(f"grpo_iter_vs_primitives ratio={t_iter / primitives:.3f} (target <= 1.25)")


if __name__ == "__main__":
    main()
