"""XR-0 on real radiographs: prepare ../shared/data, pretrain a few CPU minutes, score the frozen encoder.

    python scripts/real_smoke.py                      # ../shared/data beside the clone; ~10 min on 2 cores
    python scripts/real_smoke.py --steps 20 --fast    # a quick check that the pipeline runs (the test does this)

1. Converts the real sets with mxr0's own converters into ``data_cache/real/``: JSRT (lung / heart masks, nodule
   flag), the NIH ChestX-ray14 images (every image, for pretraining; the labelled subset, for the probe), the
   COVID notes sets and TBX11K; resizes them to a 128-px cache.
2. Pretrains XR-0 (DINO + iBOT + KoLeo, ``recipes/real_smoke/xr0_pretrain.yaml``) on every image outside the
   evaluation splits: JSRT's train split, the NIH images outside the labelled subset, COVID and TBX11K.
3. Runs the frozen-encoder suite against the same architecture at random initialisation: segmentation Dice per
   organ on the JSRT test split (heads trained on its train split), and a linear probe on the NIH labels (the
   labelled subset is in no official split list, so it is split 60 / 20 / 20 here by a hash of the patient id).
   Every figure has a 95% percentile-bootstrap interval over test images; with 19 JSRT and ~14 NIH test
   images they are wide, and the table says so.
Writes ``runs/real_smoke/results.md`` / ``results.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RECIPE = REPO / "recipes" / "real_smoke" / "xr0_pretrain.yaml"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _absolute(rec: dict, base: Path) -> dict:
    """The record with image and mask paths made absolute (it is written to another folder)."""
    rec = dict(rec)
    rec["images"] = [{**im, "path": str((base / im["path"]).resolve())} for im in rec["images"]]
    rec["masks"] = [{**m, "path": str((base / m["path"]).resolve())} for m in rec.get("masks") or []]
    return rec


def _write(path: Path, recs: list[dict], roots: list[Path]) -> Path:
    """Records written atomically, with the folders their (absolute) image paths point into declared."""
    from mxr0.data.records import declare_roots

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
    os.replace(tmp, path)
    declare_roots(path, roots)
    return path


def _split_of(key: str) -> str:
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10
    return "train" if h < 6 else ("validation" if h < 8 else "test")


PRETRAIN_SETS = ("jsrt", "nih-all", "covid", "tbx11k")


def prepare(out: Path, cache_size: int, names: list[str]) -> dict[str, Path]:
    """Records (cached at ``cache_size``) of the real sets ``names``, keyed by name."""
    from mxr0.data.cache import build_cache
    from mxr0.data.sources import convert

    jobs = {
        "jsrt": lambda o: convert("jsrt", SHARED / "jsrt", o, show_progress=False),
        "nih-labelled": lambda o: convert("nih-boxes", SHARED / "nih_cxr14", o, all_images=True, show_progress=False,
                                          data_entry=SHARED / "nih_cxr14" / "labels_subset_from_gnsandeep_CS598Project.csv"),
        "nih-all": lambda o: convert("folder-csv", SHARED / "nih_cxr14" / "images", o, table=SHARED / "nih_cxr14" / "index.csv",
                                     key="file", study_id="key", default_anatomy="chest", show_progress=False),
        "covid": lambda o: convert("covid-notes", SHARED / "covid_notes", o, show_progress=False),
        "tbx11k": lambda o: convert("tbx11k", SHARED / "tbx11k", o, show_progress=False),
    }
    paths = {}
    for name in names:
        job, folder = jobs[name], out / name
        if not (folder / "records.jsonl").exists():
            print(f"[real] converting {name}", file=sys.stderr)
            job(folder)
        paths[name] = build_cache(folder / "records.jsonl", folder / f"cache-{cache_size}", size=cache_size,
                                  workers=0, progress=False)
    return paths


def eval_sets(paths: dict[str, Path], out: Path) -> tuple[Path, Path, set[str]]:
    """(JSRT records, NIH labelled records re-split by patient, NIH file names kept out of pretraining)."""
    nih = _records(paths["nih-labelled"])
    base = paths["nih-labelled"].parent
    # study ids are nih-<patient>_<n>: split by patient
    split = [{**_absolute(r, base), "split": _split_of(r["study_id"].split("_")[0])} for r in nih]
    held = {r["study_id"].removeprefix("nih-") for r in _records(out / "nih-labelled" / "records.jsonl")}  # 00004296_000
    return paths["jsrt"], _write(out / "nih-eval" / "records.jsonl", split, [base]), held


def ssl_set(paths: dict[str, Path], held_nih: set[str], out: Path, names: list[str]) -> Path:
    """Pretraining records: no JSRT test / NIH labelled image; JSRT validation kept for the run's kNN check."""
    recs = []
    for name in names:
        base = paths[name].parent
        for r in _records(paths[name]):
            if name == "jsrt" and r["split"] == "test":
                continue
            if name == "nih-all" and Path(r["study_id"]).stem in held_nih:  # study id: the NIH file name (study_id="key")
                continue
            split = r["split"] if name == "jsrt" else "train"
            recs.append({**_absolute(r, base), "split": split})
    return _write(out / "ssl" / "records.jsonl", recs, [paths[n].parent for n in names])


def pretrain(ssl_records: Path, run_dir: Path, steps: int | None, extra: list[str]) -> Path:
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    overrides = [f"data.path={ssl_records}", f"train.output_dir={run_dir}"] + ([f"train.max_steps={steps}"] if steps else []) + extra
    train(load_recipe(RECIPE, overrides))
    return run_dir / "export"


def evaluate(export: Path, jsrt: Path, nih: Path, fast: bool, out: Path) -> dict:
    from mxr0.eval.vision.report import to_markdown, write_report
    from mxr0.eval.vision.suite import VisionEvalConfig, evaluate_encoders

    encoders = {"xr0-real": str(export), "random-init": f"random:{export}"}
    steps = 60 if fast else 300
    seg = VisionEvalConfig(tasks=["segmentation"], seg_heads=["linear"], seg_steps=steps, n_bootstrap=1000,
                           cache_dir=str(out / "features"))
    probe = VisionEvalConfig(tasks=["probe"], probe_steps=steps, n_bootstrap=1000, cache_dir=str(out / "features"))
    res_seg = evaluate_encoders(encoders, str(jsrt), seg, echo=lambda s: print(s, file=sys.stderr))
    res_probe = evaluate_encoders(encoders, str(nih), probe, echo=lambda s: print(s, file=sys.stderr))
    md = (to_markdown(res_seg, title="JSRT (198 images: segmentation heads on the train split, Dice on the test split)")
          + "\n\n" + to_markdown(res_probe, title="NIH ChestX-ray14 labelled subset (re-split 60 / 20 / 20 by patient)")
          + "\n")
    write_report(res_seg, out / "jsrt")
    write_report(res_probe, out / "nih")
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"jsrt": res_seg, "nih": res_probe}, indent=1, default=str))
    return {"jsrt": res_seg, "nih": res_probe, "markdown": md}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-out", default=str(REPO / "data_cache" / "real"))
    p.add_argument("--out", default=str(REPO / "runs" / "real_smoke"))
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: the recipe's epochs)")
    p.add_argument("--fast", action="store_true", help="short evaluation heads (a pipeline check, not the table)")
    p.add_argument("--cache-size", type=int, default=128)
    p.add_argument("--pretrain-sets", nargs="+", default=list(PRETRAIN_SETS), choices=PRETRAIN_SETS,
                   help="sets pretrained on (default all; JSRT is always prepared: it is also evaluated on)")
    p.add_argument("overrides", nargs="*", help="dotted recipe overrides, e.g. model.encoder_config.hidden_size=32")
    args = p.parse_args(argv)
    if not SHARED.is_dir():
        print(f"[real] NOT RUN: {SHARED} is absent (the real radiographs live beside the clone)", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out, t0 = Path(args.out), time.perf_counter()
    names = list(dict.fromkeys(["jsrt", "nih-labelled", *args.pretrain_sets]))
    paths = prepare(Path(args.data_out), args.cache_size, names)
    jsrt, nih, held = eval_sets(paths, Path(args.data_out))
    ssl = ssl_set(paths, held, Path(args.data_out), list(args.pretrain_sets))
    t1 = time.perf_counter()
    export = pretrain(ssl, out / "xr0", args.steps, args.overrides)
    t2 = time.perf_counter()
    res = evaluate(export, jsrt, nih, args.fast, out)
    t3 = time.perf_counter()
    print(res["markdown"])
    print(f"[real] prepare {t1 - t0:.0f} s, pretrain {t2 - t1:.0f} s, evaluate {t3 - t2:.0f} s; wrote {out / 'results.md'}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
