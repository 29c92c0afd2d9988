"""``python scripts/bench_dpo.py``: one DPO epoch, ours vs TRL's ``DPOTrainer``, in the same run.

Same starting weights, preference file, batch size, β, max length, learning rate and schedule
(linear decay, no warm-up), gradient clipping 1.0, fp32 on CPU. Timed alike on both sides: the
policy loaded from its directory, the constructor (both tokenise), one epoch, and what a run
leaves on disk — a checkpoint with the optimiser state and the final policy (ours: its last
checkpoint and ``final/``; TRL: ``save_strategy="epoch"`` and ``save_model``). Ours computes the
reference log-probs in one pass up front; TRL keeps a reference model and runs it every step,
its default. Both final policies are then
scored with the same DPO loss on all pairs against the same reference log-probs.

Prints one line: ``dpo_epoch_vs_trl ratio=<ours/trl wall time> ...``. Needs the ``bench`` extra
(``pip install 'tokenmdp[bench]'``: trl, datasets).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agents.data.offline import pair_logprobs
from agents.data.preferences import PreferenceConfig, sample_preferences
from agents.dpo import DPO, DPOConfig, dpo_loss
from agents.harness.config import OptimConfig
from agents.harness.distributed import set_num_threads
from agents.models.policy import load_policy
from llm_env.models import tiny_gpt2
from llm_env.tasks import make_task
from scripts.options import parse_args_with_smoke

SMOKE = {"num_pairs": 16, "batch_size": 4, "max_length": 32, "threads": 1}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_dpo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--policy", help="policy directory (default: a fresh tiny GPT-2 on --task)")
    parser.add_argument("--pairs", help="preference JSONL (default: sampled from the policy)")
    parser.add_argument("--task", default="sentiment", help="task for the default policy/pairs")
    parser.add_argument("--num-pairs", type=int, default=512, help="pairs sampled by default")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step (both)")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO β (both)")
    parser.add_argument("--max-length", type=int, default=64, help="max prompt+completion tokens")
    parser.add_argument("--learning-rate", type=float, default=3e-4, help="peak learning rate")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each; median")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and both runs")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for both (0 = every core)"
    )
    return parser


def prepare(args, work: Path) -> tuple[Path, Path]:
    """The policy directory and preference file both trainers use."""
    policy = Path(args.policy) if args.policy else work / "policy"
    if not args.policy:
        tokenizer = make_task(args.task).tokenizer()
        tiny_gpt2(tokenizer, seed=args.seed).save_pretrained(policy)
        tokenizer.save_pretrained(policy)
    pairs = Path(args.pairs) if args.pairs else work / "pairs.jsonl"
    if not args.pairs:
        config = PreferenceConfig(seed=args.seed, num_prompts=args.num_pairs, k=2)
        sample_preferences(str(policy), None, {"task": args.task}, None, config, pairs)
    return policy, pairs


def run_ours(args, policy: Path, pairs: Path, run_dir: Path) -> tuple[float, float, DPO]:
    config = DPOConfig(
        seed=args.seed, batch_size=args.batch_size, beta=args.beta, max_length=args.max_length,
        epochs=1.0, save_every=10**9, eval_prompts=0,
        optim=OptimConfig(learning_rate=args.learning_rate, lr_schedule="linear"),
    )  # fmt: skip
    start = time.perf_counter()
    dpo = DPO(str(policy), None, str(pairs), config, run_dir)
    history = dpo.learn()
    seconds = time.perf_counter() - start
    steps = np.diff([0] + [h["step"] for h in history])
    mean_loss = float(np.average([h["loss/total"] for h in history], weights=steps))
    return seconds, mean_loss, dpo


def run_trl(args, policy: Path, pairs: Path, out_dir: Path) -> tuple[float, float, torch.nn.Module]:
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    rows = [json.loads(line) for line in pairs.read_text().splitlines() if line.strip()]
    rows = [
        {k: r[k] for k in ("prompt", "chosen", "rejected")}
        for r in rows
        if r["chosen"] != r["rejected"]
    ]
    start = time.perf_counter()
    model, tokenizer = load_policy(policy)
    config = TRLConfig(
        output_dir=str(out_dir), per_device_train_batch_size=args.batch_size,
        num_train_epochs=1, beta=args.beta, max_length=args.max_length,
        learning_rate=args.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
        max_grad_norm=1.0, weight_decay=0.0, logging_steps=10, save_strategy="epoch",
        report_to="none", use_cpu=True, seed=args.seed, data_seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True, bf16=False,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )  # fmt: skip
    output = trainer.train()
    trainer.save_model(str(out_dir / "final"))
    seconds = time.perf_counter() - start
    return seconds, float(output.training_loss), trainer.model


@torch.no_grad()
def final_loss(dpo: DPO, model: torch.nn.Module) -> float:
    """DPO loss of ``model`` on every pair, against ``dpo``'s reference log-probs."""
    model.eval()
    forward = functools.partial(pair_logprobs, model)  # forward(chosen, rejected, ...)
    losses = []
    for start in range(0, len(dpo.chosen), 128):
        idx = np.arange(start, min(start + 128, len(dpo.chosen)))
        chosen, rejected, _ = dpo.pair_logps(forward, idx)
        loss, _ = dpo_loss(
            chosen,
            rejected,
            dpo.ref_chosen_logps[idx],
            dpo.ref_rejected_logps[idx],
            dpo.config.beta,
        )
        losses.append(loss.item() * len(idx))
    return sum(losses) / len(dpo.chosen)


def main(argv: list[str] | None = None) -> None:
    args = parse_args_with_smoke(build_parser(), argv, SMOKE)
    try:
        import trl  # noqa: F401
    except ImportError as e:
        print(
            f"dpo_epoch_vs_trl ratio=nan (TRL is not installed: {e}; pip install 'tokenmdp[bench]')"
        )
        return
    set_num_threads(args.threads or None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policy, pairs = prepare(args, work)
        ours, trls = [], []
        for i in range(args.repeats):
            with contextlib.redirect_stdout(io.StringIO()):
                trl_s, trl_loss, trl_model = run_trl(args, policy, pairs, work / f"trl{i}")
                our_s, our_loss, dpo = run_ours(args, policy, pairs, work / f"ours{i}")
            ours.append(our_s)
            trls.append(trl_s)
        our_final, trl_final = final_loss(dpo, dpo.policy), final_loss(dpo, trl_model)
        our_t, trl_t = statistics.median(ours), statistics.median(trls)
        print(
            f"dpo_epoch_vs_trl ratio={our_t / trl_t:.3f} ours={our_t:.2f}s trl={trl_t:.2f}s "
            f"pairs={len(dpo.chosen)} batch={args.batch_size} beta={args.beta} "
            f"max_length={args.max_length} train_loss ours={our_loss:.4f} trl={trl_loss:.4f} "
            f"final_loss ours={our_final:.4f} trl={trl_final:.4f} trl_version={trl.__version__}"
        )


if __name__ == "__main__":
    main()
