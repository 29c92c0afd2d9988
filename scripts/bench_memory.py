"""Peak memory and full model copies of every fine-tuning method of ``agents.registry`` (PPO,
REINFORCE, GRPO, DPO, online DPO), with and without LoRA adapters.

Each setup runs in a fresh subprocess: it builds a GPT-2 large enough for its weights to
dominate memory (``--n-layer`` × ``--n-embd``, default 4 × 768, ~31M parameters), resets the
peak-RSS counter (``/proc/self/clear_refs``), builds the agent and trains it for a couple of
iterations through ``learn()`` (final save included), then reads the peak (``VmHWM``). One line
per setup:

- ``peak_rss``: peak resident memory of the process; ``over_base``: the part above the RSS
  before the agent was built (one copy of the model already loaded, plus Python and torch):
  model copies, gradients, optimiser states, activations, the env and its reward model;
- ``copies``: full model copies the agent holds, i.e. the bytes of the distinct parameter
  storages of policy, reference and critic (adapters and value head excluded) divided by one
  model's. DPO without LoRA counts its reference as it loads it from disk (for the reference
  log-probs and at each evaluation; freed after each use);
- ``trainable``: parameters the optimisers update; ``vs_full``: peak_rss and over_base
  relative to the same agent's full fine-tuning setup of this run (the reference for LoRA).

  python scripts/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import llm_env
from agents.harness.distributed import set_num_threads
from agents.models.lora import BaseWeightsReference
from agents.registry import agent_spec, names
from llm_env.tasks import make_task
from scripts.options import parse_args_with_smoke
from scripts.studies.factory import make_agent, study_config

SMOKE = {"n_layer": 1, "n_embd": 64, "iterations": 1, "threads": 1}

# Each method's batch: PPO and REINFORCE 8 completions per iteration (REINFORCE and GRPO as 2
# prompts × 4 samples, online DPO as 4 prompts × 2), DPO 4 pairs per step.
SIZES = {
    "ppo": {"batch_size": 8, "minibatch_size": 4, "epochs": 2},
    "reinforce": {"batch_size": 2, "k": 4, "minibatch_size": 8},
    "grpo": {"batch_size": 2, "group_size": 4, "minibatch_size": 8},
    "dpo": {"batch_size": 4, "eval_prompts": 0, "max_length": 32, "save_every": 1000},
    "online_dpo": {"batch_size": 4, "k": 2},
}
SETUPS = tuple(f"{m}-{mode}" for m in names(role="method") for mode in ("full", "lora"))
ROOT = Path(__file__).resolve().parents[1]


def rss_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Make ``VmHWM`` restart from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def model_copies(models: list, one_model_bytes: int) -> float:
    """Bytes of the distinct base-weight storages of ``models`` over one model's bytes."""
    storages = {}
    for model in models:
        if isinstance(model, BaseWeightsReference):
            model = model.policy
        for name, p in model.named_parameters():
            if "lora_" not in name and "value_head" not in name:
                storages[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(storages.values()) / one_model_bytes


def run_setup(setup: str, args: argparse.Namespace) -> dict:
    """Build and train one setup in this process; return its measurements."""
    set_num_threads(args.threads)
    agent_name, mode = setup.split("-")
    lora = {"lora.r": args.lora_r} if mode == "lora" else {}
    task = make_task("sentiment")
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(
        tokenizer, n_layer=args.n_layer, n_head=args.n_embd // 64, n_embd=args.n_embd
    )
    one_model = sum(p.numel() * p.element_size() for p in policy.parameters())
    env = {"task": "sentiment", "max_new_tokens": 8}
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-memory-{setup}-"))
    common = {"precision": "fp32", "seed": 0, **lora}
    base_rss = rss_mib("VmRSS")
    reset_peak_rss()
    options = {**common, **SIZES[agent_name], "log_every": 1}
    if agent_spec(agent_name).kind == "offline":  # DPO on fixed pairs
        prompts = task.prompts("train")[:64]
        pairs = [(p, " a lovely, warm film", " a dull and tiring mess") for p in prompts]
        config = study_config(agent_name, {**options, "max_steps": args.iterations})
        agent = make_agent(agent_name, policy, tokenizer, pairs, config, run_dir)
        agent.learn()
        models, trainable = [agent.policy, agent.reference_model()], [agent.policy]
    else:
        config = study_config(agent_name, {**options, "save_every": 0})
        agent = make_agent(agent_name, policy, tokenizer, env, config, run_dir)
        critic = [agent.critic] if hasattr(agent, "critic") else []
        models = [m for m in (agent.policy, agent.ref, *critic) if m is not None]  # ref: β > 0
        trainable = [agent.policy, *critic]
        agent.learn(total_prompts=config.batch_size * args.iterations)
    peak = rss_mib("VmHWM")
    return {
        "setup": setup,
        "peak_rss_mib": peak,
        "over_base_mib": peak - base_rss,
        "copies": model_copies(models, one_model),
        "trainable": sum(p.numel() for m in trainable for p in m.parameters() if p.requires_grad),
        "model_params": sum(p.numel() for p in policy.parameters()),
    }


def measure_in_subprocess(setup: str, args: argparse.Namespace) -> dict:
    """``run_setup`` in a fresh interpreter, so no setup inherits another's memory."""
    cmd = [sys.executable, "-m", "scripts.bench_memory", "--setup", setup]
    cmd += ["--n-layer", str(args.n_layer), "--n-embd", str(args.n_embd)]
    cmd += ["--iterations", str(args.iterations), "--lora-r", str(args.lora_r)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    # malloc at its default: freed memory goes back to the OS, so the peak measures what the
    # setup holds rather than what ``agents.harness.allocator`` keeps for reuse
    env = {**os.environ, "TOKENMDP_KEEP_FREED_MEMORY": "0"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"setup {setup} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary_line(result: dict, full: dict | None) -> str:
    line = (
        f"{result['setup']:<15} peak_rss={result['peak_rss_mib']:7.1f} MiB "
        f"over_base={result['over_base_mib']:7.1f} MiB copies={result['copies']:.2f} "
        f"trainable={result['trainable'] / 1e6:7.3f}M"
    )
    if full is not None:
        line += (
            f" vs_full: peak_rss x{result['peak_rss_mib'] / full['peak_rss_mib']:.2f}"
            f" over_base x{result['over_base_mib'] / full['over_base_mib']:.2f}"
        )
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--setup", choices=SETUPS, help="run only this setup, in this process")
    parser.add_argument("--n-layer", type=int, default=4, help="GPT-2 layers (default: 4)")
    parser.add_argument("--n-embd", type=int, default=512, help="GPT-2 width (default: 512)")
    parser.add_argument(
        "--iterations", type=int, default=2, help="training iterations / steps (default: 2)"
    )
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: 8)")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    args = parse_args_with_smoke(parser, argv, SMOKE)
    if args.setup:
        print(json.dumps(run_setup(args.setup, args)))
        return
    results: dict[str, dict] = {}
    for setup in SETUPS:
        results[setup] = measure_in_subprocess(setup, args)
        agent_name, mode = setup.split("-")
        full = results.get(f"{agent_name}-full") if mode == "lora" else None
        print(summary_line(results[setup], full), flush=True)
    params = results[SETUPS[0]]["model_params"]
    print(f"model: GPT-2 {args.n_layer} x {args.n_embd}, {params / 1e6:.1f}M parameters "
          f"({params * 4 / 2**20:.0f} MiB fp32); LoRA r={args.lora_r} on all linear layers")  # fmt: skip


if __name__ == "__main__":
    main()
