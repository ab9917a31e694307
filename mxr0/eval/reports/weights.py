"""Locating metric weights offline, and the error that says what is missing and where to put it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MissingWeightsError", "hf_cached_file", "user_cache_dir"]


class MissingWeightsError(FileNotFoundError):
    """A metric's model files are not on this machine. The message names the files, the places
    searched, the option/environment variable that points to them, and how to fetch them."""

    def __init__(self, metric: str, message: str):
        super().__init__(message)
        self.metric = metric


def user_cache_dir(name: str) -> Path:
    """appdirs.user_cache_dir(name) on Linux (where f1chexbert/radgraph keep their downloads)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / name


def hf_cached_file(repo_id: str, filename: str) -> Path | None:
    """A file of a Hub repository if it is already in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    # read the cache location now (huggingface_hub fixes it at import time)
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                  "huggingface"), "hub")
    try:
        p = try_to_load_from_cache(repo_id=repo_id, filename=filename, cache_dir=cache)
    except Exception:  # noqa: BLE001 - a malformed cache is the same as no cache here
        return None
    return Path(p) if isinstance(p, (str, os.PathLike)) and os.path.isfile(p) else None
