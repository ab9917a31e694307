"""``mxr0 eval WHAT``: an exported classifier, generated reports, a frozen encoder or a dual encoder; each suite's
options are declared by its module in `mxr0.eval`, imported only when that suite runs (or shows its help)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

#: ``mxr0 eval WHAT`` → what it evaluates.
SUITES = {
    "classify": "per-label AUROC of an exported classifier on canonical records",
    "reports": "CheXbert F1, RadGraph F1, BLEU/ROUGE-L/CIDEr-D, change F1 against a prior, with bootstrap CIs",
    "vision": "frozen-encoder suite: linear probe, kNN, segmentation, fairness",
    "align": "dual encoder: retrieval R@K, zero-shot AUROC, phrase-grounding mIoU/CNR",
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 eval WHAT [options]``; the options are parsed by `suite_parser` (WHAT's own)."""
    width = max(map(len, SUITES))
    ev = commands.add_parser("eval", help="evaluate models and generated reports",
                             formatter_class=argparse.RawDescriptionHelpFormatter,
                             description="Evaluate models and generated reports:\n\n" + "\n".join(
                                 f"  {name:<{width}}  {text}" for name, text in SUITES.items()))
    ev.add_argument("what", metavar="WHAT", choices=list(SUITES), help=", ".join(SUITES))
    ev.add_argument("options", nargs=argparse.REMAINDER, help="the options of WHAT (mxr0 eval WHAT --help)")
    ev.set_defaults(fn=run)


def suite_parser(what: str) -> tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], int]]:
    """The parser of ``mxr0 eval WHAT`` and the function that runs it on the parsed options."""
    p = argparse.ArgumentParser(prog=f"mxr0 eval {what}", formatter_class=argparse.RawDescriptionHelpFormatter)
    if what == "classify":
        p.description = SUITES["classify"]
        _add_classify_arguments(p)
        return p, _classify
    if what == "reports":
        from mxr0.eval.reports import cli as suite  # lazy: keep mxr0 --help fast
    elif what == "vision":
        from mxr0.eval.vision import cli as suite  # lazy: keep mxr0 --help fast
    elif what == "align":
        from mxr0.eval import align_cli as suite  # lazy: keep mxr0 --help fast
    else:
        raise ValueError(f"unknown evaluation {what!r}; available: {', '.join(SUITES)}")
    p.description = suite.__doc__
    suite.add_arguments(p)
    return p, suite.run


def run(args: argparse.Namespace) -> int:
    parser, handler = suite_parser(args.what)
    return handler(parser.parse_args(args.options))


def _add_classify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="exported model folder")
    p.add_argument("--data", required=True, help="records file or folder")
    p.add_argument("--split", default="test")
    p.add_argument("--anatomies", nargs="*", default=["chest"])
    p.add_argument("--views", nargs="*", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", help="write the metrics as JSON here")


def _classify(args: argparse.Namespace) -> int:
    from mxr0.data.records import read_records  # lazy: keep mxr0 --help fast
    from mxr0.eval.classify import evaluate_classifier, markdown_table  # lazy: keep mxr0 --help fast

    records = read_records(args.data, splits=[args.split])
    if args.anatomies:
        records = [r for r in records if r["anatomy"] in args.anatomies]
    metrics = evaluate_classifier(args.model, records, batch_size=args.batch_size, views=args.views)
    table = markdown_table(metrics, title=f"{args.model} on {args.data} [{args.split}]")
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0
