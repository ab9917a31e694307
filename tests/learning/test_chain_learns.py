"""End to end: the tiny recipe chain (recipes/tiny/chain/, the demo's `mxr0.demo.chain`) trains every stage on the
previous stage's export — XR-0 SSL → finding classifier on the XR-0 encoder → alignment on that tower (last block
unlocked) → VLM stage 1 (reports) on the aligned tower → VLM stage 2 (report + VQA + grounding + grounded report,
init_from stage 1) — and each stage beats its own trivial baseline on the 144 held-out chest studies: alignment R@5
against chance, report finding F1 against the most frequent training report, VQA closed accuracy against the prior
answer, grounding Acc@0.5 / mIoU against the prior box (the mean training box). The frozen-encoder comparison (random
init / XR-0 / + classifier / + alignment; with MXR0_CHAIN_ENCODERS=1, as the demo's table always shows it) and the
alignment's similarity-map grounding are printed, not asserted; the alignment's zero-shot AUROC is asserted above
chance. This test carries the alignment, report and instruction-mixture learning claims for the CI suite (the
separate alignment-from-scratch, report and VQA + grounding tests were folded into it, to hold the suite's time).

Measured at the recipes' step counts (XR-0 150 / classifier 400 at lr 2e-3 / alignment 150 / VLM stage 1 400 /
stage 2 400), seeds 0-4 (one thread each; runs are deterministic for their seed; phantom_1200):

| metric | seeds 0 / 1 / 2 / 3 / 4 | mean | spread (max - min) | baseline | asserted |
|---|---|---|---|---|---|
| alignment mean R@5 | 0.101 / 0.094 / 0.167 / 0.094 / 0.139 | 0.119 | 0.073 | chance 0.035 | >= 2x chance |
| alignment zero-shot mean AUROC | 0.691 / 0.706 / 0.626 / 0.748 / 0.725 | 0.699 | 0.123 | chance 0.5 | >= 0.55 |
| report finding F1-14 micro | 0.417 / 0.475 / 0.406 / 0.436 / 0.464 | 0.440 | 0.069 | constant report 0.220 | >= +0.15 |
| VQA closed accuracy, generated | 0.515 / 0.601 / 0.659 / 0.649 / 0.629 | 0.611 | 0.144 | prior 0.328 | >= +0.12 |
| VQA closed accuracy, option-ranked | 0.664 / 0.692 / 0.688 / 0.675 / 0.675 | 0.679 | 0.028 | prior 0.328 | >= +0.25 |
| grounding Acc@0.5 | 0.230 / 0.167 / 0.216 / 0.067 / 0.164 | 0.169 | 0.164 | prior box 0.000 | >= +0.04 |
| grounding mIoU | 0.247 / 0.237 / 0.237 / 0.171 / 0.225 | 0.224 | 0.076 | prior box 0.096 | >= +0.05 |

Every mean margin over its baseline lies outside the seed spread (grounding Acc@0.5 only just: +0.169 against
0.164), and every seed passes every assertion. Printed only: similarity-map grounding mIoU 0.051-0.091, below the
centred box's 0.099 (the issue's "whatever the numbers show").
Step counts: at stage 2's 300 steps grounding failed in 2 of 5 seeds (Acc@0.5 0.022, mIoU +0.026) and seed 2's
report F1 margin was +0.12; at 300 stage-1 and 250 stage-2 steps (100 XR-0 / 300 classifier / 100 alignment) the
reports collapsed to the constant report in 3 of 3 seeds. Hence 400 / 400.
CI cost: one test, 12-15.5 minutes on one core beside the other pytest worker (the stages run one after another;
930 s in `--durations` on a fresh clone on 6 December, beside the multi-process tests), the suite's critical path (tests/conftest.py
collects it first); its timeout is a hang guard. A cheaper configuration needs its own 5-seed measurement."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mxr0.data.records import read_records
from mxr0.demo.chain import plan, run_chain
from mxr0.demo.scores import alignment_scores, encoder_scores, vlm_scores
from mxr0.demo.table import chain_table
from tests.conftest import LEARN_COMMON

# The step counts, learning rates and warm-ups are the recipes' (recipes/tiny/chain/: the demo runs the same
# configuration on its own 1,200 phantom studies); here only the XR-0 stage's kNN gallery is smaller.
OVERRIDES = {"xr0": ["model.eval_gallery_studies=200"]}


def train_and_score(data: Path, out: Path, seed: int = 0, encoders: bool = True, xr0_export: str | None = None) -> dict:
    """Train the chain on ``data`` (seed ``seed`` for every stage) and score it on the validation + test studies;
    ``xr0_export``: start from this XR-0 export instead of training stage 1 (for measuring the later stages)."""
    t0 = time.perf_counter()
    stages = run_chain(out / "chain", data, plan()[1:] if xr0_export else plan(), start_from=xr0_export,
                       common=[*LEARN_COMMON, f"train.seed={seed}"], overrides=OVERRIDES)
    t_train = time.perf_counter() - t0
    held_out = [r for r in read_records(data, splits=["validation", "test"]) if r["anatomy"] == "chest"]
    train_chest = [r for r in read_records(data, splits=["train"]) if r["anatomy"] == "chest"]
    res = {"align": alignment_scores(stages["align"]["export"], held_out, out / "eval"),
           "vlm": vlm_scores(stages["vlm_stage2"]["export"], held_out, train_chest, out / "eval" / "vlm"),
           "seconds": {"train": round(t_train, 1), **{k: v["seconds"] for k, v in stages.items()}}}
    if encoders:
        names = {"XR-0": "xr0", "+ classifier": "classify", "+ alignment": "align"}
        specs = {"random init": "random:" + stages["align"]["export"],
                 **{n: stages[k]["export"] for n, k in names.items() if k in stages}}
        res["encoders"] = encoder_scores(specs, data, out / "eval", fast=True)
    res["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    return res


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~12-15 min on the 2-core VM beside the other pytest worker; a hang guard, not a target
def test_tiny_chain_each_stage_beats_its_baseline(phantom_1200, tmp_path, one_thread):
    # the frozen-encoder comparison (printed, never asserted; the demo's table shows it) costs ~1.5 min on the
    # suite's critical path: MXR0_CHAIN_ENCODERS=1 adds it here
    res = train_and_score(phantom_1200, tmp_path, encoders=bool(os.environ.get("MXR0_CHAIN_ENCODERS")))
    al, vlm, rep = res["align"], res["vlm"], res["vlm"]["report"]
    print()
    print(chain_table(res.get("encoders"), al, vlm))
    print(res["seconds"])
    assert al["n_images"] >= 140 and rep["n"] >= 140 and vlm["vqa_n_closed"] >= 300 and vlm["grounding_n"] >= 150
    assert al["mean_r5"] >= 2.0 * al["chance_r5"], al  # measured 2.7-4.8x
    assert al["zeroshot_mean_auroc"] >= 0.55, al  # measured 0.626-0.748 (chance 0.5)
    assert rep["ours"]["rules_f1_14_micro"] >= rep["constant"]["rules_f1_14_micro"] + 0.15, rep  # measured +0.19-0.26
    assert vlm["vqa_closed_accuracy"] >= vlm["vqa_prior_closed_accuracy"] + 0.12, vlm  # measured +0.19-0.33
    assert vlm["vqa_closed_accuracy_ranked"] >= vlm["vqa_prior_closed_accuracy"] + 0.25, vlm  # measured +0.34-0.36
    assert vlm["grounding_acc50"] >= vlm["grounding_prior_acc50"] + 0.04, vlm  # measured +0.067-0.230
    assert vlm["grounding_miou"] >= vlm["grounding_prior_miou"] + 0.05, vlm  # measured +0.075-0.151
    assert vlm["grounding_no_box"] < 0.35, vlm  # answers with no box: measured 0.011-0.290 (the folded test's bound)
