"""What the demo's parts share: where the shipped recipes are, one-thread training, number formatting."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def recipe_path(name: str) -> Path:
    """A recipe shipped with the repository (recipes/ beside the package)."""
    here = Path(__file__).resolve().parents[2] / "recipes" / name
    if here.exists():
        return here
    raise FileNotFoundError(f"recipe {name} not found under {here.parent}; run from a checkout of mxr0")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads (restored afterwards). The models are tiny: a thread per core helps a quiet
    machine (the demo: `mxr0.demo.main.DEMO_THREADS`), but a second thread slows a 2-core machine down when another
    process shares it (measured up to 3x: the tests run one thread per pytest-xdist worker)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fmt(v, digits: int = 3) -> str:
    """A table cell: ``–`` for a missing value."""
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}"
