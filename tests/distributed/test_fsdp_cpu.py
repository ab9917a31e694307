"""FSDP on 2 CPU ranks: mxr0's wrapping policy applied with torch's FSDP2 (``fully_shard``) under torchrun + gloo.

The classes accelerate_configs/fsdp.yaml names (``fsdp_transformer_layer_cls_to_wrap``), kept by
`mxr0.distributed.fsdp_wrap_classes` to those in the model, each become an FSDP unit, the model the root unit
(tests/distributed/_fsdp_cpu_run.py). A tiny VLM (2-layer DINOv2 + projector + 2-layer Llama) trains 4 AdamW
steps, each rank on half of the global batch. Checked: world size 2, every parameter a DTensor with half of
the elements on each rank, the losses equal those of one unsharded process on the whole batch (measured:
relative difference <= 3e-7) and decreasing, and the full state dict gathered on rank 0 loads into an unsharded
model and equals the reference's weights.

What blocks accelerate's own FSDP path on a CPU (measured with accelerate 1.16.0, torch 2.13.0+cpu, under
``torchrun --nproc_per_node 2`` with ``ACCELERATE_USE_FSDP=true FSDP_VERSION=1|2`` and the yaml's wrap
policy): without ``ACCELERATE_USE_CPU`` each rank's ``Accelerator`` reports ``DistributedType.NO`` and
1 process and ``prepare`` returns the plain model: two unsharded, unsynchronised runs. With
``ACCELERATE_USE_CPU=1`` it reports ``MULTI_CPU`` with 2 processes and wraps the model in
``DistributedDataParallel``: the FSDP settings are silently dropped, nothing is sharded. Hence
`mxr0.train.launch.make_accelerator` refuses an FSDP launch without CUDA, and this test calls ``fully_shard``
itself, as accelerate's FSDP2 path does on GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # several processes: out of the quick loop (-m 'not slow')

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "_fsdp_cpu_run.py"
LOSS_RTOL = 1e-5  # measured: <= 3e-7
WEIGHT_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], timeout: int = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run([sys.executable, *args], cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
          str(_free_port()), str(DRIVER), str(root / "two.json")])
    _run([str(DRIVER), str(root / "one.json"), "--reference"])
    return {k: json.loads((root / f"{k}.json").read_text()) for k in ("two", "one")}, root


def test_fsdp2_shards_over_two_ranks_with_mxr0_wrap_classes(runs):
    two = runs[0]["two"]
    assert two["world_size"] == 2
    assert two["classes"] == ["Dinov2WithRegistersLayer", "LlamaDecoderLayer"]
    assert two["units"] == 4  # 2 vision blocks + 2 decoder blocks
    assert two["not_dtensor"] == []
    assert sum(two["local_numel"]) >= two["total_numel"]  # dim-0 shards, padded
    for n in two["local_numel"]:
        assert abs(n / two["total_numel"] - 0.5) < 0.02, two


def test_fsdp2_losses_equal_one_unsharded_process(runs):
    two, one = runs[0]["two"]["losses"], runs[0]["one"]["losses"]
    assert len(two) == len(one) == 4
    for a, b in zip(two, one):
        assert abs(a - b) <= LOSS_RTOL * abs(b), (two, one)
    assert two[-1] < two[0], two


def test_full_state_dict_on_rank0_loads_into_an_unsharded_model(runs):
    sys.path.insert(0, str(HERE))
    from _fsdp_cpu_run import build_model

    root = runs[1]
    full = torch.load(root / "two.pt", weights_only=True)
    ref = torch.load(root / "one.pt", weights_only=True)
    model = build_model()
    model.load_state_dict(full, strict=True)
    got = model.state_dict()
    assert got.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.allclose(got[k], v, atol=WEIGHT_ATOL), (k, (got[k] - v).abs().max())
