"""Optimisation pieces the tasks and the loop share: per-step schedules precomputed once (DINOv2 style: index
by the optimiser step) and parameter groups (layer-wise decay, no weight decay on norms and biases)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


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


def _layer_id(name: str, n_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder block i, n_layers + 1 for the final norm and the heads."""
    if name.startswith("backbone.embeddings."):
        return 0
    if name.startswith("backbone.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return n_layers + 1


def _no_weight_decay(name: str, p: torch.Tensor) -> bool:
    return (p.ndim < 2 or name.endswith(".bias") or "norm" in name or "layer_scale" in name or "lambda1" in name
            or "token" in name or "position_embeddings" in name)


def layerwise_param_groups(student: nn.Module, weight_decay: float, layerwise_decay: float,
                           patch_embed_lr_mult: float) -> list[dict]:
    """Trainable student parameters grouped by (lr_scale, wd_scale), DINOv2's layer-wise decay."""
    n_layers = student["backbone"].config.num_hidden_layers
    groups: dict[tuple[float, float], dict] = {}
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        lr_scale = layerwise_decay ** (n_layers + 1 - _layer_id(name, n_layers))
        if "patch_embeddings" in name:
            lr_scale *= patch_embed_lr_mult
        wd_scale = 0.0 if _no_weight_decay(name, p) else 1.0
        key = (round(lr_scale, 12), wd_scale)
        g = groups.setdefault(key, {"params": [], "names": [], "lr_scale": lr_scale, "wd_scale": wd_scale,
                                    "weight_decay": weight_decay * wd_scale})
        g["params"].append(p)
        g["names"].append(name)
    out = []
    for g in groups.values():
        g = dict(g)
        g.pop("names")
        out.append(g)
    return out


def teacher_temp_schedule(total: int, warmup_steps: int, start: float, end: float) -> np.ndarray:
    """Linear warm-up of the teacher temperature from ``start`` to ``end``, then constant."""
    warmup_steps = min(max(int(warmup_steps), 0), total)
    return np.concatenate([np.linspace(start, end, warmup_steps, endpoint=False) if warmup_steps else np.empty(0),
                           np.full(total - warmup_steps, end)])


def momentum_schedule(total: int, start: float, end: float) -> np.ndarray:
    """Cosine from ``start`` to ``end`` over the run (DINOv2's teacher momentum)."""

    return warmup_cosine(total, start, end)
