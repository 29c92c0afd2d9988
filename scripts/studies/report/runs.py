"""Run directories read back: the scalars of their TensorBoard events, config, resources and
evaluation (``AgentRun``), and the comparison table's rows.

Reads what every agent writes (TensorBoard event files with the shared tags, ``config.json``,
and, when present, ``resources.json`` and ``eval.json`` written by the pipeline), so it works
on any runs, not only the pipeline's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from agents.registry import spec_of_run


@dataclass
class AgentRun:
    """One agent's run directory, read back."""

    path: Path
    agent: str
    name: str
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    wall_time_s: float = math.nan
    config: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)

    def last(self, tag: str) -> float:
        values = self.scalars.get(tag)
        return values[-1][1] if values else math.nan

    def mean(self, tag: str) -> float:
        values = self.scalars.get(tag)
        return sum(v for _, v in values) / len(values) if values else math.nan

    @property
    def label(self) -> str:
        return self.path.name


def read_scalars(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], float]:
    """Scalars of every event file directly in ``run_dir``, and the span of their wall times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    times: list[float] = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                scalars.setdefault(tag, []).append((event.step, event.value))
                times.append(event.wall_time)
    for values in scalars.values():
        values.sort()
    span = max(times) - min(times) if times else math.nan
    return scalars, span


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def find_agent_runs(roots: list[str | Path]) -> list[AgentRun]:
    """Every directory under ``roots`` holding TensorBoard events (one agent run each)."""
    runs = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"run directory {str(root)!r} does not exist")
        dirs = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
        for d in dirs:
            agent, _, name = d.name.partition("-")
            scalars, span = read_scalars(d)
            resources = _json(d / "resources.json")
            runs.append(
                AgentRun(
                    path=d,
                    agent=agent,
                    name=name or agent,
                    scalars=scalars,
                    wall_time_s=resources.get("wall_time_s", span),
                    config=_json(d / "config.json"),
                    resources=resources,
                    evaluation=_json(d / "eval.json"),
                )
            )
    return runs


def summary_rows(runs: list[AgentRun]) -> list[dict]:
    """The comparison table: final gold and train reward, KL, wall time, tokens/s, memory, models."""
    rows = []
    for run in runs:
        ev = run.evaluation
        rows.append(
            {
                "run": run.label,
                "agent": run.agent,
                "gold_reward": ev.get("gold_reward", run.last("reward/gold")),
                "train_reward": ev.get("train_reward", run.last("reward/train")),
                "kl_ref": ev.get("kl_ref", run.last("kl/ref")),
                "wall_time_s": run.wall_time_s,
                "tokens_per_s": run.mean("perf/tokens_per_s"),
                "peak_memory_mb": run.resources.get("peak_rss_mb", math.nan),
                "models_in_memory": models_in_memory(run),
            }
        )
    return rows


def models_in_memory(run: AgentRun) -> float:
    """Full models the run's agent held while training (``agents.registry``); one fewer for a
    run against the gold reward (no reward model)."""
    spec = spec_of_run(run.agent)
    if spec is None:
        return math.nan
    return spec.models - (spec.kind == "online" and "gold" in run.name)
