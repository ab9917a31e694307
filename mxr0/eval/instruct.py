"""Scores of generated answers per instruction kind (the report task's evaluation and `mxr0 generate --task`).

``score_kind(ds, indices, preds, kind)`` compares the generations for examples ``indices`` of a
`mxr0.data.report_dataset.ReportDataset` with their references and returns flat metrics named
``<kind>_<metric>`` (report metrics keep their plain names, e.g. ``rules_f1_14_micro``):

- ``report``: finding F1 of the rule-based CheXpert labeler against the records' labels;
- ``vqa``: `mxr0.eval.vqa` (closed accuracy, open exact match / token F1, per question type) and
  ``vqa_majority_closed_accuracy``, the majority-answer baseline fitted on the training examples;
  `ranked_closed_accuracy` adds ``vqa_closed_accuracy_ranked``: closed questions answered by the option the model
  finds most likely (multiple-choice scoring), which cannot produce an answer outside the options;
- ``grounding`` / ``localisation``: boxes parsed from the text, mapped back to the original frame, scored by
  `mxr0.eval.grounding` (mIoU, Acc@0.5, mAP@0.5, per phrase label / finding) next to the fixed-prior box
  baseline (``<kind>_prior_acc50``); ``<kind>_malformed`` counts unparsable boxes;
- ``grounded_report``: the report metrics on the text without boxes, and for each reference sentence that
  carries boxes the predicted sentence that matches it (same normalised text, else token F1 >= 0.5):
  ``grounded_report_box_iou`` (mean region IoU over matched sentences) and ``grounded_report_matched``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mxr0.data.boxes_text import parse_boxes, to_original
from mxr0.data.instruct import parse_grounded_report
from mxr0.eval.grounding import grounding_scores, prior_box, region_iou
from mxr0.eval.reports.rules import finding_f1
from mxr0.eval.vqa import MajorityBaseline, normalise_answer, token_f1, vqa_scores
from mxr0.models.decoding import rank_options


def _finding_f1(preds: Sequence[str], labels: Sequence[dict], prefix: str = "") -> dict[str, float]:

    f1 = finding_f1(list(preds), list(labels))
    return {prefix + k: float(v) for k, v in f1.items() if isinstance(v, (int, float)) and "/" not in k}


def _pred_boxes(ds, i: int, text: str) -> tuple[np.ndarray, int]:

    res = parse_boxes(text, ds.cfg.box_format)
    return (to_original(res.boxes, ds.geometry(i)) if len(res.boxes) else res.boxes), res.malformed


def _sentence_match(pred: list[tuple[str, np.ndarray]], sentence: str) -> np.ndarray | None:

    best, best_f1 = None, 0.5
    for s, boxes in pred:
        if normalise_answer(s) == normalise_answer(sentence):
            return boxes
        f1 = token_f1(s, sentence)[2]
        if f1 >= best_f1:
            best, best_f1 = boxes, f1
    return best


def score_kind(ds, indices: Sequence[int], preds: Sequence[str], kind: str, train_ds=None) -> dict[str, float]:
    """Metrics of ``preds`` (generated for ``ds`` examples ``indices``, all of ``kind``); ``train_ds`` gives
    the baselines (majority answer, prior box)."""

    idx = list(indices)
    if len(idx) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(idx)} examples")
    if not idx:
        return {}
    exs = [ds.examples[i] for i in idx]
    if any(ex.kind != kind for ex in exs):
        raise ValueError(f"score_kind({kind!r}) got examples of kinds {sorted({ex.kind for ex in exs})}")
    if kind == "report":
        return _finding_f1(preds, [ds.records[i]["labels"] for i in idx])
    if kind == "vqa":

        refs = [ex.answer for ex in exs]
        ats = [ex.meta.get("answer_type") or "open" for ex in exs]
        qts = [ex.meta.get("question_type") or "" for ex in exs]
        out = {f"vqa_{k}": v for k, v in vqa_scores(preds, refs, ats, qts).items()}
        if train_ds is not None:
            tr = [ex for ex in train_ds.examples if ex.kind == "vqa"]
            base = MajorityBaseline([ex.answer for ex in tr], [ex.meta.get("answer_type") for ex in tr],
                                    [ex.meta.get("question_type") or "" for ex in tr])
            bs = vqa_scores([base.predict(q) for q in qts], refs, ats, qts)
            if "closed_accuracy" in bs:
                out["vqa_majority_closed_accuracy"] = bs["closed_accuracy"]
        return out
    if kind in ("grounding", "localisation"):
        parsed = [_pred_boxes(ds, i, p) for i, p in zip(idx, preds)]
        refs = [np.asarray(ex.boxes) for ex in exs]
        if kind == "localisation":
            labels = [ex.meta.get("label", "") for ex in exs]
        else:  # phrases are grouped by their finding label for the per-label view
            label_of = {b["phrase"]: b.get("label", "") for i in idx for b in ds.records[i].get("boxes") or []}
            labels = [label_of.get(ex.meta.get("phrase", ""), "") for ex in exs]
        sc = grounding_scores([b for b, _ in parsed], refs, labels)
        out = {f"{kind}_{k}": v for k, v in sc.items()}
        out[f"{kind}_malformed"] = float(sum(m for _, m in parsed))
        if train_ds is not None:
            prior = prior_box([ex.boxes for ex in train_ds.examples if ex.kind == kind])
            base = grounding_scores([prior[None]] * len(refs), refs)
            out.update({f"{kind}_prior_{k}": base[k] for k in ("miou", "acc50")})
        return out
    if kind == "grounded_report":

        fmt = ds.cfg.box_format
        plains, ious, n_ref, malformed = [], [], 0, 0
        for i, p in zip(idx, preds):
            plain, pred_g, bad = parse_grounded_report(p, fmt)
            plains.append(plain)
            malformed += bad
            _, ref_g, _ = parse_grounded_report(ds.answer(i), fmt)
            g = ds.geometry(i)
            for sentence, rboxes in ref_g:
                n_ref += 1
                pb = _sentence_match(pred_g, sentence)
                if pb is not None:
                    ious.append(region_iou(to_original(pb, g), to_original(rboxes, g)))
        out = _finding_f1(plains, [ds.records[i]["labels"] for i in idx], prefix="grounded_report_")
        out["grounded_report_box_iou"] = float(np.mean(ious)) if ious else 0.0
        out["grounded_report_matched"] = len(ious) / n_ref if n_ref else 0.0
        out["grounded_report_malformed"] = float(malformed)
        return out
    raise ValueError(f"unknown kind {kind!r}")


def ranked_closed_accuracy(model, tokenizer, ds, indices) -> dict[str, float]:
    """``vqa_closed_accuracy_ranked``: closed questions answered by ranking their options by likelihood
    (`mxr0.generate.rank_options`) instead of free generation; per question type too."""

    idx = [i for i in indices if ds.examples[i].meta.get("answer_type") == "closed" and ds.examples[i].meta.get("options")]
    if not idx:
        return {}
    picks = rank_options(model, tokenizer, ds, idx)
    exs = [ds.examples[i] for i in idx]
    s = vqa_scores(picks, [ex.answer for ex in exs], ["closed"] * len(exs), [ex.meta.get("question_type") or "" for ex in exs])
    return {k.replace("closed_accuracy", "vqa_closed_accuracy_ranked"): v for k, v in s.items() if k.startswith("closed_accuracy")}


def main_metric_of(kind: str) -> str:
    """The headline metric of a kind (a mixture reports its first kind's)."""
    return {"report": "rules_f1_14_micro", "vqa": "vqa_closed_accuracy", "grounding": "grounding_acc50",
            "localisation": "localisation_acc50", "grounded_report": "grounded_report_rules_f1_14_micro"}[kind]
