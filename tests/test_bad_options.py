"""Every bad config value is refused on construction with the right exception type and a message
naming the option and the bad value; the scripts turn such a refusal into a command-line error
(exit status 2, no traceback) before any work starts."""

from __future__ import annotations

import socket

import pytest

import llm_env
from agents.dpo import DPOConfig
from agents.harness.config import OptimConfig
from agents.maths.kl import KLConfig
from agents.models.lora import LoraOptions
from agents.models.policy import SamplingConfig
from agents.ppo import PPO, PPOConfig
from agents.reinforce import ReinforceConfig
from agents.sft import SFTConfig
from scripts import dpo, ppo, reinforce, reward_model, sft

BAD = [  # (config class, keyword arguments, exception, what the message must contain)
    (OptimConfig, {"max_grad_norm": -1}, ValueError, ["max_grad_norm", "-1"]),
    (OptimConfig, {"learning_rate": 0}, ValueError, ["learning_rate", "got 0"]),
    (OptimConfig, {"lr_schedule": "cosine"}, ValueError, ["lr_schedule", "'cosine'"]),
    (SFTConfig, {"batch_size": -1}, ValueError, ["batch_size", "-1"]),
    (SFTConfig, {"batch_size": 0}, ValueError, ["batch_size", "got 0"]),
    (SFTConfig, {"max_length": 0}, ValueError, ["max_length", "got 0"]),
    (DPOConfig, {"epochs": 0}, ValueError, ["epochs", "got 0"]),
    (PPOConfig, {"epochs": 0}, ValueError, ["epochs", "got 0"]),
    (PPOConfig, {"total_prompts": 0}, ValueError, ["total_prompts", "got 0"]),
    (PPOConfig, {"clip_eps": -0.2}, ValueError, ["clip_eps", "-0.2"]),
    (PPOConfig, {"lam": 1.5}, ValueError, ["lam", "1.5"]),
    (PPOConfig, {"save_every": -1}, ValueError, ["save_every", "-1"]),
    (PPOConfig, {"batch_size": True}, TypeError, ["batch_size", "True"]),  # bool is not an int
    (PPOConfig, {"batch_size": 2.5}, TypeError, ["batch_size", "2.5"]),
    (PPOConfig, {"precision": "fp16"}, ValueError, ["precision", "'fp16'"]),
    (KLConfig, {"beta": -1}, ValueError, ["beta", "-1"]),
    (KLConfig, {"kl_estimator": "k4"}, ValueError, ["kl_estimator", "'k4'"]),
    (SamplingConfig, {"top_p": 0}, ValueError, ["top_p", "got 0"]),
    (ReinforceConfig, {"k": 1}, ValueError, ["k=1", "rloo"]),  # the leave-one-out needs k >= 2
    (LoraOptions, {"r": -1}, ValueError, ["lora_r", "-1"]),
]


def case_id(case) -> str:
    cls, kwargs = case[0], case[1]
    return f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


@pytest.mark.parametrize(("cls", "kwargs", "error", "words"), BAD, ids=map(case_id, BAD))
def test_bad_value_names_option_and_value(cls, kwargs, error, words):
    with pytest.raises(error) as info:
        cls(**kwargs)
    assert type(info.value) is error  # not a subclass standing in for it
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


def test_good_values_are_accepted():
    """The table's neighbours pass, so each refusal above is about the value, not the field."""
    OptimConfig(max_grad_norm=0, learning_rate=1e-9)
    SFTConfig(batch_size=1, max_length=2)
    PPOConfig(lam=1.0, clip_eps=0.1, save_every=0, precision="fp32", batch_size=1)
    KLConfig(beta=0, kl_estimator="k3")
    SamplingConfig(top_p=1.0)
    ReinforceConfig(k=1, baseline="none")
    LoraOptions(r=0)


def test_missing_critic_directory_names_the_path_without_the_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(FileNotFoundError) as info:
        PPOConfig(critic_init="no/such/dir")
    assert "critic_init" in str(info.value) and "'no/such/dir'" in str(info.value)


def test_learn_with_zero_prompts_names_total_prompts(arithmetic_tokenizer, tmp_path):
    policy = llm_env.tiny_gpt2(arithmetic_tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)
    config = PPOConfig(batch_size=2, minibatch_size=2, precision="fp32")
    agent = PPO(policy, arithmetic_tokenizer, {"task": "arithmetic"}, config, tmp_path / "run")
    with pytest.raises(ValueError, match=r"total_prompts must be > 0, got 0"):
        agent.learn(total_prompts=0)
    assert agent.step == 0 and not (tmp_path / "run").exists()  # refused before the run started


# -- the command line --------------------------------------------------------------------------------


def script(main) -> str:
    return main.__module__.rsplit(".", 1)[-1]


def cli(main, argv: list[str], option: str, value: str):
    return pytest.param(main, argv, option, value, id=f"{script(main)} {option}={value}")


@pytest.mark.parametrize(
    ("main", "argv", "option", "value"),
    [
        cli(ppo.main, [], "--max-grad-norm", "-1"),
        cli(ppo.main, [], "--lam", "1.5"),
        cli(ppo.main, [], "--critic-init", "no/such/dir"),
        cli(ppo.main, [], "--lora-r", "-1"),
        cli(ppo.main, [], "--kl-estimator", "k4"),
        cli(reinforce.main, [], "--top-p", "0"),
        cli(sft.main, ["--task", "arithmetic", "--out", "{tmp}/o"], "--batch-size", "0"),
        cli(
            reward_model.main,
            ["--policy", "p", "--pairs", "x", "--out", "{tmp}/o"],
            "--epochs",
            "0",
        ),
        cli(dpo.main, ["--policy", "p", "--pairs", "x"], "--beta", "-1"),
    ],
)
def test_cli_config_error_names_the_option_before_any_work(
    main, argv, option, value, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # default run directories land here, if anything is written
    run_dir = tmp_path / "run"
    argv = [a.format(tmp=tmp_path) for a in argv]
    if main is not sft.main:
        argv += ["--run-dir", str(run_dir)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, f"{option}={value}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    field = option[2:].replace("-", "_")  # the message starts with the field: lora_r, beta, ...
    assert f"error: argument {option}: {field}" in err and value in err, err
    assert list(tmp_path.iterdir()) == []  # nothing was trained or written
