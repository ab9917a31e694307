"""Driver of tests/distributed/test_fsdp_cpu.py: a tiny VLM trained under torch's FSDP2 (``fully_shard``) with
mxr0's wrapping policy, on the ranks torchrun starts (gloo), or unsharded on one process (``--reference``).

    torchrun --nproc_per_node 2 _fsdp_cpu_run.py OUT.json        # sharded
    python _fsdp_cpu_run.py OUT.json --reference                   # one process, the whole global batch

Both runs build the same model (fixed seed) and see the same global batch (each rank its half); the
sharded run writes per-step losses (averaged over ranks), the shard sizes, the wrapped classes and, from
rank 0, the gathered full state dict (OUT.pt); the reference writes its losses and final state dict.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

REPO = Path(__file__).resolve().parents[2]
STEPS, GLOBAL_BATCH, SEQ, IMAGE_TOKEN_ID, N_IMAGE_TOKENS = 4, 4, 16, 299, 5


def build_model():
    from mxr0.models.encoder import new_encoder
    from mxr0.models.vlm import build_vlm, tiny_causal_lm

    torch.manual_seed(0)
    vision = new_encoder(28, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                         num_register_tokens=1)
    lm = tiny_causal_lm(300, 0, 1, 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=2)
    return build_vlm(vision, lm, IMAGE_TOKEN_ID, 28)


def global_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 290, (STEPS, GLOBAL_BATCH, SEQ), generator=g)
    ids[..., :N_IMAGE_TOKENS] = IMAGE_TOKEN_ID
    return ids, torch.randn(STEPS, GLOBAL_BATCH, 3, 28, 28, generator=g)


def train(model, ids, px, reduce=None) -> list[float]:
    """AdamW steps; each loss is a mean over equally many tokens, so the ranks' mean is the global batch's."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(STEPS):
        loss = model(input_ids=ids[step], pixel_values=px[step], labels=ids[step]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        loss = loss.detach()
        losses.append(float(reduce(loss) if reduce else loss))
    return losses


def sharded(out: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    from mxr0.distributed import fsdp_wrap_classes

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build_model()
    cfg = yaml.safe_load((REPO / "accelerate_configs" / "fsdp.yaml").read_text())["fsdp_config"]
    classes = fsdp_wrap_classes(cfg["fsdp_transformer_layer_cls_to_wrap"].split(","), model)
    units = [m for m in model.modules() if type(m).__name__ in classes]
    for m in units:
        fully_shard(m, reshard_after_forward=cfg["fsdp_reshard_after_forward"])
    fully_shard(model, reshard_after_forward=cfg["fsdp_reshard_after_forward"])
    params = list(model.parameters())
    local = sum(p.to_local().numel() for p in params)
    total = sum(p.numel() for p in params)
    not_dtensor = [n for n, p in model.named_parameters() if not hasattr(p, "to_local")]
    ids, px = global_batch()
    half = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)

    def mean_over_ranks(t):
        dist.all_reduce(t)
        return t / world

    losses = train(model, ids[:, half], px[:, half], mean_over_ranks)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    locals_ = [None] * world
    dist.all_gather_object(locals_, local)
    if rank == 0:
        torch.save(full, out.with_suffix(".pt"))
        out.write_text(json.dumps({"world_size": world, "classes": classes, "units": len(units), "losses": losses,
                                   "local_numel": locals_, "total_numel": total, "not_dtensor": not_dtensor,
                                   "full_state_keys": len(full)}))
    dist.destroy_process_group()


def reference(out: Path) -> None:
    model = build_model()
    ids, px = global_batch()
    losses = train(model, ids, px)
    torch.save(model.state_dict(), out.with_suffix(".pt"))
    out.write_text(json.dumps({"losses": losses}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    target = Path(sys.argv[1])
    reference(target) if "--reference" in sys.argv else sharded(target)
    os._exit(0)
