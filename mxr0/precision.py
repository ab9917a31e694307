"""Inference precision: fp32, or bf16 where the hardware runs it fast (CPU AMX / AVX512-BF16, CUDA).

Used by the labellers (CheXbert, RadGraph), generation and frozen-feature extraction. Two ways to run
bf16, measured in `BENCHMARKS.md` (they win in different places):

* ``"bf16"``: ``torch.autocast(device, dtype=torch.bfloat16)`` over fp32 weights: matrix products in
  bf16, layer norms and softmax in fp32; the fp32 weights stay (an fp32 re-run needs no second copy);
* ``"bf16-weights"``: the weights themselves cast to bf16 (half the memory, every op in bf16).

``"auto"`` is bf16 (autocast) where the device has fast bf16 matrix units (a CUDA device that
supports bf16; a CPU whose flags list ``amx_bf16`` or ``avx512_bf16``), else fp32. Each caller records
which precision ran in its output.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "cpu_bf16_flags", "fast_bf16", "resolve_precision", "autocast", "top2_margin"]

PRECISIONS = ("fp32", "bf16", "bf16-weights", "auto")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16-related CPU flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(sorted(f for f in flags if f in ("amx_bf16", "amx_tile", "avx512_bf16")))


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` runs bf16 matrix products faster than fp32 (AMX or AVX512-BF16 on a CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        flags = cpu_bf16_flags()
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def resolve_precision(precision: str | None, device: str | torch.device = "cpu") -> str:
    """``fp32``, ``bf16`` or ``bf16-weights`` for a requested precision (``None`` = fp32; ``auto`` = bf16 on a
    device with fast bf16, else fp32)."""
    p = (precision or "fp32").lower().replace("_", "-")
    p = {"float32": "fp32", "bfloat16": "bf16", "autocast": "bf16", "bf16-autocast": "bf16"}.get(p, p)
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if p == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return p


def autocast(precision: str, device: str | torch.device = "cpu"):
    """A context that runs ``precision`` on ``device``: autocast to bf16 for ``"bf16"``, nothing otherwise
    (``"bf16-weights"`` is a property of the model, set by the caller)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 value along the last dimension (inf for a single class)."""
    if logits.shape[-1] < 2:
        return torch.full(logits.shape[:-1], float("inf"), device=logits.device)
    v = torch.topk(logits.float(), 2, dim=-1).values
    return v[..., 0] - v[..., 1]


def set_model_precision(model, precision: str | None, device: str | torch.device = "cpu") -> str:
    """Resolve ``precision`` for ``model`` on ``device``, cast the weights for ``"bf16-weights"``, and record
    the result on the model (``model.mxr0_precision``, read by :func:`model_precision`). Returns it."""
    prec = resolve_precision(precision, device)
    if prec == "bf16-weights":
        model.to(torch.bfloat16)
    model.mxr0_precision = prec
    return prec


def model_precision(model) -> str:
    """The precision :func:`set_model_precision` recorded on ``model`` (else from its weights' dtype)."""
    prec = getattr(model, "mxr0_precision", None)
    if prec:
        return prec
    try:
        dtype = next(model.parameters()).dtype
    except (AttributeError, StopIteration, TypeError):
        return "fp32"
    return "bf16-weights" if dtype == torch.bfloat16 else "fp32"
