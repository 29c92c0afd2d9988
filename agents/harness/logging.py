"""One logging vocabulary for every agent, so ``tensorboard --logdir runs/`` overlays them.

A run is one directory ``runs/<task>/<agent>-<name>/`` holding the TensorBoard event files and
``config.json``. The x-axis of every scalar is the number of prompts (or pairs) consumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agents.harness.config import to_jsonable

TAGS = (
    "reward/train",  # the reward the agent optimises
    "reward/gold",  # the task's gold score, when known
    "kl/ref",  # mean sequence KL to the reference (k1 estimator)
    "kl/beta",
    "loss/policy",
    "loss/value",
    "loss/total",
    "policy/entropy",
    "policy/clipfrac",
    "episode/length",
    "perf/tokens_per_s",
    "perf/seconds_per_iter",
    "length/terminated",  # online agents: mean length of the completions ended by a stop id
    "length/clipped_fraction",  # ... the share cut at the length limit
    "length/rewarded",  # ... mean length of those rewarded (above the median; 1 of a 0/1 reward)
    "length/unrewarded",  # ... and of those not
)


def run_dir_for(root: str | Path, task: str, agent: str, name: str) -> Path:
    """``root/<task>/<agent>-<name>``: the layout DESIGN.md fixes for every run."""
    return Path(root) / task / f"{agent}-{name}"


class RunLogger:
    """TensorBoard scalars + ``config.json`` for one run; ``enabled=False`` writes nothing
    (non-main processes). ``purge_step``: a resumed run's x; events a killed run wrote past it
    are dropped, so redone steps do not appear twice."""

    def __init__(self, run_dir: str | Path, config: Any, enabled: bool = True, purge_step: int = 0):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        self.pending: dict[str, float] = {}
        self.last_step = 0
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(to_jsonable(config), indent=2))
            self.writer = SummaryWriter(
                log_dir=str(self.run_dir), purge_step=purge_step + 1 if purge_step else None
            )

    def record(self, key: str, value: float, exclude: Any = None) -> None:
        """Stable-Baselines3's ``logger.record``: ``value`` is written with the next ``log()``
        (or ``dump()``), so callbacks add scalars to the run's events."""
        self.pending[key] = float(value)

    def dump(self, step: int = 0) -> None:
        """Write the recorded values now, at x = ``step``."""
        self.log(step, {})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write every metric (and any recorded value) at x = ``step`` (prompts or pairs
        consumed)."""
        metrics, self.pending = {**self.pending, **metrics}, {}
        self.last_step = int(step)
        if self.writer is None:
            return
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, float(value), global_step=int(step))
        self.writer.flush()

    def close(self) -> None:
        """Write what is still recorded (at the last step logged) and close the events file."""
        if self.pending:
            self.dump(self.last_step)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
