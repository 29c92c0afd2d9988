"""Online DPO (Guo et al. 2024, "Direct language model alignment from online AI feedback"),
iterative DPO (Xiong et al. 2024; Dong et al. 2024, RLHFlow) and Nash-MD's mixture sampling
(Munos et al. 2023), as one agent: DPO's loss on pairs the current policy samples itself.

Each iteration draws ``batch_size`` prompts and samples ``k`` completions of each through the
vector env (one rollout, KV cache, one shared pre-fill per prompt). The env's terminal reward
scores them — a learned reward model, the task's gold reward, a verifier or a plain function:
whatever ``reward_model`` the env holds — less ``missing_eos_penalty`` for a completion cut at
the length limit. Each prompt gives one pair: with k = 2 its two samples, with k > 2 the best
against the worst; a pair of equal scores (a tie) is dropped and counted
(``online_dpo/tie_fraction``). The winner of a pair is picked by ``labels``:

- ``"argmax"`` (TRL's ``OnlineDPOTrainer``): the higher score wins. Every kept label is
  certain, so DPO's loss keeps pushing the log-ratio margin h up: no fixed point short of the
  policy that puts its mass on the highest-scored completions it finds (the reward maximiser,
  slowed by β and the learning rate), not π*.
- ``"bradley_terry"``: a wins with probability σ((r_a − r_b)/τ), τ = ``label_temperature``
  (the preference model behind the KL-regularised objective; the pipeline's offline pairs are
  labelled so too). The expected sigmoid loss of a pair is minimised at β·h = (r_a − r_b)/τ
  whatever distribution the pair was sampled from (the current policy, the mixture, best vs
  worst — the selection looks at scores, never at labels), so the fixed point is
  π* ∝ π_ref·exp(r/(τβ)): with τ = 1 the maximiser of E[r] − β·KL(π‖π_ref). Dropping ties
  keeps it as long as every completion meets one of another score (tests/test_online_dpo.py
  checks it on the enumerable toy). IPO's and cDPO's losses move the fixed point (IPO:
  β·h = (2σ(Δr/τ) − 1)/2).

The loss is agents.dpo's (``DPO_LOSSES[loss_type]`` through ``dpo_loss``) on sequence
log-probs of the sampled distribution (temperature, top-k/top-p); π_ref's come from ONE
reference forward over the rollout at the same temperature. The sampling policy IS the policy
being updated (one optimiser step per iteration), so the training forward over the rollout
(every sample: the pairs' rows carry the loss, all rows give the logged entropy and exact KL)
is also the rollout's re-scoring, as GRPO's single pass: no second policy forward. β is
``kl.beta`` (its adaptive controller with ``kl.kl_target``); ``kl.kl_estimator`` is not used.

- ``rounds`` R > 1 (iterative DPO): the run's iterations split into R rounds; at each round's
  start the reference becomes a frozen copy of the current policy (a LoRA policy's merged
  weights), so round r optimises against round r − 1's policy. The optimiser and its schedule
  run on across rounds. The round and the reference's weights are in every checkpoint; the
  round is logged (``online_dpo/round``, from 1).
- ``mixture_coef`` α > 0 (Nash-MD's sampling): each prompt's pair is one completion of π_θ
  against one of the per-token geometric mixture π_mix ∝ π_θ^(1−α)·π_ref^α (normalised over
  the tokenizer's vocabulary; at temperature T the mixture of the tempered distributions),
  rolled out together, one KV cache per model (``MixturePolicy``). The logged reward, KL and
  entropy are the policy's own samples'; ``online_dpo/mixture_reward`` the mixture's. Nash-MD's
  own update is a policy gradient on P(y ≻ y'), TRL's ``NashMDTrainer``; here the pair goes
  through the same DPO loss (the token MDP makes π_mix an ordinary policy to roll out).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from agents.checks import check_choice, check_literals, check_positive, check_range, group
from agents.dpo import DPO_LOSSES, dpo_loss
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.run import Agent, make_optimizer
from agents.maths.kl import KLConfig
from agents.models.lora import (
    LoraOptions,
    causal_lm,
    is_lora,
    merged_state_dict,
    plain_copy,
    trainable_parameters,
    unwrap,
)
from agents.models.policy import SamplingConfig, position_ids_from_mask, process_logits
from agents.sampling.online import (
    PromptBudget,
    RolloutScores,
    distribution_scores,
    init_online_agent,
    iteration_prompts,
    masked_token_logprobs,
    online_steps,
    policy_train_forward,
    reference_logits,
    rollout_metrics,
    sample,
    update_kl_controller,
)
from agents.sampling.rollout import Rollout, forward_step, output_cache, prefill

# -- labels: scores of the pairs' two sides (pairs,) → (pairs,) True where side a wins --------


def label_argmax(
    score_a: torch.Tensor, score_b: torch.Tensor, temperature: float, generator
) -> torch.Tensor:
    """The higher score wins (TRL's online DPO); ties are dropped before labelling."""
    return score_a > score_b


def label_bradley_terry(
    score_a: torch.Tensor, score_b: torch.Tensor, temperature: float, generator
) -> torch.Tensor:
    """a wins with probability σ((r_a − r_b)/τ) (Bradley–Terry), one uniform draw per pair
    from ``generator`` (on the CPU, as the rollout's)."""
    u = torch.rand(score_a.shape, generator=generator).to(score_a.device)
    return u < torch.sigmoid((score_a - score_b) / temperature)


LABELS = {"argmax": label_argmax, "bradley_terry": label_bradley_terry}


def penalise_missing_eos(
    rewards: torch.Tensor, terminated: torch.Tensor, penalty: float
) -> torch.Tensor:
    """(B,) scores: ``rewards`` less ``penalty`` where the completion did not end on a stop id
    (``terminated`` False: cut at the length limit), as TRL's ``missing_eos_penalty``."""
    return rewards - penalty * (~terminated).float()


def preference_pairs(
    scores: torch.Tensor, labels: str, temperature: float, generator=None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pair per prompt from (prompts, k) ``scores``: with k = 2 its two samples, with k > 2
    the best against the worst (the first of equal ones); pairs of equal scores are dropped.
    Returns the chosen and the rejected row of every kept pair, (pairs,) each, as indices into
    the flattened (prompts·k) rows, and the number of ties dropped."""
    P, k = scores.shape
    if k == 2:
        a = torch.zeros(P, dtype=torch.long, device=scores.device)
        b = torch.ones_like(a)
    else:
        a, b = scores.argmax(dim=1), scores.argmin(dim=1)
    rows = torch.arange(P, device=scores.device)
    score_a, score_b = scores[rows, a], scores[rows, b]
    kept = score_a != score_b
    a, b = (rows * k + a)[kept], (rows * k + b)[kept]
    wins = LABELS[labels](score_a[kept], score_b[kept], temperature, generator)
    return torch.where(wins, a, b), torch.where(wins, b, a), int((~kept).sum())


# -- Nash-MD's sampling policy -------------------------------------------------------------------


def geometric_mixture_logits(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, alpha: float
) -> torch.Tensor:
    """log π_mix = log_softmax((1 − α)·log π_θ + α·log π_ref): the per-token geometric mixture
    (Nash-MD, Munos et al. 2023), normalised over the last axis. (B, V) each → (B, V)
    fp32; pass the logits of the tokenizer's vocabulary only."""
    policy_log_probs = F.log_softmax(policy_logits.float(), dim=-1)
    ref_log_probs = F.log_softmax(ref_logits.float(), dim=-1)
    return F.log_softmax((1 - alpha) * policy_log_probs + alpha * ref_log_probs, dim=-1)


class MixturePolicy(nn.Module):
    """The model ``rollout`` samples from with ``mixture_coef`` α > 0: the rows ``mixed`` (B,)
    get ``geometric_mixture_logits`` of π_θ and π_ref, the others π_θ's own logits. Its KV
    cache is the pair (policy's over every row, reference's over the mixed rows only); the
    policy's pre-fill is shared by each prompt's ``group_size`` consecutive rows (``prefill``).
    Roll it out with ``group_size=1``: the first-token logits differ within a group."""

    def __init__(self, policy, ref, alpha: float, mixed: torch.Tensor, vocab_size: int,
                 precision: str, group_size: int):  # fmt: skip
        super().__init__()
        self.policy = policy  # a submodule: rollout's eval() and device come from it
        object.__setattr__(self, "ref", ref)  # not one: never trained, never switched to train
        self.alpha, self.mixed, self.vocab_size = alpha, mixed, vocab_size
        self.precision, self.group_size = precision, group_size

    def _reference(self, input_ids, attention_mask, position_ids, cache):
        """One cached step of π_ref on the mixed rows: (rows, V) logits and its cache."""
        rows = self.mixed
        with causal_lm(self.ref) as lm:  # a LoRA policy's reference: the adapters disabled
            out = forward_step(lm, input_ids[rows], attention_mask[rows], position_ids[rows],
                               self.precision, cache)  # fmt: skip
        return out.logits[:, -1], output_cache(out)

    def forward(self, input_ids, attention_mask, position_ids, use_cache=True, logits_to_keep=1,
                past_key_values=None):  # fmt: skip
        """(B, 1, V) logits of the next token and the updated pair of caches."""
        V = self.vocab_size
        if past_key_values is None:  # the pre-fill
            logits, policy_cache = prefill(self.policy, input_ids, attention_mask, self.precision,
                                           self.group_size)  # fmt: skip
            positions = position_ids_from_mask(attention_mask)
            ref_logits, ref_cache = self._reference(input_ids, attention_mask, positions, None)
        else:
            policy_cache, ref_cache = past_key_values
            out = forward_step(self.policy, input_ids, attention_mask, position_ids,
                               self.precision, policy_cache)  # fmt: skip
            logits, policy_cache = out.logits[:, -1], output_cache(out)
            ref_logits, ref_cache = self._reference(input_ids, attention_mask, position_ids,
                                                    ref_cache)  # fmt: skip
        logits = logits[:, :V].float()
        logits[self.mixed] = geometric_mixture_logits(logits[self.mixed], ref_logits[:, :V],
                                                      self.alpha)  # fmt: skip
        return SimpleNamespace(logits=logits[:, None], past_key_values=(policy_cache, ref_cache))


def policy_weights(policy: nn.Module) -> dict[str, torch.Tensor]:
    """π_θ's weights as a plain model's state dict (a LoRA policy's merged)."""
    return merged_state_dict(policy) if is_lora(policy) else policy.state_dict()


def merged_copy(policy: nn.Module) -> nn.Module:
    """A frozen plain model holding a LoRA policy's merged weights: a reference of its own,
    which later rounds overwrite (the adapters-disabled view cannot become π_θ)."""
    copy = plain_copy(unwrap(policy))
    copy.load_state_dict(merged_state_dict(policy))
    return copy.eval().requires_grad_(False)


def rows_of(roll: Rollout, scores: RolloutScores, rows: list[int]):
    """The rollout and its scores restricted to ``rows`` (one group per row)."""
    picked = replace(roll, group_size=1).select_groups(rows)
    index = torch.tensor(rows, device=scores.entropy.device)
    return picked, RolloutScores(**{k: None if v is None else v[index]
                                    for k, v in vars(scores).items()})  # fmt: skip


@dataclass
class OnlineDPOConfig(AgentConfig):
    """Online DPO options; the defaults are TRL's ``OnlineDPOConfig`` for a pretrained checkpoint.

    Learning rate 5e-7 (TRL's ``OnlineDPOConfig``), constant; β 0.1, the sigmoid loss and
    argmax labels (TRL's); temperature 1 (TRL: 0.9; 1 samples the policy whose optimum the
    exactness test checks). The tiny GPT-2s of the built-in tasks take
    ``agents.presets.TINY_MODEL_OPTIONS["online_dpo"]`` (3e-4, DPO's)."""

    precision: str = "auto"
    """Forward-pass precision: auto | bf16 | fp32 (log-probs and the loss stay fp32)."""
    log_every: int = 1
    """Write a log point every this many iterations (0 = only at the end)."""
    save_every: int = 10
    """Write an atomic checkpoint every this many iterations (0 = only at the end)."""
    total_prompts: int = 4096
    """Stop after this many prompts (each sampled k times; the x-axis counts prompts)."""
    batch_size: int = 16
    """Prompts per iteration (one pair each), in total over all processes."""
    k: int = 2
    """Completions sampled per prompt; the pair is the two (k = 2) or the best and the worst."""
    labels: Literal["argmax", "bradley_terry"] = "argmax"
    """Winner of a pair: argmax (the higher score, TRL's; converges towards the reward
    maximiser) | bradley_terry (drawn with probability σ(Δscore/label_temperature); converges
    to π* ∝ π_ref·exp(r/(label_temperature·β)))."""
    label_temperature: float = 1.0
    """τ of the bradley_terry labels (1: the KL-regularised objective's preference model)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO) | ipo | conservative (cDPO, label-smoothed): agents.dpo's losses."""
    label_smoothing: float = 0.1
    """ε of the conservative loss: the assumed probability that a label is flipped."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a completion that did not end on a stop id (0 = none)."""
    rounds: int = 1
    """Iterative DPO: R rounds; at each round's start the reference becomes a frozen copy of
    the current policy (1 = one fixed reference)."""
    mixture_coef: float = 0.0
    """α of Nash-MD's sampling: each pair is a π_θ sample against one of the geometric mixture
    π_θ^(1−α)·π_ref^α (0 = both from π_θ; needs k = 2)."""
    optim: OptimConfig = group(lambda: OptimConfig(learning_rate=5e-7))
    sampling: SamplingConfig = group(SamplingConfig)
    kl: KLConfig = group(lambda: KLConfig(beta=0.1))
    lora: LoraOptions = group(LoraOptions, prefix="lora_")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("total_prompts", "batch_size", "rounds"):
            check_positive(name, getattr(self, name))
        check_positive("k", self.k)
        if self.k < 2:
            raise ValueError(f"k must be >= 2 (a pair per prompt), got {self.k}")
        check_literals(self)
        check_positive("label_temperature", self.label_temperature, float)
        check_choice("loss_type", self.loss_type, DPO_LOSSES)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5, "[)")
        check_positive("missing_eos_penalty", self.missing_eos_penalty, float, allow_zero=True)
        check_range("mixture_coef", self.mixture_coef, 0.0, 1.0, "[]")
        if self.mixture_coef > 0 and self.k != 2:
            raise ValueError(f"mixture_coef > 0 pairs one policy sample with one mixture "
                             f"sample: k must be 2, got {self.k}")  # fmt: skip
        if self.kl.beta <= 0:
            raise ValueError(f"beta must be > 0 (DPO's β), got {self.kl.beta}")


class OnlineDPO(PromptBudget, Agent):
    """Online / iterative DPO over ``TokenMDPVectorEnv``; see the module docstring."""

    agent_name = "online_dpo"

    def __init__(
        self,
        policy,
        tokenizer=None,
        env_kwargs: dict | None = None,
        config: OnlineDPOConfig | None = None,
        run_dir: str | Path = "runs/online_dpo",
        reward_model=None,
    ):
        super().__init__()
        self.config = config = config or OnlineDPOConfig()
        self.run_dir = Path(run_dir)
        self.total_prompts = config.total_prompts
        init_online_agent(
            self, policy, tokenizer, env_kwargs, reward_model, config.batch_size * config.k
        )
        if config.rounds > 1:
            self._own_reference()
        self.round = 0
        steps = online_steps(config.total_prompts, config.batch_size)
        params = trainable_parameters(self.policy)
        self.optimizers = {"policy": make_optimizer(params, config.optim, steps)}
        self.train_forward = policy_train_forward(self)
        self.sampler = None
        if config.mixture_coef > 0:  # odd rows: the mixture's sample of each prompt
            mixed = torch.arange(self.env.num_envs, device=self.dist.device) % 2 == 1
            self.sampler = MixturePolicy(self.policy, self.ref, config.mixture_coef, mixed,
                                         self.vocab_size, self.precision, 2).eval()  # fmt: skip

    # -- rounds -----------------------------------------------------------------------------------
    def _models(self) -> dict[str, nn.Module]:
        """The policy, and with rounds > 1 the reference (it changes during the run)."""
        models = {"policy": self.policy}
        if self.config.rounds > 1:
            models["reference"] = self.ref
        return models

    def _state(self) -> dict:
        return {**super()._state(), "round": self.round}

    def _load_state(self, state: dict) -> None:
        super()._load_state(state)
        self.round = int(state["round"])

    def _own_reference(self) -> None:
        """rounds > 1: a reference whose weights later rounds can overwrite with π_θ's."""
        if is_lora(self.policy) and self.config.kl.ref_policy is None:
            self.ref = merged_copy(self.policy)
            self.dist.place(self.ref)
        mine = {k: v.shape for k, v in policy_weights(self.policy).items()}
        if {k: v.shape for k, v in self.ref.state_dict().items()} != mine:
            raise ValueError("rounds > 1 overwrites the reference with the policy's weights: "
                             f"kl.ref_policy {self.config.kl.ref_policy!r} must have the "
                             "policy's architecture")  # fmt: skip

    def _start_round(self, step: int) -> None:
        """At the first iteration of a new round the reference becomes a copy of π_θ."""
        current = step * self.config.rounds // self._num_steps()
        if current > self.round:
            self.ref.load_state_dict(policy_weights(self.policy))
            self.round = current

    # -- one iteration ----------------------------------------------------------------------------
    def _sample(self, step: int) -> Rollout:
        """k completions of each prompt: all from π_θ, or one from π_θ and one from π_mix."""
        prompts = iteration_prompts(self, step)
        if self.sampler is None:
            return sample(self, prompts, self.config.k)
        paired = [p for p in prompts for _ in range(2)]
        return replace(sample(self, paired, 1, model=self.sampler), group_size=2)

    def _train_step(self, step: int) -> dict[str, float]:
        """Sample, score and pair; one forward of each model; the DPO loss; one step."""
        cfg = self.config
        self._start_round(step)
        roll = self._sample(step)
        scores = penalise_missing_eos(roll.rewards, roll.terminated, cfg.missing_eos_penalty)
        self._check_finite("score (reward, missing-EOS penalty)", scores)
        chosen, rejected, ties = preference_pairs(
            roll.grouped(scores), cfg.labels, cfg.label_temperature, self.generator
        )
        logits = self.train_forward(roll.input_ids, roll.attention_mask, roll.prompt_width,
                                    self.precision, self.vocab_size)  # fmt: skip
        ref_logits = reference_logits(
            self.ref, roll, self.precision, self.vocab_size, self.sampling.share_prompts
        )
        mask = roll.completion_mask
        rollout_scores = distribution_scores(logits.detach(), ref_logits, roll.completion_ids,
                                             mask, self.sampling)  # fmt: skip
        del ref_logits
        beta = self.kl_ctl.value
        loss, stats = self._loss(logits, roll, rollout_scores, chosen, rejected, beta)
        self._check_finite("loss/total", loss.detach())
        loss.backward()
        stats.update(self._apply_gradients("policy"))
        own, own_scores = roll, rollout_scores
        n = len(chosen)
        if self.sampler is not None:  # the policy's own samples (even rows), and the mixture's
            own, own_scores = rows_of(roll, rollout_scores, list(range(0, len(mask), 2)))
            stats["online_dpo/mixture_reward"] = roll.rewards[1::2].mean().item()
            if n:
                stats["online_dpo/policy_win_rate"] = (chosen % 2 == 0).float().mean().item()
        metrics = rollout_metrics(own, own_scores)
        update_kl_controller(self, metrics)
        return {
            **metrics,
            "kl/beta": beta,
            **stats,
            "online_dpo/round": float(self.round + 1),
            "online_dpo/pairs": float(n),
            "online_dpo/tie_fraction": ties / (n + ties),
            **({"online_dpo/chosen_score": scores[chosen].mean().item(),
                "online_dpo/rejected_score": scores[rejected].mean().item()} if n else {}),
        }  # fmt: skip

    def _loss(self, logits, roll, rollout_scores, chosen, rejected, beta):
        """DPO's loss on the pairs' sequence log-probs: π_θ's from the training forward's
        (B, T, V) ``logits`` (with gradients), π_ref's from the rollout's scores. No pair (all
        ties): a zero loss through the forward, so every process still steps together."""
        cfg = self.config
        if len(chosen) == 0:
            return logits.sum() * 0.0, {"loss/total": 0.0}
        rows = torch.cat([chosen, rejected])
        log_probs = F.log_softmax(process_logits(logits, self.sampling), dim=-1)
        logps = masked_token_logprobs(log_probs, roll.completion_ids, roll.completion_mask)
        logps = logps.sum(-1)[rows]  # (2·pairs,) sequence log-probs: chosen, then rejected
        ref_logps = rollout_scores.ref_logprobs.sum(-1)[rows]
        n = len(chosen)
        loss, stats = dpo_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], beta,
                               cfg.loss_type, cfg.label_smoothing)  # fmt: skip
        return loss, {**stats, "loss/total": loss.item()}

    @classmethod
    def load(
        cls,
        path: str | Path,
        env_kwargs: dict | None = None,
        config: OnlineDPOConfig | None = None,
        run_dir: str | Path = "runs/online_dpo",
        reward_model=None,
    ) -> OnlineDPO:
        """An agent whose policy comes from ``save(path)``."""
        return cls(
            path, env_kwargs=env_kwargs, config=config, run_dir=run_dir, reward_model=reward_model
        )
