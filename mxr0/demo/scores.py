"""Each chain stage scored on held-out studies, next to its own trivial baseline.

- encoders (random init and every stage's tower, frozen): `mxr0.eval.vision` — linear-probe mean AUROC on the chest
  findings (chance 0.5), kNN anatomy accuracy (the majority anatomy), linear-head segmentation Dice of lungs and
  heart (the organ-position prior: the training masks' per-pixel majority) and the probe's largest AUROC gap between
  sexes and between age bands;
- alignment: `mxr0.eval.align_cli.evaluate_export` — R@5 (mean of image→report and report→image; chance 5 / n),
  CheXzero-style zero-shot mean AUROC (0.5) and similarity-map grounding mIoU (the centred box of the mean size);
- the VLM: `mxr0.generate.generate_task` per kind — reports (finding F1 of the rule-based labeler, BLEU-4, ROUGE-L;
  the most frequent training report), VQA closed accuracy (the prior: the most frequent training answer) and
  grounding Acc@0.5 / mIoU (the prior box: the mean training box).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mxr0.data.instruct import build_examples
from mxr0.data.records import read_records
from mxr0.demo.common import torch_threads
from mxr0.demo.report import score_reports
from mxr0.eval.align_cli import evaluate_export
from mxr0.eval.grounding import grounding_scores, prior_box
from mxr0.eval.vision.report import write_report
from mxr0.eval.vision.suite import VisionEvalConfig, evaluate_encoders
from mxr0.eval.vqa import MajorityBaseline, vqa_scores
from mxr0.generate import generate_task


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def encoder_scores(encoders: dict[str, str], data: str | Path, out_dir: str | Path, fast: bool = False,
                   threads: int | None = 1, echo=print) -> dict[str, Any]:
    """The frozen-encoder suite over ``{name: spec}`` (``random:PATH`` for a random initialisation); returns
    ``{"encoders": {name: headline numbers}, "baselines": {...}, "files": {...}}``."""
    out_dir = Path(out_dir)
    cfg = VisionEvalConfig(tasks=["probe", "knn", "segmentation", "fairness"], seg_heads=["linear"],
                           cache_dir=str(out_dir / "feature_cache"), n_bootstrap=100 if fast else 200,
                           probe_steps=150 if fast else 300, seg_steps=100 if fast else 300)
    with torch_threads(threads):
        res = evaluate_encoders(encoders, Path(data), cfg, echo=echo)
    files = write_report(res, out_dir / "encoders", title="The chain's encoders, frozen")
    rows: dict[str, dict[str, Any]] = {}
    prior_dice = None
    for name, e in res["encoders"].items():
        fair = _get(e, "probe", "fairness") or {}
        rows[name] = {"probe_auroc": _get(e, "probe", "mean_auroc"), "knn_anatomy": _get(e, "knn", "accuracy"),
                      "seg_dice": _get(e, "segmentation", "heads", "linear", "mean_dice"),
                      "sex_gap": _get(fair, "sex", "gap"), "age_gap": _get(fair, "age", "gap")}
        prior_dice = prior_dice if prior_dice is not None else _get(e, "segmentation", "prior_mean_dice")
    test = read_records(data, splits=[cfg.test_split])
    majority = Counter(r["anatomy"] for r in test).most_common(1)[0][1] / max(len(test), 1)
    return {"encoders": rows, "baselines": {"probe_auroc": 0.5, "knn_anatomy": majority, "seg_dice": prior_dice},
            "files": files}


def alignment_scores(export: str | Path, records: list[dict], out_dir: str | Path, threads: int | None = 1
                     ) -> dict[str, float]:
    """Retrieval, zero-shot and similarity-map grounding of the alignment export on ``records``."""
    with torch_threads(threads):
        m = evaluate_export(export, records, views=["PA", "AP"], overlays_dir=Path(out_dir) / "align_overlays",
                            n_overlays=4)
    keep = ("n_images", "i2t_r5", "t2i_r5", "mean_r5", "chance_r5_i2t", "chance_r5_t2i", "zeroshot_mean_auroc",
            "grounding_miou", "grounding_baseline_miou", "grounding_pointing", "grounding_n_phrases")
    out = {k: float(m[k]) for k in keep if k in m}
    if "chance_r5_i2t" in out and "chance_r5_t2i" in out:
        out["chance_r5"] = (out["chance_r5_i2t"] + out["chance_r5_t2i"]) / 2
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def vqa_grounding_scores(export: str | Path, held_out: list[dict], train_records: list[dict], out_dir: Path,
                         batch_size: int = 32) -> dict[str, float]:
    """VQA closed accuracy (generated and option-ranked) against the prior, grounding Acc@0.5 / mIoU against the
    prior box; both baselines fitted on the training examples (as tests/learning/test_chain_learns.py asserts)."""
    train_ex, _ = build_examples(train_records, ["vqa", "grounding"])
    out: dict[str, float] = {}
    path, vqa = generate_task(export, held_out, out_dir / "vqa.jsonl", "vqa", batch_size=batch_size, progress=False)
    rows = _rows(path)
    tr = [ex for ex in train_ex if ex.kind == "vqa"]
    if rows and tr:
        majority = MajorityBaseline([ex.answer for ex in tr], [ex.meta["answer_type"] for ex in tr],
                                    [ex.meta["question_type"] for ex in tr])
        refs, ats = [r["reference"] for r in rows], [r["answer_type"] for r in rows]
        prior = vqa_scores([majority.overall] * len(rows), refs, ats, [r["question_type"] for r in rows])
        out.update({"vqa_closed_accuracy": vqa.get("vqa_closed_accuracy"),
                    "vqa_closed_accuracy_ranked": vqa.get("vqa_closed_accuracy_ranked"),
                    "vqa_prior_closed_accuracy": prior.get("closed_accuracy"), "vqa_n_closed": vqa.get("vqa_n_closed")})
    path, g = generate_task(export, held_out, out_dir / "grounding.jsonl", "grounding", batch_size=batch_size,
                            progress=False, overlay_dir=out_dir / "grounding_overlays", overlay_n=4)
    rows = _rows(path)
    if rows:
        box = prior_box([ex.boxes for ex in train_ex if ex.kind == "grounding"])
        base = grounding_scores([box[None]] * len(rows), [np.asarray(r["ref_boxes"]) for r in rows])
        out.update({"grounding_acc50": g.get("grounding_acc50"), "grounding_miou": g.get("grounding_miou"),
                    "grounding_prior_acc50": base["acc50"], "grounding_prior_miou": base["miou"],
                    "grounding_n": g.get("grounding_n"), "grounding_no_box": g.get("grounding_no_box")})
    return {k: float(v) for k, v in out.items() if v is not None}


def vlm_scores(export: str | Path, held_out: list[dict], train_records: list[dict], out_dir: str | Path,
               vqa_grounding: bool = True, threads: int | None = 1) -> dict[str, Any]:
    """Reports (and, for an instruction export, VQA and grounding) of a VLM export on ``held_out``."""
    out_dir = Path(out_dir)
    with torch_threads(threads):
        res: dict[str, Any] = {"report": score_reports(export, held_out, train_records, out_dir / "reports.jsonl")}
        if vqa_grounding:
            res.update(vqa_grounding_scores(export, held_out, train_records, out_dir))
    return res
