#!/usr/bin/env python
"""Benchmark VLM report-generation training with the frozen-feature cache against without it.

    .venv/bin/python scripts/bench_vlm_cache.py                 # recipes/tiny/mxr0_report.yaml's model
    .venv/bin/python scripts/bench_vlm_cache.py --steps 40 --rounds 3

Both sides train `recipes/tiny/mxr0_report.yaml` (a frozen vision tower, the projector and a 2-layer Llama;
here the vision tower is a new random ViT of the recipe's shape, so no classifier export is needed) for the
same steps, batches and seed; only ``model.cache_features`` differs. With the cache the frozen encoder's
outputs are computed once before training (in ``setup``, outside the timed steps) and each step reads them;
without it every step runs the vision tower. Runs alternate (order swapped each round); the figure per run
is the median of the loop's logged ``train/samples_per_s`` after the first log. The last line is the
headline ratio, cached / uncached steps per second (goal >= 2x). The cache's one-off build time is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def main(argv=None) -> int:
    from bench_train_precision import run_once

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data_cache/phantom", help="records (a small phantom set is drawn if absent)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, pinned")
    ap.add_argument("--set", action="append", default=[], help="extra recipe overrides (key=value)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    if not (data / "records.jsonl").exists() and not data.is_file():
        from mxr0.data.phantom import generate_phantom

        data = Path(tempfile.mkdtemp(prefix="mxr0-bench-cache-")) / "phantom"
        data = Path(generate_phantom(data, n_studies=400, image_size=128, seed=0, progress=False)).parent
    recipe = REPO / "recipes/tiny/mxr0_report.yaml"
    base = ["model.vision=", "model.train_vision=frozen", "model.augment=false", "model.eval_generate=0", *args.set]
    tmp = Path(tempfile.mkdtemp(prefix="mxr0-bench-cache-"))
    res: dict[str, list[dict]] = {"false": [], "true": []}
    wall: dict[str, list[float]] = {"false": [], "true": []}
    for r in range(args.rounds):
        for c in (("false", "true") if r % 2 == 0 else ("true", "false")):
            t0 = time.perf_counter()
            res[c].append(run_once(recipe, data, tmp / f"{c}-{r}", [*base, f"model.cache_features={c}"], args.steps,
                                   args.log_every))
            wall[c].append(time.perf_counter() - t0)
            torch.set_num_threads(args.threads)
    ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(res["false"], res["true"])]
    print(f"[env] {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()} "
          f"(pinned); {recipe.name} with a random frozen ViT {' '.join(args.set)}; {args.steps} steps per run, "
          f"{args.rounds} rounds")
    for c, label in (("false", "no cache (vision tower every step)"), ("true", "frozen-feature cache")):
        sps = [x["samples_per_s"] for x in res[c]]
        print(f"{label:<36}: {statistics.median(sps):8.1f} samples/s (runs {min(sps):.1f}-{max(sps):.1f}); whole run "
              f"incl. set-up {statistics.median(wall[c]):.1f} s; final losses "
              + ", ".join(f"{x['final_loss']:.4f}" for x in res[c]))
    print(f"{statistics.median(ratios):.2f}x (cached / uncached training samples/s, rounds "
          f"{min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
