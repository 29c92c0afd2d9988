"""End to end on a pretrained-shaped checkpoint: SFT on conversational rows, the reward model,
PPO, REINFORCE, GRPO and DPO, one after the other as a user runs them, on the small Llama of
``tests.pretrained`` (pad = EOS = ``<|im_end|>``, a ChatML template, ``<|endoftext|>`` as a second
stop id in ``generation_config.eos_token_id``, ``PADDED_ROWS`` embedding rows beyond the
tokenizer).

The pipeline: SFT trains the fixture on the chat rows; the reward model starts from the SFT
checkpoint and trains on the chat pairs; PPO, REINFORCE and GRPO start from the SFT checkpoint and
are rewarded by that reward model through the env; DPO starts from the SFT checkpoint too. What
each agent really did is observed through the library's own calls: ``pad_batch`` (the offline
batches) and ``sample`` (the online rollouts, wrapped to re-score each rollout right after it is
sampled, before the update), and ``rollout_metrics`` (the scores the agent computed itself).

A random-init model gives every token about the same probability, so within a 4-token limit a
stop id would almost never be sampled and the padded rows would be no more likely than any other
token. The online policies are therefore biased (``biased_policy``): a forward hook on the output
head adds ``STOP_BIAS`` to the logits of the two stop ids (each then ends some episodes, others
run to the limit) and ``PADDED_BIAS`` to the padded rows, so that a sampler or scorer that did not
drop them would put nearly all its mass there.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import agents.data.offline
import agents.dpo
import agents.grpo
import agents.ppo
import agents.reinforce
import agents.sft
from agents.dpo import DPO, DPOConfig
from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import OptimConfig
from agents.models.policy import completion_logits, token_logprobs
from agents.ppo import PPO, PPOConfig
from agents.reinforce import Reinforce, ReinforceConfig
from agents.reward_model import RewardModelConfig, RewardModelTrainer
from agents.sampling.rollout import Rollout
from agents.sft import SFT, SFTConfig
from reward_models.learned import LearnedRewardModel
from tests.pretrained import PADDED_ROWS, chat_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_NEW_TOKENS = 4
STOP_BIAS = 3.5
"""Added to both stop ids' logits: ~20% stop chance per token, so some episodes end on each."""
PADDED_BIAS = 30.0
"""Added to the padded rows' logits: over 99% of the unsliced mass lies there."""
ONLINE = {
    "ppo": (PPO, lambda: PPOConfig(batch_size=8, minibatch_size=8, epochs=1)),
    "reinforce": (Reinforce, lambda: ReinforceConfig(batch_size=4, k=2, minibatch_size=8)),
    "grpo": (GRPO, lambda: GRPOConfig(batch_size=4, group_size=2, minibatch_size=8)),
}
ITERATIONS = 2  # the second rollout is sampled by the updated policy
LOGPROB_TOLERANCE = {"rtol": 1.3e-6, "atol": 1e-5}
"""torch.testing's fp32 defaults. Sampling runs the model one token at a time on its KV cache,
the re-scoring runs each full sequence at once: the same maths in other matmul shapes, so the
fp32 results differ by rounding only (measured: 0 to 5e-7). A real mismatch (another position,
temperature, vocabulary slice or stale weights) is ≥ 1e-2."""


@dataclass
class Sampled:
    """One rollout as the agent sampled it, with what the test computed right after."""

    roll: Rollout
    recomputed: torch.Tensor  # (B, T) log-probs from a fresh full-sequence forward
    padded_mass: torch.Tensor  # (B, T) probability the unsliced logits put on the padded rows


@dataclass
class OnlineRun:
    sampled: list[Sampled] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)  # the agent's own logprobs, (B, T)


@pytest.fixture(scope="module")
def tok(pretrained_llama):
    return AutoTokenizer.from_pretrained(pretrained_llama)


@pytest.fixture(scope="module")
def stops(tok):
    return {tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")}


def recording(calls: list, fn):
    """``fn``, also appending each call's result to ``calls``."""

    def wrapped(*args, **kwargs):
        result = fn(*args, **kwargs)
        calls.append(result)
        return result

    return wrapped


def offline_config(cls, **overrides):
    base = dict(batch_size=12, max_steps=2, max_length=64, log_every=1, save_every=0)
    return cls(**{**base, **overrides})


@pytest.fixture(scope="module")
def sft_run(pretrained_llama, chat_data, tmp_path_factory):
    """SFT on the conversational rows: the final checkpoint and every batch it trained on."""
    run_dir, batches = tmp_path_factory.mktemp("sft"), []
    config = offline_config(SFTConfig, heldout_fraction=0.0, optim=OptimConfig(1e-3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agents.sft, "pad_batch", recording(batches, agents.sft.pad_batch))
        sft = SFT(pretrained_llama, None, chat_data["sft"], config, run_dir)
        sft.learn()
    return run_dir / "final", batches


@pytest.fixture(scope="module")
def reward_model(sft_run, chat_data, tmp_path_factory):
    """The Bradley–Terry model trained from the SFT checkpoint on the chat pairs: its final
    directory (the env loads it by path) and its training history."""
    run_dir = tmp_path_factory.mktemp("rm")
    config = offline_config(
        RewardModelConfig, max_steps=4, heldout_fraction=0.0, optim=OptimConfig(3e-3)
    )
    history = RewardModelTrainer(sft_run[0], chat_data["pairs"], config, run_dir).learn()
    return run_dir / "final", history


def biased_policy(path, tok) -> torch.nn.Module:
    """The checkpoint at ``path`` with ``STOP_BIAS`` on the stop ids' logits and ``PADDED_BIAS``
    on the padded rows' (a forward hook on the output head: every forward sees it, the KV-cached
    sampling steps and the full-sequence scoring alike)."""
    model = AutoModelForCausalLM.from_pretrained(path)
    head = model.get_output_embeddings()
    bias = torch.zeros(head.out_features)
    bias[list(model.generation_config.eos_token_id)] = STOP_BIAS
    bias[len(tok) :] = PADDED_BIAS
    head.register_forward_hook(lambda module, args, logits: logits + bias)
    return model


def scoring_sample(sampled: list[Sampled], sample):
    """``agents.sampling.online.sample``, re-scoring each rollout with a fresh forward of the
    agent's policy before the agent updates on it."""

    def wrapped(agent, prompts, group_size=1):
        roll = sample(agent, prompts, group_size)
        with torch.no_grad():
            full = completion_logits(
                agent.policy, roll.input_ids, roll.attention_mask, roll.prompt_width
            )  # (B, T, padded vocab)
            logits = full[..., : agent.vocab_size]
            recomputed = token_logprobs(logits, roll.completion_ids, agent.sampling)
            padded = full.float().softmax(-1)[..., agent.vocab_size :].sum(-1)
        mask = roll.completion_mask
        sampled.append(Sampled(roll, recomputed * mask, padded * mask))
        return roll

    return wrapped


@pytest.fixture(scope="module")
def online_runs(sft_run, reward_model, chat_data, tok, tmp_path_factory) -> dict[str, OnlineRun]:
    """PPO, REINFORCE and GRPO, two iterations each from the biased SFT policy, rewarded by the
    learned reward model."""
    env = {
        "task": "jsonl",
        "task_kwargs": {"path": str(chat_data["prompts"])},
        "max_new_tokens": MAX_NEW_TOKENS,
    }
    runs = {}
    for kind, (agent_cls, make_config) in ONLINE.items():
        module, run = getattr(agents, kind), OnlineRun()
        config = make_config()
        config.precision, config.save_every = "fp32", 0
        config.total_prompts = ITERATIONS * config.batch_size
        config.optim = OptimConfig(learning_rate=1e-3)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "sample", scoring_sample(run.sampled, module.sample))
            metrics = module.rollout_metrics
            patch.setattr(
                module,
                "rollout_metrics",
                lambda roll, scores, metrics=metrics, run=run: (
                    run.scores.append(scores.logprobs) or metrics(roll, scores)
                ),
            )
            policy = biased_policy(sft_run[0], tok)
            agent = agent_cls(policy, str(sft_run[0]), env, config,
                              tmp_path_factory.mktemp(kind), str(reward_model[0]))  # fmt: skip
            agent.learn()
        assert len(run.sampled) == len(run.scores) == ITERATIONS
        runs[kind] = run
    return runs


# -- the fixture ----------------------------------------------------------------------------------


def test_the_checkpoint_is_shaped_like_a_real_one(pretrained_llama, tok, stops):
    model = AutoModelForCausalLM.from_pretrained(pretrained_llama)
    assert model.config.model_type == "llama"
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert set(model.generation_config.eos_token_id) == stops and len(stops) == 2
    assert model.get_input_embeddings().num_embeddings == len(tok) + PADDED_ROWS
    assert tok.chat_template is not None


# -- offline: the end-of-turn token is a learned target -------------------------------------------


def scored_texts(tok, batches: list[dict]) -> list[tuple[str, str]]:
    """(whole row, the tokens its loss reads) of every row of every recorded batch, decoded."""
    rows = []
    for batch in batches:
        for ids, attention, loss_mask in zip(
            batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
        ):
            row = ids[: int(attention.sum())]
            scored = ids[1:][loss_mask.bool()]
            assert loss_mask[len(row) - 1 :].sum() == 0  # nothing past the row's end (pad = EOS)
            rows.append((tok.decode(row), tok.decode(scored)))
    return rows


def conversations(tok, rows, key: str) -> set[str]:
    return {
        tok.apply_chat_template(r["prompt"] + r[key], tokenize=False) for r in rows
    }  # fmt: skip


def test_sft_scores_the_completion_and_its_end_of_turn_token(sft_run, chat_data, tok):
    rows = [json.loads(line) for line in chat_data["sft"].read_text().splitlines()]
    batches = sft_run[1]
    assert len(batches) == 2  # the two training steps (no held-out set)
    texts = scored_texts(tok, batches)
    assert {whole for whole, _ in texts} <= conversations(tok, rows, "completion")
    for whole, scored in texts:
        # the answer, <|im_end|> (= EOS = pad) and the template's newline; the prompt's own
        # <|im_end|> (after the user turn) is not scored
        assert re.fullmatch(r"\d+<\|im_end\|>\n", scored), scored
        assert whole.count("<|im_end|>") == 2


def test_dpo_scores_both_completions_with_their_end_of_turn(
    sft_run, chat_data, tok, tmp_path, monkeypatch
):
    rows = [json.loads(line) for line in chat_data["pairs"].read_text().splitlines()]
    batches = []
    # the padded rows, to read what is scored (the packed path gives the same log-probs:
    # tests/test_shared_prompts.py)
    offline = agents.data.offline
    monkeypatch.setattr(offline, "pad_batch", recording(batches, offline.pad_batch))
    config = offline_config(DPOConfig, eval_prompts=0, optim=OptimConfig(1e-2), share_prompts=False)
    history = DPO(sft_run[0], None, chat_data["pairs"], config, tmp_path).learn()
    texts = scored_texts(tok, batches)
    both = conversations(tok, rows, "chosen") | conversations(tok, rows, "rejected")
    assert {whole for whole, _ in texts} <= both
    scored = Counter(
        "chosen" if re.fullmatch(r"\d+<\|im_end\|>\n", s) else s for _, s in texts
    )  # fmt: skip
    # the reference pass (36 pairs) and two steps of 12 pairs; chosen and rejected alike
    assert scored == {"chosen": 36 + 24, "I do not know.<|im_end|>\n": 36 + 24}
    assert history[0]["loss/policy"] == pytest.approx(math.log(2), abs=1e-5)  # π = π_ref
    assert history[1]["loss/policy"] < history[0]["loss/policy"]


def test_the_reward_model_trained_and_is_what_the_env_pays(reward_model, online_runs):
    path, history = reward_model
    assert history[-1]["loss/total"] < history[0]["loss/total"]
    scorer = LearnedRewardModel.from_pretrained(path)
    for kind, run in online_runs.items():
        for s in run.sampled:
            expected = torch.from_numpy(scorer.score(s.roll.prompts, s.roll.completions))
            torch.testing.assert_close(s.roll.rewards, expected, rtol=1e-5, atol=1e-5)
            assert s.roll.rewards.std() > 0, kind


# -- online: what the rollouts hold ----------------------------------------------------------------


def rollouts(online_runs, kind) -> list[Rollout]:
    return [s.roll for s in online_runs[kind].sampled]


@pytest.mark.parametrize("kind", sorted(ONLINE))
def test_every_completion_ends_at_a_stop_id_or_the_length_limit(kind, online_runs, tok, stops):
    endings = Counter()
    for roll in rollouts(online_runs, kind):
        for ids, mask, reason in zip(roll.completion_ids, roll.completion_mask,
                                     roll.finish_reasons):  # fmt: skip
            n = int(mask.sum())
            assert mask.tolist() == [1.0] * n + [0.0] * (len(mask) - n)  # a prefix
            generated = ids[:n].tolist()
            assert not stops & set(generated[:-1])  # no stop id before the last token
            if reason == "eos":
                assert generated[-1] in stops
                endings[tok.convert_ids_to_tokens(generated[-1])] += 1
            else:
                assert reason == "length" and n == MAX_NEW_TOKENS
                assert generated[-1] not in stops
                endings["length"] += 1
    assert set(endings) == {"<|im_end|>", "<|endoftext|>", "length"}, endings


@pytest.mark.parametrize("kind", sorted(ONLINE))
def test_no_padded_vocabulary_id_is_sampled(kind, online_runs, tok):
    sampled = online_runs[kind].sampled
    tokens = torch.cat([s.roll.completion_ids[s.roll.completion_mask.bool()] for s in sampled])
    assert len(tokens) > 30 and tokens.max().item() < len(tok)
    # the bias bites: had the padded rows not been cut off, they would have been sampled
    mass = torch.cat([s.padded_mass[s.roll.completion_mask.bool()] for s in sampled])
    assert mass.min().item() > 0.99


@pytest.mark.parametrize("kind", sorted(ONLINE))
def test_the_prompt_ids_are_the_chat_templates(kind, online_runs, tok):
    by_text = {
        tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True): m
        for m in chat_prompts()
    }
    seen = set()
    for roll in rollouts(online_runs, kind):
        width = roll.prompt_width
        for ids, mask, prompt in zip(roll.input_ids[:, :width], roll.attention_mask[:, :width],
                                     roll.prompts):  # fmt: skip
            n = int(mask.sum())
            assert mask.tolist() == [0] * (width - n) + [1] * n  # left-padded
            expected = tok.apply_chat_template(by_text[prompt], add_generation_prompt=True,
                                               tokenize=True)["input_ids"]  # fmt: skip
            assert ids[width - n :].tolist() == list(expected)
            seen.add(prompt)
    assert len(seen) > 1


@pytest.mark.parametrize("kind", sorted(ONLINE))
def test_a_stop_token_is_in_the_loss_mask(kind, online_runs, stops):
    """The stop token that ended an episode is a masked-in, scored token of the update."""
    n_checked = 0
    run = online_runs[kind]
    for s, scores in zip(run.sampled, run.scores):
        roll = s.roll
        for i in roll.terminated.nonzero().flatten().tolist():
            last = int(roll.completion_mask[i].sum()) - 1
            assert roll.completion_ids[i, last].item() in stops
            assert roll.completion_mask[i, last] == 1.0
            assert roll.logprobs[i, last] < 0 and scores[i, last] < 0  # its log-prob is read
            n_checked += 1
    assert n_checked >= 2


@pytest.mark.parametrize("kind", sorted(ONLINE))
def test_recorded_sampling_logprobs_equal_the_recomputed_ones(kind, online_runs):
    run = online_runs[kind]
    for s, scores in zip(run.sampled, run.scores):
        # a fresh full-sequence forward, and the agent's own scoring of the rollout
        torch.testing.assert_close(s.roll.logprobs, s.recomputed, **LOGPROB_TOLERANCE)
        torch.testing.assert_close(s.roll.logprobs, scores, **LOGPROB_TOLERANCE)
        assert (s.roll.logprobs[s.roll.completion_mask.bool()] < 0).all()
