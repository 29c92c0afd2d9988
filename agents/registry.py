"""The one list of agents: name → class, config class, online or offline, the models it holds.

Everything that needs to know which agents exist reads ``AGENTS``: the command line
(``tokenmdp <command>``), the studies' agent factory, the reports (which runs are policies,
their colours, the models-in-memory column), the memory benchmark and the contract test.
Adding an agent is its module, one line here and one CLI module.

Classes are imported when asked for (``spec.agent_class()``), so reading the list costs no
``torch`` import.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class AgentSpec:
    """One agent: where its classes live and what a study or report needs to know of it."""

    name: str
    """``agent_name`` of the class."""
    module: str
    """The module holding the agent and its config (``agents.ppo``)."""
    class_name: str
    config_name: str
    kind: Literal["online", "offline"]
    """online: rolls out through the vector env; offline: reads a dataset."""
    role: Literal["base", "method", "scorer"]
    """base: trains the policy the methods start from (SFT); method: one of the fine-tuning
    methods the studies compare (RL, DPO); scorer: trains a reward model (BT, PRM)."""
    models: int
    """Models in memory while it trains against a learned reward model (PPO: policy, reference,
    reward model, critic; DPO: the policy — its reference log-probs are computed up front and
    the reference dropped)."""
    command: str
    """Its ``tokenmdp`` command (``scripts/<command with _>.py``)."""
    summary: str
    color: str
    """Its colour in every plot."""
    prefix: str = ""
    """Prefix of its run directories (``<prefix>-<run>``) when not its name."""

    @property
    def run_prefix(self) -> str:
        return self.prefix or self.name

    def agent_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.class_name)

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config_name)


AGENTS: dict[str, AgentSpec] = {
    spec.name: spec
    for spec in (
        AgentSpec("sft", "agents.sft", "SFT", "SFTConfig", "offline", "base", 1, "sft",
                  "supervised fine-tuning / pre-training of a policy", "black"),
        AgentSpec("reward_model", "agents.reward_model", "RewardModelTrainer",
                  "RewardModelConfig", "offline", "scorer", 1, "reward-model",
                  "train a Bradley-Terry reward model", "tab:gray", prefix="rm"),
        AgentSpec("prm", "agents.prm", "PRMTrainer", "PRMConfig", "offline", "scorer", 1, "prm",
                  "train a process reward model on stepwise labels", "tab:olive"),
        AgentSpec("ppo", "agents.ppo", "PPO", "PPOConfig", "online", "method", 4, "ppo",
                  "PPO with a critic against a reward model", "tab:blue"),
        AgentSpec("reinforce", "agents.reinforce", "Reinforce", "ReinforceConfig", "online", "method",
                  3, "reinforce", "REINFORCE / RLOO against a reward model", "tab:green"),
        AgentSpec("grpo", "agents.grpo", "GRPO", "GRPOConfig", "online", "method", 3, "grpo",
                  "GRPO / Dr. GRPO / DAPO against a reward model", "tab:orange"),
        AgentSpec("dpo", "agents.dpo", "DPO", "DPOConfig", "offline", "method", 1, "dpo",
                  "direct preference optimisation", "tab:red"),
        AgentSpec("online_dpo", "agents.online_dpo", "OnlineDPO", "OnlineDPOConfig", "online",
                  "method", 3, "online-dpo",
                  "online / iterative DPO (Nash-MD mixture sampling) against a reward model",
                  "tab:pink"),
    )
}  # fmt: skip


def agent_spec(name: str) -> AgentSpec:
    """The registered agent ``name``; an unknown name lists the registered ones."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; registered: {', '.join(AGENTS)}")
    return AGENTS[name]


def names(kind: str | None = None, role: str | None = None) -> tuple[str, ...]:
    """Registered agent names in registry order, optionally of one ``kind`` and ``role``."""
    return tuple(
        n
        for n, s in AGENTS.items()
        if (kind is None or s.kind == kind) and (role is None or s.role == role)
    )


def spec_of_run(prefix: str) -> AgentSpec | None:
    """The agent whose run directories start ``<prefix>-`` (None: not an agent's)."""
    return next((s for s in AGENTS.values() if s.run_prefix == prefix), None)
