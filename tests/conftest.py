"""Test set-up: offline, no writes to ~/.cache, shared fixtures (real data, a small phantom set)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_CACHE = Path(tempfile.gettempdir()) / "mxr0-test-cache"
for var, sub in (("HF_HOME", "hf"), ("XDG_CACHE_HOME", "xdg"), ("TORCH_EXTENSIONS_DIR", "torch_ext"),
                 ("NLTK_DATA", "nltk"), ("MPLCONFIGDIR", "mpl")):
    os.environ.setdefault(var, str(_CACHE / sub))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout (or $MXR0_SHARED_DATA)."""
    return Path(os.environ.get("MXR0_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real sample data not present at {d}")
    return d


@pytest.fixture(scope="session")
def phantom_small(tmp_path_factory) -> Path:
    """A small phantom set (240 studies at 64 px), drawn once per test session."""
    from mxr0.data.phantom import generate_phantom

    out = tmp_path_factory.mktemp("phantom_small")
    return Path(generate_phantom(out, n_studies=240, image_size=64, seed=0, workers=1, progress=False))


@pytest.fixture
def one_thread():
    """Tiny ViTs run fastest on one intra-op thread on a small shared CPU; restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
