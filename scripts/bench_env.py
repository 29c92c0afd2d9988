"""Benchmark: roll out TokenMDPVectorEnv with a KV-cache policy vs ``model.generate()``.

Same tiny GPT-2, same prompts, batch (64) and length (48 new tokens), fp32 and plain sampling in
both, measured alternately in one run. The env rollout includes reward scoring (VADER) of every
completion; ``generate()`` does not score. Prints one line:
``env_rollout_vs_generate ratio=<env tokens/s ÷ generate tokens/s> ...``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import llm_env
from agents.harness.distributed import set_num_threads
from agents.models.policy import SamplingConfig
from agents.sampling.rollout import left_pad_prompts, rollout
from llm_env import TokenMDPVectorEnv
from scripts.options import parse_args_with_smoke

SMOKE = {"batch_size": 4, "new_tokens": 8, "repeats": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_args_with_smoke(parser, argv, SMOKE)
    set_num_threads()
    env = TokenMDPVectorEnv(
        args.batch_size, max_new_tokens=args.new_tokens, autoreset_mode="disabled"
    )
    tok = env.tokenizer
    model = llm_env.tiny_gpt2(tok).eval()
    sampling = SamplingConfig()
    obs, info = env.reset(seed=0)
    prompts = [str(p) for p in info["prompt"]]
    prompt_ids, prompt_mask = left_pad_prompts(obs, info["prompt_length"], tok.pad_token_id)

    def run_env() -> int:
        batch = rollout(model, env, sampling, torch.Generator().manual_seed(0), prompts=prompts)
        return batch.num_tokens

    @torch.no_grad()
    def run_generate() -> int:
        out = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        new = out[:, prompt_ids.shape[1] :]
        ended = (new == tok.eos_token_id).cumsum(-1) - (new == tok.eos_token_id).long()
        return int((ended == 0).sum())  # tokens up to and including the first EOS

    run_env(), run_generate()  # warm-up
    env_rates, gen_rates = [], []
    for _ in range(args.repeats):
        for fn, rates in ((run_env, env_rates), (run_generate, gen_rates)):
            start = time.perf_counter()
            tokens = fn()
            rates.append(tokens / (time.perf_counter() - start))
    env_rate, gen_rate = statistics.median(env_rates), statistics.median(gen_rates)
    print(
        f"env_rollout_vs_generate ratio={env_rate / gen_rate:.3f} "
        f"(env {env_rate:,.0f} tok/s incl. reward scoring, generate {gen_rate:,.0f} tok/s; "
        f"B={args.batch_size}, {args.new_tokens} new tokens, median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
