"""Benchmark our alignment training step against open_clip's ``ClipLoss`` on the same towers and batch.

    .venv/bin/python scripts/bench_align.py                     # tiny towers, CPU, one thread (~20 s)
    .venv/bin/python scripts/bench_align.py --batch-size 128 --threads 2
    .venv/bin/python scripts/bench_align.py --device cuda --batch-size 256 --hidden 384 --layers 12 \\
        --heads 6 --patch 14 --image-size 224 --text-hidden 256 --text-layers 6 --text-heads 4

Needs open_clip, which the README's set-up installs with the dev extras (`scripts/bootstrap.sh`:
``pip install --no-deps open_clip_torch``, ``--no-deps`` keeps it from pulling a torchvision that replaces our torch). Only its ``loss.py`` is loaded, by file path, at run time:
``import open_clip`` itself needs torchvision, which the mxr0 environment leaves out.

Both sides train the same dual encoder (a new DINOv2-with-registers ViT and a tiny BERT from configs,
joined by `mxr0.models.dual_encoder.build_dual_encoder`; same initial weights, same batches of random
pixels and token ids, same AdamW) and print training samples/s (forward + backward + optimiser step)
side by side:

- **ours**: `AlignTask.training_step` (`AlignModel` forward → `ContrastiveLoss("clip")` with its
  defaults, local loss and gather with gradient), which takes the log logit scale and clamps the
  scale at 100 inside the loss;
- **open_clip**: the same `AlignModel` embeddings into open_clip's ``ClipLoss(local_loss=True,
  gather_with_grad=True, cache_labels=True)`` (as ``open_clip.create_loss`` builds it) with
  ``logit_scale.exp()``, and ``logit_scale.clamp_(0, log 100)`` after the optimiser step, as
  ``open_clip_train.train`` does.

Before timing, the script checks that both give the same loss and the same gradients on one batch.
Steps are timed in rounds of ``--steps`` per side, the sides interleaved (alternating which goes
first) so that machine noise hits both alike; the rates are medians over rounds. Data loading is
excluded (shared by both).

Single process only: with one process neither loss gathers anything, so this measures the loss and
step overhead around the towers, not communication. That the gathered loss is exact across ranks is
tested in ``tests/distributed/test_align_distributed.py``.

The last line is the headline ratio, ours / open_clip.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INSTALL = "pip install --no-deps open_clip_torch"


def load_open_clip_loss():
    """open_clip's ``loss`` module, loaded from its file (``import open_clip`` needs torchvision);
    ``None`` when open_clip_torch is not installed."""
    spec = importlib.util.find_spec("open_clip")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    if not path.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)  # imports torch only (horovod optional, guarded by open_clip)
    return module


def make_model(args):
    from transformers import BertConfig, BertModel

    from mxr0.models.dual_encoder import AlignModel, build_dual_encoder, default_logit_scale
    from mxr0.models.encoder import new_encoder

    torch.manual_seed(0)
    vision = new_encoder(args.image_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, patch_size=args.patch, num_register_tokens=4, mlp_ratio=4)
    text = BertModel(BertConfig(vocab_size=args.vocab, hidden_size=args.text_hidden, num_hidden_layers=args.text_layers,
                                num_attention_heads=args.text_heads, intermediate_size=4 * args.text_hidden,
                                max_position_embeddings=max(64, args.text_length),
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))  # deterministic check
    for n, p in vision.named_parameters():
        if n.endswith("mask_token"):  # masked-image pretraining only, as set_unlocked does
            p.requires_grad_(False)
    dual = build_dual_encoder(vision, text, args.projection_dim, default_logit_scale("clip"))
    return AlignModel(dual)


def make_batch(args, seed: int, device) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, n = args.batch_size, args.text_length
    ids = torch.randint(5, args.vocab, (b, n), generator=g)
    lengths = torch.randint(n // 3, n + 1, (b,), generator=g)
    mask = (torch.arange(n)[None] < lengths[:, None]).long()
    batch = {"pixel_values": torch.randn(b, 3, args.image_size, args.image_size, generator=g),
             "input_ids": ids * mask, "attention_mask": mask}
    return {k: v.to(device) for k, v in batch.items()}


class Sides:
    """Both training steps; ``loss(name, model, batch)`` is the differentiable loss of one side."""

    def __init__(self, oc_loss):
        from mxr0.losses.contrastive import ContrastiveLoss
        from mxr0.tasks.align import AlignTask

        # what AlignTask.training_step reads from the task (as tests/distributed/_align_dist_step.py does)
        self.task = types.SimpleNamespace(loss=ContrastiveLoss("clip", local_loss=True, gather_with_grad=True),
                                          cfg=types.SimpleNamespace(patch_loss_weight=0.0))
        self.training_step = AlignTask.training_step
        self.clip_loss = oc_loss.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True)

    def loss(self, name: str, model, batch) -> torch.Tensor:
        if name == "ours":
            return self.training_step(self.task, model, batch)["loss"]
        out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"])
        return self.clip_loss(out["image_embeds"], out["text_embeds"], out["logit_scale"].exp())

    def step(self, name: str, model, opt, batch) -> None:
        self.loss(name, model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if name == "open_clip":
            with torch.no_grad():
                model.dual.logit_scale.clamp_(0, math.log(100))


def check_same(args, sides: Sides, base, device) -> tuple[float, float]:
    """|loss difference| and the largest |gradient difference| over all parameters, on one batch."""
    batch = make_batch(args, 123, device)
    losses, grads = {}, {}
    for name in ("ours", "open_clip"):
        model = copy.deepcopy(base).to(device)
        loss = sides.loss(name, model, batch)
        loss.backward()
        losses[name] = float(loss.detach())
        grads[name] = {n: p.grad.detach().float() for n, p in model.named_parameters() if p.grad is not None}
    if grads["ours"].keys() != grads["open_clip"].keys():
        raise SystemExit("the two sides give gradients to different parameters; not benchmarking")
    gdiff = max(float((grads["ours"][n] - grads["open_clip"][n]).abs().max()) for n in grads["ours"])
    print(f"same loss: ours {losses['ours']:.6f}, open_clip {losses['open_clip']:.6f}, "
          f"|difference| {abs(losses['ours'] - losses['open_clip']):.2e}; max |gradient difference| {gdiff:.2e}")
    return abs(losses["ours"] - losses["open_clip"]), gdiff


def bench(args, oc_loss) -> dict:
    device = torch.device(args.device)
    sides = Sides(oc_loss)
    base = make_model(args)
    dl, dg = check_same(args, sides, base, device)
    if dl > 1e-4 or dg > 1e-4:
        raise SystemExit(f"the two losses disagree (loss {dl:.3g}, gradient {dg:.3g}); not benchmarking")

    state = {}
    for name in ("ours", "open_clip"):
        model = copy.deepcopy(base).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        state[name] = (model, opt)
    batches = [make_batch(args, s, device) for s in range(4)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(name: str, n: int, offset: int) -> float:
        model, opt = state[name]
        sync()
        t = time.perf_counter()
        for i in range(n):
            sides.step(name, model, opt, batches[(offset + i) % len(batches)])
        sync()
        return time.perf_counter() - t

    for name in state:
        run(name, args.warmup, 0)
    times: dict[str, list[float]] = {"ours": [], "open_clip": []}
    for r in range(args.rounds):  # interleaved, alternating which side goes first
        order = ("ours", "open_clip") if r % 2 == 0 else ("open_clip", "ours")
        for name in order:
            times[name].append(run(name, args.steps, r * args.steps))
    out = {name: args.batch_size * args.steps / statistics.median(ts) for name, ts in times.items()}
    out["ratio"] = out["ours"] / out["open_clip"]
    out["spread"] = {name: (args.batch_size * args.steps / max(ts), args.batch_size * args.steps / min(ts))
                     for name, ts in times.items()}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=64, help="image-text pairs per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (rates are medians over rounds)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64, help="vision tower width")
    p.add_argument("--layers", type=int, default=4, help="vision tower depth")
    p.add_argument("--heads", type=int, default=4, help="vision tower heads")
    p.add_argument("--text-hidden", type=int, default=64)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--text-heads", type=int, default=4)
    p.add_argument("--text-length", type=int, default=48, help="tokens per text (lengths vary, padded to this)")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--projection-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1, as the other CPU benches; 0 = torch default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    oc_loss = load_open_clip_loss()
    if oc_loss is None:
        # a clean skip, not a traceback: the last line says why (exit status 2: nothing was measured)
        print(f"open_clip is not installed, so there is nothing to compare against; install it with\n    {INSTALL}\n"
              "(--no-deps: its torchvision requirement would replace torch; a pip extra cannot say --no-deps,\n"
              "so it is not in the dev extras). The script needs only open_clip/loss.py, which imports torch alone.")
        print("SKIPPED: open_clip_torch is not installed (no ratio measured)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    res = bench(args, oc_loss)
    print(f"alignment training step (forward + backward + AdamW), dual encoder ViT {args.layers}x{args.hidden} "
          f"(patch {args.patch}, {args.image_size} px) + BERT {args.text_layers}x{args.text_hidden} "
          f"({args.text_length} tokens), batch {args.batch_size}, device {args.device}, "
          f"threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps")
    for name, label in (("open_clip", "open_clip ClipLoss:      "), ("ours", "ours (ContrastiveLoss):  ")):
        lo, hi = res["spread"][name]
        print(f"  {label}{res[name]:8.1f} samples/s (rounds {lo:.1f}-{hi:.1f})")
    print(f"  ratio ours / open_clip: {res['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
