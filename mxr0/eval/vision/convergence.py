"""Convergence: how many steps an initialisation needs to reach a target probe AUROC.

Two curves are measured the same way:

- **probe convergence** (XR-0's "N x faster convergence on linear classification"): validation
  mean AUROC of the linear probe against probe-training steps, for each encoder (the chosen
  learning rate's curve of `mxr0.eval.vision.probe.sweep_linear_probe`);
- **pretraining convergence**: the in-training probe AUROC (``eval/probe_mean_auroc`` in a run's
  ``metrics.jsonl``) against pretraining steps, for runs started from different initialisations
  (random, DINOv2, RAD-DINO, …).

``steps_to_target`` is the first recorded step whose value reaches the target (None when never);
the speed-up of A over B is ``steps_B / steps_A``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def steps_to_target(steps: Sequence[int], values: Sequence[float], target: float) -> int | None:
    for s, v in zip(steps, values):
        if v is not None and v == v and v >= target:
            return int(s)
    return None


def speedup(steps_fast: int | None, steps_slow: int | None) -> float | None:
    """``steps_slow / steps_fast``; None when the faster one never reached the target. When only the
    slower one never did, the ratio is a lower bound and is not reported either."""
    if steps_fast is None or steps_slow is None or steps_fast <= 0:
        return None
    return float(steps_slow) / float(steps_fast)


def run_curve(run_dir: str | Path, metric: str = "eval/probe_mean_auroc") -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from a run's ``metrics.jsonl`` (the last value per step)."""
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: no metrics log; is {run_dir} an mxr0 run folder?")
    points: dict[int, float] = {}
    for line in f.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if metric in row:
            points[int(row["step"])] = float(row[metric])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def compare(curves: dict[str, tuple[Sequence[int], Sequence[float]]], target: float,
            reference: str | None = None) -> dict:
    """Steps to ``target`` for each curve, and the speed-up of each over ``reference`` (default:
    the slowest curve that reached the target, else the first)."""
    reached = {name: steps_to_target(s, v, target) for name, (s, v) in curves.items()}
    if reference is None:
        done = {k: v for k, v in reached.items() if v is not None}
        reference = max(done, key=done.get) if done else next(iter(curves), None)
    out = {"target": target, "reference": reference, "steps_to_target": reached, "speedup": {}}
    for name, n in reached.items():
        out["speedup"][name] = speedup(n, reached.get(reference)) if reference is not None else None
    return out
