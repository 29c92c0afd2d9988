"""Built-in tasks and the task registry: ``make_task("sentiment")``, ``make_task("arithmetic",
max_operand=9)``, ``make_task("arithmetic_chain", num_terms=3)``,
``make_task("arithmetic_reasoning", steps_fraction=0.1)``, ``make_task("jsonl",
path="prompts.jsonl")``."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache

from llm_env.tasks.arithmetic import make_arithmetic_task
from llm_env.tasks.arithmetic_chain import make_arithmetic_chain_task
from llm_env.tasks.arithmetic_reasoning import make_arithmetic_reasoning_task
from llm_env.tasks.base import Task
from llm_env.tasks.jsonl import JsonlError, make_jsonl_task, read_jsonl


def _sentiment(**kwargs) -> Task:
    from llm_env.tasks.sentiment import make_sentiment_task  # builds a corpus: import lazily

    return make_sentiment_task(**kwargs)


TASKS: dict[str, Callable[..., Task]] = {
    "sentiment": _sentiment,
    "arithmetic": make_arithmetic_task,
    "arithmetic_chain": make_arithmetic_chain_task,
    "arithmetic_reasoning": make_arithmetic_reasoning_task,
    "jsonl": make_jsonl_task,
}
DEFAULT_TASK = "sentiment"


@lru_cache(maxsize=16)
def _cached(name: str, kwargs_json: str) -> Task:
    return TASKS[name](**json.loads(kwargs_json))


def make_task(task: str | Task = DEFAULT_TASK, **kwargs) -> Task:
    """A ``Task`` by registered name (cached per name and options), or ``task`` itself."""
    if isinstance(task, Task):
        if kwargs:
            raise ValueError("task options cannot be applied to an already-built Task object")
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; registered tasks: {sorted(TASKS)}")
    return _cached(task, json.dumps(kwargs, sort_keys=True, default=str))


__all__ = ["TASKS", "DEFAULT_TASK", "Task", "JsonlError", "make_task", "read_jsonl"]
