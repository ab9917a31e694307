"""``mxr0 train``: train a recipe (one process, or several under ``accelerate launch -m mxr0 train``)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 train``."""
    t = commands.add_parser("train", help="train a recipe (use `accelerate launch -m mxr0 train` for several "
                            "processes)")
    t.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny/classify.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.freeze_encoder=true")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint of the run folder (or a given checkpoint folder)")
    t.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState  # lazy: keep mxr0 --help fast

    from mxr0.config import load_recipe  # lazy: keep mxr0 --help fast
    from mxr0.train.loop import train  # lazy: keep mxr0 --help fast

    recipe = load_recipe(args.recipe, args.overrides)
    result = train(recipe, resume=args.resume)
    metric = result["metrics"].get(result["main_metric"])
    if metric is not None and PartialState().is_main_process:
        print(f"[mxr0] {result['main_metric']} = {metric:.4f}")
    return 0
