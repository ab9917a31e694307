"""Test set-up: offline, no writes to ~/.cache, shared fixtures (real data, a small phantom set)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
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

# Under pytest-xdist (the README's test command runs one worker per core) each worker gets one intra-op thread:
# two workers on two cores do not oversubscribe, and a test's floating-point results do not depend on how
# many workers run beside it (reduction order follows the thread count).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch as _torch

    _torch.set_num_threads(1)


def shared_artifact(tmp_path_factory, name: str, build) -> Path:
    """Build ``name`` once per test run, shared by every xdist worker: the first worker to ask builds it into
    a folder beside the workers' own temp roots (under a file lock); the others wait and reuse it.

    ``build(folder) -> Path`` must be deterministic for the run (fixed seeds, one thread), so the tests see
    the same artifact whichever worker built it. Without xdist this is a plain session-wide build."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's root, common to all workers
    folder, done = base / f"shared-{name}", base / f"shared-{name}.done"
    with FileLock(str(base / f"shared-{name}.lock")):
        if done.exists():
            return Path(done.read_text())
        if folder.exists():  # a worker died while building: start again
            import shutil

            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        result = Path(build(folder))
        done.write_text(str(result))
        return result


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

    return shared_artifact(tmp_path_factory, "phantom_small", lambda out: generate_phantom(
        out, n_studies=240, image_size=64, seed=0, workers=1, progress=False))


@pytest.fixture
def one_thread():
    """Tiny ViTs run fastest on one intra-op thread on a small shared CPU; restored afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def phantom_1200(tmp_path_factory) -> Path:
    """1,200 phantom studies at 128 px (the generation learning tests' data), drawn once per session."""
    from mxr0.data.phantom import generate_phantom

    return shared_artifact(tmp_path_factory, "phantom_1200", lambda out: generate_phantom(
        out, n_studies=1200, image_size=128, seed=4, progress=False))


LEARN_COMMON = ["data.source=records", "train.eval_every=0", "train.save_every=0", "train.progress=false",
                "train.trackers=[jsonl]"]


# Test files are handed to the pytest-xdist workers (`--dist loadfile`, scripts/test.sh) in the order set here, not
# in xdist's own (its default `--loadscope-reorder` sorts files by their number of tests, which put the one-test
# chain learning file, ~10.5 min of five stages one after another, 5 minutes into the run, and the suite took 19-20
# min). Here the chain file comes first, so it starts at once on one worker while the other works through the rest;
# the rest keep xdist's order (most tests first, stable). xdist gives the other worker the second file and at once
# queues the third behind the one-test chain file: a short one (architecture, ~5 s) is put third, so nothing long
# waits behind the chain. (Sorting every file longest-first was measured slower, 18 min: the long files then met.)
# The other long one-test files go to the other worker first (sorted last by test count, they ran alone at the end).
LONG_FIRST, SHORT_THIRD = "tests/learning/test_chain_learns.py", "tests/unit/test_architecture.py"
LONG_NEXT = ("tests/learning/test_ssl_learning.py", "tests/learning/test_classify_learns.py",
             "tests/distributed/test_launch_matrix.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order of pytest_collection_modifyitems
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    def path(item):
        return item.nodeid.split("::")[0]

    size = Counter(path(it) for it in items)
    first = [it for it in items if path(it) == LONG_FIRST]
    third = [it for it in items if path(it) == SHORT_THIRD]
    long_next = {p: i for i, p in enumerate(LONG_NEXT)}
    rest = sorted((it for it in items if path(it) not in (LONG_FIRST, SHORT_THIRD)),
                  key=lambda it: (long_next.get(path(it), len(LONG_NEXT)), -size[path(it)]))
    if not first or not rest:
        items[:] = first + third + rest
        return
    second = [it for it in rest if path(it) == path(rest[0])]
    items[:] = first + second + third + rest[len(second):]
