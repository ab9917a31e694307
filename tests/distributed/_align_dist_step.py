"""One alignment training step, for tests/distributed/test_align_distributed.py.

    python tests/distributed/_align_dist_step.py OUT.pt                   # 1 process, the full batch
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/distributed/_align_dist_step.py OUT.pt

Each variant (loss kind, local loss, texts per image, gather with gradient) builds the same tiny dual
encoder, runs `AlignTask.training_step` on this process's shard of a fixed batch, back-propagates through
DDP, and records the loss averaged over ranks and every parameter's gradient. Each rank writes
``OUT.rank{r}.pt`` with the world size it saw.
"""

from __future__ import annotations

import sys
import types

import torch

VARIANTS = [
    {"kind": "clip", "local_loss": True, "gather_with_grad": True, "k": 1},
    {"kind": "clip", "local_loss": False, "gather_with_grad": True, "k": 1},
    {"kind": "clip", "local_loss": True, "gather_with_grad": True, "k": 2},
    {"kind": "siglip", "local_loss": True, "gather_with_grad": True, "k": 1},
    {"kind": "clip", "local_loss": True, "gather_with_grad": True, "k": 1, "patch": 0.5},
    {"kind": "clip", "local_loss": True, "gather_with_grad": False, "k": 1},
]
GLOBAL_BATCH = 8


def tiny_model(kind: str):
    from transformers import BertConfig, BertModel

    from mxr0.models.dual_encoder import AlignModel, build_dual_encoder, default_logit_scale
    from mxr0.models.encoder import new_encoder

    torch.manual_seed(0)
    vision = new_encoder(28, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                         num_register_tokens=2, mlp_ratio=2)
    text = BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=32,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))  # deterministic
    for n, p in vision.named_parameters():
        if n.endswith("mask_token"):
            p.requires_grad_(False)
    dual = build_dual_encoder(vision, text, 16, default_logit_scale(kind))
    return AlignModel(dual, siglip_bias=-1.0 if kind == "siglip" else None)


def full_batch(k: int) -> dict:
    g = torch.Generator().manual_seed(1)
    n_txt = GLOBAL_BATCH * k
    ids = torch.randint(5, 60, (n_txt, 12), generator=g)
    lengths = torch.randint(4, 13, (n_txt,), generator=g)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    return {"pixel_values": torch.randn(GLOBAL_BATCH, 3, 28, 28, generator=g), "input_ids": ids * mask,
            "attention_mask": mask}


def main(out: str) -> None:
    from accelerate import Accelerator

    from mxr0.losses.contrastive import ContrastiveLoss
    from mxr0.tasks.align import AlignTask

    acc = Accelerator()
    rank, world = acc.process_index, acc.num_processes
    results = {"world_size": world, "variants": []}
    for v in VARIANTS:
        model = acc.prepare(tiny_model(v["kind"]))
        batch = full_batch(v["k"])
        b = GLOBAL_BATCH // world
        shard = {"pixel_values": batch["pixel_values"][rank * b:(rank + 1) * b]}
        for key in ("input_ids", "attention_mask"):
            shard[key] = batch[key][rank * b * v["k"]:(rank + 1) * b * v["k"]]
        task = types.SimpleNamespace(loss=ContrastiveLoss(v["kind"], v["local_loss"], v["gather_with_grad"]),
                                     cfg=types.SimpleNamespace(patch_loss_weight=v.get("patch", 0.0)))
        losses = AlignTask.training_step(task, model, shard)
        acc.backward(losses["loss"])
        loss = acc.reduce(losses["loss"].detach(), reduction="mean") if world > 1 else losses["loss"].detach()
        grads = {n: p.grad.detach().clone() for n, p in acc.unwrap_model(model).named_parameters() if p.grad is not None}
        results["variants"].append({**v, "loss": float(loss), "grads": grads})
        acc.free_memory()
    torch.save(results, f"{out}.rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
