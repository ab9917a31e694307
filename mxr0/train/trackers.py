"""Run logging through accelerate's trackers: ``train.trackers`` names turned into ``Accelerator(log_with=...)``,
the JSONL metrics log as a custom accelerate tracker, and the run's configuration as flat, secret-free values.

Only the main process writes (accelerate's ``init_trackers`` / ``log`` run there). Each JSONL line is
``{"step": N, "time": unix_seconds, <metric>: value}`` in the run folder's ``metrics.jsonl``; TensorBoard writes
into the run folder's ``tensorboard/``; the other names are accelerate's own trackers (wandb, mlflow, trackio, …).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from accelerate.tracking import (
    LOGGER_TYPE_TO_CLASS,
    GeneralTracker,
    TensorBoardTracker,
    get_available_trackers,
    on_main_process,
)

from mxr0.config import ConfigError, Recipe, to_dict

KNOWN = ("jsonl", *LOGGER_TYPE_TO_CLASS)
"""Tracker names ``train.trackers`` may hold: ``jsonl`` (mxr0's own) and every tracker accelerate knows."""
_PIP = {"comet_ml": "comet-ml"}
"""pip package names that differ from the tracker name."""
_SECRET_KEY = re.compile(r"(^|[._])(token|secret|password|passwd|api_?key|salt|credentials?)($|[._])", re.I)
_SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,})\b")


class JsonlTracker(GeneralTracker):
    """mxr0's metrics log: one JSON object per ``log`` call, appended to ``<run_dir>/metrics.jsonl`` and flushed."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_dir: str | os.PathLike):
        super().__init__()
        self.path = Path(run_dir) / "metrics.jsonl"
        self.file = None

    @on_main_process
    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")

    @property
    def tracker(self):
        return self.file

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        """Nothing: the run folder's ``recipe.yaml`` already holds the whole configuration."""

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.file.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        self.file.flush()

    @on_main_process
    def finish(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def tracker_list(names: list[str], run_dir: str | os.PathLike) -> list[str | GeneralTracker]:
    """``Accelerator(log_with=...)`` for ``train.trackers``: an unknown name, or a tracker whose package is not
    installed, is a `ConfigError` saying what to do (accelerate itself would drop a missing one silently)."""
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ConfigError(f"train.trackers: unknown tracker(s) {unknown}; valid: {list(KNOWN)}")
    available = {str(t) for t in get_available_trackers()}
    out: list[str | GeneralTracker] = []
    for name in dict.fromkeys(names):
        if name == "jsonl":
            out.append(JsonlTracker(run_dir))
            continue
        if name not in available:
            raise ConfigError(f"train.trackers includes {name} but its package is not installed: "
                              f"pip install {_PIP.get(name, name)} (or remove {name} from train.trackers)")
        # TensorBoard writes straight into <run_dir>/tensorboard (accelerate's would add a project sub-folder)
        out.append(TensorBoardTracker("tensorboard", run_dir) if name == "tensorboard" else name)
    return out


def start_trackers(accelerator, recipe: Recipe, run_dir: str | os.PathLike) -> None:
    """Start the accelerator's trackers with the recipe as flat configuration values (main process only).
    The project is ``$WANDB_PROJECT`` or ``mxr0``; wandb keeps its files in the run folder."""
    project = os.environ.get("WANDB_PROJECT", "mxr0")
    accelerator.init_trackers(project, config=run_config(recipe), init_kwargs={"wandb": {"dir": str(run_dir)}})


def run_config(recipe: Recipe) -> dict[str, Any]:
    """The recipe as ``{"train.lr": 0.001, ...}``: scalars kept, lists and dicts as JSON text (every tracker takes
    these); keys that name a secret (token, password, API key, salt, …) and values that look like one are left out."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
            return
        if _SECRET_KEY.search(prefix):
            return
        if not (value is None or isinstance(value, (bool, int, float, str))):
            value = json.dumps(value, default=str)
        if isinstance(value, str) and _SECRET_VALUE.search(value):
            return
        flat[prefix] = value

    walk("", to_dict(recipe))
    return flat


def write_results(run_dir: str | os.PathLike, result: dict) -> None:
    """``results.json`` in the run folder, written atomically (main process only)."""
    run_dir = Path(run_dir)
    tmp = run_dir / ".results.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, run_dir / "results.json")
