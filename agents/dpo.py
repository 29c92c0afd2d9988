"""Direct preference optimisation (Rafailov et al., 2023) and its IPO / conservative variants.

Offline: reads ``{"prompt","chosen","rejected"}`` pairs, TRL's standard (strings) or
conversational (message lists, rendered with the tokenizer's chat template) rows; the sequence
log-probs sum the completion's tokens and the EOS or end-of-turn token that ends them, each
log-softmax over the tokenizer's vocabulary only. The reference log-probs are computed
once up front — the reference model is then dropped from memory (it stays on disk, loaded only
for the KL of the evaluation points). Each step runs chosen and rejected through the policy in
ONE concatenated, dynamically padded forward pass. At evaluation points the policy samples
through the env, so DPO lands on the same reward/gold–kl/ref axes as PPO and REINFORCE.
With ``lora.r > 0`` only LoRA adapters train and the reference is the policy with its adapters
disabled (``agents.models.lora``): nothing is loaded from disk for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.checks import check_bool, check_choice, check_positive, check_range, group
from agents.data.offline import (
    Text,
    check_offline_options,
    encode_examples,
    load_offline_policy,
    load_preference_pairs,
    offline_schedule,
    offline_step,
    pair_logprobs,
)
from agents.evaluation import evaluate
from agents.harness.checkpoint import atomic_directory, checkpoint_status
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.distributed import Distributed, TrainForward
from agents.harness.run import Agent, make_optimizer
from agents.models.lora import (
    BaseWeightsReference,
    LoraOptions,
    is_lora,
    save_policy,
    trainable_parameters,
    with_lora,
)
from agents.models.memory import enable_gradient_checkpointing
from agents.models.policy import SamplingConfig, check_same_tokenizer, stop_ids
from agents.models.precision import resolve_precision
from llm_env.vector import TokenMDPVectorEnv

REFERENCE_DIR = "reference"


def _dpo_optim() -> OptimConfig:
    return OptimConfig(learning_rate=1e-6, warmup_steps=10, lr_schedule="linear")


def sigmoid_loss(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """DPO, eq. 7: −log σ(β·h)."""
    return -F.logsigmoid(beta * logits)


def conservative_loss(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """cDPO: labels flipped with probability ε, −(1−ε)·log σ(β·h) − ε·log σ(−β·h)."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(
        -beta * logits
    )


def ipo_loss(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO (Azar et al., 2023, eq. 17): (h − 1/(2β))², on sequence log-ratios."""
    return (logits - 1 / (2 * beta)) ** 2


DPO_LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": sigmoid_loss,
    "ipo": ipo_loss,
    "conservative": conservative_loss,
}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean preference loss over pairs and its statistics.

    All inputs: (pairs,) fp32 sequence log-probs log π(y|x) = Σ_t log π(y_t | x, y_<t).
    h = (log π_θ(y_w) − log π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l)); the loss is
    ``DPO_LOSSES[loss_type](h, β, ε)``. Logged: the log-ratios, the implicit rewards
    β·log(π_θ/π_ref) of chosen and rejected, their margin and how often chosen wins.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = chosen_logratios - rejected_logratios
    loss = DPO_LOSSES[loss_type](logits, beta, label_smoothing).mean()
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return loss, {
        "loss/policy": loss.item(),
        "dpo/reward_accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
        "dpo/margin": (chosen_rewards - rejected_rewards).mean().item(),
        "dpo/chosen_reward": chosen_rewards.mean().item(),
        "dpo/rejected_reward": rejected_rewards.mean().item(),
        "dpo/chosen_logratio": chosen_logratios.detach().mean().item(),
        "dpo/rejected_logratio": rejected_logratios.detach().mean().item(),
    }


@dataclass
class DPOConfig(AgentConfig):
    """DPO options.

    Defaults suit a pretrained checkpoint: learning rate 1e-6 (TRL ``DPOConfig``), 10 warm-up
    steps then linear decay (TRL: linear, no warm-up; the warm-up is kept). A tiny GPT-2 trained
    from scratch takes ``agents.presets.TINY_MODEL_OPTIONS["dpo"]`` (3e-4)."""

    log_every: int = 4
    """Write a log point every this many steps (0 = only at evaluations and the end)."""
    save_every: int = 50
    """Write an atomic checkpoint every this many steps (0 = only at the end)."""
    batch_size: int = 32
    """Preference pairs per optimiser step (in total over all processes)."""
    epochs: float = 2.0
    """Passes over the pairs (fractions allowed)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = run all epochs)."""
    max_length: int = 64
    """Longest prompt + completion in tokens; longer rows lose the end of the completion."""
    beta: float = 0.1
    """β: strength of the implicit KL penalty; implicit reward = β·log(π/π_ref)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) | ipo | conservative (cDPO, label-smoothed)."""
    label_smoothing: float = 0.1
    """ε of the conservative loss: the assumed probability that a label is flipped."""
    share_prompts: bool = True
    """Run each pair's prompt once: its chosen and rejected completions packed after it in one
    row under a 4-D mask (``shared_prompt_pair_logprobs``; the same log-probs to rounding);
    False: the two rows right-padded separately (the tiny models' preset, bit for bit)."""
    eval_every: int = 16
    """Sample through the env for reward/gold and kl/ref every this many steps (and at the end)."""
    eval_prompts: int = 64
    """Held-out prompts sampled at each evaluation (0 = no evaluation)."""
    eval_num_envs: int = 32
    """Sequences per lockstep rollout during evaluation."""
    eval_temperature: float = 1.0
    """Sampling temperature of the evaluation rollouts."""
    optim: OptimConfig = group(_dpo_optim)
    lora: LoraOptions = group(LoraOptions, prefix="lora_")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_offline_options(self)
        check_choice("loss_type", self.loss_type, DPO_LOSSES)
        check_positive("beta", self.beta, float)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5, "[)")
        check_bool("share_prompts", self.share_prompts)
        check_positive("eval_prompts", self.eval_prompts, allow_zero=True)
        check_positive("eval_num_envs", self.eval_num_envs)
        check_positive("eval_temperature", self.eval_temperature, float)


class DPO(Agent):
    """DPO on ``data`` (JSONL path or list of ``(prompt, chosen, rejected)``, strings or message
    lists) from ``policy`` (directory or model); the reference is ``ref_policy`` or the policy's
    initial weights. ``chat_template_kwargs`` go to every chat-template rendering."""

    agent_name = "dpo"

    def __init__(
        self,
        policy: str | Path | PreTrainedModel,
        tokenizer: str | Path | PreTrainedTokenizerBase | None,
        data: str | Path | list[tuple[Text, Text, Text]] | None,
        config: DPOConfig | None = None,
        run_dir: str | Path = "runs/dpo",
        eval_env_kwargs: dict | None = None,
        ref_policy: str | Path | PreTrainedModel | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.config = config = config or DPOConfig()
        self.dist = Distributed(config.device)
        self.run_dir = Path(run_dir)
        self.policy, self.tokenizer = load_offline_policy(policy, tokenizer)
        self.precision = resolve_precision(config.precision, self.dist.device, self.policy)
        self.vocab_size = len(self.tokenizer)
        stops = stop_ids(self.tokenizer, getattr(self.policy, "generation_config", None))
        self.policy = with_lora(self.policy, config.lora)
        self.dist.place(self.policy)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy)
        self.chosen, self.rejected, self.skipped_identical = [], [], 0
        if data is not None:
            triples, _, self.skipped_identical = load_preference_pairs(data, "DPO pairs")
            prompts, chosen, rejected = (list(x) for x in zip(*triples))
            options = (config.max_length, stops, chat_template_kwargs)
            self.chosen = encode_examples(self.tokenizer, prompts, chosen, *options)
            self.rejected = encode_examples(self.tokenizer, prompts, rejected, *options)
        self.ref_dir = self._reference_dir(policy, ref_policy)
        self.eval_env_kwargs = eval_env_kwargs
        self.ref_chosen_logps = self.ref_rejected_logps = None
        self.train_logprobs = self.dist.prepare(pair_logprobs, policy=self.policy)
        self.schedule = (
            offline_schedule(len(self.chosen), config, self.dist.world_size) if self.chosen else []
        )
        params = trainable_parameters(self.policy)
        self.optimizers = {"policy": make_optimizer(params, config.optim, len(self.schedule))}

    def _reference_dir(self, policy, ref_policy) -> Path | None:
        """Where π_ref is loaded from: ``ref_policy``, the initial policy's directory, or a
        copy written to ``run_dir/reference`` (replacing any earlier run's); None for a LoRA
        policy's base weights (the policy with its adapters disabled)."""
        if ref_policy is not None:  # a model object must at least cover the policy's vocabulary
            own = self.tokenizer if isinstance(ref_policy, PreTrainedModel) else None
            _, ref_tokenizer = load_offline_policy(ref_policy, own)
            check_same_tokenizer(self.tokenizer, ref_tokenizer, "the policy and the reference")
        if ref_policy is None and is_lora(self.policy):
            return None
        if isinstance(ref_policy, (str, Path)):
            return Path(ref_policy)
        if ref_policy is None and isinstance(policy, (str, Path)):
            return Path(policy)
        ref_dir = self.run_dir / REFERENCE_DIR
        ref = ref_policy if ref_policy is not None else self.policy
        # a resumed run keeps the reference its start wrote (checked once the checkpoint's
        # provenance is: ``restore_checkpoint``); resume=True without a checkpoint starts afresh
        if not self.config.resume or checkpoint_status(self.checkpoint_dir) == "missing":

            def write() -> None:
                with atomic_directory(ref_dir) as tmp:
                    save_policy(ref, tmp, self.tokenizer)

            self.dist.on_main(write)
        return ref_dir

    def restore_checkpoint(self) -> None:
        super().restore_checkpoint()  # refuses another agent's or config's checkpoint first
        if self.ref_dir is not None and not (self.ref_dir / "config.json").is_file():
            raise FileNotFoundError(f"--resume: the run's reference {self.ref_dir} is missing")

    def pair_logps(
        self, forward: torch.nn.Module, indices: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Sequence log-probs of chosen and rejected, (pairs,) each, from ONE forward pass of
        ``forward`` (``pair_logprobs`` of the policy or the reference), and the pairs' tokens."""
        chosen = [self.chosen[i] for i in indices]
        rejected = [self.rejected[i] for i in indices]
        logps = forward(chosen, rejected, self.tokenizer.pad_token_id, self.dist.device,
                        self.precision, self.vocab_size, self.config.share_prompts)  # fmt: skip
        tokens = sum(len(ids) for ids, _ in chosen + rejected)
        return logps[: len(indices)], logps[len(indices) :], tokens

    @torch.no_grad()
    def reference_logps(self, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """log π_ref of every chosen and rejected completion, computed once, (pairs,) each.

        Pairs are visited in length order, so these no-grad batches carry little padding. With
        several processes each computes every N-th batch and the results are summed.
        """
        ref = TrainForward(pair_logprobs, {"reference": self.reference_model()})
        lengths = [max(len(c[0]), len(r[0])) for c, r in zip(self.chosen, self.rejected)]
        order = np.argsort(lengths, kind="stable")
        chosen = torch.zeros(len(order))
        rejected = torch.zeros(len(order))
        starts = self.dist.shard(range(0, len(order), batch_size))
        for start in tqdm(starts, desc="reference log-probs", disable=not self.dist.is_main):
            idx = order[start : start + batch_size]
            chosen_logps, rejected_logps, _ = self.pair_logps(ref, idx)
            chosen[idx], rejected[idx] = chosen_logps.cpu(), rejected_logps.cpu()
        return self.dist.all_sum(chosen), self.dist.all_sum(rejected)

    def reference_model(self) -> torch.nn.Module:
        """The reference, loaded from disk in eval mode (it is not kept between uses), or a LoRA
        policy's base weights (``BaseWeightsReference``, no copy)."""
        if self.ref_dir is None:
            return BaseWeightsReference(self.policy)
        return load_offline_policy(self.ref_dir, self.tokenizer)[0].eval().to(self.dist.device)

    def loss(self, indices: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        chosen, rejected, tokens = self.pair_logps(self.train_logprobs, indices)
        ref_chosen = self.ref_chosen_logps[indices].to(chosen.device)  # kept on the CPU
        ref_rejected = self.ref_rejected_logps[indices].to(chosen.device)
        loss, stats = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected,
            self.config.beta, self.config.loss_type, self.config.label_smoothing,
        )  # fmt: skip
        return loss, {**stats, "kl/beta": self.config.beta, "tokens": tokens}

    def _num_steps(self) -> int:
        if not self.schedule:
            raise ValueError("DPO: no preference pairs (pass data= to train)")
        return len(self.schedule)

    def _step_size(self, step: int) -> int:
        return len(self.schedule[step])

    def _train_step(self, step: int) -> dict[str, float]:
        if self.ref_chosen_logps is None:  # once per run (a resumed run has them back)
            self.ref_chosen_logps, self.ref_rejected_logps = self.reference_logps()
        return offline_step(self, step)

    def _state(self):
        return {"ref_chosen": self.ref_chosen_logps, "ref_rejected": self.ref_rejected_logps}

    def _load_state(self, state):
        self.ref_chosen_logps, self.ref_rejected_logps = state["ref_chosen"], state["ref_rejected"]

    def _eval_due(self, done: int) -> bool:
        return self.config.eval_every > 0 and done % self.config.eval_every == 0

    def _evaluate(self) -> dict[str, float]:
        """reward/gold, reward/train, kl/ref, episode/length on held-out prompts through the env."""
        if self.eval_env_kwargs is None or self.config.eval_prompts <= 0:
            return {}
        kwargs = {"split": "eval", **self.eval_env_kwargs, "tokenizer": self.tokenizer}
        env = TokenMDPVectorEnv(
            num_envs=min(self.config.eval_num_envs, self.config.eval_prompts),
            autoreset_mode="disabled",
            **kwargs,
        )
        pool = env.setup.task.prompts(kwargs["split"])
        prompts = [pool[i % len(pool)] for i in range(self.config.eval_prompts)]
        result = evaluate(
            self.policy, self.reference_model(), env, prompts,
            SamplingConfig(self.config.eval_temperature), seed=self.config.seed,
        )  # fmt: skip
        return result.summary()

    @classmethod
    def load(
        cls,
        path: str | Path,
        data: str | Path | list[tuple[Text, Text, Text]] | None = None,
        config: DPOConfig | None = None,
        run_dir: str | Path = "runs/dpo",
        eval_env_kwargs: dict | None = None,
        ref_policy: str | Path | PreTrainedModel | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> DPO:
        """An agent whose policy and tokenizer come from ``save(path)`` (the reference: the
        saved policy unless ``ref_policy`` is given)."""
        return cls(
            path, None, data, config, run_dir, eval_env_kwargs, ref_policy, chat_template_kwargs
        )
