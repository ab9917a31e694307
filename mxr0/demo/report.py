"""The report-generation part of the demo: a tiny mXR-0 VLM on the demo classifier's encoder.

1. `recipes/tiny/mxr0_report.yaml`: the classifier's encoder (frozen) + projector + a tiny Llama trained
   from scratch with a BPE tokenizer learnt from the training reports;
2. `mxr0 generate` on the held-out test studies (batched, greedy), predictions as JSONL;
3. finding-level F1 with the rule-based CheXpert labeler (`mxr0.eval.reports.rules`) against the test
   labels, next to a trivial generator that writes the most frequent training report for every study,
   and BLEU-4 / ROUGE-L against the reference reports.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mxr0.config import load_recipe
from mxr0.data.instruct import report_answer
from mxr0.data.records import read_records
from mxr0.demo.common import recipe_path
from mxr0.eval.reports.nlg import nlg_stats
from mxr0.eval.reports.rules import finding_f1
from mxr0.generate import generate_split
from mxr0.train.loop import train

DEMO_RECIPE = "tiny/mxr0_report.yaml"


def run_report_demo(out_dir: Path, data: str, encoder: str, fast: bool = False) -> dict[str, Any]:

    t0 = time.perf_counter()
    overrides = [f"data.path={data}", f"train.output_dir={out_dir / 'report'}", f"model.vision={encoder}"]
    if fast:
        overrides += ["train.max_steps=20", "train.eval_every=0", "train.save_every=0", "model.eval_generate=8"]
    result = train(load_recipe(recipe_path(DEMO_RECIPE), overrides))
    test = [r for r in read_records(data, splits=["test"]) if r["anatomy"] == "chest"]
    if fast:
        test = test[:16]
    preds_path = generate_split(result["export_dir"], test, out_dir / "report" / "test_predictions.jsonl",
                                batch_size=32)
    preds = {}
    for line in preds_path.read_text().splitlines():
        row = json.loads(line)
        preds[row["study_id"]] = row["report"]
    texts = [preds[r["study_id"]] for r in test]
    refs = [r["labels"] for r in test]
    ours = finding_f1(texts, refs)
    common = Counter(report_answer(r, ["findings", "impression"]) for r in read_records(data, splits=["train"])
                     if r["anatomy"] == "chest").most_common(1)[0][0]
    constant = finding_f1([common] * len(test), refs)
    nlg = _nlg(texts, [report_answer(r, ["findings", "impression"]) for r in test])
    keys = ["rules_f1_14_micro", "rules_f1_14_macro", "rules_f1_5_micro", "rules_f1_5_macro"]
    lines = ["| generated reports (test, %d studies) | tiny mXR-0 | most frequent training report |" % len(test),
             "|---|---|---|"]
    lines += [f"| finding {k.replace('rules_', '').replace('_', ' ')} | {ours[k]:.3f} | {constant[k]:.3f} |" for k in keys]
    for k, v in nlg.items():
        lines.append(f"| {k} | {v['ours']:.3f} | {v['constant']:.3f} |")
    table = "\n".join(lines)
    example = test[0]
    print()
    print(table)
    print("\nlabels read from the text by the rule-based CheXpert labeler; F1 conventions as CheXbert F1")
    print(f"\nexample ({example['study_id']}):\n  generated: {preds[example['study_id']]}\n"
          f"  reference: {report_answer(example, ['findings', 'impression'])}\n")
    (out_dir / "report" / "results.md").write_text(table + "\n")
    return {"finding_f1": {k: ours[k] for k in keys}, "constant_report_f1": {k: constant[k] for k in keys},
            "nlg": nlg, "predictions": str(preds_path), "export_dir": result["export_dir"],
            "seconds": round(time.perf_counter() - t0, 1)}


def _nlg(preds: list[str], refs: list[str]) -> dict[str, dict[str, float]]:
    """BLEU-4 and ROUGE-L (pycocoevalcap conventions) of the model and of the constant report."""

    common = Counter(refs).most_common(1)[0][0]
    out: dict[str, dict[str, float]] = {"BLEU-4": {}, "ROUGE-L": {}}
    for side, hyps in (("ours", preds), ("constant", [common] * len(refs))):
        stats = nlg_stats(hyps, refs, metrics=("bleu", "rouge_l"))
        out["BLEU-4"][side] = float(stats["bleu"].value()["bleu_4"])
        out["ROUGE-L"][side] = float(stats["rouge_l"].value()["rouge_l"])
    return out
