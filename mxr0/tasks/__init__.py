"""Training tasks. A task says how to build its model and data, how a batch becomes a dict of named
losses, how to evaluate, and how to export; the one loop in `mxr0.train` does everything else.

Tasks are registered by name and imported lazily, so ``import mxr0`` stays light.
"""

from __future__ import annotations

import importlib

from mxr0.tasks.base import Task

TASKS: dict[str, str] = {
    "classify": "mxr0.tasks.classify:ClassifyTask",
    "ssl": "mxr0.tasks.ssl:SSLTask",
    "align": "mxr0.tasks.align:AlignTask",
    "report": "mxr0.tasks.report:ReportTask",
    "instruct": "mxr0.tasks.report:InstructTask",
}
"""Task name → ``module:Class``."""


def get_task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["TASKS", "Task", "get_task_class"]
