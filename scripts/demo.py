"""Roll out a tiny GPT-2 through TokenMDP-v0 (lockstep vector env, KV cache) and print episodes."""

from __future__ import annotations

import argparse

import torch

import llm_env
from agents.harness.distributed import set_num_threads
from agents.models.policy import SamplingConfig, load_policy
from agents.sampling.rollout import rollout
from llm_env import TokenMDPVectorEnv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tokenmdp demo", description=__doc__)
    parser.add_argument("--task", default="sentiment", help="built-in task name")
    parser.add_argument("--policy", default=None, help="save_pretrained dir (default: untrained)")
    parser.add_argument("--num-envs", type=int, default=4, help="sequences rolled out together")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="prompt and sampling seed")
    args = parser.parse_args(argv)
    set_num_threads()
    env = TokenMDPVectorEnv(args.num_envs, task=args.task, autoreset_mode="disabled")
    if args.policy:
        model, _ = load_policy(args.policy)
    else:
        model = llm_env.tiny_gpt2(env.tokenizer, seed=args.seed)
    batch = rollout(
        model,
        env,
        SamplingConfig(temperature=args.temperature),
        torch.Generator().manual_seed(args.seed),
        seed=args.seed,
    )
    for i in range(args.num_envs):
        print(
            f"[{batch.finish_reasons[i]:>6}] reward={batch.rewards[i]:+.3f}  "
            f"{batch.prompts[i]}⟨{batch.completions[i]}⟩"
        )


if __name__ == "__main__":
    main()
