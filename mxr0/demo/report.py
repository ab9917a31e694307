"""Generated reports scored as the demo shows them: finding-level F1 with the rule-based CheXpert labeler
(`mxr0.eval.reports.rules`, CheXbert's F1 conventions) against the records' labels, and BLEU-4 / ROUGE-L
(pycocoevalcap conventions) against the reference reports, next to a trivial generator that writes the most
frequent training report for every study."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from mxr0.data.instruct import report_answer
from mxr0.eval.reports.nlg import nlg_stats
from mxr0.eval.reports.rules import finding_f1
from mxr0.generate import generate_task

SECTIONS = ["findings", "impression"]
F1_KEYS = ["rules_f1_14_micro", "rules_f1_14_macro", "rules_f1_5_micro", "rules_f1_5_macro"]


def constant_report(train_records: list[dict]) -> str:
    """The most frequent training report (findings + impression, as the model writes them)."""
    return Counter(report_answer(r, SECTIONS) for r in train_records).most_common(1)[0][0]


def score_reports(export: str | Path, held_out: list[dict], train_records: list[dict], out_path: str | Path,
                  batch_size: int = 32) -> dict[str, Any]:
    """Generate a report for every study of ``held_out`` with the VLM ``export`` (written to ``out_path``) and score
    them next to the constant report; returns ``{"ours": {...}, "constant": {...}, "n", "example"}``."""
    path, _ = generate_task(export, held_out, out_path, "report", batch_size=batch_size, progress=False)
    preds = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            preds[row["study_id"]] = row["prediction"]
    kept = [r for r in held_out if r["study_id"] in preds]
    texts = [preds[r["study_id"]] for r in kept]
    labels = [r["labels"] for r in kept]
    refs = [report_answer(r, SECTIONS) for r in kept]
    constant = constant_report(train_records)
    out: dict[str, Any] = {"n": len(kept), "distinct_reports": len(set(texts)), "predictions": str(path)}
    for side, hyps in (("ours", texts), ("constant", [constant] * len(kept))):
        f1 = finding_f1(hyps, labels)
        stats = nlg_stats(hyps, refs, metrics=("bleu", "rouge_l"))
        out[side] = {**{k: float(f1[k]) for k in F1_KEYS}, "bleu_4": float(stats["bleu"].value()["bleu_4"]),
                     "rouge_l": float(stats["rouge_l"].value()["rouge_l"])}
    if kept:
        out["example"] = {"study_id": kept[0]["study_id"], "generated": texts[0], "reference": refs[0]}
    return out
