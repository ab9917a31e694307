"""``mxr0 push``: a run's export with a model card to the Hugging Face Hub (private by default), or the card alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 push``."""
    ph = commands.add_parser("push", help="upload a run's export with a model card to the Hugging Face Hub "
                             "(private by default)")
    ph.add_argument("run_dir", help="a training run folder (recipe.yaml, results.json, export/)")
    ph.add_argument("--repo-id", required=True, help="Hub repository OWNER/NAME (created when missing)")
    ph.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    ph.add_argument("--revision", default=None, help="branch to push to (created when missing; default main)")
    ph.add_argument("--eval", nargs="+", default=[], metavar="PATH",
                    help="evaluation outputs for the card (mxr0 eval JSON / Markdown, or folders of them)")
    ph.add_argument("--card-only", metavar="OUT.md", help="write the model card here and upload nothing")
    ph.add_argument("--endpoint", default=None, help="Hub server URL (default: $HF_ENDPOINT or huggingface.co)")
    ph.add_argument("--message", default=None, help="commit message")
    ph.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the "
                    "branch")
    ph.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from mxr0.hub import HubError, push_run, render_model_card  # lazy: keep mxr0 --help fast

    try:
        if args.card_only:
            card = render_model_card(args.run_dir, extra_eval=args.eval, repo_id=args.repo_id)
            Path(args.card_only).write_text(card)
            print(f"[mxr0] model card: {args.card_only}")
            return 0
        url = push_run(args.run_dir, args.repo_id, private=not args.public, revision=args.revision,
                       commit_message=args.message, create_pr=args.create_pr, endpoint=args.endpoint,
                       extra_eval=args.eval)
    except (HubError, FileNotFoundError, ValueError) as e:
        print(f"mxr0 push: {e}", file=sys.stderr)
        return 1
    print(f"[mxr0] pushed: {url}")
    return 0
