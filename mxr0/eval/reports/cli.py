"""Command line for the report evaluation suite.

    mxr0 eval reports --pred preds.jsonl --ref refs.jsonl --out-json scores.json --out-md scores.md
    python scripts/evaluate_reports.py --pred preds.jsonl --ref refs.jsonl --metrics nlg --bootstrap 500
    python scripts/evaluate_reports.py --pred a.jsonl --compare b.jsonl --ref refs.jsonl \\
        --chexbert-weights weights/chexbert --radgraph-model weights/radgraph-xl.tar.gz

Files: JSONL with one {"study_id": ..., "report": "..."} per line ("findings" or "text" also
accepted as the text key; always read line by line), or a .json file holding a list of such objects
or a {study_id: text} map; UTF-8. Paired by study_id: a study on one side only is an error unless
--allow-partial. Reports over --max-report-chars (default 20000) are truncated, with a warning. Metrics: bleu, rouge_l, rouge_l_f1, cider_d,
chexbert, radgraph, or the groups nlg / all (default). Model files are never downloaded: see
--chexbert-weights / --radgraph-model (or MXR0_CHEXBERT_WEIGHTS / MXR0_RADGRAPH_MODEL) and
--skip-missing. Prints a Markdown table; exit status 2 on bad input or missing model files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .io import MAX_REPORT_CHARS

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the report-evaluation options to ``parser`` (e.g. the ``mxr0 eval reports`` sub-command)."""
    parser.add_argument("--pred", required=True,
                        help="predicted reports: JSONL, one {study_id, report} per line (any name but .json), or a "
                             ".json list / {study_id: text} map")
    parser.add_argument("--ref", required=True, help="reference reports (same formats as --pred)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="score only the studies present in both files (default: a study on one side only is "
                             "an error); the dropped ids are counted in the output and its JSON under 'pairing'")
    parser.add_argument("--max-report-chars", type=int, default=MAX_REPORT_CHARS, metavar="N",
                        help="truncate longer reports to N characters, with a warning and a count in the JSON "
                             f"(default {MAX_REPORT_CHARS}; 0 = no bound: a 10 MB report then takes minutes)")
    parser.add_argument("--out-json", help="write all numbers, settings and conventions as JSON here")
    parser.add_argument("--out-md", help="write the Markdown table here (it is printed either way)")
    parser.add_argument("--metrics", default="all",
                        help="comma-separated: bleu, rouge_l (pycocoevalcap), rouge_l_f1 (rouge_score), cider_d, "
                             "chexbert, radgraph, change (per-finding change F1 against the prior study: new / "
                             "unchanged / resolved / worse / better; not in all); groups: nlg, all (default: all)")
    parser.add_argument("--bootstrap", type=int, default=500, metavar="N",
                        help="bootstrap resamples of the studies for median and 95%% CI (0 = none; default 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the paired test (default 0)")
    parser.add_argument("--uncertain", choices=("positive", "negative"), default="positive",
                        help="CheXbert: count 'uncertain' as positive (f1chexbert/RadEval) or negative "
                             "(LLaVA-Rad/MAIRA-2); default positive")
    parser.add_argument("--chexbert-weights", metavar="PATH",
                        help="chexbert.pth, or a folder with chexbert.pth and bert-base-uncased's vocab.txt "
                             "(default: $MXR0_CHEXBERT_WEIGHTS, then the Hugging Face / f1chexbert caches)")
    parser.add_argument("--radgraph-model", metavar="PATH_OR_TYPE",
                        help="RadGraph model: radgraph-xl.tar.gz (or radgraph / modern-radgraph-xl), its extracted "
                             "folder, or a model type to find in the caches (default: $MXR0_RADGRAPH_MODEL, then "
                             "radgraph-xl in the radgraph / Hugging Face caches)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="if CheXbert or RadGraph files are missing, report the other metrics and say why")
    parser.add_argument("--compare", metavar="OTHER_PRED",
                        help="a second system's predictions: adds a paired approximate-randomisation test (B - A)")
    parser.add_argument("--trials", type=int, default=10000, help="permutations of the paired test (default 10000)")
    parser.add_argument("--rouge-stemmer", action="store_true",
                        help="rouge_l_f1 with Porter stemming (RadEval's setting; needs nltk)")
    parser.add_argument("--batch-size", type=int, default=32, help="reports per forward pass (default 32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16-weights", "auto"],
                        help="CheXbert / RadGraph forward precision (default fp32); in bf16 a report whose top-two "
                             "margin is small is labelled again in fp32, so the labels stay fp32's")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run with parsed arguments (for callers that built the parser with :func:`add_arguments`)."""
    from .api import markdown_report
    from .api import evaluate_reports
    from .weights import MissingWeightsError

    def log(msg: str) -> None:
        print(f"[mxr0] {msg}", file=sys.stderr)

    try:
        result = evaluate_reports(
            args.pred, args.ref, metrics=args.metrics, bootstrap=args.bootstrap, seed=args.seed,
            uncertain=args.uncertain, chexbert_weights=args.chexbert_weights, radgraph_model=args.radgraph_model,
            skip_missing=args.skip_missing, compare=args.compare, batch_size=args.batch_size, device=args.device,
            rouge_stemmer=args.rouge_stemmer, trials=args.trials, log=log,
            allow_partial=getattr(args, "allow_partial", False),
            max_report_chars=getattr(args, "max_report_chars", MAX_REPORT_CHARS), precision=args.precision)
    except MissingWeightsError as e:
        print(f"mxr0 eval reports: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"mxr0 eval reports: {e}", file=sys.stderr)
        return 2
    result["inputs"] = {"pred": str(args.pred), "ref": str(args.ref), "compare": args.compare}
    table = markdown_report(result, title=f"{Path(args.pred).name} vs {Path(args.ref).name}")
    print(table)
    if args.out_md:
        Path(args.out_md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_md).write_text(table)
    if args.out_json:
        Path(args.out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out_json).write_text(json.dumps(result, indent=2))
    for k, v in result.get("skipped", {}).items():
        print(f"mxr0 eval reports: skipped {k}: {v}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(
        prog="mxr0 eval reports", description="Score generated radiology reports against references.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
