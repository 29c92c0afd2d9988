"""Benchmark PPO on one model and batch: ``model.generate()`` vs the agent's KV-cache rollout,
and one full PPO iteration vs the sum of its primitive passes.

Primitives: the rollout (which includes the env's reward-model call; that call is also timed
alone), ONE forward each of policy, reference and critic over the rollout batch, and
epochs × minibatches of policy + critic forward/backward/optimiser step. Every timing is the
median of ``--repeats`` runs. Targets: rollout ≥ 0.95× generate's tokens/s; iteration ≤ 1.25×
the primitives. The last line reads ``ppo_iter_vs_primitives ratio=…``.

  python scripts/bench_ppo.py --task sentiment --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import llm_env
from agents.harness.distributed import set_num_threads
from agents.models.critic import completion_values
from agents.models.policy import completion_logits
from agents.models.precision import autocast
from agents.ppo import PPO, PPOConfig
from agents.presets import tiny_model_config
from agents.sampling.online import draw_prompts
from agents.sampling.rollout import left_pad_prompts, rollout
from llm_env.tasks import make_task
from scripts.options import parse_args_with_smoke

SMOKE = {"batch_size": 8, "minibatch_size": 4, "epochs": 1, "repeats": 1, "threads": 1}


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` calls (after one warm-up) and its last result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--task", default="sentiment", help="built-in task (default: sentiment)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="sequences per batch (default: 64)"
    )
    parser.add_argument(
        "--minibatch-size", type=int, default=16, help="PPO minibatch (default: 16)"
    )
    parser.add_argument("--epochs", type=int, default=4, help="PPO epochs (default: 4)")
    parser.add_argument("--precision", default="fp32", help="auto | bf16 | fp32 (default: fp32)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per measurement (default: 3)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    args = parse_args_with_smoke(parser, argv, SMOKE)
    set_num_threads(args.threads)

    task = make_task(args.task)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer)
    config = tiny_model_config(
        "ppo", PPOConfig, batch_size=args.batch_size, minibatch_size=args.minibatch_size,
        epochs=args.epochs, precision=args.precision, save_every=0, log_every=1,
    )  # fmt: skip
    agent = PPO(policy, tokenizer, {"task": args.task}, config, run_dir="/tmp/bench_ppo")
    env = agent.env
    prompts = draw_prompts(task.prompts("train"), args.batch_size, config.seed, 0)
    max_new = env.setup.max_new_tokens
    print(f"model: tiny GPT-2, {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M params; "
          f"task {args.task}; batch {args.batch_size}; max_new_tokens {max_new}; "
          f"precision {agent.precision}; threads {torch.get_num_threads()}")  # fmt: skip

    # 1. generation only: model.generate() on the same left-padded prompts
    obs, info = env.reset(options={"prompts": prompts})
    ids, mask = left_pad_prompts(obs, info["prompt_length"], tokenizer.pad_token_id)

    def generate():
        with torch.no_grad(), autocast(agent.precision):
            out = policy.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=max_new,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                top_k=0, top_p=1.0,
            )  # fmt: skip
        new = out[:, ids.shape[1] :]
        ended = (new == tokenizer.eos_token_id).long().cumsum(-1)
        return int(((ended == 0) | ((ended == 1) & (new == tokenizer.eos_token_id))).sum())

    t_gen, gen_tokens = timed(generate, args.repeats)
    t_roll, roll = timed(
        lambda: rollout(
            policy, env, agent.sampling, agent.generator, prompts, None, agent.precision
        ),
        args.repeats,
    )
    gen_tps, roll_tps = gen_tokens / t_gen, roll.num_tokens / t_roll
    print(f"generate(): {t_gen:.3f}s, {gen_tokens} tokens, {gen_tps:.0f} tokens/s")
    print(f"rollout:    {t_roll:.3f}s, {roll.num_tokens} tokens, {roll_tps:.0f} tokens/s "
          f"(rollout_vs_generate tokens/s ratio={roll_tps / gen_tps:.3f}, target >= 0.95)")  # fmt: skip

    # 2. primitives of one PPO iteration
    t_rm, _ = timed(lambda: env.reward_model.score(roll.prompts, roll.completions), args.repeats)

    def forward(model):
        with torch.no_grad(), autocast(agent.precision):
            return completion_logits(model, roll.input_ids, roll.attention_mask, roll.prompt_width)

    def critic_forward():
        with torch.no_grad(), autocast(agent.precision):
            return completion_values(
                agent.critic, roll.input_ids, roll.attention_mask, roll.prompt_width
            )

    t_pol, _ = timed(lambda: forward(policy), args.repeats)
    t_ref, _ = timed(lambda: forward(agent.ref), args.repeats)
    t_critic, _ = timed(critic_forward, args.repeats)

    def train_passes():
        for _ in range(args.epochs):
            for idx in torch.randperm(args.batch_size).split(args.minibatch_size):
                with autocast(agent.precision):
                    logits = completion_logits(
                        policy, roll.input_ids[idx], roll.attention_mask[idx], roll.prompt_width
                    )
                    values = completion_values(
                        agent.critic,
                        roll.input_ids[idx],
                        roll.attention_mask[idx],
                        roll.prompt_width,
                    )
                loss = logits.float().mean() + values.mean()
                optimizers = [opt for opt, _ in agent.optimizers.values()]
                for opt in optimizers:
                    opt.zero_grad()
                loss.backward()
                for opt in optimizers:
                    opt.step()

    t_train, _ = timed(train_passes, args.repeats)
    primitives = t_roll + t_pol + t_ref + t_critic + t_train
    print(f"primitives: rollout {t_roll:.3f}s (reward model alone {t_rm:.3f}s) + policy fwd "
          f"{t_pol:.3f}s + ref fwd {t_ref:.3f}s + critic fwd {t_critic:.3f}s + "
          f"{args.epochs} epochs fwd/bwd/step {t_train:.3f}s = {primitives:.3f}s")  # fmt: skip

    # 3. one full PPO iteration (learning rate 0 would skip nothing: the real update runs)
    t_iter, _ = timed(lambda: agent._train_step(0), args.repeats)
    print(f"PPO iteration: {t_iter:.3f}s")
    print(f"ppo_iter_vs_primitives ratio={t_iter / primitives:.3f} (target <= 1.25)")


if __name__ == "__main__":
    main()
