"""Subgroup slices: every metric per sex and per age band, and the largest gap between groups.

A metric is a function of the indices of the test studies it is computed on (AUROC needs the whole
group; accuracy and Dice are means of per-study values). Groups smaller than ``min_size`` are
reported with their size but left out of the gap, whose noise would otherwise dominate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

DEFAULT_AGE_BANDS: tuple[float, ...] = (0, 40, 60, 75)
"""Lower edges of the age bands (years): <40, 40-59, 60-74, 75+."""


def age_band(age: float | None, edges: Sequence[float] = DEFAULT_AGE_BANDS) -> str:
    """The band label of an age, e.g. ``"40-59"`` or ``"75+"``; ``"unknown"`` for None."""
    if age is None or not np.isfinite(age):
        return "unknown"
    edges = list(edges)
    for lo, hi in zip(edges, edges[1:]):
        if lo <= age < hi:
            return f"<{hi:g}" if lo == edges[0] == 0 else f"{lo:g}-{hi - 1:g}"
    return f"{edges[-1]:g}+"


def group_labels(sex: Sequence[str], age: Sequence[float | None], edges: Sequence[float] = DEFAULT_AGE_BANDS
                 ) -> dict[str, np.ndarray]:
    """``{"sex": [...], "age": [...]}`` group label per study (``"unknown"`` when missing)."""
    return {"sex": np.array([s if s in ("M", "F") else "unknown" for s in sex]),
            "age": np.array([age_band(a, edges) for a in age])}


def _order(label: str) -> tuple:
    """Age bands by their lower edge (``<40``, ``40-59``, …, ``75+``), other labels alphabetically,
    ``unknown`` last."""
    if label == "unknown":
        return (2, 0.0, label)
    try:
        if label.startswith("<"):
            return (0, float("-inf"), label)
        return (0, float(label.split("-")[0].rstrip("+")), label)
    except ValueError:
        return (1, 0.0, label)


def slice_metric(metric: Callable[[np.ndarray], float], groups: dict[str, np.ndarray], min_size: int = 5
                 ) -> dict[str, dict]:
    """``{attribute: {"groups": {label: {"value", "n"}}, "gap": max - min, "worst": label}}``."""
    out: dict[str, dict] = {}
    for attr, labels in groups.items():
        res: dict[str, dict] = {}
        for lab in sorted(set(labels.tolist()), key=_order):
            idx = np.flatnonzero(labels == lab)
            v = metric(idx) if len(idx) else float("nan")
            res[lab] = {"value": None if v is None or not np.isfinite(v) else float(v), "n": int(len(idx))}
        valid = {k: v["value"] for k, v in res.items() if v["value"] is not None and v["n"] >= min_size
                 and k != "unknown"}
        gap = float(max(valid.values()) - min(valid.values())) if len(valid) >= 2 else None
        worst = min(valid, key=valid.get) if valid else None
        out[attr] = {"groups": res, "gap": gap, "worst": worst}
    return out
