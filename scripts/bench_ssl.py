"""Benchmark the XR-0 SSL training step against a straightforward reference of the same maths.

    .venv/bin/python scripts/bench_ssl.py                      # tiny ViT, CPU, one thread
    .venv/bin/python scripts/bench_ssl.py --batch-size 64 --steps 30 --threads 2
    .venv/bin/python scripts/bench_ssl.py --device cuda --hidden 384 --layers 12 --heads 6 \\
        --patch 14 --global-size 224 --local-size 98 --n-local 8 --prototypes 65536

Both sides train the same tiny ViT (same initial weights, same batches, same optimiser and EMA
teacher) on multi-crop batches with iBOT masks and print training samples/s side by side:

- **ours** (`mxr0.models.ssl_meta_arch.SSLMetaArch`): one teacher pass over both global crops, one student pass
  over both (masked) global crops and one over all local crops, every CLS token and only the masked
  patch tokens through the head in one call, the DINO loss as one weighted sum per student crop,
  fused ``_foreach`` EMA;
- **reference**: the textbook loop: one backbone pass per crop (2 teacher + 2 + n_local student),
  the head on every token it needs per crop (all patch tokens for iBOT, then masked), the DINO
  cross-entropy pair by pair, the iBOT loss over full patch maps with the mask as weights, KoLeo per
  crop, and a per-parameter EMA loop.

Before timing, the script checks that both give the same losses on the same batch (drop path off),
so the comparison is between two implementations of one objective. Data loading is excluded (both
would share it). The ratio is ours / reference; the target on a CPU is >= 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mxr0.models.encoder import new_encoder  # noqa: E402
from mxr0.config.tasks import SSLModelConfig  # noqa: E402
from mxr0.models.ssl_meta_arch import SSLMetaArch  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The reference: same maths, written the straightforward way
# ---------------------------------------------------------------------------------------------


def reference_losses(model: SSLMetaArch, global_crops, local_crops, masks, teacher_temp: float, n_global: int = 2):
    """The SSL objective of `SSLMetaArch.forward`, one crop at a time (updates the loss centres)."""
    cfg = model.cfg
    b = global_crops.shape[0] // n_global
    n_local = local_crops.shape[0] // b if local_crops.numel() else 0
    g_views = list(global_crops.split(b))
    l_views = list(local_crops.split(b)) if n_local else []
    m_views = list(masks.bool().split(b))
    npre = model.n_prefix
    sep = model.separate_ibot
    t_head_patch = model.teacher["ibot_head"] if sep else model.teacher["dino_head"]
    s_head_patch = model.student["ibot_head"] if sep else model.student["dino_head"]

    with torch.no_grad():
        t_scores, t_patch_scores = [], []
        for v in g_views:
            tok = model.teacher["backbone"](pixel_values=v).last_hidden_state
            t_scores.append(model.teacher["dino_head"](tok[:, 0]))
            t_patch_scores.append(t_head_patch(tok[:, npre:]))  # every patch, masked ones picked later
        t_all = torch.cat(t_scores).float()
        t_probs = F.softmax((t_all - model.dino_loss.center) / teacher_temp, dim=-1).split(b)
        masked_t = torch.cat([p[m] for p, m in zip(t_patch_scores, m_views)]).float()
        t_patch_probs_flat = F.softmax((masked_t - model.ibot_loss.center) / teacher_temp, dim=-1)
        # centres: mean teacher CLS score over the batch; mean teacher score over masked patches
        m = model.dino_loss.center_momentum
        model.dino_loss.center.mul_(m).add_(t_all.mean(0, keepdim=True), alpha=1 - m)
        if masked_t.shape[0]:
            model.ibot_loss.center.mul_(m).add_(masked_t.mean(0, keepdim=True), alpha=1 - m)

    s_cls, s_scores, s_patch_scores = [], [], []
    for v, mk in zip(g_views, m_views):
        tok = model.student["backbone"](pixel_values=v, bool_masked_pos=mk).last_hidden_state
        s_cls.append(tok[:, 0])
        s_scores.append(model.student["dino_head"](tok[:, 0]))
        s_patch_scores.append(s_head_patch(tok[:, npre:]))
    for v in l_views:
        tok = model.student["backbone"](pixel_values=v).last_hidden_state
        s_scores.append(model.student["dino_head"](tok[:, 0]))

    st = model.dino_loss.student_temp
    dino, n_terms = 0.0, 0
    for i, s in enumerate(s_scores):
        lsm = F.log_softmax(s.float() / st, dim=-1)
        for j, t in enumerate(t_probs):
            if i == j:
                continue  # a global crop is not compared with itself
            dino = dino - (t * lsm).sum(-1).mean()
            n_terms += 1
    dino = dino / n_terms
    koleo = sum(model.koleo_loss(c) for c in s_cls)

    # iBOT over full patch maps: per-patch CE weighted by the mask, per image mean, image mean
    t_patch_probs, off = [], 0
    for mk in m_views:
        full = torch.zeros(*mk.shape, t_patch_probs_flat.shape[-1])
        k = int(mk.sum())
        full[mk] = t_patch_probs_flat[off:off + k]
        off += k
        t_patch_probs.append(full)
    ibot_terms = []
    for s, t, mk in zip(s_patch_scores, t_patch_probs, m_views):
        ce = -(t * F.log_softmax(s.float() / st, dim=-1)).sum(-1)
        ibot_terms.append((ce * mk).sum(-1) / mk.sum(-1).clamp(min=1))
    ibot = torch.cat(ibot_terms).mean()
    loss = cfg.dino_loss_weight * dino + cfg.koleo_loss_weight * koleo + cfg.ibot_loss_weight * ibot
    return {"dino": dino, "koleo": koleo, "ibot": ibot, "loss": loss}


@torch.no_grad()
def reference_ema(model: SSLMetaArch, momentum: float) -> None:
    for (_, pt), (_, ps) in zip(model.teacher.named_parameters(), model.student.named_parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)


# ---------------------------------------------------------------------------------------------


def make_model(args, seed: int = 0) -> SSLMetaArch:
    torch.manual_seed(seed)
    cfg = SSLModelConfig(
        dino_n_prototypes=args.prototypes, dino_hidden_dim=args.head_hidden, dino_bottleneck_dim=args.bottleneck,
        global_crop_size=args.global_size, local_crop_size=args.local_size, n_local_crops=args.n_local,
        drop_path_rate=0.0, koleo_loss_weight=0.1, ibot_loss_weight=1.0,
    )
    backbone = new_encoder(image_size=args.global_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           num_attention_heads=args.heads, mlp_ratio=4, patch_size=args.patch,
                           num_register_tokens=4, drop_path_rate=0.0)
    model = SSLMetaArch(backbone, cfg)
    model.sync_teacher()
    return model


def make_batch(args, seed: int):
    g = torch.Generator().manual_seed(seed)
    b = args.batch_size
    grid = (args.global_size // args.patch) ** 2
    glob = torch.randn(2 * b, 3, args.global_size, args.global_size, generator=g)
    loc = torch.randn(args.n_local * b, 3, args.local_size, args.local_size, generator=g)
    masks = torch.zeros(2 * b, grid, dtype=torch.bool)
    for i in range(0, 2 * b, 2):  # half of the global crops masked, 10-50 % of their patches
        n = int(grid * (0.1 + 0.4 * torch.rand((), generator=g)))
        masks[i, torch.randperm(grid, generator=g)[:n]] = True
    return glob, loc, masks


def check_same_maths(args) -> float:
    a, b = make_model(args), make_model(args)
    glob, loc, masks = make_batch(args, 123)
    ours = a(glob, loc, masks, teacher_temp=0.05)
    ref = reference_losses(b, glob, loc, masks, teacher_temp=0.05)
    ours = {k: v.detach() for k, v in ours.items()}
    ref = {k: v.detach() for k, v in ref.items()}
    ours_dino = ours["dino_global"] + ours["dino_local"]
    diffs = [abs(float(ours_dino - ref["dino"])), abs(float(ours["koleo"] - ref["koleo"])),
             abs(float(ours["ibot"] - ref["ibot"])), abs(float(ours["loss"] - ref["loss"]))]
    return max(diffs)


def bench(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    err = check_same_maths(args)
    print(f"same maths: max |ours - reference| over dino, koleo, ibot, loss = {err:.2e}")
    if err > 1e-4:
        raise SystemExit(f"the two implementations disagree by {err:.3g}; not benchmarking")

    sides = {}
    for name in ("reference", "ours"):
        model = make_model(args).to(dev)
        opt = torch.optim.AdamW([p for p in model.student.parameters() if p.requires_grad], lr=1e-4)
        sides[name] = (model, opt)
    batches = [tuple(x.to(dev) for x in make_batch(args, s)) for s in range(4)]

    def step(name: str, batch) -> None:
        model, opt = sides[name]
        glob, loc, masks = batch
        if name == "ours":
            losses = model(glob, loc, masks, teacher_temp=0.05)
        else:
            losses = reference_losses(model, glob, loc, masks, teacher_temp=0.05)
        losses["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if name == "ours":
            model.update_teacher(0.996)
        else:
            reference_ema(model, 0.996)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {"reference": [], "ours": []}
    for i in range(args.warmup):
        for name in times:
            step(name, batches[i % len(batches)])
    for i in range(args.steps):  # interleaved, so machine noise hits both sides alike
        order = ("reference", "ours") if i % 2 == 0 else ("ours", "reference")
        for name in order:
            sync()
            t = time.perf_counter()
            step(name, batches[i % len(batches)])
            sync()
            times[name].append(time.perf_counter() - t)
    b = args.batch_size
    out = {name: b / statistics.median(ts) for name, ts in times.items()}
    out["ratio"] = out["ours"] / out["reference"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32, help="images per step (each with 2 global + n-local crops)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--global-size", type=int, default=64)
    p.add_argument("--local-size", type=int, default=32)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--prototypes", type=int, default=1024)
    p.add_argument("--head-hidden", type=int, default=256)
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: fastest for a tiny ViT on a small shared CPU; 0 = torch default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    res = bench(args)
    print(f"SSL training step, tiny ViT ({args.layers}x{args.hidden}, patch {args.patch}), batch {args.batch_size} "
          f"(2x{args.global_size}px + {args.n_local}x{args.local_size}px crops), device {args.device}, "
          f"threads {torch.get_num_threads()}")
    print(f"  reference (one pass per crop, pairwise losses): {res['reference']:8.1f} samples/s")
    print(f"  ours (batched crops, masked-only head, fused):  {res['ours']:8.1f} samples/s")
    print(f"  ratio ours / reference: {res['ratio']:.2f}x (target >= 1.2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
