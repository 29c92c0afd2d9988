"""The studies' stage runner: keyed, resumable stages.

A stage is keyed by its inputs — the options and sizes it uses, the fingerprint of the agent
config it builds (``scripts.studies.factory``) and the keys of the stages it builds on — hashed
(sha256 of canonical JSON). A finished stage leaves ``stages/<stage>.json`` holding its key and
is reused only while the key matches; an unfinished stage with the same key resumes (its agent
from its last checkpoint). When the key changed, the stage's outputs are deleted and it reruns
from scratch, and so, through their keys, do the stages downstream of it.
``stages/<stage>.inputs.json`` records the inputs of the stage's latest attempt, to say what
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def check_writable(path: str | os.PathLike, option: str, file: bool = False) -> None:
    """Raise ``ValueError`` naming ``option`` and ``path`` unless ``path`` (a directory, or a
    file if ``file``) can be created or written: its nearest existing ancestor must be a
    writable directory."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and path.is_dir() == file:
        kind = "a directory" if file else "a file"
        raise ValueError(f"{option} {str(path)!r}: cannot write there, it is {kind}")
    folder = path.parent if existing == path and file else existing
    if not folder.is_dir():
        raise ValueError(f"{option} {str(path)!r}: cannot write there, {str(folder)!r} is a file")
    target = path if existing == path else folder
    if not os.access(target, os.W_OK | (0 if target.is_file() else os.X_OK)):
        raise ValueError(f"{option} {str(path)!r}: cannot write there, no write permission on "
                         f"{str(target)!r}")  # fmt: skip


def stage_key(inputs: dict) -> str:
    """sha256 of the canonical JSON of a stage's inputs."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def describe_changes(old: dict, new: dict) -> str:
    """``"sft changed, agent config changed, seed 0 → 1"``: the inputs that differ, upstream
    stages and the agent config (its fingerprint, under ``config``) by name."""
    changes = [f"{name} changed" for name in new.get("upstream", {})
               if old.get("upstream", {}).get(name) != new["upstream"][name]]  # fmt: skip
    changes += [("agent config changed" if k == "config" else f"{k} {old.get(k)} → {new.get(k)}")
                for k in sorted(old.keys() | new.keys())
                if k != "upstream" and old.get(k) != new.get(k)]  # fmt: skip
    return ", ".join(changes) or "upstream stages removed"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def measured(run_dir: Path):
    """Write ``resources.json`` (wall time, peak RSS during the block) into ``run_dir``."""
    try:  # reset the peak-RSS counter (Linux >= 4.0) so the peak is this stage's own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    start = time.perf_counter()
    yield
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resources.json").write_text(
        json.dumps({"wall_time_s": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()})
    )


@dataclass
class Clock:
    """How long the stages left will take on this machine: their reference seconds (measured on
    another machine) times this machine's speed relative to it, the ratio of measured to
    reference seconds over the stages run so far. Before any stage ran, the reference itself."""

    reference: dict[str, float]
    """Reference seconds of each stage still to run."""
    ran_seconds: float = 0.0
    ran_reference: float = 0.0

    def record(self, stage: str, seconds: float) -> None:
        """``stage`` ran in ``seconds``; a stage without a reference time only leaves the plan."""
        reference = self.reference.pop(stage, 0.0)
        if reference > 0:
            self.ran_seconds += seconds
            self.ran_reference += reference

    @property
    def slowdown(self) -> float | None:
        """Measured over reference seconds of the stages run (None before any ran)."""
        return self.ran_seconds / self.ran_reference if self.ran_reference else None

    def left(self) -> float:
        """Seconds the stages left will take here."""
        return sum(self.reference.values()) * (self.slowdown or 1.0)


@dataclass
class Stage:
    """One stage of a study: its inputs (hashed into its key with the keys of the stages
    ``after``), its work, and the outputs deleted when its key changes."""

    name: str
    inputs: dict
    fn: Callable[[], dict]
    outputs: list[Path]
    after: Sequence[str] = ()


class StageRunner:
    """Runs the stages of a plan in order under ``stages_dir``, reusing those finished earlier
    with the same key."""

    def __init__(self, stages_dir: Path):
        self.stages = stages_dir
        self.keys: dict[str, str] = {}  # stage name -> key, set by ``key``

    def key(self, plan: list[Stage]) -> list[Stage]:
        """Key every stage of ``plan``: its inputs plus the keys of the stages it builds on."""
        for stage in plan:
            stage.inputs["upstream"] = {name: self.keys[name] for name in stage.after}
            self.keys[stage.name] = stage_key(stage.inputs)
        return plan

    def finished(self, stage: Stage) -> dict | None:
        """The record of an earlier run of ``stage`` that finished with the same key, or None."""
        marker = self.stages / f"{stage.name}.json"
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        return done if done.get("key") == self.keys[stage.name] else None

    def run(self, stage: Stage) -> dict:
        """Run ``stage`` unless a finished run of it has the same key; a changed key first
        deletes its outputs."""
        name, inputs, key = stage.name, stage.inputs, self.keys[stage.name]
        marker = self.stages / f"{name}.json"
        record = self.stages / f"{name}.inputs.json"
        done = self.finished(stage)
        if done is not None:
            print(f"== {name}: done earlier with the same inputs, reusing {marker}")
            return done
        previous = json.loads(record.read_text()) if record.is_file() else {}
        if previous.get("key") == key:
            print(f"== {name}: unfinished earlier with the same inputs, resuming")
        elif previous or marker.is_file() or any(p.exists() for p in stage.outputs):
            why = (f"inputs changed ({describe_changes(previous['inputs'], inputs)})"
                   if previous else "no record of its inputs")  # fmt: skip
            print(f"== {name}: {why}, rerunning")
            marker.unlink(missing_ok=True)
            for path in stage.outputs:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        else:
            print(f"== {name}")
        self.stages.mkdir(parents=True, exist_ok=True)
        write_json(record, {"key": key, "inputs": inputs})
        start = time.perf_counter()
        result = stage.fn() or {}
        result["seconds"] = time.perf_counter() - start
        result["key"] = key
        write_json(marker, result)
        print(f"   {name} finished in {result['seconds']:.0f}s")
        return result
