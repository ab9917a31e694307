"""Benchmark batched report generation against one-by-one generation (LLaVA's batch-of-one loop).

    .venv/bin/python scripts/bench_generate.py                          # trains a tiny VLM first (~1 min)
    .venv/bin/python scripts/bench_generate.py --model runs/tiny-report/export --n 64 --batch-size 64
    .venv/bin/python scripts/bench_generate.py --model runs/mxr0-report/export --device cuda --n 256

Both sides generate greedy reports for the same ``--n`` phantom test studies with the same exported
model and KV cache: the reference calls ``generate`` once per study (batch of one, as LLaVA's
``model_vqa`` loop and MAIRA-2's example do); ours left-pads ``--batch-size`` prompts into one call
(`mxr0.generate.generate_batch`, what `mxr0 generate --data` runs). The script checks that both produce
identical texts, then prints reports/s side by side (rounds interleaved against machine noise).
The last line is the headline ratio (ours / reference, both fp32); goal >= 5x at 64 studies on a CPU.

``--precisions bf16,bf16-weights`` (the default) also times the batched path in bf16 (autocast over fp32
weights, or weights cast to bf16; `mxr0.precision`) in the same interleaved rounds and reports the share
of greedy outputs identical to fp32 batched ones. bf16 is not part of the identity check: padding changes
bf16 results, so batched-vs-one-by-one identity is an fp32 property. ``--precisions ""`` skips it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tiny_export(data: Path, out: Path, steps: int) -> str:
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes/tiny/mxr0_report.yaml", [
        "data.source=records", f"data.path={data}", f"train.output_dir={out}", f"train.max_steps={steps}",
        "model.vision=", "model.train_vision=full", "model.cache_features=false",
        "train.eval_every=0", "train.save_every=0", "model.eval_generate=0", "train.progress=false", "train.trackers=[jsonl]",
    ])
    return train(recipe)["export_dir"]


def main() -> None:
    from mxr0.data.phantom import generate_phantom
    from mxr0.data.records import read_records
    from mxr0.generate import _config_from, load_vlm
    from mxr0.models.decoding import generate_batch
    from mxr0.data.report_dataset import ReportDataset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="report-generation export (default: train a tiny one on phantom data)")
    ap.add_argument("--data", default="data_cache/phantom", help="records to draw test studies from")
    ap.add_argument("--n", type=int, default=64, help="studies")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--train-steps", type=int, default=240, help="steps for the tiny model when --model is absent")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, pinned (0: torch's default)")
    ap.add_argument("--precisions", default="bf16,bf16-weights",
                    help="comma-separated bf16 modes also timed on the batched path ('' = none)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = Path(args.data)
    if not (data / "records.jsonl").exists() and not data.is_file():
        data = Path(generate_phantom(data, n_studies=2000, image_size=128, seed=0)).parent
    tmp = tempfile.mkdtemp(prefix="mxr0-bench-gen-")
    model_dir = args.model or _tiny_export(data, Path(tmp) / "run", args.train_steps)
    model, tok, transform, settings = load_vlm(model_dir, device=args.device)
    recs = [r for r in read_records(data, splits=["test", "validation"]) if r["anatomy"] == "chest"][: args.n]
    ds = ReportDataset(recs, tok, transform, _config_from(settings), int(settings["n_image_tokens"]), train=False,
                       with_answer=False)
    items = [ds[i] for i in range(len(ds))]

    def one_by_one():
        return [generate_batch(model, tok, [it], args.max_new_tokens)[0] for it in items]

    def batched():
        out = []
        for s in range(0, len(items), args.batch_size):
            out += generate_batch(model, tok, items[s:s + args.batch_size], args.max_new_tokens)
        return out

    ref_texts, our_texts = one_by_one(), batched()  # warm-up and the identity check
    same = sum(a == b for a, b in zip(ref_texts, our_texts))
    print(f"identical greedy outputs: {same}/{len(items)}")
    if same != len(items):
        diff = next(i for i, (a, b) in enumerate(zip(ref_texts, our_texts)) if a != b)
        print(f"first difference, study {diff}:\n  one-by-one: {ref_texts[diff]!r}\n  batched:    {our_texts[diff]!r}")
        sys.exit(1)
    tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in our_texts)
    precs = [p for p in args.precisions.split(",") if p]
    low = {p: load_vlm(model_dir, device=args.device, precision=p)[0] for p in precs}

    def batched_with(m):
        out = []
        for s in range(0, len(items), args.batch_size):
            out += generate_batch(m, tok, items[s:s + args.batch_size], args.max_new_tokens)
        return out

    low_texts = {p: batched_with(m) for p, m in low.items()}  # warm-up and the agreement with fp32
    runs = {"reference": one_by_one, "fp32": batched, **{p: (lambda m=m: batched_with(m)) for p, m in low.items()}}
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs)
    for r in range(args.repeats):  # interleaved, order rotated each round
        for k in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    rate = {k: len(items) / statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median([a / b for a, b in zip(times["reference"], v)]) for k, v in times.items()}
    spread = {k: (min(a / b for a, b in zip(times["reference"], v)), max(a / b for a, b in zip(times["reference"], v)))
              for k, v in times.items()}
    print(f"studies {len(items)}, mean generated tokens {tokens / len(items):.1f}, model {model_dir}, "
          f"threads {torch.get_num_threads()} (pinned), device {args.device}, {args.repeats} interleaved rounds "
          f"(ratio = median of per-round ratios [min-max])")
    print(f"reference (one study per generate call, fp32): {rate['reference']:.2f} reports/s")
    for p in precs:
        same_p = sum(a == b for a, b in zip(our_texts, low_texts[p]))
        print(f"batches of {args.batch_size}, {p:<12}: {rate[p]:7.2f} reports/s  {ratio[p]:.2f}x "
              f"[{spread[p][0]:.2f}-{spread[p][1]:.2f}]  vs fp32 batched {rate[p] / rate['fp32']:.2f}x; "
              f"greedy outputs identical to fp32: {same_p}/{len(items)}")
    print(f"ours (left-padded batches of {args.batch_size}, fp32): {rate['fp32']:.2f} reports/s  "
          f"[{spread['fp32'][0]:.2f}-{spread['fp32'][1]:.2f}]; outputs identical to one-by-one {same}/{len(items)}")
    print(f"{ratio['fp32']:.2f}x")


if __name__ == "__main__":
    main()
