"""The agent contract, checked the same way for every agent of ``agents.registry`` (SFT, reward
model, PRM, PPO, REINFORCE, GRPO, DPO, online DPO): save → load round trip, seeded determinism, kill-and-resume reproducing an uninterrupted
run, checkpoint provenance, the final model; and the resume refusals (another agent's or
config's checkpoint, incomplete or corrupt checkpoints), resume without a checkpoint, and
TensorBoard events without duplicated steps after a resume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import llm_env
from agents.harness.checkpoint import STATE_FILE, CheckpointError, load_checkpoint_state
from agents.harness.config import OptimConfig, fingerprint_hash, resume_fingerprint
from agents.harness.run import CHECKPOINT_DIR, FINAL_DIR
from agents.maths.kl import KLConfig
from agents.registry import agent_spec, names
from tests.interrupt import learn_until_killed

KINDS = names()
AGENTS = {kind: agent_spec(kind).agent_class() for kind in KINDS}
ONLINE = names(kind="online")
STEPS = 4  # every tiny run below is 4 loop steps, checkpointed every 2
# character-count reward: a signal on every sample (the untrained policy never gets a sum right)
ARITH = {
    "task": "arithmetic",
    "task_kwargs": {"max_operand": 9},
    "reward_model": "tests.test_env_bad_input:score_by_length",
}
SUMS = [(a, b) for a in range(1, 5) for b in range(1, 5)]
SFT_DATA = [(f"{a}+{b}=", str((a + b) % 10)) for a, b in SUMS]
PAIRS = [(f"{a}+{b}=", str((a + b) % 10), str((a + b + 1) % 10)) for a, b in SUMS]
# stepwise supervision: two "steps" per sum, the answer and a claim about it
STEP_ROWS = [
    {"prompt": f"{a}+{b}=", "completions": [str(a + b), str(a + b + c)], "labels": [True, c == 0]}
    for a, b in SUMS
    for c in (0, 1)
]
IDS = torch.tensor([[4, 5, 6, 7], [7, 6, 5, 4]])
VOLATILE = ("perf/", "time/")


def config_for(kind: str, resume: bool = False, **overrides):
    """A tiny config of ``STEPS`` steps; ``overrides``: top-level fields, or ``learning_rate``."""
    every = {"save_every": 2, "log_every": 1, "resume": resume}
    optim = OptimConfig(learning_rate=overrides.pop("learning_rate", 1e-3))
    cls = agent_spec(kind).config_class()
    if kind not in ONLINE:
        extra = {"heldout_fraction": 0.2, "max_length": 8} if kind == "sft" else {}
        extra |= {"eval_prompts": 0} if kind == "dpo" else {}
        extra |= {"step_separator": "="} if kind == "prm" else {}
        base = dict(batch_size=4, epochs=3.0, max_steps=STEPS, **extra)
        return cls(**{**base, **every, **overrides}, optim=optim)
    base = ONLINE_SIZES[kind]  # a new online agent: add its tiny sizes there
    # a moving β: the KL controller's state must survive a resume too
    kl = KLConfig(beta=0.1, kl_target=0.5, kl_horizon=50)
    return cls(**{**base, "precision": "fp32", **every, **overrides}, optim=optim, kl=kl)


ONLINE_SIZES = {
    "ppo": dict(batch_size=4, minibatch_size=2, epochs=1, total_prompts=4 * STEPS),
    "grpo": dict(batch_size=2, group_size=2, minibatch_size=2, total_prompts=2 * STEPS),
    "reinforce": dict(batch_size=2, k=2, minibatch_size=4, total_prompts=2 * STEPS),
    # two rounds: the round and the reference it swaps in must survive a resume; random labels:
    # so must the generator that draws them
    "online_dpo": dict(batch_size=2, k=2, total_prompts=2 * STEPS, rounds=2,
                       labels="bradley_terry"),
}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def policy_dir(arithmetic_tokenizer, tmp_path_factory) -> Path:
    """The reward model's initial weights: a tiny GPT-2 saved with its tokenizer."""
    path = tmp_path_factory.mktemp("rm-init")
    tiny(arithmetic_tokenizer).save_pretrained(path)
    arithmetic_tokenizer.save_pretrained(path)
    return path


def tiny(tokenizer):
    return llm_env.tiny_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=32)


@pytest.fixture(scope="module")
def make(arithmetic_tokenizer, policy_dir):
    """``make(kind, run_dir, resume=False, **overrides)``: a fresh agent on a fresh tiny model."""

    def build(kind: str, run_dir: Path, resume: bool = False, **overrides):
        config = config_for(kind, resume, **overrides)
        tok, cls = arithmetic_tokenizer, AGENTS[kind]
        if kind in ONLINE:  # every online agent: policy, tokenizer, env, config, run directory
            return cls(tiny(tok), tok, ARITH, config, run_dir)
        if kind in ("reward_model", "prm"):  # scorers start from a saved model
            return cls(policy_dir, PAIRS if kind == "reward_model" else STEP_ROWS, config, run_dir)
        return cls(tiny(tok), tok, SFT_DATA if kind == "sft" else PAIRS, config, run_dir)

    return build


def load(kind: str, path: Path, run_dir: Path):
    """``X.load(path, ...)`` of each agent, with the same tiny config."""
    config = config_for(kind)
    if kind in ONLINE:
        return AGENTS[kind].load(path, env_kwargs=ARITH, config=config, run_dir=run_dir)
    return AGENTS[kind].load(path, None, config, run_dir)


@pytest.fixture(scope="module")
def trained(make, tmp_path_factory):
    """``trained(kind)``: one uninterrupted run per agent (cached), and its history."""
    runs = {}

    def get(kind: str):
        if kind not in runs:
            agent = make(kind, tmp_path_factory.mktemp(f"full-{kind}"))
            runs[kind] = agent, agent.learn()
        return runs[kind]

    return get


@torch.no_grad()
def outputs(kind: str, agent) -> dict[str, torch.Tensor]:
    """What the trained model computes: policy logits, reward scores, critic values."""
    if kind == "reward_model":
        agent.model.eval()
        return {"scores": agent.scores(["1+2=", "3+4=", "2+2="], ["3", "7", "5"])}
    if kind == "prm":
        return {"step_probabilities": torch.from_numpy(agent.step_probabilities(STEP_ROWS))}
    agent.policy.eval()
    out = {"logits": agent.policy(IDS).logits}
    if kind == "ppo":
        out["values"] = agent.critic(IDS, torch.ones_like(IDS))
    return out


def weights(agent, saved_only: bool = False) -> dict[str, torch.Tensor]:
    """Every checkpointed model's parameters, by model and name; ``saved_only``: those
    ``save()`` writes (not a run's changing reference: iterative DPO's, a later round's)."""
    return {
        f"{name}.{p}": t.detach()
        for name, model in agent._models().items()
        if not (saved_only and name == "reference")
        for p, t in model.named_parameters()
    }


def assert_same_weights(a, b, saved_only: bool = False) -> None:
    wa, wb = weights(a, saved_only), weights(b, saved_only)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"parameters differ: {different[:5]}"


def stable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.startswith(VOLATILE)} for h in history]


def copy_run(kind: str, trained, tmp_path: Path) -> Path:
    """A copy of ``kind``'s finished run directory (to damage or resume without touching it)."""
    source = trained(kind)[0].run_dir
    return Path(shutil.copytree(source, tmp_path / f"copy-{kind}"))


# -- the contract, for every agent -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_gives_the_same_outputs(kind, trained, tmp_path):
    agent, _ = trained(kind)
    loaded = load(kind, agent.save(tmp_path / "saved"), tmp_path / "run")
    mine, theirs = outputs(kind, agent), outputs(kind, loaded)
    assert theirs.keys() == mine.keys() and len(mine) == (2 if kind == "ppo" else 1)
    for key in mine:
        assert torch.equal(theirs[key], mine[key]), key
    assert_same_weights(loaded, agent, saved_only=True)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_bit_identical_weights(kind, make, trained, tmp_path):
    first, history = trained(kind)
    assert len(history) == STEPS and history[-1]["step"] == STEPS
    second = make(kind, tmp_path / "again")
    untrained = weights(make(kind, tmp_path / "untrained"))
    assert any(not torch.equal(untrained[k], v) for k, v in weights(first).items())  # it trained
    assert stable(second.learn()) == stable(history)
    assert_same_weights(first, second)


@pytest.mark.parametrize("kind", KINDS)
def test_kill_and_resume_matches_an_uninterrupted_run(kind, make, trained, tmp_path):
    full, full_history = trained(kind)
    run_dir = tmp_path / "cut"
    learn_until_killed(make(kind, run_dir), step=3)  # steps 1-2 done, checkpoint of step 2
    assert load_checkpoint_state(run_dir / CHECKPOINT_DIR)["step"] == 2
    assert not (run_dir / FINAL_DIR).exists()
    resumed = make(kind, run_dir, resume=True)
    history = resumed.learn()
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert stable(history) == stable(full_history)
    assert_same_weights(full, resumed)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_records_provenance(kind, trained):
    agent, _ = trained(kind)
    state = load_checkpoint_state(agent.run_dir / CHECKPOINT_DIR)
    assert state["provenance"]["agent"] == AGENTS[kind].agent_name == kind
    assert state["provenance"]["hash"] == fingerprint_hash(resume_fingerprint(config_for(kind)))
    assert state["step"] == STEPS


@pytest.mark.parametrize("kind", KINDS)
def test_final_model_exists_and_loads(kind, trained, tmp_path):
    agent, _ = trained(kind)
    final = agent.run_dir / FINAL_DIR
    assert (final / "config.json").is_file()
    loaded = load(kind, final, tmp_path)
    for key, value in outputs(kind, agent).items():
        assert torch.equal(outputs(kind, loaded)[key], value), key


POLICY_ONLY = {"sft", "dpo", "reinforce", "grpo", "online_dpo"}
"""The agents whose saved files are their policy alone (PPO adds its critic, the scorers their
heads): their ``final/`` reuses the last checkpoint's files instead of writing them again."""


@pytest.mark.parametrize("kind", KINDS)
def test_final_links_the_last_checkpoints_policy_files_when_they_are_the_same(kind, trained):
    agent, _ = trained(kind)  # STEPS = 4 with save_every = 2: a checkpoint at the last step
    final = agent.run_dir / FINAL_DIR
    policy = agent.run_dir / CHECKPOINT_DIR / "policy"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        linked = (policy / name).is_file() and os.path.samefile(final / name, policy / name)
        assert linked == (kind in POLICY_ONLY), (kind, name)


# -- resume refusals and resume without a checkpoint -------------------------------------------------


@pytest.mark.parametrize(("writer", "reader"), [("sft", "dpo"), ("dpo", "sft")])
def test_resume_refuses_another_agents_checkpoint(writer, reader, make, trained, tmp_path):
    run_dir = copy_run(writer, trained, tmp_path)
    agent = make(reader, run_dir, resume=True)
    with pytest.raises(CheckpointError) as error:
        agent.learn()
    assert f"{writer!r} agent" in str(error.value) and f"not {reader!r}" in str(error.value)
    assert agent.step == 0


def test_dpo_resume_needs_the_reference_its_start_wrote(make, trained, tmp_path):
    run_dir = copy_run("dpo", trained, tmp_path)
    shutil.rmtree(run_dir / "reference")
    with pytest.raises(FileNotFoundError, match="the run's reference .*reference is missing"):
        make("dpo", run_dir, resume=True).learn()


@pytest.mark.parametrize(
    ("kind", "change", "field", "before", "after"),
    [
        ("sft", {"batch_size": 8}, "batch_size", "4", "8"),
        ("reward_model", {"learning_rate": 2e-3}, "optim.learning_rate", "0.001", "0.002"),
        ("ppo", {"clip_eps": 0.1}, "clip_eps", "0.2", "0.1"),
    ],
)
def test_resume_refuses_a_changed_config(
    kind, change, field, before, after, make, trained, tmp_path
):
    run_dir = copy_run(kind, trained, tmp_path)
    with pytest.raises(CheckpointError, match="another config") as error:
        make(kind, run_dir, resume=True, **change).learn()
    message = str(error.value)
    assert f"{field}: {before} -> {after}" in message


def test_resume_allows_a_changed_log_and_save_frequency(make, trained, tmp_path):
    run_dir = copy_run("sft", trained, tmp_path)
    agent = make("sft", run_dir, resume=True, log_every=3, save_every=0)
    assert len(agent.learn()) == STEPS  # finished: nothing left to do, the history kept


@pytest.mark.parametrize("kind", KINDS)
def test_resume_refuses_an_incomplete_checkpoint(kind, make, trained, tmp_path):
    run_dir = copy_run(kind, trained, tmp_path)
    (run_dir / CHECKPOINT_DIR / STATE_FILE).unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        make(kind, run_dir, resume=True).learn()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("file", [STATE_FILE, "model.safetensors"])
def test_resume_names_a_truncated_file(kind, file, make, trained, tmp_path):
    run_dir = copy_run(kind, trained, tmp_path)
    model = next(iter(trained(kind)[0]._models()))  # "policy", or the reward model's "model"
    target = run_dir / CHECKPOINT_DIR / (file if file == STATE_FILE else f"{model}/{file}")
    truncate(target)
    with pytest.raises(CheckpointError) as error:
        make(kind, run_dir, resume=True).learn()
    assert str(target) in str(error.value)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_without_a_checkpoint_starts_at_step_0(kind, make, trained, tmp_path, capsys):
    full, full_history = trained(kind)
    agent = make(kind, tmp_path / "new", resume=True)
    history = agent.learn()
    assert "no checkpoint" in capsys.readouterr().err
    assert stable(history) == stable(full_history)
    assert_same_weights(full, agent)


def test_tensorboard_has_no_duplicate_steps_after_resume(make, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def loss_steps(run_dir: Path) -> list[int]:
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        return [e.step for e in events.Scalars("loss/total")]

    run_dir = tmp_path / "run"
    # steps 1-3 are logged (x = 4, 8, 12 pairs), the checkpoint is step 2's: step 3 is redone
    learn_until_killed(make("sft", run_dir), step=4)
    assert loss_steps(run_dir) == [4, 8, 12]
    make("sft", run_dir, resume=True).learn()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    steps = loss_steps(run_dir)
    assert sorted(steps) == [4, 8, 12, 16] and len(set(steps)) == len(steps)


def test_build_config_keeps_an_agents_own_group_defaults():
    """Flat options for part of a group leave the rest at the agent's own defaults: GRPO's KL
    group keeps k3 and its learning rate when only β is given (not KLConfig's k1)."""
    from agents.grpo import GRPOConfig
    from agents.harness.config import build_config
    from agents.ppo import PPOConfig

    config = build_config(GRPOConfig, {"kl.beta": 0.3, "batch_size": 8})
    assert (config.kl.beta, config.kl.kl_estimator, config.batch_size) == (0.3, "k3", 8)
    assert config.optim.learning_rate == GRPOConfig().optim.learning_rate == 1e-6
    ppo = build_config(PPOConfig, {"lam": 1.0, "optim.learning_rate": 5e-5,
                                   "optim.warmup_steps": 5})  # fmt: skip
    assert (ppo.lam, ppo.optim.learning_rate, ppo.optim.warmup_steps) == (1.0, 5e-5, 5)
    assert ppo.kl == PPOConfig().kl
    with pytest.raises(ValueError, match="learning_rate"):
        build_config(PPOConfig, {"optim.learning_rate": -1.0})
