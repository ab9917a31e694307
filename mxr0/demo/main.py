"""The README's main command: the whole path on the embedded phantom studies, on a CPU, in minutes.

1. draw the phantom set (multi-anatomy radiographs with reports, labels, boxes, masks, QA) and a
   contact sheet of it;
2. train the tiny finding classifier (`recipes/tiny/classify.yaml`) with the one training loop;
3. evaluate the exported Hugging Face model on held-out test studies and print the AUROC table;
4. train a tiny mXR-0 report generator on the classifier's encoder, generate the test reports and
   score their findings against the labels (`mxr0.demo.report`);
5. pretrain the tiny XR-0 encoder self-supervised (DINO + iBOT + KoLeo) and compare it with random
   initialisation on the frozen-encoder suite (`mxr0.demo.xr0`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mxr0.config import load_recipe
from mxr0.data.phantom import generate_phantom, preview_grid
from mxr0.data.records import read_records
from mxr0.demo.common import recipe_path
from mxr0.demo.report import run_report_demo
from mxr0.demo.xr0 import run_ssl_demo
from mxr0.eval.classify import evaluate_classifier, markdown_table
from mxr0.train.loop import train

DEMO_RECIPE = "tiny/classify.yaml"


def run_demo(out: str = "runs/demo", data: str = "data_cache/phantom", fast: bool = False, xr0: bool = True,
             report: bool = True) -> int:

    t_start = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, size = (400, 128) if fast else (2000, 128)
    overrides = [f"data.path={data}", f"data.phantom.n_studies={n}", f"data.phantom.image_size={size}",
                 f"train.output_dir={out_dir / 'classify'}"]
    if fast:
        overrides += ["train.epochs=2", "train.eval_every=0", "train.save_every=0"]

    n_parts = 3 + int(report) + int(xr0)
    print(f"[demo] 1/{n_parts} drawing {n} phantom studies at {size} px into {data}")
    t0 = time.perf_counter()
    records_path = generate_phantom(data, n_studies=n, image_size=size, seed=0, overwrite=False, progress=True)
    preview_grid(records_path, out_dir / "phantom_preview.png")
    print(f"[demo]     done in {time.perf_counter() - t0:.1f} s; contact sheet: {out_dir / 'phantom_preview.png'}")

    print(f"[demo] 2/{n_parts} training the tiny finding classifier (recipes/tiny/classify.yaml)")
    recipe = load_recipe(recipe_path(DEMO_RECIPE), overrides)
    t0 = time.perf_counter()
    result = train(recipe)
    t_train = time.perf_counter() - t0

    print(f"[demo] 3/{n_parts} evaluating the exported model on the held-out test split")
    test = [r for r in read_records(records_path, splits=["test"]) if r["anatomy"] == "chest"]
    metrics = evaluate_classifier(result["export_dir"], test, views=recipe.data.views)
    table = markdown_table(metrics, title="Tiny XR classifier on held-out phantom chest studies")
    print()
    print(table)
    print()
    summary = {"test": metrics, "validation": result["metrics"], "train_seconds": round(t_train, 1),
               "total_seconds": round(time.perf_counter() - t_start, 1), "export_dir": result["export_dir"]}
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "results.md").write_text(table + "\n")
    print(f"[demo] mean AUROC {metrics.get('mean_auroc', float('nan')):.3f} (chance 0.5); "
          f"training {t_train:.0f} s, total {summary['total_seconds']:.0f} s")
    print(f"[demo] model: {result['export_dir']} (loads with transformers AutoModelForImageClassification)")
    print(f"[demo] logs: {result['run_dir']}/metrics.jsonl, tensorboard --logdir {result['run_dir']}/tensorboard")
    if report:

        print(f"[demo] 4/{n_parts} report generation: tiny VLM on the classifier's encoder (recipes/tiny/mxr0_report.yaml)")
        summary["report"] = run_report_demo(out_dir, data, result["export_dir"], fast=fast)
        (out_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    if xr0:

        print(f"[demo] {n_parts}/{n_parts} XR-0 self-supervised pretraining and the frozen-encoder suite")
        summary["xr0"] = run_ssl_demo(out_dir, data, fast=fast)
        (out_dir / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[demo] finished in {time.perf_counter() - t_start:.0f} s; results in {out_dir}")
    return 0
