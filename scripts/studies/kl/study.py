"""The KL-estimator study: the enumerable toy MDP, (a) the estimators' exact values and
gradients, (b) where GRPO converges with each estimator in the reward or the loss
(``scripts/kl_study.py`` describes both)."""

from __future__ import annotations

import copy
import itertools
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import OptimConfig
from agents.harness.distributed import set_num_threads
from agents.maths.kl import KL_ESTIMATORS, KLConfig
from agents.models.policy import SamplingConfig
from llm_env.models import tiny_gpt2
from llm_env.tasks import Task
from llm_env.tasks.toy import PROMPT, completions, toy_env_kwargs, toy_task
from llm_env.vector import TokenMDPVectorEnv
from scripts.studies.kl import gradients as kg
from scripts.studies.kl.report import markdown, plot

PLACEMENTS = ("reward", "loss")
COMBOS = [(k, placement) for k in KL_ESTIMATORS for placement in PLACEMENTS]


@dataclass
class KLStudyConfig:
    """The study's sizes (``tokenmdp kl-study --help``)."""

    out: str = "runs/kl_study"
    seeds: tuple[int, ...] = (0, 1, 2)
    iterations: int = 400
    batch_size: int = 8
    group_size: int = 8
    learning_rate: float = 1e-2
    beta: float = 0.5
    samples: int = 16384
    ascent_steps: int = 16
    ascent_lr: float = 2e-3
    path_points: int = 8
    flow_steps: int = 2000
    curve_every: int = 10
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "samples", "ascent_steps", "path_points",
                     "flow_steps", "curve_every"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.group_size < 2:
            raise ValueError(f"--group-size must be >= 2 (a group baseline), got {self.group_size}")
        if self.samples < 2:
            raise ValueError(f"--samples must be >= 2, got {self.samples}")
        for name in ("beta", "learning_rate", "ascent_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        if self.threads < 0:
            raise ValueError(f"--threads must be >= 0, got {self.threads}")


# -- the toy MDP ----------------------------------------------------------------------------------


@dataclass
class Toy:
    """Every completion of the toy prompt and where each of its tokens is chosen: state 0 is the
    prompt, state 1 + a the prompt followed by token a. ``states``/``tokens``/``mask`` (S, T)."""

    task: Task
    tokenizer: object
    prompt_ids: list[int]
    seqs: list[tuple[int, ...]]
    states: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    rewards: torch.Tensor

    @property
    def env_kwargs(self) -> dict:
        return toy_env_kwargs(self.task)

    def probs(self, state_log_probs: torch.Tensor) -> torch.Tensor:
        """π(y) of every completion, (S,)."""
        logprobs = kg.tree_logprobs(state_log_probs, self.states, self.tokens)
        return kg.sequence_logprob(logprobs.double(), self.mask).exp()


def build_toy(max_new_tokens: int) -> Toy:
    """The toy with completions of up to ``max_new_tokens`` (1 or 2) tokens; the rewards are
    the env's own (each completion stepped through ``TokenMDPVectorEnv``)."""
    task = toy_task(max_new_tokens)
    tokenizer = task.tokenizer()
    seqs = completions(len(tokenizer), tokenizer.eos_token_id, max_new_tokens)
    toy = Toy(
        task, tokenizer, tokenizer(PROMPT, add_special_tokens=False)["input_ids"], seqs,
        states=torch.tensor([[0] + [1 + s[0]] * (max_new_tokens - 1) for s in seqs]),
        tokens=torch.tensor([list(s) + [0] * (max_new_tokens - len(s)) for s in seqs]),
        mask=torch.tensor([[1.0] * len(s) + [0.0] * (max_new_tokens - len(s)) for s in seqs]),
        rewards=torch.zeros(len(seqs)),
    )  # fmt: skip
    toy.rewards = env_rewards(toy)
    return toy


def env_rewards(toy: Toy) -> torch.Tensor:
    env = TokenMDPVectorEnv(num_envs=len(toy.seqs), autoreset_mode="disabled", **toy.env_kwargs)
    env.reset(options={"prompts": [PROMPT] * len(toy.seqs)})
    rewards = np.zeros(len(toy.seqs))
    for t in range(toy.tokens.shape[1]):
        active = env.active.copy()
        _, r, *_ = env.step(toy.tokens[:, t].numpy())
        rewards[active] += r[active]
    return torch.tensor(rewards, dtype=torch.float64)


def state_table(model: torch.nn.Module, toy: Toy) -> torch.Tensor:
    """log π(·|state) for the prompt and every one-token continuation, (1 + V, V), fp32, with
    gradients: one forward pass over prompt + a for every token a."""
    vocab = len(toy.tokenizer)
    ids = torch.tensor([toy.prompt_ids + [a] for a in range(vocab)])
    logits = model(ids, attention_mask=torch.ones_like(ids)).logits.float()
    return torch.cat([logits[:1, -2], logits[:, -1]]).log_softmax(-1)


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p.double() - q.double()).abs().sum().item()


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p.double(), q.double()
    return (p * (p.clamp(min=1e-300).log() - q.log())).sum().item()


def fresh_policy(toy: Toy, seed: int) -> torch.nn.Module:
    return tiny_gpt2(toy.tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=16, seed=seed)


# -- (a) the estimators' values and gradients at a policy away from π_ref ------------------------


def reward_ascent(policy: torch.nn.Module, toy: Toy, steps: int, lr: float, every: int):
    """Adam steps on the exact expected reward from ``policy``: yields (step, model) every
    ``every`` steps and at the end — policies increasingly far from π_ref, in the direction
    GRPO moves."""
    model = copy.deepcopy(policy)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(1, steps + 1):
        loss = -(toy.probs(state_table(model, toy)) @ toy.rewards)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            yield step, model


def table_jacobian(table: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """∂ log π(a|state) / ∂θ for every entry of ``table`` (N, V) → (N, V, P), fp64 (one
    batched backward pass)."""
    entries = table.flatten()
    grads = torch.autograd.grad(
        entries, params, grad_outputs=torch.eye(len(entries)), retain_graph=True,
        is_grads_batched=True, allow_unused=True, materialize_grads=True,
    )  # fmt: skip
    jacobian = torch.cat([g.reshape(len(entries), -1) for g in grads], dim=1)
    return jacobian.double().reshape(*table.shape, -1)


def gradient_study(
    model: torch.nn.Module, ref_table: torch.Tensor, toy: Toy, samples: int, seed: int
) -> dict:
    """Exact value and gradient moments of every estimator × placement at ``model``; the
    sampled bias from ``samples`` draws. Keys: ``kl`` and one dict per "k/placement"."""
    params = [p for p in model.parameters() if p.requires_grad]
    table = state_table(model, toy)
    logprobs = kg.tree_logprobs(table, toy.states, toy.tokens).double()
    ref_logprobs = kg.tree_logprobs(ref_table.double(), toy.states, toy.tokens)
    mask = toy.mask.double()
    exact = kg.exact_sequence_kl(logprobs, ref_logprobs, mask)
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(exact, params, retain_graph=True)])
    jacobian = table_jacobian(table, params)[toy.states, toy.tokens]  # (S, T, P)
    logprobs, probs = logprobs.detach(), toy.probs(table).detach().double()
    generator = torch.Generator().manual_seed(seed)
    out = {"kl": exact.item()}
    for k, placement in COMBOS:
        values = kg.estimator_values(logprobs, ref_logprobs, mask, k)
        value = kg.moments(values, probs, exact.detach())
        weights = kg.PLACEMENTS[placement](logprobs, ref_logprobs, mask, k)
        grads = kg.per_sample_gradients(jacobian, weights, mask)
        moments = kg.moments(grads, probs, grad.double())
        sampled = kg.sampled_bias(grads, probs, grad.double(), samples, generator)
        out[f"{k}/{placement}"] = {
            "value_bias": value["signed_bias"], "value_variance": value["variance"],
            "grad_bias": moments["bias"], "grad_variance": moments["variance"],
            "grad_scale": moments["scale"], "sampled_bias": sampled["bias"],
            "sampled_floor": sampled["floor"], "sampled_projection": sampled["projection"],
            "sampled_projection_se": sampled["projection_se"],
        }  # fmt: skip
    return out


def part_a(config: KLStudyConfig, seed: int) -> dict:
    """The gradient study at ``config.path_points`` points along a reward ascent on the 2-token toy
    (``2_token``; the last point is the table's) and at the end of the same ascent on the
    1-token toy (``1_token``)."""
    results = {}
    for tokens in (2, 1):
        toy = build_toy(tokens)
        policy = fresh_policy(toy, seed)
        with torch.no_grad():
            ref_table = state_table(policy, toy)
        every = (
            max(1, config.ascent_steps // config.path_points)
            if tokens == 2
            else config.ascent_steps
        )
        path = [
            {"step": step, **gradient_study(model, ref_table, toy, config.samples, seed)}
            for step, model in reward_ascent(
                policy, toy, config.ascent_steps, config.ascent_lr, every
            )
        ]
        results[f"{tokens}_token"] = path
    return results


# -- (b) where GRPO converges ---------------------------------------------------------------------


def grpo_config(k: str, placement: str, seed: int, config: KLStudyConfig) -> GRPOConfig:
    """Dr. GRPO as in tests/test_grpo.py's toy test: one on-policy minibatch per iteration."""
    return GRPOConfig(
        seed=seed, batch_size=config.batch_size, group_size=config.group_size,
        minibatch_size=config.batch_size * config.group_size,
        total_prompts=config.batch_size * config.iterations, precision="fp32", save_every=0,
        log_every=0, scale_rewards="none", loss_type="dr_grpo", kl_placement=placement,
        optim=OptimConfig(learning_rate=config.learning_rate, lr_schedule="linear",
                          fused_adamw=False),  # a tiny model: the presets' settings
        sampling=SamplingConfig(share_prompts=False),
        kl=KLConfig(beta=config.beta, kl_estimator=k),
    )  # fmt: skip


def train_grpo(
    toy: Toy,
    k: str,
    placement: str,
    seed: int,
    config: KLStudyConfig,
    run_dir: Path,
    target: torch.Tensor,
):
    """GRPO from a fresh policy (seed ``seed``); returns the final state table and the TV to
    ``target`` (π*, (S,)) every ``config.curve_every`` iterations."""
    agent = GRPO(fresh_policy(toy, seed), toy.tokenizer, toy.env_kwargs,
                 grpo_config(k, placement, seed, config), run_dir=run_dir)  # fmt: skip
    curve = []

    def record(locals_, globals_) -> bool:
        if agent.step % config.curve_every == 0:
            with torch.no_grad():
                curve.append((agent.step, tv(toy.probs(state_table(agent.policy, toy)), target)))
        return True

    agent.learn(callback=record)
    with torch.no_grad():
        return state_table(agent.policy, toy), curve


def optimum(toy: Toy, ref_table: torch.Tensor, beta: float) -> torch.Tensor:
    """π*(y) ∝ π_ref(y)·exp(r(y)/β), (S,)."""
    return torch.softmax(toy.probs(ref_table).double().log() + toy.rewards / beta, -1)


def closed_forms(toy: Toy, ref_table: torch.Tensor, beta: float, factor: float) -> dict:
    """Where theory puts the fixed point of four of the six variants (completion probs, (S,)).

    k1 in the reward: π*. k1 in the loss: no KL at all, the reward maximiser. k2 / k3 in the
    loss: each state regularised on its own by the reverse / forward KL, at β/factor (the group
    mean baseline shrinks the return by factor = 1 − 1/G but not a loss-placed term)."""
    best = torch.zeros(len(toy.seqs), dtype=torch.float64)
    best[toy.rewards.argmax()] = 1.0
    args = (toy.states, toy.tokens, toy.mask, toy.rewards, beta / factor)
    return {
        "k1/reward": optimum(toy, ref_table, beta),
        "k1/loss": best,
        "k2/loss": toy.probs(kg.per_state_optimum(ref_table, *args, "reverse")),
        "k3/loss": toy.probs(kg.per_state_optimum(ref_table, *args, "forward")),
    }


def part_b(config: KLStudyConfig, seeds: list[int], out: Path) -> dict:
    """Per variant and seed: GRPO's final policy against π*, the fixed point of its expected
    update and the closed forms; the TV-to-π* curves."""
    toy = build_toy(2)
    factor = 1 - 1 / config.group_size
    results = {f"{k}/{p}": [] for k, p in COMBOS}
    with tempfile.TemporaryDirectory(dir=out) as runs:
        for seed, (k, placement) in itertools.product(seeds, COMBOS):
            start = time.perf_counter()
            with torch.no_grad():
                ref_table = state_table(fresh_policy(toy, seed), toy).double()
            ref, target = toy.probs(ref_table), optimum(toy, ref_table, config.beta)
            flow, moved = kg.expected_update_fixed_point(
                ref_table, toy.states, toy.tokens, toy.mask, toy.rewards, k, placement,
                config.beta, factor, steps=config.flow_steps,
            )  # fmt: skip
            fixed = toy.probs(flow)
            run_dir = Path(runs) / f"{k}-{placement}-{seed}"
            final_table, curve = train_grpo(toy, k, placement, seed, config, run_dir, target)
            final = toy.probs(final_table)
            closed = closed_forms(toy, ref_table, config.beta, factor).get(f"{k}/{placement}")
            results[f"{k}/{placement}"].append({
                "seed": seed, "tv_optimum": tv(final, target), "tv_fixed": tv(final, fixed),
                "fixed_tv_optimum": tv(fixed, target), "fixed_moved": moved,
                "fixed_closed_form_tv": None if closed is None else tv(fixed, closed),
                "kl": kl(final, ref), "fixed_kl": kl(fixed, ref), "optimum_kl": kl(target, ref),
                "reward": (final @ toy.rewards).item(), "fixed_reward": (fixed @ toy.rewards).item(),
                "support": int((final > 0.01).sum()), "fixed_support": int((fixed > 0.01).sum()),
                "optimum_support": int((target > 0.01).sum()), "curve": curve,
            })  # fmt: skip
            print(f"  GRPO {k} in the {placement}, seed {seed}: TV to π* "
                  f"{results[f'{k}/{placement}'][-1]['tv_optimum']:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return results


# -- the study --------------------------------------------------------------------------------------


def run(config: KLStudyConfig, argv: list[str]) -> str:
    """Parts (a) and (b); writes ``kl_study.md``, ``kl_study.json`` and ``kl_study.png`` to
    ``config.out`` and returns the markdown (``argv``: the command line, for the report)."""
    set_num_threads(config.threads or None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print("(a) estimator values and gradients, exact, along a reward-ascent path", flush=True)
    seeds = list(config.seeds)
    results = {"argv": list(argv), "seeds": seeds, "completions": len(build_toy(2).seqs)}
    results["a"] = part_a(config, seeds[0])
    print(f"(b) GRPO, {len(COMBOS)} variants × {len(seeds)} seeds", flush=True)
    results["b"] = part_b(config, seeds, out)
    seconds = time.perf_counter() - start
    text = markdown(results, config, seconds)
    (out / "kl_study.md").write_text(text)
    (out / "kl_study.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "kl_study.png")
    print(text)
    print(f"written: {out / 'kl_study.md'}, {out / 'kl_study.png'} ({seconds:.0f} s)")
    return text
