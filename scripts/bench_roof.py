"""The roof of this machine: dense matrix-product throughput in fp32 and bf16, the ceiling every benchmark is read
against (docs/performance.md).

    python scripts/bench_roof.py                 # 2048^2 products, 1 thread and all threads
    python scripts/bench_roof.py --sizes 512 1024 2048 4096 --threads 1 2 --rounds 7

Rounds interleave fp32 and bf16 (machines here are shared: a slow spell hits both); each figure is the median of
the rounds' GFLOP/s (2 n^3 flops per product), printed with its spread. The last line is the headline ratio,
bf16 over fp32 at the largest size on all threads. On CPUs with AMX (``amx_bf16`` in /proc/cpuinfo) bf16 runs on
the tile units; without it, bf16 is often slower than fp32.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def gflops(n: int, dtype: torch.dtype, min_s: float = 0.3) -> float:
    """GFLOP/s of repeated n x n products in ``dtype`` over at least ``min_s`` seconds (after a warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        reps += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return 2 * n**3 * reps / dt / 1e9


def measure(sizes: list[int], threads: list[int], rounds: int) -> dict[tuple[int, int], dict[str, list[float]]]:
    out: dict[tuple[int, int], dict[str, list[float]]] = {}
    for t in threads:
        torch.set_num_threads(t)
        for n in sizes:
            res = {"fp32": [], "bf16": []}
            for _ in range(rounds):
                for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                    res[name].append(gflops(n, dt))
            out[(t, n)] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--threads", type=int, nargs="+", default=None, help="default: 1 and all cores")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    flags = cpu_flags()
    print(f"torch {torch.__version__}; cores {os.cpu_count()}; AMX bf16: {'amx_bf16' in flags}; "
          f"AVX-512 bf16: {'avx512_bf16' in flags}; rounds {args.rounds} (interleaved)")
    res = measure(sorted(args.sizes), threads, args.rounds)
    print("| threads | n | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |")
    print("|---|---|---|---|---|")
    for (t, n), r in res.items():
        f, b = statistics.median(r["fp32"]), statistics.median(r["bf16"])
        print(f"| {t} | {n} | {f:.0f} ({min(r['fp32']):.0f}-{max(r['fp32']):.0f}) | "
              f"{b:.0f} ({min(r['bf16']):.0f}-{max(r['bf16']):.0f}) | {b / f:.2f}x |")
    t, n = max(threads), max(args.sizes)
    r = res[(t, n)]
    print(f"bf16 over fp32, {n}^2 products on {t} threads: {statistics.median(r['bf16']) / statistics.median(r['fp32']):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
