#!/usr/bin/env python
"""Benchmark the training loop with ``train.mixed_precision: bf16`` against ``"no"`` (fp32), same recipe.

    .venv/bin/python scripts/bench_train_precision.py                                  # tiny classifier
    .venv/bin/python scripts/bench_train_precision.py --set model.encoder_config.hidden_size=384 \
        --set model.encoder_config.num_attention_heads=6 --set model.encoder_config.intermediate_size=1536
    .venv/bin/python scripts/bench_train_precision.py --recipe recipes/tiny/xr0_pretrain.yaml

Both sides run `mxr0.train.loop.train` (unchanged) on the same recipe, data, seed and steps; only
``train.mixed_precision`` differs (bf16 = accelerate's CPU autocast: matrix products in bf16 on AMX, master
weights and AdamW state in fp32, as `tests/unit/test_bf16.py` checks). Runs alternate fp32 / bf16 for
``--rounds`` rounds (order swapped each round); the figure per run is the median of the loop's logged
``train/samples_per_s`` after the first log (warm-up excluded). The last line is the headline ratio
bf16 / fp32 (median of per-round ratios). Final losses are printed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_once(recipe: Path, data: Path, out: Path, overrides: list[str], steps: int, log_every: int) -> dict:
    """One training run of ``recipe`` with ``overrides``; the median logged samples/s after the first log."""
    from accelerate.state import AcceleratorState

    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    AcceleratorState._reset_state(reset_partial_state=True)  # precision is fixed per process state otherwise
    train(load_recipe(recipe, [
        "data.source=records", f"data.path={data}", f"train.output_dir={out}", f"train.max_steps={steps}",
        "train.eval_every=0", "train.save_every=0", "train.progress=false", "train.trackers=[jsonl]",
        f"train.log_every={log_every}", *overrides]))
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    sps = [r["train/samples_per_s"] for r in logs if "train/samples_per_s" in r]
    loss = [r["train/loss"] for r in logs if "train/loss" in r]
    return {"samples_per_s": statistics.median(sps[1:] or sps), "final_loss": loss[-1] if loss else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=str(REPO / "recipes/tiny/classify.yaml"))
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

        data = Path(tempfile.mkdtemp(prefix="mxr0-bench-tp-")) / "phantom"
        data = Path(generate_phantom(data, n_studies=400, image_size=128, seed=0, progress=False)).parent
    tmp = Path(tempfile.mkdtemp(prefix="mxr0-bench-tp-"))
    res: dict[str, list[dict]] = {"no": [], "bf16": []}
    for r in range(args.rounds):
        for p in (("no", "bf16") if r % 2 == 0 else ("bf16", "no")):
            res[p].append(run_once(Path(args.recipe), data, tmp / f"{p}-{r}", [f"train.mixed_precision='{p}'", *args.set],
                                   args.steps, args.log_every))
            torch.set_num_threads(args.threads)
    ratios = [b["samples_per_s"] / a["samples_per_s"] for a, b in zip(res["no"], res["bf16"])]
    print(f"[env] {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, threads {torch.get_num_threads()} "
          f"(pinned); recipe {args.recipe} {' '.join(args.set)}; {args.steps} steps per run, {args.rounds} rounds")
    for p in ("no", "bf16"):
        sps = [x["samples_per_s"] for x in res[p]]
        print(f"train.mixed_precision={p:<4}: {statistics.median(sps):8.1f} samples/s (runs {min(sps):.1f}-{max(sps):.1f}); "
              "final losses " + ", ".join(f"{x['final_loss']:.4f}" for x in res[p]))
    print(f"{statistics.median(ratios):.2f}x (bf16 / fp32 training samples/s, rounds {min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
