"""XR-0 on its own (the demo's first chain stage, with the full evaluation): pretrain the tiny encoder on the
phantom studies, then compare it with the same encoder at random initialisation on the frozen-encoder suite
(`mxr0.demo.main` runs the whole chain instead and compares every stage's encoder).

1. `recipes/tiny/xr0_pretrain.yaml` (DINO + iBOT + KoLeo, a 4-block ViT, 2 global 64 px and 4
   local 32 px crops) trains with the one training loop on the phantom training split, every
   anatomy, frontal and lateral images;
2. the exported teacher and a random initialisation of the same architecture go through
   `mxr0.eval.vision` (linear probe on chest findings, kNN anatomy, frozen segmentation of lungs and
   heart, sex / age slices, convergence), and the table is printed and written as JSON, Markdown
   and PNG plots.

Runs on one CPU thread: for a model this small, per-operation overhead dominates and a second
intra-op thread slows a 2-core machine down (measured up to 3x when another process shares it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mxr0.config import load_recipe
from mxr0.demo.common import recipe_path, torch_threads
from mxr0.eval.vision.report import write_report
from mxr0.eval.vision.suite import VisionEvalConfig, evaluate_encoders
from mxr0.train.loop import train

DEMO_RECIPE = "tiny/xr0_pretrain.yaml"


def _get(d: dict, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def summary_rows(res: dict) -> list[tuple[str, Any, Any]]:
    """(metric, pretrained, random) rows of the headline numbers."""
    e = res["encoders"]
    a, b = e.get("xr0-tiny", {}), e.get("random-init", {})
    rows = [("probe mean AUROC (chest findings)", _get(a, "probe", "mean_auroc"), _get(b, "probe", "mean_auroc")),
            ("kNN anatomy accuracy", _get(a, "knn", "accuracy"), _get(b, "knn", "accuracy")),
            ("anatomy retrieval mAP", _get(a, "knn", "retrieval", "mAP"), _get(b, "knn", "retrieval", "mAP"))]
    for head in ("linear", "multiscale"):
        rows.append((f"seg mean Dice ({head} head)", _get(a, "segmentation", "heads", head, "mean_dice"),
                     _get(b, "segmentation", "heads", head, "mean_dice")))
    return rows


def run_ssl_demo(out_dir: str | Path, data_dir: str | Path, fast: bool = False, threads: int | None = 1) -> dict:
    """Pretrain the tiny XR-0 encoder on the phantom set in ``data_dir`` (drawn if missing, with the
    tiny recipes' default: 2000 studies at 128 px, 400 with ``fast``), evaluate it against random
    initialisation, print a table; returns the headline numbers, margins and file paths."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 400 if fast else 2000
    run_dir = out_dir / "xr0-tiny"
    overrides = [f"data.path={data_dir}", f"data.phantom.n_studies={n}", "data.phantom.image_size=128",
                 f"train.output_dir={run_dir}"]
    if fast:
        overrides += ["train.max_steps=120", "train.eval_every=40", "train.save_every=0",
                      "train.warmup_steps=12", "model.eval_gallery_studies=300"]
    with torch_threads(threads):
        print("[demo] XR-0: self-supervised pretraining of the tiny encoder (recipes/tiny/xr0_pretrain.yaml)")
        t0 = time.perf_counter()
        result = train(load_recipe(recipe_path(DEMO_RECIPE), overrides))
        t_train = time.perf_counter() - t0
        export = result["export_dir"]
        print("[demo] XR-0: frozen-encoder suite, pretrained vs random initialisation")
        cfg = VisionEvalConfig(cache_dir=str(out_dir / "feature_cache"), n_bootstrap=100 if fast else 200,
                               probe_steps=200 if fast else 300, seg_steps=150 if fast else 300)
        t0 = time.perf_counter()
        res = evaluate_encoders({"xr0-tiny": export, "random-init": f"random:{export}"},
                                Path(data_dir), cfg, runs={"xr0-tiny": str(run_dir)})
        t_eval = time.perf_counter() - t0
    files = write_report(res, out_dir / "eval", title="XR-0 tiny: pretrained vs random initialisation")
    rows = summary_rows(res)
    lines = ["| metric | XR-0 tiny (pretrained) | random init | margin |", "|---|---|---|---|"]
    for name, a, b in rows:
        fa = f"{a:.3f}" if a is not None else "–"
        fb = f"{b:.3f}" if b is not None else "–"
        fm = f"{a - b:+.3f}" if a is not None and b is not None else "–"
        lines.append(f"| {name} | {fa} | {fb} | {fm} |")
    table = "\n".join(lines)
    print()
    print(table)
    if fast:
        print("(fast: a smoke test on 400 studies; its test split is too small for stable margins)")
    print()
    print(f"[demo] XR-0: pretraining {t_train:.0f} s, evaluation {t_eval:.0f} s; encoder: {export} "
          "(AutoModel / AutoImageProcessor); full report: " + files["markdown"])
    summary = {
        "rows": [{"metric": m, "pretrained": a, "random": b, "margin": None if a is None or b is None else a - b}
                 for m, a, b in rows],
        "train_seconds": round(t_train, 1), "eval_seconds": round(t_eval, 1),
        "export_dir": export, "run_dir": str(run_dir), "files": files, "table": table,
        "in_training_eval": result["metrics"],
    }
    (out_dir / "ssl_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
