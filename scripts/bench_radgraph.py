#!/usr/bin/env python
"""Benchmark RadGraph annotation in bf16 (with the fp32 redo rule) against fp32, same model and reports.

    .venv/bin/python scripts/bench_radgraph.py                      # 128 IU X-ray reports, bert-base shapes
    .venv/bin/python scripts/bench_radgraph.py --model radgraph-xl.tar.gz --n 256

Without ``--model`` a RadGraph model in the official layout with bert-base transformer shapes (hidden 768,
12 layers, 512-token segments) and random weights is written to a temporary folder (stand-in weights: the
redo share says little about the real model's margins). The same reports go through
``RadGraph.annotate(precision=...)`` with ``fp32``, ``bf16`` (autocast) and ``bf16-weights`` (both with the
rule of `mxr0.eval.reports.radgraph`: annotations identical to fp32), in interleaved rounds with pinned
threads. It prints reports/s, ratios against fp32 (median of per-round ratios [min-max]), the share of
reports redone in fp32 and whether the annotations equal fp32's; the last line is the best exact ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    import torch

    from bench_chexbert import _reports
    from mxr0.eval.reports import RadGraph
    from mxr0.eval.reports.testing import save_tiny_radgraph

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a RadGraph model (.tar.gz, folder or type); default: bert-base-shaped stand-in")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads, pinned")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="RadGraph")
    texts, src = _reports(args.n)
    if args.model:
        rg, what = RadGraph.load(args.model, device="cpu"), f"model {args.model}"
    else:
        folder = save_tiny_radgraph(Path(tempfile.mkdtemp(prefix="mxr0-bench-rg-")), dataset="radgraph-xl",
                                    texts=_reports(None)[0][:48], hidden=768, layers=12, heads=12,
                                    intermediate=3072, feature_size=20, max_span_width=8, ff_hidden=150,
                                    max_length=512, vocab_size=8000)
        rg = RadGraph.load(folder, device="cpu")
        what = "stand-in: bert-base-shaped transformer, random weights, WordPiece vocabulary of 48 reports"
    modes = ("fp32", "bf16", "bf16-weights")
    for m in modes:  # warm-up (and the bf16 weight copy)
        rg.annotate(texts[:4], args.batch_size, precision=m)
    times = {m: [] for m in modes}
    outs, runs = {}, {}
    for r in range(args.repeats):
        for m in modes[r % 3:] + modes[:r % 3]:
            t0 = time.perf_counter()
            outs[m] = rg.annotate(texts, args.batch_size, precision=m)
            times[m].append(time.perf_counter() - t0)
            runs[m] = dict(rg.last_run)
    n = len(texts)
    print(f"[radgraph] {n} reports ({len(set(texts))} distinct) from {src}; {what}; threads "
          f"{torch.get_num_threads()} (pinned), load average {os.getloadavg()[0]:.2f}, {args.repeats} interleaved rounds")
    best = None
    for m in modes:
        rr = [a / b for a, b in zip(times["fp32"], times[m])]
        same = sum(a == b for a, b in zip(outs[m], outs["fp32"]))
        ru = runs[m]
        extra = "" if m == "fp32" else (f"; redone in fp32 {ru['relabelled_fp32']} + calibration "
                                        f"{ru['calibration_fp32']} of {ru['reports']} (threshold {ru['threshold']:.3g})")
        print(f"[radgraph] {m:<12} {n / statistics.median(times[m]):7.2f} reports/s  {statistics.median(rr):.2f}x "
              f"[{min(rr):.2f}-{max(rr):.2f}]  annotations = fp32: {same}/{n}{extra}")
        if m != "fp32" and same == n and (best is None or statistics.median(rr) > best[1]):
            best = (m, statistics.median(rr))
    print(f"{best[1]:.2f}x ({best[0]} vs fp32, annotations identical)" if best else "no exact bf16 mode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
