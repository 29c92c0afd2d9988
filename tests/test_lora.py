"""LoRA adapters on PPO, REINFORCE and DPO: the closed-form optimum of the toy MDP, only the
adapters train while the reference is the shared base weights (no copy), the merged final
model, exact resume, DPO's reference log-probs, the command-line options and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import llm_env
from agents.dpo import DPO, DPOConfig
from agents.harness.checkpoint import load_checkpoint_state
from agents.harness.config import OptimConfig
from agents.maths.kl import KLConfig
from agents.models.lora import (
    ADAPTER_DIR,
    BaseWeightsReference,
    LoraOptions,
    trainable_parameters,
    unwrap,
    with_lora,
)
from agents.ppo import PPO, PPOConfig
from agents.reinforce import Reinforce, ReinforceConfig
from reward_models.base import FunctionRewardModel
from scripts import dpo as dpo_script
from scripts import train as train_script
from scripts.flags import dataclass_from_args
from tests import toy
from tests.helpers import sequence_logp
from tests.interrupt import learn_until_killed

# an untrained policy never answers right (reward 0 everywhere, nothing to learn): reward length
ARITH = {
    "task": "arithmetic",
    "task_kwargs": {"max_operand": 9},
    "reward_model": FunctionRewardModel(lambda p, c: [len(x) / 4 for x in c], "length"),
}
VOLATILE = ("perf/", "time/")
IDS = torch.tensor([[4, 5, 6, 7, 8]])


def tiny(tokenizer, seed: int = 0):
    return llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32, seed=seed)


def with_expressive_head(model, scale: float = 6.0):
    """``model`` with its token embeddings (tied to the output head) scaled by ``scale``.

    A freshly initialised GPT-2 (embedding std 0.02) has logits within about ±0.6 whatever its
    hidden state: its output head is tied to those embeddings and follows a LayerNorm, so
    adapters below the frozen head cannot move log-probs by more than about a nat. A pre-trained
    model's head is not that flat; scaling the embeddings stands in for pre-training here.
    """
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(scale)
    return model


def small_ppo(optim=None, kl=None, lora=None, **overrides) -> PPOConfig:
    base = dict(
        batch_size=16, minibatch_size=8, epochs=2, precision="fp32", save_every=0, log_every=1,
        total_prompts=32,
    )  # fmt: skip
    return PPOConfig(**{**base, **overrides}, **groups(optim, kl, lora))


def small_reinforce(optim=None, kl=None, lora=None, **overrides) -> ReinforceConfig:
    base = dict(batch_size=4, k=4, precision="fp32", save_every=0, log_every=1, total_prompts=8)
    return ReinforceConfig(**{**base, **overrides}, **groups(optim, kl, lora))


def groups(optim: dict | None, kl: dict | None, lora: dict | None) -> dict:
    """The option groups of the small configs: lr 1e-2, rank-4 adapters unless overridden."""
    return {
        "optim": OptimConfig(**{"learning_rate": 1e-2, **(optim or {})}),
        "kl": KLConfig(**(kl or {})),
        "lora": LoraOptions(**{"r": 4, **(lora or {})}),
    }


def lora_params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def stable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith(VOLATILE)} for h in history]


@pytest.mark.slow
def test_lora_ppo_reaches_closed_form_optimum_on_two_token_toy(tmp_path):
    """The toy of ``test_ppo``, same β, adapters only, over a base with an
    expressive head (``with_expressive_head``): over the plain fresh GPT-2 no adapter can move
    π(y) by the factor e^(r/β) ≈ 20 the optimum needs (TV stays ≈ 0.32)."""
    task = toy.toy_task(max_new_tokens=2)
    tokenizer = task.tokenizer()
    policy = llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=16, seed=2)
    policy = with_expressive_head(policy)
    seqs = toy.completions(len(tokenizer), tokenizer.eos_token_id, 2)
    rewards = toy.rewards_of(task, seqs)
    beta = 0.5
    ref_probs = toy.sequence_probs(policy, tokenizer, seqs)
    target = toy.optimum(ref_probs, rewards, beta)
    assert toy.total_variation(ref_probs, target) > 0.25  # 0.30
    config = small_ppo(
        batch_size=64, minibatch_size=32, epochs=4, lam=1.0, total_prompts=64 * 80,
        optim={"learning_rate": 5e-3, "lr_schedule": "linear"}, kl={"beta": beta},
        lora={"r": 8, "alpha": 16.0},
    )  # fmt: skip
    agent = PPO(policy, tokenizer, toy.toy_env_kwargs(task), config, run_dir=tmp_path / "ppo")
    agent.learn()
    tv = toy.total_variation(toy.sequence_probs(agent.policy, tokenizer, seqs), target)
    print(f"LoRA PPO toy TV = {tv:.4f}")
    # TV over seeds 0-5 (one thread): 0.034-0.053 with the defaults (shared-prompt scoring,
    # fused AdamW), 0.029-0.036 without them; the gradients agree to rounding, and rounding
    # alone sends the sampled trajectory elsewhere after a few iterations
    assert tv <= 0.06
    # the reference stayed the base model
    np.testing.assert_allclose(toy.sequence_probs(agent.ref, tokenizer, seqs), ref_probs, atol=1e-6)


@pytest.mark.parametrize(
    "agent_cls, config", [(PPO, small_ppo()), (Reinforce, small_reinforce())], ids=["ppo", "rloo"]
)
def test_only_adapters_train_and_the_reference_is_the_shared_base(
    agent_cls, config, arithmetic_tokenizer, tmp_path
):
    policy = tiny(arithmetic_tokenizer)
    base = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.no_grad():
        base_logits = policy(IDS).logits
    embedding = policy.get_input_embeddings().weight
    agent = agent_cls(policy, arithmetic_tokenizer, ARITH, config, run_dir=tmp_path / "run")

    # no second copy: the reference is a view of the policy, holding no parameters of its own
    assert isinstance(agent.ref, BaseWeightsReference) and agent.ref.policy is agent.policy
    assert list(agent.ref.parameters()) == []
    assert unwrap(agent.policy).get_input_embeddings().weight.data_ptr() == embedding.data_ptr()
    trainable = trainable_parameters(agent.policy)
    assert trainable and all(
        "lora_" in n for n, p in agent.policy.named_parameters() if p.requires_grad
    )
    optimizer = agent.optimizers["policy"][0]
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in trainable
    }
    if agent_cls is PPO:  # the critic is a plain, fully trainable copy of the base transformer
        assert all(p.requires_grad for p in agent.critic.parameters())
        assert not any("lora_" in n for n, _ in agent.critic.named_parameters())
        critic_embedding = agent.critic.backbone.get_input_embeddings().weight
        assert critic_embedding.data_ptr() != embedding.data_ptr()

    before = lora_params(agent.policy)
    history = agent.learn()
    after = lora_params(agent.policy)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    lm = unwrap(agent.policy)
    for name, value in lm.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, base[name.replace("base_layer.", "")]), name
    with torch.no_grad():
        assert torch.equal(agent.ref(IDS).logits, base_logits)
        assert not torch.allclose(agent.policy(IDS).logits, base_logits, atol=1e-4)
    assert history[-1]["kl/exact"] > 0

    # a reference forward neither freezes the adapters nor changes the policy's mode
    agent.policy.train()
    with torch.no_grad():
        agent.ref(IDS)
    assert agent.policy.training and all(m.training for m in agent.policy.modules())
    assert all(p.requires_grad for p in trainable)


def test_final_dir_is_a_merged_plain_model_plus_the_adapter(arithmetic_tokenizer, tmp_path):
    agent = PPO(tiny(arithmetic_tokenizer), arithmetic_tokenizer, ARITH, small_ppo(), tmp_path)
    agent.learn()
    assert json.loads((tmp_path / "config.json").read_text())["lora"]["r"] == 4
    final = tmp_path / "final"
    with safe_open(final / "model.safetensors", framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k or "base_layer" in k for k in keys)
    loaded = AutoModelForCausalLM.from_pretrained(final)
    assert not isinstance(loaded, PeftModel)
    with torch.no_grad():
        adapted = agent.policy(IDS).logits
        torch.testing.assert_close(loaded(IDS).logits, adapted, atol=1e-5, rtol=0)
        assert not torch.allclose(tiny(arithmetic_tokenizer)(IDS).logits, adapted, atol=1e-4)
        # the adapter alone, over the same base, gives the same policy
        again = PeftModel.from_pretrained(tiny(arithmetic_tokenizer), final / ADAPTER_DIR)
        torch.testing.assert_close(again(IDS).logits, adapted, atol=1e-6, rtol=0)
    # the live policy keeps its adapters
    assert isinstance(agent.policy, PeftModel) and trainable_parameters(agent.policy)


def test_lora_resume_after_kill_reproduces_uninterrupted_run(tmp_path, arithmetic_tokenizer):
    def make(run_dir, resume=False):
        config = small_ppo(
            save_every=2,
            resume=resume,
            total_prompts=16 * 5,
            kl={"kl_target": 0.5, "kl_horizon": 100},
        )
        return PPO(tiny(arithmetic_tokenizer), arithmetic_tokenizer, ARITH, config, run_dir=run_dir)

    full = make(tmp_path / "full")
    reference = full.learn()

    learn_until_killed(make(tmp_path / "resumed"), step=4)
    checkpoint = tmp_path / "resumed" / "checkpoint"
    assert load_checkpoint_state(checkpoint)["step"] == 2
    assert (checkpoint / "policy" / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "policy" / "model.safetensors").exists()  # adapters only

    resumed = make(tmp_path / "resumed", resume=True)
    history = resumed.learn()
    assert len(history) == 5 and stable(history) == stable(reference)
    for (name, a), b in zip(full.policy.named_parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(full.critic.parameters(), resumed.critic.parameters()):
        assert torch.equal(a, b)


def test_dpo_with_lora_trains_adapters_against_the_base(arithmetic_tokenizer, tmp_path):
    tok = arithmetic_tokenizer
    rows = [(f"{a}+{b}=", str(a + b), str(a + b + 1)) for a in range(1, 5) for b in range(1, 5)]
    model = with_expressive_head(tiny(tok))
    model.eval()
    base_chosen = [sequence_logp(model, tok, p, c) for p, c, _ in rows]
    base_rejected = [sequence_logp(model, tok, p, r) for p, _, r in rows]
    config = DPOConfig(
        batch_size=8, epochs=10.0, log_every=1, save_every=100, eval_prompts=0, beta=1.0,
        optim=OptimConfig(learning_rate=2e-2, lr_schedule="linear"), lora=LoraOptions(r=4),
    )  # fmt: skip
    dpo = DPO(model, tok, rows, config, tmp_path / "run")
    assert dpo.ref_dir is None and isinstance(dpo.reference_model(), BaseWeightsReference)
    lora_b = [p for name, p in dpo.policy.named_parameters() if "lora_B" in name]
    with torch.no_grad():  # adapters that already moved must not leak into the reference
        for p in lora_b:
            p.normal_(0, 0.1)
    chosen, rejected = dpo.reference_logps()
    np.testing.assert_allclose(chosen, base_chosen, rtol=1e-5)
    np.testing.assert_allclose(rejected, base_rejected, rtol=1e-5)
    with torch.no_grad():
        for p in lora_b:
            p.zero_()

    history = dpo.learn()
    np.testing.assert_allclose(dpo.ref_chosen_logps, base_chosen, rtol=1e-5)
    losses = [h["loss/total"] for h in history]
    assert losses[0] == pytest.approx(np.log(2), abs=0.05)  # initial policy == reference
    print(f"LoRA DPO loss {losses[0]:.4f} -> {losses[-1]:.4f}", history[-1]["dpo/reward_accuracy"])
    assert losses[-1] < losses[0] - 0.1
    assert history[-1]["dpo/reward_accuracy"] > 0.7
    assert not (tmp_path / "run" / "reference").exists()  # no copy of the reference on disk
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    with torch.no_grad():
        torch.testing.assert_close(final(IDS).logits, dpo.policy(IDS).logits, atol=1e-5, rtol=0)


def test_command_line_options_parse_into_the_configs():
    argv = ["--lora-r", "4", "--lora-target-modules", "c_attn,c_proj", "--lora-alpha", "8"]
    parser = train_script.build_parser(PPOConfig, "tokenmdp ppo", "")
    config = dataclass_from_args(PPOConfig, parser.parse_args(argv))
    assert (config.lora.r, config.lora.alpha, config.lora.target_modules) == (
        4,
        8.0,
        "c_attn,c_proj",
    )
    assert "--lora-r" in parser.format_help() and "full fine-tuning" in parser.format_help()
    parser = train_script.build_parser(ReinforceConfig, "tokenmdp reinforce", "")
    assert dataclass_from_args(ReinforceConfig, parser.parse_args(argv)).lora.r == 4
    args = dpo_script.build_parser().parse_args(["--policy", "p", "--pairs", "x.jsonl", *argv])
    config = dataclass_from_args(DPOConfig, args)
    assert (config.lora.r, config.lora.target_modules) == (4, "c_attn,c_proj")
    assert (
        dataclass_from_args(
            PPOConfig, train_script.build_parser(PPOConfig, "p", "").parse_args([])
        ).lora.r
        == 0
    )


def test_bad_lora_options(arithmetic_tokenizer):
    with pytest.raises(ValueError, match="lora_r must be >= 0, got -1"):
        LoraOptions(r=-1)
    with pytest.raises(ValueError, match=r"lora_dropout must be in \[0.0, 1.0\), got 1.5"):
        LoraOptions(r=4, dropout=1.5)
    policy = tiny(arithmetic_tokenizer)
    with pytest.raises(ValueError, match=r"\['q_proj'\] match none .*: c_attn, c_fc, c_proj"):
        with_lora(policy, LoraOptions(r=4, target_modules="c_attn,q_proj"))
    with pytest.raises(ValueError, match="lm_head.*output head is never adapted"):
        with_lora(policy, LoraOptions(r=4, target_modules="lm_head"))
    assert with_lora(policy, LoraOptions(r=0)) is policy
    adapted = with_lora(policy, LoraOptions(r=2, target_modules="c_attn"))
    names = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert names and all(".attn.c_attn.lora_" in n for n in names)


# -- all-linear on every architecture ------------------------------------------------------------

LLAMA_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")  # fmt: skip


def adapted_layers(model) -> set[str]:
    """Full names (in the transformers model) of the layers carrying a LoRA adapter."""
    return {n.rsplit(".lora_A", 1)[0] for n, _ in unwrap(model).named_modules() if
            n.endswith(".lora_A")}  # fmt: skip


def test_all_linear_adapts_every_projection_of_a_llama_and_its_reference_is_the_base(
    pretrained_llama,
):
    base = AutoModelForCausalLM.from_pretrained(pretrained_llama).eval()
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    policy = with_lora(AutoModelForCausalLM.from_pretrained(pretrained_llama), LoraOptions(r=4))
    layers = range(base.config.num_hidden_layers)
    want = {f"model.layers.{i}.{p}" for i in layers for p in LLAMA_PROJECTIONS}
    assert adapted_layers(policy) == want  # the tied head (lm_head) is left alone
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # the adapters now change the policy's output
        assert not torch.equal(policy(input_ids=ids).logits, expected)
        reference = BaseWeightsReference(policy)
        assert torch.equal(reference(ids).logits, expected)


@pytest.mark.parametrize("architecture", ["qwen2", "mistral"])
def test_all_linear_finds_the_projections_of_other_architectures(architecture, tmp_path):
    from tests.pretrained import build_pretrained

    path = build_pretrained(tmp_path, architecture)
    policy = with_lora(AutoModelForCausalLM.from_pretrained(path), LoraOptions(r=2))
    want = {f"model.layers.{i}.{p}" for i in range(2) for p in LLAMA_PROJECTIONS}
    assert adapted_layers(policy) == want


def test_all_linear_on_gpt2_takes_its_conv1d_layers_and_never_the_tied_head(arithmetic_tokenizer):
    policy = with_lora(tiny(arithmetic_tokenizer), LoraOptions(r=2))
    want = {f"transformer.h.0.{p}" for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                             "mlp.c_proj")}  # fmt: skip
    assert adapted_layers(policy) == want
    untied = llm_env.models.causal_lm("gpt2", arithmetic_tokenizer, hidden_size=16, num_layers=1,
                                      num_heads=2, tie_word_embeddings=False)  # fmt: skip
    assert "lm_head" not in adapted_layers(with_lora(untied, LoraOptions(r=2)))
