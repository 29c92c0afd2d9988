"""Evaluate a policy through the env: gold reward, learned reward, KL to a reference, length —
and what the reward hides: fluency, diversity and length hacking (``agents.maths.metrics``).

Every method (SFT, PPO, REINFORCE, DPO) is measured by ``evaluate`` on held-out prompts, so
their numbers land on the same reward–KL axes. ``evaluate_policies`` is the evaluation suite of
the pipeline, ``tokenmdp evaluate`` and ``tokenmdp compare --evaluate``: every policy on the same
prompts with the same seed, each scored also by a separate judge language model.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from agents.data.offline import encode_examples, pad_batch, sequence_logprobs
from agents.maths import metrics
from agents.models.policy import (
    SamplingConfig,
    check_same_tokenizer,
    completion_logits,
    load_policy,
    model_device,
    stop_ids,
    to_device,
    token_logprobs,
)
from agents.sampling.rollout import rollout_batches
from llm_env.tasks import make_task
from llm_env.vector import TokenMDPVectorEnv
from reward_models.base import RewardModel, checked_score


@dataclass
class EvalResult:
    """Per-sample arrays (for spreads and bootstrap intervals) and their means; the texts."""

    gold_rewards: np.ndarray
    train_rewards: np.ndarray
    kls: np.ndarray
    lengths: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Means under the shared tags, and the cheap text metrics under ``eval/``."""
        out = {
            "reward/gold": float(np.nanmean(self.gold_rewards)),
            "reward/train": float(np.mean(self.train_rewards)),
            "kl/ref": float(np.mean(self.kls)),
            "episode/length": float(np.mean(self.lengths)),
        }
        out.update({f"reward/{k}": float(np.mean(v)) for k, v in self.extra.items()})
        cheap = cheap_metrics(
            self.completions, self.finish_reasons, self.lengths, self.train_rewards
        )
        out.update({f"eval/{k}": v for k, v in cheap.items() if math.isfinite(v)})
        return out


def cheap_metrics(
    completions: Sequence[str],
    finish_reasons: Sequence[str],
    lengths: np.ndarray,
    rewards: np.ndarray,
) -> dict[str, float]:
    """The metrics cheap enough for every evaluation point of a training run: distinct-1/2,
    the unique-completion fraction, the EOS rate and corr(reward, length) (NaN if undefined)."""
    return {
        "distinct_1": metrics.distinct_n(completions, 1),
        "distinct_2": metrics.distinct_n(completions, 2),
        "unique_fraction": metrics.unique_fraction(completions),
        "eos_rate": metrics.eos_rate(finish_reasons),
        "length_reward_corr": metrics.pearson(lengths, rewards),
    }


def sequence_kl(
    policy: torch.nn.Module, ref: torch.nn.Module, batch, sampling: SamplingConfig
) -> torch.Tensor:
    """k1 sequence KL Σ_t log π(y_t) − log π_ref(y_t) of a rollout's samples, shape (B,).

    The policy's log-probs are those of the distribution sampled from (recorded during the
    rollout); the reference is evaluated at the same temperature, without truncation.
    """
    with torch.no_grad():
        ref_logits = completion_logits(
            ref, batch.input_ids, batch.attention_mask, batch.prompt_width
        )
    ref_sampling = SamplingConfig(temperature=sampling.temperature)
    ref_logprobs = token_logprobs(ref_logits, batch.completion_ids, ref_sampling)
    return ((batch.logprobs - ref_logprobs) * batch.completion_mask).sum(-1)


def evaluate(
    policy: torch.nn.Module,
    ref_policy: torch.nn.Module | None,
    env: TokenMDPVectorEnv,
    prompts: list[str],
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    extra_reward_models: dict[str, RewardModel] | None = None,
    n_samples: int = 4,
    progress: str | None = None,
) -> EvalResult:
    """Sample one completion per prompt through ``env`` (lockstep, batches of ``env.num_envs``).

    ``ref_policy=None`` reports KL 0 (the policy is its own reference). ``extra_reward_models``
    are scored on the same completions (e.g. the learned reward model beside the gold one).
    ``progress``: a progress bar over the batches with this label (None: no bar).
    """
    sampling = sampling or SamplingConfig()
    generator = torch.Generator().manual_seed(seed)
    gold, train, kls, lengths, samples = [], [], [], [], []
    texts: dict[str, list] = {"prompts": [], "completions": [], "finish_reasons": []}
    extra: dict[str, list] = {name: [] for name in extra_reward_models or {}}
    batches = rollout_batches(policy, env, sampling, generator, prompts, seed, progress=progress)
    for batch, n in batches:
        kl = (
            torch.zeros(env.num_envs, device=batch.rewards.device)
            if ref_policy is None
            else sequence_kl(policy, ref_policy, batch, sampling)
        )
        gold.append(batch.gold_rewards[:n].cpu().numpy())
        train.append(batch.rewards[:n].cpu().numpy())
        kls.append(kl[:n].cpu().numpy())
        lengths.append(batch.lengths[:n].cpu().numpy())
        for key, values in texts.items():
            values.extend(getattr(batch, key)[:n])
        messages = [env.setup.prompt(p)[1] for p in batch.prompts[:n]]  # chat prompts' messages
        for name, model in (extra_reward_models or {}).items():
            extra[name].append(
                checked_score(model, batch.prompts[:n], batch.completions[:n], messages)
            )
        for i in range(min(n, n_samples - len(samples))):
            samples.append(
                {
                    "prompt": batch.prompts[i],
                    "completion": batch.completions[i],
                    "gold_reward": float(batch.gold_rewards[i]),
                    "reward": float(batch.rewards[i]),
                }
            )
    return EvalResult(
        gold_rewards=np.concatenate(gold),
        train_rewards=np.concatenate(train),
        kls=np.concatenate(kls),
        lengths=np.concatenate(lengths),
        extra={k: np.concatenate(v) for k, v in extra.items()},
        samples=samples,
        **texts,
    )


def paired_gain_ci(
    values: np.ndarray,
    baseline: np.ndarray,
    per_prompt: int = 1,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(values) − mean(baseline) when both were sampled on
    the same prompts in the same order (``per_prompt`` consecutive samples each): prompts are
    resampled together, so the prompt-to-prompt spread both share cancels."""
    diff = (np.asarray(values, np.float64) - np.asarray(baseline, np.float64)).reshape(
        -1, per_prompt
    )
    return bootstrap_ci(diff.mean(axis=1), n_boot, level, seed)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval of the mean: ``(low, high)``."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


@torch.no_grad()
def judge_nll(
    judge: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    ended: Sequence[bool],
    batch_size: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Per completion, (Σ −log p_judge(token | prompt, tokens before) in nats, tokens scored).

    Text in: the judge tokenises ``prompt + completion`` with its own tokenizer (as SFT does,
    ``encode_examples``) and scores the completion's tokens, plus the EOS where the episode
    ``ended`` on EOS (a completion cut at the length limit was not finished). Rows longer than
    the judge's context keep the prompt's end and lose the completion's.
    """
    context = getattr(judge.config, "n_positions", None) or 1024
    rows = []
    for (ids, n_prompt), end in zip(
        encode_examples(tokenizer, prompts, completions, context), ended
    ):
        cut = not end and ids[-1] == tokenizer.eos_token_id and len(ids) > n_prompt
        rows.append((ids[:-1] if cut else ids, n_prompt))
    nll, n_tokens = [], []
    for start in range(0, len(rows), batch_size):
        batch = pad_batch(rows[start : start + batch_size], tokenizer.pad_token_id)
        logprobs = sequence_logprobs(judge, to_device(batch, model_device(judge)))
        nll.append(-logprobs.sum(-1).cpu().numpy())
        n_tokens.append(batch["loss_mask"].sum(-1).numpy())
    return np.concatenate(nll).astype(np.float64), np.concatenate(n_tokens).astype(np.int64)


@dataclass
class Judge:
    """A language model apart from the policies, scoring fluency: one trained on the task
    corpus, or (a task without one, e.g. your own prompts) the reference policy."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase

    @classmethod
    def load(cls, path: str | Path) -> Judge:
        model, tokenizer = load_policy(path)
        return cls(model.eval(), tokenizer)


def quality_metrics(
    result: EvalResult,
    judge: Judge | None = None,
    lexicon: Container[str] | None = None,
    self_bleu_texts: int = 128,
) -> dict[str, float]:
    """Fluency (judge perplexity, lexicon fraction), diversity (distinct-1/2, unique fraction,
    self-BLEU), EOS rate and corr(length, reward) per reward scored, of ``result``'s
    completions (definitions in ``agents.maths.metrics``); NaN where undefined or not given."""
    out = cheap_metrics(
        result.completions, result.finish_reasons, result.lengths, result.train_rewards
    )
    del out["length_reward_corr"]  # named by its reward below
    out["self_bleu"] = metrics.self_bleu(result.completions, self_bleu_texts)
    out["lexicon_fraction"] = (
        math.nan if lexicon is None else metrics.lexicon_fraction(result.completions, lexicon)
    )
    out["judge_ppl"] = math.nan
    if judge is not None:
        ended = [reason == "eos" for reason in result.finish_reasons]
        nll, n_tokens = judge_nll(
            judge.model, judge.tokenizer, result.prompts, result.completions, ended
        )
        out["judge_ppl"] = metrics.perplexity(nll, n_tokens)
    out["length_corr_gold"] = metrics.pearson(result.lengths, result.gold_rewards)
    for name, rewards in result.extra.items():
        out[f"length_corr_{name}"] = metrics.pearson(result.lengths, rewards)
    return out


@dataclass
class SuiteConfig:
    """The evaluation suite: which prompts, how many, which seed (the same for every policy)."""

    task: str = "sentiment"
    """Task whose held-out (``eval``) prompts are used, cycled to ``prompts``."""
    task_kwargs: dict = field(default_factory=dict)
    """Options of the task."""
    gold_reward: str | None = None
    """Gold reward (any ``load_reward_model`` spec) instead of the task's: a task without one
    (``jsonl``) needs it."""
    prompts: int = 512
    """Completions sampled per policy (one per prompt, prompts repeated)."""
    seed: int = 0
    """Sampling seed, the same for every policy (and the bootstrap's)."""
    num_envs: int = 64
    """Sequences per lockstep rollout."""
    self_bleu_texts: int = 128
    """Completions in the self-BLEU sample (its cost grows with the square)."""
    samples_per_prompt: int = 1
    """n samples of each held-out prompt (``prompts`` counts completions); n > 1 adds
    ``pass_at_k`` with k = n (a verifiable task's chance that one of n samples is right)."""

    def __post_init__(self) -> None:
        for name in ("prompts", "num_envs", "self_bleu_texts", "samples_per_prompt"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")


def pass_metrics(gold: np.ndarray, n: int) -> dict[str, float]:
    """``pass_at_k`` (k = n) from n consecutive samples per prompt with a 0/1 gold reward."""
    if n < 2:
        return {}
    return {"pass_at_k": metrics.pass_at_k(gold.reshape(-1, n) > 0.5, n), "pass_k": n}


def evaluate_policies(
    policies: Sequence[tuple[str, str | Path]],
    reference: str | Path | None,
    suite: SuiteConfig,
    judge: Judge | None = None,
    reward_models: dict[str, RewardModel] | None = None,
) -> list[dict]:
    """Every ``(name, policy)`` through the env on the same held-out prompts and seed: one
    summary per policy (rewards with a 95% bootstrap interval, KL to ``reference``, length,
    ``quality_metrics``, samples). Policies after one named ``sft`` or ``reference`` also get
    ``gold_gain`` over it with a paired 95% interval (``paired_gain_ci``). Policies are
    ``save_pretrained`` directories sharing the reference's tokenizer (the first policy's when
    there is no reference); its ``generation_config`` stop ids end episodes too. The gold
    reward is ``suite.gold_reward`` or the task's."""
    ref_model, tokenizer = load_policy(reference if reference is not None else policies[0][1])
    stops = sorted(stop_ids(tokenizer, getattr(ref_model, "generation_config", None)))
    ref_model = ref_model.eval() if reference is not None else None
    task = make_task(suite.task, **suite.task_kwargs)
    lexicon = metrics.task_lexicon(task)
    env = TokenMDPVectorEnv(min(suite.num_envs, suite.prompts), task=task, tokenizer=tokenizer,
                            reward_model=suite.gold_reward,
                            gold_reward_model=suite.gold_reward or "task", stop_token_ids=stops,
                            split="eval", autoreset_mode="disabled")  # fmt: skip
    pool = list(env.setup.task.prompts("eval"))
    n = suite.samples_per_prompt
    prompts = [pool[i % len(pool)] for i in range(suite.prompts // n) for _ in range(n)]
    summaries, baseline = [], None
    for name, path in tqdm(policies, desc="evaluate"):
        policy, policy_tokenizer = load_policy(path)
        check_same_tokenizer(policy_tokenizer, tokenizer, f"policy {name!r} and the reference")
        result = evaluate(policy.eval(), ref_model, env, prompts, seed=suite.seed,
                          extra_reward_models=reward_models)  # fmt: skip
        start = time.perf_counter()
        quality = quality_metrics(result, judge, lexicon, suite.self_bleu_texts)
        summary = {
            "name": name,
            "gold_reward": float(np.mean(result.gold_rewards)),
            "gold_ci": list(bootstrap_ci(result.gold_rewards, seed=suite.seed)),
            "gold_std": float(np.std(result.gold_rewards)),
            **{f"{k}_reward": float(np.mean(v)) for k, v in result.extra.items()},
            "kl_ref": float(np.mean(result.kls)),
            "length": float(np.mean(result.lengths)),
            **quality,
            **pass_metrics(result.gold_rewards, n),
            "n": len(prompts),
            "quality_seconds": time.perf_counter() - start,
            "samples": result.samples,
            "gold_rewards": [float(g) for g in result.gold_rewards],  # for paired comparisons
            "samples_per_prompt": n,
        }
        if name in ("sft", "reference") and baseline is None:
            baseline = result.gold_rewards
        elif baseline is not None:
            summary["gold_gain"] = summary["gold_reward"] - float(np.mean(baseline))
            summary["gold_gain_ci"] = list(paired_gain_ci(result.gold_rewards, baseline, n,
                                                          seed=suite.seed))  # fmt: skip
        summaries.append(summary)
    return summaries


HELDOUT_SUFFIX = ".heldout"
"""File-name suffix of the events a held-out evaluation adds to an agent's run directory."""
EVAL_TAGS = ("distinct_1", "distinct_2", "unique_fraction", "eos_rate", "length_reward_corr",
             "self_bleu", "lexicon_fraction", "judge_ppl")  # fmt: skip
"""What ``log_evaluation`` writes, as ``eval/<key>``."""


def log_evaluation(run_dir: str | Path, summary: dict) -> None:
    """Add ``summary``'s text metrics under ``eval/`` to ``run_dir``'s TensorBoard events, at
    the run's last x (from its ``metrics.jsonl``), replacing an earlier held-out evaluation's:
    the final point of the curves the agent's own evaluations drew."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = Path(run_dir)
    history = run_dir / "metrics.jsonl"
    lines = history.read_text().splitlines() if history.is_file() else []
    step = int(json.loads(lines[-1])["examples"]) if lines else 0
    for old in run_dir.glob(f"events.out.tfevents.*{HELDOUT_SUFFIX}"):
        old.unlink()
    values = {**summary, "length_reward_corr": summary.get("length_corr_gold", math.nan)}
    with SummaryWriter(str(run_dir), filename_suffix=HELDOUT_SUFFIX) as writer:
        for key in EVAL_TAGS:
            if math.isfinite(values.get(key, math.nan)):
                writer.add_scalar(f"eval/{key}", values[key], global_step=step)
