"""``mxr0 eval vision``: the frozen-encoder suite from the command line.

    mxr0 eval vision --model xr0=runs/xr0-tiny/export --random-baseline \\
        --data data_cache/phantom --out runs/xr0-tiny/eval --run xr0=runs/xr0-tiny
    mxr0 eval vision --model rad-dino=microsoft/rad-dino --model xr0=runs/xr0/export \\
        --data /data/mimic/records.parquet --tasks probe knn fairness --cache-dir cache/features
"""
# (the docstring is `mxr0 eval vision --help`'s description.) Wire it with add_arguments(subparser) and run(args).

from __future__ import annotations

import argparse
import sys

from mxr0.eval.vision.report import to_markdown, write_report
from mxr0.eval.vision.suite import TASKS, VisionEvalConfig, evaluate_encoders
from mxr0.models.encoder import EncoderSourceError


def _named(text: str) -> tuple[str, str]:
    if "=" in text:
        name, value = text.split("=", 1)
        if name and value:
            return name, value
    return text.rstrip("/").split("/")[-1] or text, text


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:

    d = VisionEvalConfig()
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                   help="an encoder folder or Hub id (DINOv2 family, with an image-processor config); "
                        "random:PATH for its architecture at random init; repeat to compare")
    p.add_argument("--random-baseline", action="store_true",
                   help="also evaluate the first model's architecture at random initialisation")
    p.add_argument("--data", required=True, help="records file or folder (canonical study records)")
    p.add_argument("--out", default=None, help="write results.json, results.md and plots here")
    p.add_argument("--run", action="append", default=[], metavar="[NAME=]RUN_DIR",
                   help="a pretraining run folder: plot its probe AUROC against pretraining steps")
    p.add_argument("--tasks", nargs="+", default=list(d.tasks), choices=list(TASKS))
    p.add_argument("--features", default=d.features, choices=["cls", "cls+mean", "last4"])
    p.add_argument("--probe-anatomies", nargs="+", default=d.probe_anatomies)
    p.add_argument("--views", nargs="*", default=None)
    p.add_argument("--lrs", nargs="+", type=float, default=d.lrs, help="probe learning-rate sweep")
    p.add_argument("--probe-steps", type=int, default=d.probe_steps)
    p.add_argument("--knn-k", type=int, default=d.knn_k)
    p.add_argument("--knn-target", default=d.knn_target)
    p.add_argument("--seg-heads", nargs="+", default=d.seg_heads, choices=["linear", "multiscale"])
    p.add_argument("--seg-steps", type=int, default=d.seg_steps)
    p.add_argument("--seg-lr", type=float, default=None, help="default: 0.1 linear, 1e-3 multi-scale")
    p.add_argument("--age-bands", nargs="+", type=float, default=d.age_bands)
    p.add_argument("--n-bootstrap", type=int, default=d.n_bootstrap)
    p.add_argument("--target-auroc", type=float, default=None,
                   help="convergence target (default: the lowest final value among the encoders)")
    p.add_argument("--splits", nargs=3, default=[d.train_split, d.select_split, d.test_split],
                   metavar=("TRAIN", "SELECT", "TEST"))
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--cache-dir", default=None, help="feature cache folder")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "auto"],
                   help="feature extraction: fp32 (default), bf16 autocast, or auto (bf16 where the device is fast in it)")
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def run(args: argparse.Namespace) -> int:

    encoders = dict(_named(m) for m in args.model)
    if args.random_baseline:
        first = next(iter(encoders.values()))
        encoders.setdefault("random-init", f"random:{first.removeprefix('random:')}")
    cfg = VisionEvalConfig(
        tasks=list(args.tasks), features=args.features, probe_anatomies=list(args.probe_anatomies),
        views=args.views or None, lrs=list(args.lrs), probe_steps=args.probe_steps, knn_k=args.knn_k,
        knn_target=args.knn_target, seg_heads=list(args.seg_heads), seg_steps=args.seg_steps, seg_lr=args.seg_lr,
        age_bands=list(args.age_bands), n_bootstrap=args.n_bootstrap, target_auroc=args.target_auroc,
        train_split=args.splits[0], select_split=args.splits[1], test_split=args.splits[2],
        batch_size=args.batch_size, cache_dir=args.cache_dir, seed=args.seed, device=args.device,
        precision=args.precision,
    )
    runs = dict(_named(r) for r in args.run) or None

    try:
        res = evaluate_encoders(encoders, args.data, cfg, runs=runs, echo=lambda s: print(s, file=sys.stderr))
    except (EncoderSourceError, FileNotFoundError) as e:  # a --model that is no encoder source (or lacks its
        # image-processor config), a missing --data: named, no traceback
        print(f"mxr0 eval vision: {e}", file=sys.stderr)
        return 1
    print(to_markdown(res))
    if args.out:
        files = write_report(res, args.out)
        print(f"\n[eval vision] wrote {', '.join(files.values())}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mxr0 eval vision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return run(add_arguments(p).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
