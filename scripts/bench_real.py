"""``python scripts/bench_real.py``: GRPO, PPO and DPO on a pretrained-sized model, ours vs TRL.

The model is built from a config (no download): a randomly initialised Llama of exactly the
shape of a 135M-parameter instruct checkpoint (30 layers, hidden 576, intermediate 1536, 9/3
heads, vocabulary 49,152, tied embeddings) with a ChatML tokenizer (pad = EOS, two stop ids)
of the same vocabulary size, saved to a temporary directory both libraries load from. A
random-init model rarely emits a stop token, so both sides generate the full
``--max-new-tokens`` and time like against like.

- **GRPO**: one iteration of ours (``--prompts`` P conversational prompts × G samples, β > 0 so
  both load a reference, μ = 1, one optimiser step) against one step of TRL's ``GRPOTrainer``
  on the same model, prompts, P × G, max completion length, β, temperature and precision.
- **PPO**: one iteration of ours with its critic (one epoch, one minibatch). TRL 1.x has no
  PPO trainer any more, so PPO is measured against its primitive passes only.
- **DPO**: one epoch of ours on ``--pairs`` pairs against TRL's ``DPOTrainer`` (same pairs,
  batch, β, max length, learning rate).
- **Primitives** (``*_vs_primitives``): HF ``generate`` of the same batch, one reference
  forward, one forward + backward (PPO: of policy and critic); the iteration should be within
  1.2× their sum.

Every timing is the median over ``--repeats`` iterations after one warm-up; ours and TRL's
alternate (GRPO: one of our iterations after each TRL step; DPO: epoch by epoch), so a machine
whose speed drifts slows both sides alike. Prints a per-phase
table of our iterations and one ratio line per comparison, for each precision of
``--precisions`` (default: fp32 and what ``--precision auto`` picks for this model and device).
``--device cuda`` runs every side on the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from unittest import mock

import torch

from agents.harness.config import OptimConfig
from agents.harness.distributed import set_num_threads
from agents.maths.kl import KLConfig
from agents.models.precision import autocast, resolve_precision
from llm_env.models import causal_lm, chat_tokenizer
from scripts.options import parse_args_with_smoke

REAL_SHAPE = {"hidden_size": 576, "num_layers": 30, "num_heads": 9, "num_kv_heads": 3,
              "intermediate_size": 1536}  # fmt: skip
SMOKE_SHAPE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
               "intermediate_size": 64}  # fmt: skip
SMOKE = {"vocab": 600, "prompts": 2, "group_size": 2, "max_new_tokens": 4, "repeats": 1,
         "pairs": 4, "dpo_batch": 2, "precisions": "fp32", "shape": "smoke"}  # fmt: skip
TARGETS = {"grpo_vs_trl": 0.6, "dpo_vs_trl": 0.7, "vs_primitives": 1.2}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_real", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=2, help="P prompts per iteration")
    parser.add_argument("--group-size", type=int, default=4, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="completion length")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (GRPO, PPO)")
    parser.add_argument("--pairs", type=int, default=16, help="DPO pairs (one epoch)")
    parser.add_argument("--dpo-batch", type=int, default=8, help="DPO pairs per step")
    parser.add_argument("--vocab", type=int, default=49152, help="vocabulary size")
    parser.add_argument("--shape", choices=("real", "smoke"), default="real", help="model shape")
    parser.add_argument("--precisions", default="fp32,auto", help="comma-separated precisions")
    parser.add_argument("--methods", default="grpo,ppo,dpo", help="comma-separated methods")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations; median")
    parser.add_argument("--threads", type=int, help="torch threads (default: every core)")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL runs")
    return parser


# -- the model and the data both sides use -------------------------------------------------------

QUESTIONS = ["Write a short review of a film you liked.", "Describe a rainy afternoon.",
             "What makes a good teacher?", "Tell me about your favourite city.",
             "Explain why the sky is blue.", "Give me advice on learning to cook."]  # fmt: skip


def build_model(work: Path, args) -> Path:
    """A random-init model of the benchmark's shape and its chat tokenizer, saved to ``work``."""
    from llm_env.tasks.sentiment_grammar import generate_corpus

    corpus = [opening + rest for opening, rest, _ in generate_corpus(2000, seed=0)] + QUESTIONS
    tokenizer = chat_tokenizer(corpus, vocab_size=min(2000, args.vocab), total_tokens=args.vocab)
    shape = REAL_SHAPE if args.shape == "real" else SMOKE_SHAPE
    model = causal_lm("llama", tokenizer, **shape, seed=0)
    path = work / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompt_messages(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})"}]
            for i in range(n)]  # fmt: skip


def reward(prompts, completions, **kwargs) -> list[float]:
    """A cheap deterministic reward of TRL's shape (text length mod 7, scaled)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [(len(t) % 7) / 7 for t in texts]


def write_prompts(work: Path, model: Path, n: int) -> Path:
    """Our prompts file: the conversations rendered with the chat template and its generation
    prompt, the text TRL's trainer feeds the model for the same message lists."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [{"prompt": tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)}
            for m in prompt_messages(n)]  # fmt: skip
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- timing -------------------------------------------------------------------------------------


class Phases(contextlib.ExitStack):
    """Wall time of named phases of an iteration, by wrapping the functions that run them
    (a context manager: the wrapped functions are restored on exit)."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed

    def patch(self, obj, attribute: str, name: str) -> None:
        wrapped = self.wrap(name, getattr(obj, attribute))
        self.enter_context(mock.patch.object(obj, attribute, wrapped))


class Iterations:
    """Times ``step(i)`` calls: the first is a warm-up; the rest give the median seconds and the
    mean seconds of each phase per timed call (``update``: the rest)."""

    def __init__(self, step, phases: Phases, clock=time.perf_counter):
        self.step, self.phases, self.clock = step, phases, clock
        self.times: list[float] = []
        self.calls = 0

    def __call__(self) -> None:
        start = self.clock()
        self.step(self.calls)
        if self.calls == 0:
            self.phases.seconds.clear()
        else:
            self.times.append(self.clock() - start)
        self.calls += 1

    def result(self) -> tuple[float, dict[str, float]]:
        n = len(self.times)
        per = {k: v / n for k, v in self.phases.seconds.items()}
        per["update"] = statistics.mean(self.times) - sum(per.values())
        return statistics.median(self.times), per


def median_iteration(step, repeats: int, phases: Phases) -> tuple[float, dict[str, float]]:
    """Median seconds of ``step(i)`` over ``repeats`` calls after a warm-up, and the mean
    seconds of each phase per timed call (``update``: the rest)."""
    iterations = Iterations(step, phases)
    for _ in range(repeats + 1):
        iterations()
    return iterations.result()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- ours ---------------------------------------------------------------------------------------


def env_kwargs(prompts: Path, args) -> dict:
    return {"task": "jsonl", "task_kwargs": {"path": str(prompts),
            "max_new_tokens": args.max_new_tokens, "max_prompt_tokens": 64},
            "reward_model": reward, "gold_reward_model": None}  # fmt: skip


def device_options(config_cls, device: str) -> dict:
    fields = getattr(config_cls, "__dataclass_fields__", {})
    return {"device": device} if "device" in fields else {}


def patch_phases(phases: Phases, module, agent, train_forward: str) -> None:
    """Time the phases of ``agent``'s iteration (``module``: its algorithm file)."""
    import agents.sampling.online as online

    phases.patch(module, "sample", "rollout")
    phases.patch(module, "score_rollout", "policy+ref fwd (no single pass)")
    phases.patch(online, "reference_logits", "reference fwd")
    phases.patch(online, "distribution_scores", "scores")
    phases.patch(agent, "train_forward", train_forward)
    phases.patch(agent, "_apply_gradients", "optimiser")


def grpo_agent(model: Path, prompts: Path, args, precision: str, work: Path):
    import agents.grpo as grpo

    n = args.prompts * args.group_size
    config = grpo.GRPOConfig(
        precision=precision, batch_size=args.prompts, group_size=args.group_size,
        minibatch_size=n, total_prompts=args.prompts * (args.repeats + 2), save_every=0,
        log_every=0, optim=OptimConfig(learning_rate=1e-6),
        kl=KLConfig(beta=args.beta, kl_estimator="k3"), **device_options(grpo.GRPOConfig, args.device),
    )  # fmt: skip
    return grpo.GRPO(str(model), None, env_kwargs(prompts, args), config, work / "ours-grpo")


def ours_grpo(model: Path, prompts: Path, args, precision: str, work: Path, with_trl: bool):
    """Our GRPO iterations (median seconds and phases) and, with ``with_trl``, TRL's
    ``GRPOTrainer`` steps interleaved with them: one of ours after each of TRL's, so a machine
    whose speed drifts slows both sides alike. Returns ``((ours, phases), trl, agent)``."""
    import agents.grpo as grpo

    agent = grpo_agent(model, prompts, args, precision, work)
    with Phases() as phases:
        patch_phases(phases, grpo, agent, "policy fwd")
        if not with_trl:
            return median_iteration(agent._train_step, args.repeats, phases), None, agent
        iterations = Iterations(agent._train_step, phases)
        with contextlib.redirect_stdout(io.StringIO()):
            trl = trl_grpo(model, args, precision, work, between_steps=iterations)
        return iterations.result(), trl, agent


def ours_ppo(model: Path, prompts: Path, args, precision: str, work: Path):
    import agents.ppo as ppo

    n = args.prompts * args.group_size
    config = ppo.PPOConfig(
        precision=precision, batch_size=n, minibatch_size=n, epochs=1,
        total_prompts=n * (args.repeats + 2), save_every=0, log_every=0,
        optim=OptimConfig(learning_rate=3e-6), kl=KLConfig(beta=args.beta),
        **device_options(ppo.PPOConfig, args.device),
    )  # fmt: skip
    agent = ppo.PPO(str(model), None, env_kwargs(prompts, args), config, work / "ours-ppo")
    with Phases() as phases:
        patch_phases(phases, ppo, agent, "policy+critic fwd")
        phases.patch(ppo, "completion_values", "critic fwd")
        return median_iteration(agent._train_step, args.repeats, phases), agent


# -- TRL ----------------------------------------------------------------------------------------


def trl_grpo(model: Path, args, precision: str, work: Path, between_steps=None) -> float:
    """Median seconds of a TRL ``GRPOTrainer`` step (after one warm-up step); ``between_steps``
    (no arguments) runs after each step, outside its timing."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - self.start)
            if between_steps is not None:
                between_steps()

    n = args.prompts * args.group_size
    config = GRPOConfig(
        output_dir=str(work / "trl-grpo"), per_device_train_batch_size=n,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens,
        beta=args.beta, learning_rate=1e-6, temperature=1.0, max_steps=args.repeats + 1,
        bf16=precision == "bf16", use_cpu=not args.device.startswith("cuda"), report_to="none",
        logging_steps=10**6, save_strategy="no", disable_tqdm=True, seed=0,
    )  # fmt: skip
    rows = [{"prompt": m} for m in prompt_messages(n * (args.repeats + 1))]
    trainer = GRPOTrainer(
        model=str(model), reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model), callbacks=[StepTimer()],
    )  # fmt: skip
    trainer.train()
    return statistics.median(times[1:])


# -- primitives ---------------------------------------------------------------------------------


def primitives(agent, precision: str, repeats: int, critic=None) -> dict[str, float]:
    """HF ``generate`` of the agent's batch (full length), one no-grad reference forward and one
    forward + backward of the policy (and ``critic``) over the generated sequences."""
    from agents.models.critic import completion_values
    from agents.models.policy import completion_logits
    from agents.sampling.online import iteration_prompts
    from agents.sampling.rollout import reset_prompts

    policy, device = agent.policy, next(agent.policy.parameters()).device
    prompts = iteration_prompts(agent, 0)
    prompts = [p for p in prompts for _ in range(getattr(agent.config, "group_size", 1))]
    ids, mask, _ = reset_prompts(agent.env, prompts, 0, device)
    T = agent.env.setup.max_new_tokens
    eos = agent.env.setup.tokenizer.pad_token_id

    def generate():
        with torch.no_grad(), autocast(precision):
            out = policy.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=T, min_new_tokens=T,
                do_sample=True, pad_token_id=eos,
            )  # fmt: skip
        sync(str(device))
        return out

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    full = generate()
    full_mask = torch.cat([mask, torch.ones_like(full[:, ids.shape[1] :])], dim=1)
    width = ids.shape[1]

    def reference():
        with torch.no_grad(), autocast(precision):
            completion_logits(agent.ref, full, full_mask, width, agent.vocab_size)
        sync(str(device))

    def forward_backward():
        with autocast(precision):
            logits = completion_logits(policy, full, full_mask, width, agent.vocab_size)
            loss = logits.float().log_softmax(-1).mean()
            if critic is not None:
                loss = loss + completion_values(critic, full, full_mask, width).float().mean()
        loss.backward()
        policy.zero_grad(set_to_none=True)
        if critic is not None:
            critic.zero_grad(set_to_none=True)
        sync(str(device))

    return {"generate": timed(generate), "reference fwd": timed(reference),
            "fwd+bwd": timed(forward_backward)}  # fmt: skip


# -- DPO ----------------------------------------------------------------------------------------


def dpo_pairs(work: Path, model: Path, args) -> Path:
    """``--pairs`` standard-format pairs on the chat-rendered prompts (both sides read them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    path = work / "pairs.jsonl"
    rows = []
    for i, messages in enumerate(prompt_messages(args.pairs)):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rows.append({"prompt": prompt, "chosen": f"A fine answer number {i}.<|im_end|>",
                     "rejected": f"No idea {i}, sorry.<|im_end|>"})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def dpo_epochs(model: Path, pairs: Path, args, precision: str, work: Path) -> tuple[float, float]:
    """Median seconds over ``--repeats`` of one DPO epoch, ours and TRL's, alternating (each
    from the saved model to a run on disk: ``scripts.bench_dpo``)."""
    from scripts.bench_dpo import run_ours, run_trl

    options = argparse.Namespace(
        seed=0, batch_size=args.dpo_batch, beta=0.1, max_length=128, learning_rate=1e-6
    )
    ours, trl = [], []
    with contextlib.redirect_stdout(io.StringIO()):
        for i in range(args.repeats):
            ours.append(run_ours(options, model, pairs, work / f"ours-dpo{i}")[0])
            if not args.no_trl:
                trl.append(run_trl(options, model, pairs, work / f"trl-dpo{i}")[0])
    return statistics.median(ours), statistics.median(trl) if trl else float("nan")


# -- report -------------------------------------------------------------------------------------


def phase_line(name: str, total: float, phases: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.2f}s" for k, v in phases.items() if v > 0.0005)
    return f"  {name:<5} {total:6.2f}s = {parts}"


def ratio_line(name: str, ours: float, ref: float, target: float, extra: str) -> str:
    mark = "ok" if ours / ref <= target else "ABOVE TARGET"
    return (f"{name} ratio={ours / ref:.3f} ours={ours:.2f}s reference={ref:.2f}s "
            f"(target <= {target}: {mark}) {extra}")  # fmt: skip


def run_precision(precision: str, model: Path, prompts: Path, pairs: Path, args, work: Path):
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    shape = f"P={args.prompts} G={args.group_size} T={args.max_new_tokens} precision={precision}"
    lines = []
    print(f"== precision {precision}: per-phase seconds of one of our iterations (mean)")
    if "grpo" in methods:
        (ours, phases), trl, agent = ours_grpo(model, prompts, args, precision, work,
                                               with_trl=not args.no_trl)  # fmt: skip
        print(phase_line("grpo", ours, phases))
        prims = primitives(agent, agent.precision, args.repeats)
        print(phase_line("prims", sum(prims.values()), prims))
        lines.append(ratio_line("grpo_iter_vs_primitives", ours, sum(prims.values()),
                                TARGETS["vs_primitives"], shape))  # fmt: skip
        if trl is not None:
            lines.append(ratio_line("grpo_iter_vs_trl", ours, trl, TARGETS["grpo_vs_trl"],
                                    shape + " (TRL GRPOTrainer step, interleaved)"))  # fmt: skip
        del agent
    if "ppo" in methods:
        (ours, phases), agent = ours_ppo(model, prompts, args, precision, work)
        print(phase_line("ppo", ours, phases))
        prims = primitives(agent, agent.precision, args.repeats, critic=agent.critic)
        print(phase_line("prims", sum(prims.values()), prims))
        lines.append(ratio_line("ppo_iter_vs_primitives", ours, sum(prims.values()),
                                TARGETS["vs_primitives"],
                                shape + " (TRL 1.x has no PPO trainer to compare with)"))  # fmt: skip
        del agent
    if "dpo" in methods:
        ours, trl = dpo_epochs(model, pairs, args, precision, work)
        print(f"  dpo   {ours:6.2f}s one epoch ({args.pairs} pairs, batch {args.dpo_batch})")
        if not args.no_trl:
            lines.append(ratio_line("dpo_epoch_vs_trl", ours, trl, TARGETS["dpo_vs_trl"],
                                    f"pairs={args.pairs} batch={args.dpo_batch} fp32"))  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args_with_smoke(build_parser(), argv, SMOKE)
    set_num_threads(args.threads)
    if not args.no_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not installed (pip install 'tokenmdp[bench]'): timing ours only")
            args.no_trl = True
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = device
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with contextlib.redirect_stderr(io.StringIO()):
            model = build_model(work, args)
        prompts = write_prompts(work, model, 64)
        pairs = dpo_pairs(work, model, args)
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(model).model_type
        precisions = []
        for p in args.precisions.split(","):
            p = p.strip()
            if p == "auto":
                try:
                    p = resolve_precision("auto", device, model_type=model_type)
                except TypeError:  # a resolve_precision that does not know the model yet
                    p = resolve_precision("auto", device)
            if p and p not in precisions:
                precisions.append(p)
        print(f"model: Llama {args.shape} shape, vocabulary {args.vocab}, device {device}, "
              f"threads {torch.get_num_threads()}, precisions {precisions}")  # fmt: skip
        lines = []
        for precision in precisions:
            lines += run_precision(precision, model, prompts, pairs, args, work)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
