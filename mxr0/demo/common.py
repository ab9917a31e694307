"""What the demo's parts share: where the shipped recipes are."""

from __future__ import annotations

from pathlib import Path


def recipe_path(name: str) -> Path:
    """A recipe shipped with the repository (recipes/ beside the package)."""
    here = Path(__file__).resolve().parents[2] / "recipes" / name
    if here.exists():
        return here
    raise FileNotFoundError(f"recipe {name} not found under {here.parent}; run from a checkout of mxr0")
