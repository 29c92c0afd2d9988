"""PPO with a critic: the four-model RLHF setup (Ouyang et al. 2022, stage 3).

Policy π_θ, frozen reference π_ref, reward model (any ``load_reward_model`` spec, scored by the
env) and critic V. Each iteration:
1. roll out ``batch_size`` prompts through ``TokenMDPVectorEnv`` with the KV cache;
2. ONE full-sequence forward each of policy (old log-probs), reference and critic;
3. per-token rewards r_t = −β·(log π_θ − log π_ref)_t + [t = T]·r_RM (+ the process reward the
   env paid on token t, when it has a process reward model), GAE(γ, λ) advantages;
4. ``epochs`` passes of shuffled minibatches: clipped surrogate + clipped value loss
   (− entropy bonus), gradient clipping; then β is updated by the KL controller.

Monte-Carlo values (VinePPO, Kazemnejad et al. 2024), ``mc_values = K > 0``: GAE reads, instead
of the critic's V, the mean return of K rollouts branching from the state where each step starts
(the completion's start, and after every token closing a step by the env's ``step_boundary``;
every state when the env has none), and every state inside a step holds its step's value — a
step is one action, as in VinePPO. GAE's TD errors are then 0 inside a step and, on its closing
token, r + V_MC(next step) − V_MC(step): with λ = 0 only closing tokens get an advantage, with
λ = 1 every token gets the return minus its step's MC value, in between a step's tokens get
mostly their own step's TD error. A branch's return is computed like the rollout's own (KL
penalty, outcome and process rewards of its new tokens, discounted by γ from the branching
state). The critic is still trained on the GAE returns and clips its own value loss;
``value/mc_error`` logs mean |V_critic − V_MC| at the branched states.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from agents.checks import check_positive, check_range, group, local_dir
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.run import Agent, make_optimizer
from agents.maths.advantages import (
    explained_variance,
    gae,
    kl_penalised_rewards,
    masked_mean,
    whiten,
)
from agents.maths.kl import KL_ESTIMATORS, KLConfig
from agents.maths.losses import clipped_value_loss, entropy_from_logits, ppo_clip_loss
from agents.models.critic import ValueModel, completion_values
from agents.models.lora import LoraOptions, trainable_parameters
from agents.models.memory import enable_gradient_checkpointing
from agents.models.policy import SamplingConfig, completion_logits, process_logits
from agents.models.precision import autocast
from agents.sampling.branching import (
    branch_values,
    discounted_returns,
    hold_step_values,
    step_start_states,
)
from agents.sampling.online import (
    PromptBudget,
    RolloutScores,
    init_online_agent,
    iteration_prompts,
    masked_token_logprobs,
    online_steps,
    rollout_metrics,
    sample,
    score_rollout,
    training_forward_scores,
    update_kl_controller,
)
from agents.sampling.rollout import Rollout
from reward_models.base import RewardModelError


@dataclass
class PPOConfig(AgentConfig):
    """PPO options.

    The learning rate (policy and critic) defaults to 3e-6, TRL's last ``PPOConfig``, for a
    pretrained checkpoint; constant (TRL's decayed linearly; the rate matters more). The tiny
    GPT-2s of the built-in tasks take ``agents.presets.TINY_MODEL_OPTIONS["ppo"]`` (3e-4)."""

    precision: str = "auto"
    """Forward-pass precision: auto | bf16 | fp32 (log-probs, KL and losses stay fp32)."""
    log_every: int = 1
    """Write a log point every this many iterations (0 = only at the end)."""
    save_every: int = 10
    """Write an atomic checkpoint every this many iterations (0 = only at the end)."""
    total_prompts: int = 8192
    """Stop after this many prompts (x-axis of every logged scalar)."""
    batch_size: int = 64
    """Prompts per rollout batch / iteration (in total over all processes)."""
    minibatch_size: int = 16
    """Sequences per gradient step."""
    epochs: int = 4
    """Passes over each rollout batch."""
    critic_learning_rate: float | None = None
    """AdamW learning rate of the critic (None = learning_rate)."""
    gamma: float = 1.0
    """Discount per token."""
    lam: float = 0.95
    """GAE λ."""
    clip_eps: float = 0.2
    """PPO ratio clip ε."""
    value_clip: float | None = 0.2
    """Clip of the value update around the old values (None = unclipped)."""
    vf_coef: float = 0.5
    """Weight of the value loss in the total loss."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    whiten_advantages: bool = True
    """Normalise advantages to zero mean, unit std over each rollout batch."""
    bootstrap_truncated: bool = False
    """Bootstrap V(final state) on truncation; off as the env pays the full reward at the limit."""
    critic_init: str = "policy"
    """Critic backbone: "policy" (a copy) or a save_pretrained directory (e.g. the reward model)."""
    no_eos_penalty: float = 0.0
    """Added to the reward of completions cut at the length limit without EOS (use < 0)."""
    mc_values: int = 0
    """VinePPO: K rollouts from each step's start state replace the critic's V there (0 = off)."""
    optim: OptimConfig = group(lambda: OptimConfig(learning_rate=3e-6))
    sampling: SamplingConfig = group(SamplingConfig)
    kl: KLConfig = group(KLConfig)
    lora: LoraOptions = group(LoraOptions, prefix="lora_")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("total_prompts", "batch_size", "minibatch_size", "epochs"):
            check_positive(name, getattr(self, name))
        if self.critic_learning_rate is not None:
            check_positive("critic_learning_rate", self.critic_learning_rate, float)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("lam", self.lam, 0.0, 1.0)
        check_positive("clip_eps", self.clip_eps, float)
        if self.value_clip is not None:
            check_positive("value_clip", self.value_clip, float)
        check_positive("vf_coef", self.vf_coef, float, allow_zero=True)
        check_positive("ent_coef", self.ent_coef, float, allow_zero=True)
        check_positive("mc_values", self.mc_values, allow_zero=True)
        if self.critic_init != "policy":
            local_dir("critic_init", self.critic_init)


def policy_logits_and_values(
    policy: torch.nn.Module,
    critic: ValueModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    precision: str,
    vocab_size: int | None = None,
    share_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward pass: (B, T, vocab) completion logits (``share_prompts``:
    ``completion_logits``'s) and (B, T) values before each completion token (run as one
    module, so DDP synchronises both models' gradients)."""
    with autocast(precision):
        logits = completion_logits(
            policy, input_ids, attention_mask, prompt_width, vocab_size, share_prompts
        )
        values = completion_values(critic, input_ids, attention_mask, prompt_width)[:, :-1]
    return logits, values


class PPO(PromptBudget, Agent):
    """PPO over ``TokenMDPVectorEnv``; see the module docstring."""

    agent_name = "ppo"

    def __init__(
        self,
        policy,
        tokenizer=None,
        env_kwargs: dict | None = None,
        config: PPOConfig | None = None,
        run_dir: str | Path = "runs/ppo",
        reward_model=None,
        critic: ValueModel | str | Path | None = None,
    ):
        super().__init__()
        self.config = config = config or PPOConfig()
        self.run_dir = Path(run_dir)
        self.total_prompts = config.total_prompts
        init_online_agent(self, policy, tokenizer, env_kwargs, reward_model, config.batch_size)
        if isinstance(critic, (str, Path)):
            critic = ValueModel.from_pretrained(local_dir("critic", critic))
        elif critic is None and config.critic_init == "policy":
            critic = ValueModel.from_policy(self.policy)
        elif critic is None:
            critic = ValueModel.from_backbone(config.critic_init)
        self.critic = critic.eval()
        self.dist.place(self.critic)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.critic.backbone)
        self.dist.check_divisible(minibatch_size=config.minibatch_size)
        self.train_forward = self.dist.prepare(
            partial(policy_logits_and_values, share_prompts=self.sampling.share_prompts),
            policy=self.policy,
            critic=self.critic,
        )
        steps = online_steps(config.total_prompts, config.batch_size)
        self.optimizers = {
            "policy": make_optimizer(trainable_parameters(self.policy), config.optim, steps),
            "critic": make_optimizer(
                list(self.critic.parameters()), config.optim, steps, config.critic_learning_rate
            ),
        }

    def _models(self):
        return {"policy": self.policy, "critic": self.critic}

    def _train_step(self, step: int) -> dict[str, float]:
        """One iteration: roll out, score in one pass, per-token rewards, GAE, the update, β."""
        cfg = self.config
        prompts = iteration_prompts(self, step)
        roll = sample(self, prompts)
        mask = roll.completion_mask
        single = None
        if self._single_pass_applies(len(mask)):
            single = self._single_pass(roll)
            scores, values = single[3], single[4] * mask
        else:
            scores = score_rollout(
                self.policy, self.ref, roll, self.sampling, self.precision, self.vocab_size
            )
            with torch.no_grad(), autocast(self.precision):
                all_values = completion_values(
                    self.critic, roll.input_ids, roll.attention_mask, roll.prompt_width
                )  # (B, T + 1)
            values = all_values[:, :-1] * mask
        beta = self.kl_ctl.value
        rewards = self._token_rewards(roll, scores, beta)
        self._check_finite("reward (KL-penalised, per token)", rewards)
        last_values = None
        if cfg.bootstrap_truncated:
            rows = torch.arange(len(mask), device=mask.device)
            last_values = all_values[rows, roll.lengths.long()] * (~roll.terminated).float()
        gae_values, mc_stats = values, {}
        if cfg.mc_values:
            gae_values, mc_stats = self._mc_values(roll, values, beta)
        advantages, returns = gae(rewards, gae_values, mask, cfg.gamma, cfg.lam, last_values)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask, all_sum=self.dist.all_sum)
        train_stats = self._update(roll, scores.logprobs, values, advantages, returns, single)
        metrics = rollout_metrics(roll, scores)
        if roll.process_rewards is not None:
            metrics["reward/process"] = roll.process_rewards.sum(-1).mean().item()
        update_kl_controller(self, metrics)
        return {
            **metrics,
            "reward/total": rewards.sum(-1).mean().item(),
            "kl/beta": beta,
            **train_stats,
            **mc_stats,
            "value/explained_variance": explained_variance(values, returns, mask),
            "value/mean": masked_mean(values, mask).item(),
        }

    def _token_rewards(self, roll: Rollout, scores: RolloutScores, beta: float) -> torch.Tensor:
        """(B, T) r_t = −β·k(log π_θ, log π_ref)_t + [t = T]·(r_RM + no-EOS penalty) + r_proc,t:
        the KL-penalised reward (k1: Ziegler et al. 2019, eq. 2) plus the process reward the env
        paid on each token (``roll.rewards`` is the total: its outcome part goes to t = T)."""
        cfg = self.config
        outcome, process = roll.rewards, roll.process_rewards
        if process is not None:
            outcome = outcome - process.sum(-1)
        outcome = outcome + cfg.no_eos_penalty * (~roll.terminated).float()
        kl_penalty = KL_ESTIMATORS[cfg.kl.kl_estimator](scores.logprobs, scores.ref_logprobs)
        rewards = kl_penalised_rewards(outcome, kl_penalty, roll.completion_mask, beta)
        return rewards if process is None else rewards + process

    def _mc_values(
        self, roll: Rollout, values: torch.Tensor, beta: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """VinePPO: (B, T) values, V_MC(step start) = the mean return of ``mc_values`` rollouts
        from each step's start, held over the step's states; and ``value/mc_error`` there."""
        setup = self.env.setup
        boundary = setup.task.step_separator if setup.process is None else setup.process.boundary
        states = step_start_states(self.tokenizer, roll.completion_ids, roll.lengths, boundary)

        def branch_return(branch: Rollout) -> torch.Tensor:
            branch_scores = score_rollout(
                self.policy, self.ref, branch, self.sampling, self.precision, self.vocab_size
            )
            return discounted_returns(
                self._token_rewards(branch, branch_scores, beta), self.config.gamma
            )

        try:
            returns = branch_values(
                self.policy, self.env, self.sampling, self.generator,
                [roll.prompts[i] for i, _ in states],
                [roll.completion_ids[i, :t].tolist() for i, t in states],
                self.config.mc_values, branch_return, self.precision,
            )  # fmt: skip
        except RewardModelError as e:
            self._stop(f"the reward failed in a Monte-Carlo branch: {e}")
        mc = returns.mean(-1).to(values.device)
        rows, cols = (torch.tensor(x, device=values.device) for x in zip(*states))
        error = (values[rows, cols] - mc).abs().mean().item()
        return hold_step_values(values, roll.lengths, states, mc), {
            "value/mc_error": error,
            "value/mc_states": float(len(states)),
        }

    def _single_pass_applies(self, n: int) -> bool:
        """One epoch, the ``n`` sequences one minibatch, values read only at the rollout's own
        states (no bootstrap, no Monte-Carlo values): see ``_single_pass``."""
        cfg = self.config
        one_minibatch = n <= cfg.minibatch_size // self.dist.world_size
        return cfg.epochs == 1 and one_minibatch and not (cfg.bootstrap_truncated or cfg.mc_values)

    def _single_pass(self, roll: Rollout):
        """One epoch of one minibatch: the training forward (rows in the update's shuffled
        order) gives the old log-probs and values too, so neither the policy nor the critic
        runs a second forward. Returns the order, the logits and values with gradients, the
        rollout's scores and (B, T) detached values in the rollout's own row order."""
        order = torch.randperm(len(roll.completion_mask), generator=self.generator)
        logits, values = self.train_forward(roll.input_ids[order], roll.attention_mask[order],
                                            roll.prompt_width, self.precision, self.vocab_size)  # fmt: skip
        scores = training_forward_scores(self, roll, order, logits.detach())
        return order, logits, values, scores, values.detach()[torch.argsort(order)]

    def _update(
        self, roll, old_logprobs, old_values, advantages, returns, single=None
    ) -> dict[str, float]:
        """``epochs`` passes of shuffled minibatches: clipped surrogate + clipped value loss
        (− entropy bonus); returns the mean of each statistic. ``single``: ``_single_pass``'s
        order and training forward, the one minibatch's forward done."""
        cfg = self.config
        mask, tokens = roll.completion_mask, roll.completion_ids
        totals: dict[str, float] = {}
        n = 0
        for _ in range(cfg.epochs):
            order, done = (single[0], single[1:3]) if single else (None, None)
            if order is None:
                order = torch.randperm(len(mask), generator=self.generator)
            for idx in order.split(cfg.minibatch_size // self.dist.world_size):
                m = mask[idx]
                logits, values = done if done is not None else self.train_forward(
                    roll.input_ids[idx], roll.attention_mask[idx], roll.prompt_width,
                    self.precision, self.vocab_size,
                )  # fmt: skip
                done = None
                log_probs = F.log_softmax(process_logits(logits, self.sampling), dim=-1)
                logprobs = masked_token_logprobs(log_probs, tokens[idx], m)
                pg_loss, pg_stats = ppo_clip_loss(
                    logprobs, old_logprobs[idx], advantages[idx], m, cfg.clip_eps
                )
                vf_loss, vf_stats = clipped_value_loss(
                    values, old_values[idx], returns[idx], m, cfg.value_clip
                )
                loss = pg_loss + cfg.vf_coef * vf_loss
                if cfg.ent_coef:
                    loss = loss - cfg.ent_coef * masked_mean(entropy_from_logits(log_probs), m)
                self._check_finite("loss/total", loss.detach())
                loss.backward()
                stats = {
                    "loss/policy": pg_loss.item(),
                    "loss/value": vf_loss.item(),
                    "loss/total": loss.item(),
                    **pg_stats,
                    **vf_stats,
                    **self._apply_gradients("policy", "critic"),
                }
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                n += 1
        return {k: v / n for k, v in totals.items()}

    def _save_files(self, path: Path) -> None:
        """Policy + tokenizer in ``path`` (``from_pretrained`` loadable), critic in
        ``path/critic``."""
        super()._save_files(path)
        self.critic.save_pretrained(path / "critic")

    @classmethod
    def load(
        cls,
        path: str | Path,
        env_kwargs: dict | None = None,
        config: PPOConfig | None = None,
        run_dir: str | Path = "runs/ppo",
        reward_model=None,
    ) -> PPO:
        """An agent whose policy (and critic, if saved) come from ``save(path)``."""
        critic = Path(path) / "critic"
        return cls(
            path,
            env_kwargs=env_kwargs,
            config=config,
            run_dir=run_dir,
            reward_model=reward_model,
            critic=critic if critic.is_dir() else None,
        )
