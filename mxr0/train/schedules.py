"""Per-step schedules, precomputed once (DINOv2 style): index by the optimiser step."""

from __future__ import annotations

import numpy as np


def warmup_cosine(
    total_steps: int,
    base: float,
    final: float = 0.0,
    warmup_steps: int = 0,
    start: float = 0.0,
    shape: str = "cosine",
) -> np.ndarray:
    """``total_steps`` values: linear warmup from ``start`` to ``base`` over ``warmup_steps``, then
    ``shape`` (``cosine``, ``linear`` or ``constant``) from ``base`` down to ``final``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    warm = np.linspace(start, base, warmup_steps, endpoint=False) if warmup_steps else np.empty(0)
    n = total_steps - warmup_steps
    t = np.arange(n) / max(n - 1, 1)
    if shape == "cosine":
        rest = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t))
    elif shape == "linear":
        rest = base + (final - base) * t
    elif shape == "constant":
        rest = np.full(n, base, dtype=np.float64)
    else:
        raise ValueError(f"unknown schedule shape {shape!r}; valid: cosine, linear, constant")
    out = np.concatenate([warm, rest])
    assert len(out) == total_steps
    return out
