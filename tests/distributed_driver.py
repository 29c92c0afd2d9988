"""Trains every agent for a few steps; run by ``tests/test_distributed.py`` under
``accelerate launch --num_processes 2`` (and in-process, as the single-process reference).

  python tests/distributed_driver.py OUT first    # SFT, reward model, DPO, REINFORCE, PPO
  python tests/distributed_driver.py OUT resume   # PPO continued from OUT/ppo-resumed

Every process writes its final parameters of each agent to ``OUT/<agent>/rank<r>.safetensors``
(outside the run directories, which only the main process may write).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import llm_env
from agents.dpo import DPO, DPOConfig
from agents.harness.config import OptimConfig
from agents.harness.distributed import Distributed, set_num_threads
from agents.maths.advantages import whiten
from agents.maths.kl import KLConfig
from agents.models.lora import LoraOptions
from agents.ppo import PPO, PPOConfig
from agents.presets import tiny_model_config
from agents.reinforce import Reinforce, ReinforceConfig
from agents.reward_model import RewardModelConfig, RewardModelTrainer
from agents.sft import SFT, SFTConfig
from llm_env.tasks import make_task

# An untrained policy never gets a sum right; the length reward gives RL a signal from step one.
ENV = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}, "reward_model": "length"}
PPO_ITERATIONS = 4
PPO_BATCH = 8


def tiny_policy(tokenizer):
    return llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)


def dump(model: torch.nn.Module, out: Path) -> None:
    """This process's parameters of ``model`` at ``out/rank<r>.safetensors``."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.named_parameters()}
    save_file(tensors, out / f"rank{Distributed().rank}.safetensors")


def pairs(task) -> list[tuple[str, str, str]]:
    """``(prompt, right answer, answer off by one)`` for every demonstration."""
    return [(p, c, str(int(c) + 1)) for p, c in task.demonstrations]


def ppo(out: Path, name: str, total_iterations: int, resume: bool = False, lora_r: int = 0) -> PPO:
    task = make_task("arithmetic", max_operand=9)
    tokenizer = task.tokenizer()
    config = PPOConfig(
        batch_size=PPO_BATCH, minibatch_size=4, epochs=2, precision="fp32", save_every=1,
        log_every=1, resume=resume, optim=OptimConfig(learning_rate=1e-3),
        kl=KLConfig(kl_target=0.5, kl_horizon=100),
        total_prompts=PPO_BATCH * PPO_ITERATIONS, lora=LoraOptions(r=lora_r),
    )  # fmt: skip
    agent = PPO(tiny_policy(tokenizer), tokenizer, ENV, config, run_dir=out / name / "run")
    agent.learn(total_prompts=PPO_BATCH * total_iterations)
    dump(agent.policy, out / name / "policy")
    dump(agent.critic, out / name / "critic")
    return agent


def dpo(out: Path) -> DPO:
    task = make_task("arithmetic", max_operand=9)
    tokenizer = task.tokenizer()
    config = DPOConfig(
        batch_size=16,
        epochs=1.0,
        optim=OptimConfig(learning_rate=1e-3, lr_schedule="linear"),
        log_every=1,
    )
    agent = DPO(tiny_policy(tokenizer), tokenizer, pairs(task), config, run_dir=out / "dpo" / "run")
    agent.learn()
    dump(agent.policy, out / "dpo" / "policy")
    return agent


def whiten_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (6, 5) batch of advantages and its mask (each row keeps >= 1 token)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((6, 5), generator=g) * 3 + 1
    mask = (torch.rand((6, 5), generator=g) > 0.4).float()
    mask[:, 0] = 1
    return x, mask


def collectives(out: Path) -> None:
    """Whitening and metric reduction over this process's shard of rows."""
    dist = Distributed()
    x, mask = whiten_inputs()
    rows = dist.shard(range(len(x)))
    white = whiten(x[rows], mask[rows], all_sum=dist.all_sum)
    metrics = {"reward/train": float(dist.rank), "episode/tokens": 10.0 + dist.rank}
    if dist.rank == 1:
        metrics["reward/gold"] = 5.0
    reduced = dist.reduce_metrics(metrics)
    (out / "collectives").mkdir(parents=True, exist_ok=True)
    save_file(
        {"white": white, "rows": torch.tensor(rows)},
        out / "collectives" / f"rank{dist.rank}.safetensors",
    )
    (out / "collectives" / f"rank{dist.rank}.json").write_text(
        json.dumps(
            {"reduced": reduced, "mean": dist.mean(torch.full((dist.rank + 1,), float(dist.rank)))}
        )
    )


def first(out: Path) -> None:
    dist = Distributed()
    collectives(out)
    task = make_task("arithmetic", max_operand=9)
    tokenizer = task.tokenizer()

    sft = SFT(
        tiny_policy(tokenizer), tokenizer, list(task.demonstrations),
        tiny_model_config("sft", SFTConfig, batch_size=16, max_steps=3, log_every=1),
        run_dir=out / "sft" / "run",
    )  # fmt: skip
    sft.learn()
    init = sft.save(out / "sft" / "final")
    dump(sft.policy, out / "sft" / "policy")

    rm = RewardModelTrainer(
        init, pairs(task),
        tiny_model_config("reward_model", RewardModelConfig, batch_size=16, max_steps=3,
                          log_every=1),
        run_dir=out / "rm" / "run",
    )  # fmt: skip
    rm.learn()
    dump(rm.model, out / "rm" / "policy")

    dpo(out)

    reinforce = Reinforce(
        tiny_policy(tokenizer), tokenizer, ENV,
        tiny_model_config("reinforce", ReinforceConfig, batch_size=4, k=2, total_prompts=8,
                          whiten=True, save_every=0, log_every=1),
        run_dir=out / "reinforce" / "run",
    )  # fmt: skip
    reinforce.learn()
    dump(reinforce.policy, out / "reinforce" / "policy")

    ppo(out, "ppo-full", PPO_ITERATIONS)
    ppo(out, "ppo-resumed", PPO_ITERATIONS // 2)  # "killed" after its checkpoint at half-way
    ppo(out, "ppo-lora", 2, lora_r=4)
    dist.barrier()


def main() -> None:
    out, scenario = Path(sys.argv[1]), sys.argv[2]
    set_num_threads()
    if scenario == "first":
        first(out)
    elif scenario == "resume":
        ppo(out, "ppo-resumed", PPO_ITERATIONS, resume=True)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}: first | resume")


if __name__ == "__main__":
    main()
