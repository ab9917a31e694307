"""``mxr0 config show|dump``: a resolved recipe, every field with its value (and documentation)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 config``."""
    c = commands.add_parser("config", help="show or dump a resolved recipe")
    c.add_argument("action", choices=["show", "dump"])
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from mxr0.config import describe, dump_recipe, load_recipe  # lazy: keep mxr0 --help fast

    recipe = load_recipe(args.recipe, args.overrides)
    print("\n".join(describe(recipe)) if args.action == "show" else dump_recipe(recipe))
    return 0
