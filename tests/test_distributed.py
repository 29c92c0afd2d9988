"""Data parallelism: two CPU processes (gloo) launched by ``accelerate launch`` train every agent
(``tests/distributed_driver.py``); the processes must end with identical parameters, the run
directories must be written once, a multi-process ``--resume`` must reproduce an uninterrupted
run, and two-process DPO must equal one-process DPO (same global batches)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from agents.harness.distributed import Distributed
from agents.maths.advantages import whiten
from tests import distributed_driver as driver
from tests.tiny_options import tiny_model_argv

DRIVER = Path(driver.__file__)
AGENTS = {
    "sft": ["policy"],
    "rm": ["policy"],
    "dpo": ["policy"],
    "reinforce": ["policy"],
    "ppo-full": ["policy", "critic"],
    "ppo-resumed": ["policy", "critic"],
    "ppo-lora": ["policy", "critic"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, *args: str) -> None:
    """``accelerate launch`` ``script`` on 2 CPU processes (gloo); fail with its output."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), str(script), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(DRIVER.parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("distributed")
    launch(DRIVER, str(out), "first")
    launch(DRIVER, str(out), "resume")
    return out


@pytest.mark.slow
def test_the_dpo_script_runs_unchanged_under_accelerate_launch(two_process_run):
    task = driver.make_task("arithmetic", max_operand=9)
    pairs = two_process_run / "pairs.jsonl"
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in driver.pairs(task)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = two_process_run / "dpo-cli"
    launch(
        DRIVER.parents[1] / "scripts" / "dpo.py", "--policy", str(two_process_run / "sft" / "final"),
        "--pairs", str(pairs), "--task", "none", "--run-dir", str(run), "--max-steps", "3",
        "--batch-size", "8", "--log-every", "1", *tiny_model_argv("dpo"),
    )  # fmt: skip
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [line["examples"] for line in lines] == [8, 16, 24]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / "final" / "model.safetensors").is_file()


def test_single_process_is_the_identity():
    dist = Distributed()
    assert (dist.rank, dist.world_size, dist.is_main) == (0, 1, True)
    assert dist.shard([1, 2, 3]) == [1, 2, 3]
    assert dist.split(np.arange(5)).tolist() == [0, 1, 2, 3, 4]
    assert dist.reduce_metrics({"a": 2.0}) == {"a": 2.0}
    assert dist.mean(torch.tensor([1.0, 2.0, 6.0])) == pytest.approx(3.0)
    dist.check_divisible(batch_size=7)


def test_sizes_that_do_not_split_over_processes_are_refused(monkeypatch):
    dist = Distributed()
    monkeypatch.setattr(dist, "world_size", 4)
    with pytest.raises(ValueError, match="batch_size=6 is a total over all 4 processes"):
        dist.check_divisible(batch_size=6)


@pytest.mark.slow
def test_every_process_ends_with_the_same_parameters(two_process_run):
    fresh = driver.tiny_policy(driver.make_task("arithmetic", max_operand=9).tokenizer())
    init = {k: v.detach() for k, v in fresh.named_parameters()}
    for agent, parts in AGENTS.items():
        for part in parts:
            rank0 = params(two_process_run / agent / part / "rank0.safetensors")
            rank1 = params(two_process_run / agent / part / "rank1.safetensors")
            assert rank0.keys() == rank1.keys()
            for name in rank0:
                assert torch.equal(rank0[name], rank1[name]), f"{agent}/{part}: {name} differs"
        if agent in ("dpo", "reinforce", "ppo-full"):  # trained from the same fresh init
            rank0 = params(two_process_run / agent / "policy" / "rank0.safetensors")
            assert any(not torch.equal(rank0[k], init[k]) for k in init), f"{agent} did not train"
    lora = params(two_process_run / "ppo-lora" / "policy" / "rank0.safetensors")
    adapters = [v for k, v in lora.items() if "lora_B" in k]  # zero-initialised
    assert adapters and any(v.abs().max() > 0 for v in adapters), "the adapters did not train"
    base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in lora.items()
    }
    for name, value in init.items():  # the base weights are frozen
        assert torch.equal(base[name], value), name


@pytest.mark.slow
def test_the_run_directories_are_written_once(two_process_run):
    for agent in ("sft", "rm", "dpo", "reinforce", "ppo-full"):
        run = two_process_run / agent / "run"
        assert len(list(run.glob("events.out.tfevents.*"))) == 1, agent
        assert json.loads((run / "config.json").read_text())["seed"] == 0
    lines = (two_process_run / "ppo-full" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["examples"] for line in lines] == [8, 16, 24, 32]
    sft = (two_process_run / "sft" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["examples"] for line in sft] == [16, 32, 48]
    assert (two_process_run / "ppo-full" / "run" / "final" / "critic").is_dir()


@pytest.mark.slow
def test_multi_process_resume_reproduces_the_uninterrupted_run(two_process_run):
    for part in ("policy", "critic"):
        full = params(two_process_run / "ppo-full" / part / "rank0.safetensors")
        resumed = params(two_process_run / "ppo-resumed" / part / "rank0.safetensors")
        for name in full:
            assert torch.equal(full[name], resumed[name]), f"{part}: {name}"
    history = [
        json.loads(line)
        for line in (two_process_run / "ppo-resumed" / "run" / "metrics.jsonl").open()
    ]
    reference = [
        json.loads(line) for line in (two_process_run / "ppo-full" / "run" / "metrics.jsonl").open()
    ]
    assert [h["examples"] for h in history] == [8, 16, 24, 32]
    assert [h["kl/beta"] for h in history] == [h["kl/beta"] for h in reference]
    assert reference[-1]["kl/beta"] != reference[0]["kl/beta"]  # the controller moved


@pytest.mark.slow
def test_two_process_dpo_equals_one_process_dpo(two_process_run, tmp_path):
    single = driver.dpo(tmp_path)
    two = params(two_process_run / "dpo" / "policy" / "rank0.safetensors")
    for name, value in single.policy.named_parameters():
        torch.testing.assert_close(value.detach(), two[name], atol=1e-6, rtol=0)
    losses = [
        json.loads(line)["loss/total"] for line in (tmp_path / "dpo/run/metrics.jsonl").open()
    ]
    two_losses = [
        json.loads(line)["loss/total"]
        for line in (two_process_run / "dpo/run/metrics.jsonl").open()
    ]
    np.testing.assert_allclose(two_losses, losses, atol=1e-6)


@pytest.mark.slow
def test_whitening_and_metrics_are_reduced_over_processes(two_process_run):
    x, mask = driver.whiten_inputs()
    expected = whiten(x, mask)
    for rank in (0, 1):
        got = load_file(two_process_run / "collectives" / f"rank{rank}.safetensors")
        torch.testing.assert_close(got["white"], expected[got["rows"]], atol=1e-6, rtol=0)
        summary = json.loads((two_process_run / "collectives" / f"rank{rank}.json").read_text())
        assert summary["reduced"] == {
            "reward/train": 0.5,  # mean of 0 and 1
            "episode/tokens": 21.0,  # counts are summed
            "reward/gold": 5.0,  # only rank 1 knows it
        }
        assert summary["mean"] == pytest.approx(2 / 3)  # [0] and [1, 1]


def test_a_checkpoint_only_some_processes_see_is_a_clear_error(monkeypatch, tmp_path):
    dist = Distributed()
    monkeypatch.setattr(dist, "gather_object", lambda found: [found, False, found])
    assert not dist.found_checkpoint(tmp_path / "checkpoint", False)  # nobody has one: fresh
    with pytest.raises(FileNotFoundError, match=r"not to process\(es\) \[1\].*shares"):
        dist.found_checkpoint(tmp_path / "checkpoint", True)
