"""2 CPU processes (gloo, gathered loss) give the 1-process full-batch loss and gradients."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # several processes: out of the quick loop (-m 'not slow')

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_align_dist_step.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("align_dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    subprocess.run([sys.executable, str(SCRIPT), str(out / "one")], env=env, check=True, capture_output=True)
    # The launch form that really starts 2 synchronised gloo ranks (see ../shared/STACK_NOTES.md);
    # the world size is asserted below because other forms silently start 1 or 2 unsynchronised ones.
    env["ACCELERATE_USE_CPU"] = "1"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
                           str(out / "two")], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(out / "one.rank0.pt", weights_only=True)
    two = [torch.load(out / f"two.rank{r}.pt", weights_only=True) for r in (0, 1)]
    return one, two


def _name(v: dict) -> str:
    return f"{v['kind']} local={v['local_loss']} K={v['k']} gather_grad={v['gather_with_grad']} patch={v.get('patch', 0)}"


def test_world_sizes(runs):
    one, two = runs
    assert one["world_size"] == 1
    assert [t["world_size"] for t in two] == [2, 2]


def test_loss_equals_full_batch_loss(runs):
    one, two = runs
    for ref, got in zip(one["variants"], two[0]["variants"]):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6), _name(ref)


def test_gradients_equal_full_batch_gradients(runs):
    one, two = runs
    for ref, r0, r1 in zip(one["variants"], two[0]["variants"], two[1]["variants"]):
        if not ref["gather_with_grad"]:
            continue
        assert set(ref["grads"]) == set(r0["grads"]), _name(ref)
        for n, g in ref["grads"].items():
            torch.testing.assert_close(r0["grads"][n], g, rtol=1e-3, atol=1e-5, msg=lambda m: f"{_name(ref)} {n}: {m}")
            torch.testing.assert_close(r1["grads"][n], r0["grads"][n], rtol=0, atol=0)  # ranks in sync


def test_gather_without_grad_is_an_approximation(runs):
    """Documented behaviour: same loss, but the gradient paths through other ranks' features are dropped."""
    one, two = runs
    ref, got = one["variants"][-1], two[0]["variants"][-1]
    assert not ref["gather_with_grad"]
    diff = max(float((got["grads"][n] - g).abs().max()) for n, g in ref["grads"].items())
    assert diff > 1e-4
