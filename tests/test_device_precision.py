"""What a run is placed on and computed in: ``--device``, ``--precision auto`` for the model and
the device, ``--gradient-checkpointing``, and the tiny-model presets that keep the built-in
studies on their old settings. Every device branch runs on the CPU (CUDA monkeypatched in); the
``gpu``-marked test runs where a GPU is."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

import llm_env
from agents.dpo import DPOConfig
from agents.grpo import GRPO, GRPOConfig
from agents.harness.config import AgentConfig, OptimConfig
from agents.harness.distributed import Distributed
from agents.models import precision as precision_module
from agents.models.memory import enable_gradient_checkpointing
from agents.models.precision import autocast, compute_device, resolve_precision
from agents.ppo import PPO, PPOConfig
from agents.presets import TINY_MODEL_OPTIONS, tiny_model_config
from agents.prm import PRMConfig
from agents.reinforce import ReinforceConfig
from agents.reward_model import RewardModelConfig
from agents.sft import SFT, SFTConfig
from llm_env.tasks import Task
from scripts import grpo as grpo_script
from scripts.flags import add_dataclass_args
from scripts.options import config_from_args, reparse_with_defaults
from scripts.train import build_parser
from tests.pretrained import chat_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {"sft": SFTConfig, "reward_model": RewardModelConfig, "prm": PRMConfig,
           "dpo": DPOConfig, "ppo": PPOConfig, "reinforce": ReinforceConfig,
           "grpo": GRPOConfig}  # fmt: skip
PRETRAINED_RATES = {"sft": 2e-5, "reward_model": 1e-4, "prm": 1e-4, "dpo": 1e-6, "ppo": 3e-6,
                    "reinforce": 1e-6, "grpo": 1e-6}  # fmt: skip
OLD_TINY_RATES = {"sft": 2e-3, "reward_model": 5e-4, "prm": 5e-4, "dpo": 3e-4, "ppo": 3e-4,
                  "reinforce": 3e-4, "grpo": 1e-4}  # fmt: skip


def reward(prompts, completions, **kwargs):
    return [float(len(str(c)) % 5) for c in completions]


def plain_env() -> dict:
    task = Task("plain", tuple(p[0]["content"] for p in chat_prompts(8)), (), (), None, 4, 16)
    return {"task": task, "reward_model": reward, "gold_reward_model": None}


@pytest.fixture
def gpu_visible(monkeypatch):
    """CUDA reported present (with bf16), on a machine that may have none."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- defaults and presets -----------------------------------------------------------------------


@pytest.mark.parametrize("agent", sorted(CONFIGS))
def test_defaults_suit_a_pretrained_checkpoint_and_the_preset_keeps_the_old_ones(agent):
    cls = CONFIGS[agent]
    assert cls().optim.learning_rate == PRETRAINED_RATES[agent]
    tiny = tiny_model_config(agent, cls)
    assert tiny.optim.learning_rate == OLD_TINY_RATES[agent]
    # the old optimiser loop and full scoring passes: the tiny models' results bit for bit
    assert cls().optim.fused_adamw and not tiny.optim.fused_adamw
    sampling = getattr(cls(), "sampling", None)
    if sampling is not None:
        assert sampling.share_prompts and not tiny.sampling.share_prompts
    if hasattr(cls(), "share_prompts"):  # DPO: a pair's prompt run once
        assert cls().share_prompts and not tiny.share_prompts
    # the preset holds only what changed: every other option is the agent's default
    groups = {"optim": cls().optim} | ({"sampling": sampling} if sampling is not None else {})
    groups |= {"share_prompts": True} if hasattr(cls(), "share_prompts") else {}
    assert dataclasses.replace(tiny, **groups) == cls()
    assert all(key.split(".")[0] in groups for key in TINY_MODEL_OPTIONS[agent])


def test_tiny_model_config_takes_fields_and_whole_groups():
    config = tiny_model_config("sft", SFTConfig, batch_size=8, seed=3)
    assert (config.batch_size, config.seed, config.optim.learning_rate) == (8, 3, 2e-3)
    assert (config.optim.weight_decay, config.optim.warmup_steps) == (0.01, 20)  # SFT's own
    mine = OptimConfig(learning_rate=1e-3)
    assert tiny_model_config("sft", SFTConfig, optim=mine).optim == mine


def test_a_cli_without_policy_defaults_to_the_tiny_settings_and_explicit_options_win():
    parser = build_parser(GRPOConfig, "tokenmdp grpo", "")
    args = reparse_with_defaults(parser, [], TINY_MODEL_OPTIONS["grpo"])
    assert config_from_args(parser, GRPOConfig, args).optim.learning_rate == 1e-4
    args = reparse_with_defaults(parser, ["--learning-rate", "5e-5"], TINY_MODEL_OPTIONS["grpo"])
    assert config_from_args(parser, GRPOConfig, args).optim.learning_rate == 5e-5


# -- precision ----------------------------------------------------------------------------------


def test_auto_precision_on_the_cpu_depends_on_the_model(pretrained_llama, monkeypatch):
    llama = AutoModelForCausalLM.from_pretrained(pretrained_llama)
    gpt2 = llm_env.tiny_gpt2(llm_env.train_tokenizer(["a b c"] * 3, vocab_size=40), n_layer=1)
    for supports, expected_gpt2 in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda s=supports: s)
        assert resolve_precision("auto", "cpu", llama) == "fp32"  # CPU autocast slows a Llama
        assert resolve_precision("auto", "cpu", gpt2) == expected_gpt2
        assert resolve_precision("auto", model=gpt2) == expected_gpt2  # the model's device
        assert resolve_precision("auto", "cpu", model_type="gpt2") == expected_gpt2
        assert resolve_precision("bf16", "cpu", llama) == "bf16"  # explicit values stand
        assert resolve_precision("fp32", "cpu", gpt2) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu", llama)


def test_auto_precision_on_cuda_is_bf16_where_supported(gpu_visible, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cuda", model_type="llama") == "bf16"
    assert resolve_precision("auto", "cuda:1", model_type="gpt2") == "bf16"
    assert resolve_precision("auto", model_type="llama") == "bf16"  # auto device: the GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda", model_type="llama") == "fp32"


def test_bf16_autocast_covers_the_cpu_and_a_visible_gpu(monkeypatch):
    entered = []

    def fake_autocast(device_type, dtype):
        entered.append((device_type, dtype))
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", fake_autocast)
    for visible, kinds in ((False, ["cpu"]), (True, ["cpu", "cuda"])):
        monkeypatch.setattr(torch.cuda, "is_available", lambda v=visible: v)
        entered.clear()
        with autocast("bf16"):
            pass
        assert entered == [(kind, torch.bfloat16) for kind in kinds]
    entered.clear()
    with autocast("bf16", "cuda:0"), autocast("fp32"):
        pass
    assert entered == [("cuda", torch.bfloat16)]


# -- device -------------------------------------------------------------------------------------


def test_device_option_is_validated_where_it_is_defined(no_gpu):
    with pytest.raises(ValueError, match=r"device cuda needs a CUDA GPU.*--device cpu"):
        AgentConfig(device="cuda")
    with pytest.raises(ValueError, match=r"device must be one of \['auto', 'cpu', 'cuda'\]"):
        AgentConfig(device="tpu")
    assert AgentConfig(device="cpu").device == "cpu" and AgentConfig().device == "auto"
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, GRPOConfig)
    with pytest.raises(SystemExit):
        config_from_args(parser, GRPOConfig, parser.parse_args(["--device", "cuda"]))


def test_the_cli_names_the_device_option(no_gpu, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        grpo_script.main(["--device", "cuda", "--run-dir", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "argument --device: device cuda needs a CUDA GPU" in capsys.readouterr().err


def test_compute_device(monkeypatch, no_gpu):
    assert (compute_device(), compute_device("auto"), compute_device("cpu")) == ("cpu",) * 3
    with pytest.raises(ValueError, match="device cuda needs a CUDA GPU"):
        compute_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (compute_device(), compute_device("cuda"), compute_device("cpu")) == (
        "cuda", "cuda", "cpu",
    )  # fmt: skip


class FakeAccelerator:
    """What ``Distributed`` reads of ``accelerate.Accelerator``, on a chosen device."""

    device_type = "cuda"
    num_processes = 1

    def __init__(self, cpu: bool = False):
        from accelerate.utils import DistributedType

        self.device = torch.device("cpu" if cpu else self.device_type)
        self.distributed_type = DistributedType.NO
        self.process_index, self.is_main_process = 0, True


@pytest.fixture
def fake_accelerator(monkeypatch, gpu_visible):
    import accelerate

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    return FakeAccelerator


def test_distributed_places_on_the_requested_device(fake_accelerator, monkeypatch):
    assert Distributed().device == torch.device("cuda")  # auto: the process's GPU
    assert Distributed("cuda").device == torch.device("cuda")
    assert Distributed("cpu").device == torch.device("cpu")  # the GPU left alone
    model = torch.nn.Linear(2, 2)
    Distributed("cpu").place(model)
    assert model.weight.device == torch.device("cpu")
    monkeypatch.setattr(fake_accelerator, "num_processes", 2)
    with pytest.raises(ValueError, match="device='cpu' under a multi-GPU launch"):
        Distributed("cpu")
    monkeypatch.setattr(fake_accelerator, "device_type", "cpu")
    with pytest.raises(ValueError, match="accelerate runs this process on the CPU"):
        Distributed("cuda")


def test_agents_train_on_their_configs_device(fake_accelerator, arithmetic_tokenizer, tmp_path):
    """With a GPU 'visible', ``device="cpu"`` keeps every model of an offline and an online
    agent on the CPU (``auto`` would move them to the fake GPU and fail)."""
    tok = arithmetic_tokenizer
    policy = llm_env.tiny_gpt2(tok, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    sft = SFT(policy, tok, [("1+1=", "2")] * 4, SFTConfig(device="cpu", batch_size=2,
              max_steps=1, heldout_fraction=0.0), tmp_path / "sft")  # fmt: skip
    assert sft.dist.device == torch.device("cpu")
    config = PPOConfig(device="cpu", batch_size=2, minibatch_size=2, precision="fp32")
    env = {"task": "arithmetic", "task_kwargs": {"max_operand": 9}}
    ppo = PPO(llm_env.tiny_gpt2(tok, n_layer=1, n_head=2, n_embd=32, n_positions=32), tok, env,
              config, tmp_path / "ppo")  # fmt: skip
    models = [ppo.policy, ppo.ref, ppo.critic]
    assert {p.device.type for m in models for p in m.parameters()} == {"cpu"}


@pytest.mark.gpu
def test_grpo_trains_on_the_gpu(pretrained_llama, tmp_path):
    config = GRPOConfig(device="cuda", batch_size=2, group_size=2, minibatch_size=4,
                        total_prompts=2, save_every=0,
                        optim=OptimConfig(learning_rate=1e-3))  # fmt: skip
    agent = GRPO(str(pretrained_llama), None, plain_env(), config, tmp_path)
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    history = agent.learn()
    assert agent.policy.device.type == "cuda" and agent.ref.device.type == "cuda"
    assert agent.precision == "bf16" or not torch.cuda.is_bf16_supported()
    assert torch.isfinite(torch.tensor(history[-1]["loss/total"]))
    assert any(not torch.equal(v, before[k]) for k, v in agent.policy.state_dict().items())


# -- gradient checkpointing ---------------------------------------------------------------------


def gradients(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, use_cache=False).logits
    torch.log_softmax(logits.float(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradient_checkpointing_gives_the_same_gradients(pretrained_llama, mode):
    """In train mode (offline agents) and eval mode (online agents: no dropout, π_θ/π_old = 1)."""
    ids = torch.randint(0, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    plain = AutoModelForCausalLM.from_pretrained(pretrained_llama).train(mode == "train")
    checkpointed = AutoModelForCausalLM.from_pretrained(pretrained_llama).train(mode == "train")
    enable_gradient_checkpointing(checkpointed)
    enable_gradient_checkpointing(checkpointed)  # idempotent
    layers = checkpointed.model.layers
    assert all(len(layer._forward_pre_hooks) == 1 for layer in layers)
    calls = []
    for layer in layers:
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, f=inner, **k: calls.append(1) or f(*a, **k)
    expected, got = gradients(plain, ids), gradients(checkpointed, ids)
    assert len(calls) == len(layers)  # every layer was checkpointed, in either mode
    assert expected.keys() == got.keys() and len(got) > 0
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert all(layer.training == (mode == "train") for layer in layers)  # the mode is restored
    with torch.no_grad():
        checkpointed(input_ids=ids)
    assert len(calls) == len(layers)  # no gradients: no checkpointing


def checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def train_grpo(policy_dir, run_dir, checkpointing: bool):
    config = GRPOConfig(batch_size=2, group_size=2, minibatch_size=4, total_prompts=4,
                        save_every=0, gradient_checkpointing=checkpointing,
                        optim=OptimConfig(learning_rate=1e-3))  # fmt: skip
    agent = GRPO(str(policy_dir), None, plain_env(), config, run_dir)
    agent.learn()
    return agent


def test_an_online_agent_with_gradient_checkpointing_trains_the_same(pretrained_llama, tmp_path):
    plain = train_grpo(pretrained_llama, tmp_path / "plain", False)
    checkpointed = train_grpo(pretrained_llama, tmp_path / "checkpointed", True)
    assert checkpointing(checkpointed.policy) and checkpointed.precision == "fp32"
    assert not checkpointing(plain.policy) and not checkpointing(checkpointed.ref)
    start = AutoModelForCausalLM.from_pretrained(pretrained_llama).state_dict()
    ours, theirs = checkpointed.policy.state_dict(), plain.policy.state_dict()
    assert any(not torch.equal(ours[k], start[k]) for k in start)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)


def test_ppo_checkpoints_its_critic_backbone_too(pretrained_llama, tmp_path):
    config = PPOConfig(batch_size=2, minibatch_size=2, gradient_checkpointing=True)
    ppo = PPO(str(pretrained_llama), None, plain_env(), config, tmp_path)
    assert checkpointing(ppo.policy) and checkpointing(ppo.critic.backbone)
