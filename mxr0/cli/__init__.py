"""The ``mxr0`` command.

    mxr0 demo                                   phantom data → the tiny chain (XR-0 … VLM) → one table
    mxr0 prepare phantom --out data_cache/phantom --preview grid.png
    mxr0 prepare mimic-cxr --root /data/mimic-cxr-jpg/2.0.0 --out data_cache/mimic-cxr
                                                (also iu-xray, chexpert, dicom-folder --table studies.csv)
    mxr0 prepare mimic-cxr --root ... --out data_cache/mimic-cxr --cache-size 518 [--cache-bits 16] [--workers 8]
                                                also writes a resized image cache to data_cache/mimic-cxr/cache-518
                                                (train on it with data.source=records data.path=<out>/cache-518)
    mxr0 prepare cache --root data_cache/mimic-cxr --cache-size 518 [--out DIR]
                                                cache an existing records file / folder (default ROOT/cache-518)
    mxr0 prepare SOURCE --help                  the options of one source
    mxr0 train recipes/tiny/classify.yaml train.lr=5e-4 [--resume [latest|PATH]]
    accelerate launch -m mxr0 train RECIPE ...  (several processes / GPUs)
    mxr0 eval classify --model runs/tiny-classify/export --data data_cache/phantom --split test
    mxr0 eval reports --pred preds.jsonl --ref refs.jsonl  CheXbert / RadGraph / NLG with bootstrap CIs
    mxr0 eval vision --model xr0=runs/xr0/export --random-baseline --data data_cache/phantom
    mxr0 eval align --model runs/tiny-align/export --data data_cache/phantom --out runs/tiny-align/eval
    mxr0 generate --model runs/tiny-report/export --data data_cache/phantom --split test --out preds.jsonl
    mxr0 generate --model runs/tiny-report/export --image frontal.dcm --image lateral.dcm --indication "Cough."
    mxr0 generate --task grounding --model runs/tiny-mixture/export --image cxr.png --prompt "left effusion" \\
        --overlay boxes.png                     boxes as text, drawn on the image (also vqa, localisation)
    mxr0 generate --task vqa --model runs/tiny-mixture/export --data data_cache/phantom --out vqa.jsonl
    mxr0 export runs/tiny-report --checkpoint latest        a checkpoint as a merged Hugging Face folder
    mxr0 export-encoder runs/tiny-align/export --out encoders/align   the image encoder of any export (XR-0,
                                                classifier, alignment, report / VLM) as a plain DINOv2 folder
    mxr0 push runs/tiny-classify --repo-id ORG/NAME [--public] [--revision BRANCH] [--eval PATH ...]
                                                the export + a model card to the Hugging Face Hub (private)
    mxr0 push runs/tiny-classify --repo-id ORG/NAME --card-only README.md   the card only, no upload
    mxr0 config show RECIPE [overrides]         every field with its value and documentation
    mxr0 serve --model runs/tiny-report/export [--align A] [--classifier C]   OpenAI-compatible API + web page
"""
# Each command lives in its own module (add_parser + its handler); this one assembles them. The command modules
# import only the standard library and light mxr0 modules at their top: torch, transformers and datasets load
# inside the handlers (`# lazy: keep mxr0 --help fast`), so `mxr0 --help` stays fast.

from __future__ import annotations

import argparse
import logging
import os
import sys

from mxr0.cli import config, demo, evaluate, export, generate, prepare, push, serve, train

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order `mxr0 --help` lists them; each has ``add_parser(commands)``.
COMMANDS = (demo, prepare, train, evaluate, generate, serve, export, push, config)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    """The ``mxr0`` parser: each command module declares its own sub-command and handler (``args.fn``)."""
    p = argparse.ArgumentParser(prog="mxr0", description="mxr0: train and evaluate radiology vision-language models.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="INFO-level logs")
    commands = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mxr0.config import ConfigError  # lazy: keep mxr0 --help fast
    from mxr0.train.checkpoint import CheckpointError  # lazy: keep mxr0 --help fast

    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"mxr0: configuration error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # a corrupt / missing checkpoint, a failed save: named, no traceback
        print(f"mxr0: checkpoint error: {e}", file=sys.stderr)
        return 1
