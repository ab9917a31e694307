"""The README's main command: the whole mXR-0 chain on the embedded phantom studies, on a CPU, in minutes.

1. draw the phantom set (multi-anatomy radiographs with reports, labels, boxes, masks, QA) and a contact sheet;
2. train the tiny recipe chain (`mxr0.demo.chain`, ``recipes/tiny/chain/``): XR-0 self-supervised pretraining →
   the supervised finding classifier on the XR-0 encoder → image-report alignment on that tower → VLM stage 1
   (reports) on the aligned tower → VLM stage 2 (report + VQA + grounding + grounded report), each stage from the
   previous stage's export;
3. score every stage on the held-out test studies next to its own trivial baseline (`mxr0.demo.scores`): the frozen
   encoder at random init and after each stage, the alignment model, the stage-2 VLM; print one table of them all
   (`mxr0.demo.table`) and write it with every number to ``results.json`` / ``results.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mxr0.data.phantom import generate_phantom, preview_grid
from mxr0.data.records import read_records
from mxr0.demo.chain import FAST, plan, run_chain
from mxr0.demo.scores import alignment_scores, encoder_scores, vlm_scores
from mxr0.demo.table import chain_table
from mxr0.serve.pipeline import Pipeline

DEMO_THREADS = 2
"""Intra-op threads for every stage and every score. Measured on the 2-core VM, 30 steps of each stage at 1 and 2
threads: XR-0 1.41x, classifier 1.15x, alignment 1.33x, VLM stage 1 1.80x, VLM stage 2 1.74x faster with 2. This
beats the former split (training on one core while a second process scored the towers on the other): the scoring
is short now (the frozen suite's AUROC no longer goes through sklearn: 37 -> 16 s per encoder)."""


def _encoders(stages: dict[str, dict]) -> dict[str, str]:
    """The frozen-encoder suite's entries: random init of the chain's tower shape, then each stage's tower."""
    names = {"xr0": "XR-0", "classify": "+ classifier", "align": "+ alignment"}
    found = {names[k]: v["export"] for k, v in stages.items() if k in names}
    if not found:
        return {}
    return {"random init": "random:" + next(iter(found.values())), **found}


def score_towers(specs: dict[str, str], data: Path, out_dir: Path, fast: bool, align_export: str | None,
                 chest: list[dict], threads: int) -> tuple[dict | None, dict | None, float]:
    """The frozen-encoder suite over ``specs`` and the alignment model's scores."""
    t0 = time.perf_counter()
    enc = encoder_scores(specs, data, out_dir, fast=fast, threads=threads) if specs else None
    al = alignment_scores(align_export, chest, out_dir, threads=threads) if align_export else None
    return enc, al, round(time.perf_counter() - t0, 1)


def run_demo(out: str = "runs/demo", data: str = "data_cache/phantom", fast: bool = False, xr0: bool = True,
             report: bool = True, align: bool = True, classify: bool = True) -> int:
    """``xr0`` / ``align`` / ``classify`` False leave that stage out (the next starts from the last export there
    is; without XR-0 from a new ViT); ``report`` False leaves out both VLM stages."""

    t_start = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, size = (400, 128) if fast else (1200, 128)  # the chain learning test's set size (its 5-seed table)
    print(f"[demo] drawing {n} phantom studies at {size} px into {data}")
    t0 = time.perf_counter()
    records_path = generate_phantom(data, n_studies=n, image_size=size, seed=0, overwrite=False, progress=True)
    preview_grid(records_path, out_dir / "phantom_preview.png")
    timings = {"phantom": round(time.perf_counter() - t0, 1)}
    print(f"[demo]     done in {timings['phantom']:.0f} s; contact sheet: {out_dir / 'phantom_preview.png'}")

    stages = plan(xr0=xr0, classify=classify, align=align, vlm=report)
    common = [f"data.phantom.n_studies={n}", f"data.phantom.image_size={size}"]
    test = read_records(records_path, splits=["test"])
    # alignment and the VLM are scored on the validation + test chest studies, as in the chain learning test (no
    # stage selects a checkpoint on the validation split: each exports its last step)
    chest = [r for r in read_records(records_path, splits=["validation", "test"]) if r["anatomy"] == "chest"]
    train_chest = [r for r in read_records(records_path, splits=["train"]) if r["anatomy"] == "chest"]
    if fast:
        chest = chest[:24]
    threads = min(DEMO_THREADS, torch.get_num_threads())
    trained = run_chain(out_dir, data, stages, common=common, overrides=FAST if fast else None, threads=threads)
    timings.update({k: v["seconds"] for k, v in trained.items()})
    print("[demo] scoring the frozen encoders and the alignment model")
    enc, al, timings["eval_towers"] = score_towers(_encoders(trained), records_path, out_dir / "eval", fast,
                                                   trained.get("align", {}).get("export"), chest, threads)
    t0 = time.perf_counter()
    vlm = None
    if "vlm_stage2" in trained:
        print("[demo] scoring the stage-2 VLM: reports, VQA, grounding")
        vlm = vlm_scores(trained["vlm_stage2"]["export"], chest, train_chest, out_dir / "eval" / "vlm",
                         threads=threads)
    timings["eval_vlm"] = round(time.perf_counter() - t0, 1)
    summary: dict = {"stages": trained, "encoders": enc, "alignment": al, "vlm": vlm}

    table = chain_table(enc, al, vlm)
    timings["total"] = round(time.perf_counter() - t_start, 1)
    summary["seconds"] = timings
    print()
    print(table)
    print()
    print(f"(held out: {len(chest)} validation + test chest studies for alignment and the VLM, {len(test)} test "
          "studies of every anatomy for kNN; probe and segmentation on the chest studies; findings read from the "
          "generated text by the rule-based CheXpert labeler, CheXbert's F1 conventions"
          + ("; --fast: a smoke run, not a result)" if fast else ")"))
    if vlm and vlm["report"].get("example"):
        ex = vlm["report"]["example"]
        print(f"\nexample ({ex['study_id']}):\n  generated: {ex['generated']}\n  reference: {ex['reference']}")
        study = next((r for r in chest if r["study_id"] == ex["study_id"]), None)
        if study is not None:
            one_study(trained, study)
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / "results.md").write_text(table + "\n")
    print("\n[demo] seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"[demo] results in {out_dir}/results.md and results.json; exports under {out_dir}/<stage>/export "
          f"(the stage-2 VLM in {out_dir / 'report'})")
    return 0


def one_study(trained: dict, study: dict) -> None:
    """The example study once more, through `mxr0.Pipeline` (the session `mxr0 serve` and Python users hold): the
    stage-2 VLM's report, its boxes for the first finding phrase, and the classifier's top probabilities."""
    classifier = trained.get("classify", {}).get("export")
    pipe = Pipeline.from_pretrained(trained["vlm_stage2"]["export"], classifier=classifier, device="cpu")
    frontal = next(im["path"] for im in study["images"] if im.get("role", "current") == "current")  # as read_records resolved it
    try:
        rep = pipe.report(frontal, indication=study.get("indication", ""))
        phrase = next((b["phrase"] for b in study.get("boxes") or [] if b.get("phrase")), "the heart")
        ground = pipe.ground(frontal, phrase)
        probs = sorted(pipe.classify(frontal), key=lambda p: -p["probability"])[:3] if classifier else []
    finally:
        pipe.close()
    print(f"\nthe same study through mxr0.Pipeline (what `mxr0 serve` runs):\n  report: {rep['text']}\n"
          f"  boxes for '{phrase}' (pixels of the original image): {ground['boxes']}")
    if probs:
        print("  classifier: " + ", ".join(f"{p['label']} {p['probability']:.2f}" for p in probs))
