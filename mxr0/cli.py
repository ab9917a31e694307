"""The ``mxr0`` command.

    mxr0 demo                                   phantom data → tiny classifier → results table
    mxr0 prepare phantom --out data_cache/phantom --preview grid.png
    mxr0 train recipes/tiny/classify.yaml train.lr=5e-4 [--resume [latest|PATH]]
    accelerate launch -m mxr0 train RECIPE ...  (several processes / GPUs)
    mxr0 eval classify --model runs/tiny-classify/export --data data_cache/phantom --split test
    mxr0 eval reports --pred preds.jsonl --ref refs.jsonl  CheXbert / RadGraph / NLG with bootstrap CIs
    mxr0 eval vision --model xr0=runs/xr0/export --random-baseline --data data_cache/phantom
    mxr0 eval align --model runs/tiny-align/export --data data_cache/phantom --out runs/tiny-align/eval
    mxr0 config show RECIPE [overrides]         every field with its value and documentation
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------------------------
def cmd_prepare(args) -> int:
    if args.source != "phantom":
        print(f"mxr0 prepare: unknown source {args.source!r}; available: phantom", file=sys.stderr)
        return 2
    from mxr0.data.phantom import generate_phantom, preview_grid

    t0 = time.perf_counter()
    path = generate_phantom(args.out, n_studies=args.n, image_size=args.size, seed=args.seed,
                            overwrite=args.overwrite, progress=True)
    print(f"[mxr0] phantom records: {path} ({time.perf_counter() - t0:.1f} s)")
    if args.preview:
        preview_grid(path, args.preview)
        print(f"[mxr0] preview: {args.preview}")
    return 0


def cmd_train(args) -> int:
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    recipe = load_recipe(args.recipe, args.overrides)
    result = train(recipe, resume=args.resume)
    from accelerate import PartialState

    metric = result["metrics"].get(result["main_metric"])
    if metric is not None and PartialState().is_main_process:
        print(f"[mxr0] {result['main_metric']} = {metric:.4f}")
    return 0


def cmd_eval_classify(args) -> int:
    from mxr0.data.records import read_records
    from mxr0.eval.classify import evaluate_classifier, markdown_table

    records = read_records(args.data, splits=[args.split])
    if args.anatomies:
        records = [r for r in records if r["anatomy"] in args.anatomies]
    metrics = evaluate_classifier(args.model, records, batch_size=args.batch_size, views=args.views)
    table = markdown_table(metrics, title=f"{args.model} on {args.data} [{args.split}]")
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_config(args) -> int:
    from mxr0.config import describe, dump_recipe, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    print("\n".join(describe(recipe)) if args.action == "show" else dump_recipe(recipe))
    return 0


def cmd_demo(args) -> int:
    from mxr0.demo import run_demo

    return run_demo(out=args.out, data=args.data, fast=args.fast, xr0=not args.skip_xr0)


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mxr0", description="mxr0: train and evaluate radiology vision-language models.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="INFO-level logs")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the embedded end-to-end demo on phantom studies")
    d.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    d.add_argument("--data", default="data_cache/phantom", help="where the phantom set is drawn")
    d.add_argument("--fast", action="store_true", help="a smaller, quicker demo (smoke test)")
    d.add_argument("--skip-xr0", action="store_true", help="leave out the XR-0 self-supervised part")
    d.set_defaults(fn=cmd_demo)

    pr = sub.add_parser("prepare", help="convert a source into canonical study records")
    pr.add_argument("source", help="phantom")
    pr.add_argument("--out", default="data_cache/phantom")
    pr.add_argument("--n", type=int, default=2000, help="studies to draw")
    pr.add_argument("--size", type=int, default=128, help="image side in pixels")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--overwrite", action="store_true", help="draw again even if the same set exists")
    pr.add_argument("--preview", help="write a contact sheet PNG with boxes drawn")
    pr.set_defaults(fn=cmd_prepare)

    t = sub.add_parser("train", help="train a recipe (use `accelerate launch -m mxr0 train` for several processes)")
    t.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny/classify.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.freeze_encoder=true")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint of the run folder (or a given checkpoint folder)")
    t.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="evaluate models and generated reports")
    esub = ev.add_subparsers(dest="what", required=True)
    e = esub.add_parser("classify", help="per-label AUROC of an exported classifier on canonical records")
    e.add_argument("--model", required=True, help="exported model folder")
    e.add_argument("--data", required=True, help="records file or folder")
    e.add_argument("--split", default="test")
    e.add_argument("--anatomies", nargs="*", default=["chest"])
    e.add_argument("--views", nargs="*", default=None)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--out", help="write the metrics as JSON here")
    e.set_defaults(fn=cmd_eval_classify)

    from mxr0.eval import align_cli
    from mxr0.eval.reports import cli as reports_cli
    from mxr0.eval.vision import cli as vision_cli

    er = esub.add_parser("reports", help="CheXbert F1, RadGraph F1, BLEU/ROUGE-L/CIDEr-D with bootstrap CIs",
                         description=reports_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reports_cli.add_arguments(er)
    er.set_defaults(fn=reports_cli.run)
    evs = esub.add_parser("vision", help="frozen-encoder suite: linear probe, kNN, segmentation, fairness",
                          description=vision_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vision_cli.add_arguments(evs)
    evs.set_defaults(fn=vision_cli.run)

    ea = esub.add_parser("align", help="dual encoder: retrieval R@K, zero-shot AUROC, phrase-grounding mIoU/CNR",
                         description=align_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    align_cli.add_arguments(ea)
    ea.set_defaults(fn=align_cli.run)

    c = sub.add_parser("config", help="show or dump a resolved recipe")
    c.add_argument("action", choices=["show", "dump"])
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    from mxr0.config import ConfigError

    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"mxr0: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
