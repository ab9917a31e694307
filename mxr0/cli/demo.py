"""``mxr0 demo``: the embedded end-to-end demo on phantom studies."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 demo``."""
    d = commands.add_parser("demo", help="the embedded end-to-end demo on phantom studies")
    d.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    d.add_argument("--data", default="data_cache/phantom", help="where the phantom set is drawn")
    d.add_argument("--fast", action="store_true", help="a smaller, quicker demo (smoke test)")
    d.add_argument("--skip-xr0", action="store_true", help="leave out the XR-0 self-supervised part")
    d.add_argument("--skip-report", action="store_true", help="leave out the report-generation part")
    d.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from mxr0.demo import run_demo  # lazy: keep mxr0 --help fast

    return run_demo(out=args.out, data=args.data, fast=args.fast, xr0=not args.skip_xr0, report=not args.skip_report)
