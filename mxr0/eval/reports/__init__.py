"""Radiology report evaluation: NLG metrics with pycocoevalcap's conventions, CheXbert F1, RadGraph F1,
bootstrap confidence intervals and a paired test -- offline, batched, pure Python (no Java).

    from mxr0.eval.reports import evaluate_reports, markdown_report
    result = evaluate_reports(preds, refs, bootstrap=500, uncertain="positive", skip_missing=True)

Modules: :mod:`.ptb` (pycocoevalcap's PTB tokenisation), :mod:`.nlg` (BLEU, ROUGE-L, CIDEr-D),
:mod:`.chexbert`, :mod:`.radgraph`, :mod:`.stats` (bootstrap, approximate randomisation),
:mod:`.io` (JSONL pairing), :mod:`.api`, :mod:`.cli` (``main(argv)``, ``add_arguments(parser)``),
:mod:`.testing` (tiny models in the official layouts). ``evaluate`` modules: :func:`metric_path`.
"""

from __future__ import annotations

from pathlib import Path

from .api import DEFAULT_METRICS, METRIC_FAMILIES, evaluate_reports, markdown_report, parse_metrics
from .chexbert import CONDITIONS, TOP5, CheXbert, CheXbertStats
from .io import pair_reports, read_reports
from .nlg import METEOR_NOTE, nlg_stats
from .radgraph import RadGraph, RadGraphStats, rewards
from .stats import bootstrap, paired_randomization
from .weights import MissingWeightsError

__all__ = ["evaluate_reports", "markdown_report", "parse_metrics", "METRIC_FAMILIES", "DEFAULT_METRICS",
           "CheXbert", "CheXbertStats", "CONDITIONS", "TOP5", "RadGraph", "RadGraphStats", "rewards",
           "read_reports", "pair_reports", "nlg_stats", "bootstrap", "paired_randomization",
           "MissingWeightsError", "METEOR_NOTE", "metric_path", "EVALUATE_METRICS"]

#: The ``evaluate`` modules shipped in mxr0/eval/metrics (load with ``evaluate.load(metric_path(name))``).
EVALUATE_METRICS = ("report_nlg", "chexbert_f1", "radgraph_f1")


def metric_path(name: str) -> str:
    """Folder of one of our ``evaluate`` modules, for ``evaluate.load(metric_path("report_nlg"))``."""
    if name not in EVALUATE_METRICS:
        raise ValueError(f"unknown evaluate module {name!r}; available: {', '.join(EVALUATE_METRICS)}")
    return str(Path(__file__).resolve().parents[1] / "metrics" / name)
