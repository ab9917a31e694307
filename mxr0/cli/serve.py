"""``mxr0 serve``: an OpenAI-compatible endpoint, task endpoints and a web page for exported models."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 serve``."""
    sv = commands.add_parser("serve", help="an OpenAI-compatible endpoint, task endpoints and a web page for "
                             "exported models (research use only; needs the serve extra)")
    sv.add_argument("--model", required=True, help="report / instruction VLM export (folder or Hub id)")
    sv.add_argument("--align", default=None, help="dual-encoder export: zero-shot scores and patch-similarity maps")
    sv.add_argument("--classifier", default=None, help="classifier export: finding probabilities")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN on /v1/ (default "
                    "$MXR0_SERVE_TOKEN); required for a non-loopback --host")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="allow this browser origin (repeatable; default: same origin only)")
    sv.add_argument("--name", default=None, help="the VLM's model id in the API (default: the run folder's name)")
    sv.add_argument("--max-batch", type=int, default=16, help="requests per batched generate call")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    sv.add_argument("--batch-wait-ms", type=float, default=50.0,
                    help="how long an idle worker waits for requests still being prepared before starting a batch")
    sv.add_argument("--max-body-mb", type=float, default=48, help="request size limit in MiB (413 above)")
    sv.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    # the choices are mxr0.precision's; batched generation equals one-by-one generation in fp32 only
    sv.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16-weights", "auto"],
                    help="the VLM's precision (default fp32)")
    sv.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    try:
        from mxr0.serve.app import serve  # lazy: fastapi / uvicorn are the optional serve extra; torch loads here
    except ImportError as e:
        print(f"mxr0 serve: {e.name or e} is missing: install the serve extra (pip install -e '.[serve]')",
              file=sys.stderr)
        return 1
    from mxr0.models.download import ModelNotFound  # lazy: keep mxr0 --help fast

    try:
        serve(args.model, align=args.align, classifier=args.classifier, host=args.host, port=args.port,
              token=args.token or os.environ.get("MXR0_SERVE_TOKEN") or None, cors_origins=args.cors_origin,
              max_batch=args.max_batch, max_queue=args.max_queue, max_body_mb=args.max_body_mb, device=args.device,
              name=args.name, batch_wait_ms=args.batch_wait_ms, precision=args.precision)
    except (ModelNotFound, FileNotFoundError, ValueError, OSError) as e:
        print(f"mxr0 serve: {e}", file=sys.stderr)
        return 2
    return 0
