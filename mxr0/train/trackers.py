"""Run logging: a JSONL file that any tool can read, TensorBoard, and (if installed) wandb.

Only the main process logs. Each JSONL line is ``{"step": N, "time": unix_seconds, <metric>: value}``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mxr0.config import ConfigError, to_dict

log = logging.getLogger(__name__)
KNOWN = ("jsonl", "tensorboard", "wandb")


class Trackers:
    def __init__(self, run_dir: Path, names: list[str], config: Any = None):
        unknown = [n for n in names if n not in KNOWN]
        if unknown:
            raise ConfigError(f"train.trackers: unknown tracker(s) {unknown}; valid: {list(KNOWN)}")
        self.run_dir = Path(run_dir)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") if "jsonl" in names else None
        self.tb = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        self.wandb = None
        if "wandb" in names:
            try:
                import wandb
            except ImportError as e:
                raise ConfigError("train.trackers includes wandb but it is not installed: pip install wandb") from e
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "mxr0"), dir=str(self.run_dir),
                                    config=to_dict(config) if config is not None else None)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def write_results(self, result: dict) -> None:
        tmp = self.run_dir / ".results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, self.run_dir / "results.json")

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
