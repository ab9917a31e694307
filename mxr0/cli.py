"""The ``mxr0`` command.

    mxr0 demo                                   phantom data → tiny classifier → results table
    mxr0 prepare phantom --out data_cache/phantom --preview grid.png
    mxr0 prepare mimic-cxr --root /data/mimic-cxr-jpg/2.0.0 --out data_cache/mimic-cxr
                                                (also iu-xray, chexpert, dicom-folder --table studies.csv)
    mxr0 prepare mimic-cxr --root ... --out data_cache/mimic-cxr --cache-size 518 [--cache-bits 16] [--workers 8]
                                                also writes a resized image cache to data_cache/mimic-cxr/cache-518
                                                (train on it with data.source=records data.path=<out>/cache-518)
    mxr0 prepare cache --root data_cache/mimic-cxr --cache-size 518 [--out DIR]
                                                cache an existing records file / folder (default ROOT/cache-518)
    mxr0 train recipes/tiny/classify.yaml train.lr=5e-4 [--resume [latest|PATH]]
    accelerate launch -m mxr0 train RECIPE ...  (several processes / GPUs)
    mxr0 eval classify --model runs/tiny-classify/export --data data_cache/phantom --split test
    mxr0 eval reports --pred preds.jsonl --ref refs.jsonl  CheXbert / RadGraph / NLG with bootstrap CIs
    mxr0 eval vision --model xr0=runs/xr0/export --random-baseline --data data_cache/phantom
    mxr0 eval align --model runs/tiny-align/export --data data_cache/phantom --out runs/tiny-align/eval
    mxr0 generate --model runs/tiny-report/export --data data_cache/phantom --split test --out preds.jsonl
    mxr0 generate --model runs/tiny-report/export --image frontal.dcm --image lateral.dcm --indication "Cough."
    mxr0 generate --task grounding --model runs/tiny-mixture/export --image cxr.png --prompt "left effusion" \\
        --overlay boxes.png                     boxes as text, drawn on the image (also vqa, localisation)
    mxr0 generate --task vqa --model runs/tiny-mixture/export --data data_cache/phantom --out vqa.jsonl
    mxr0 export runs/tiny-report --checkpoint latest        a checkpoint as a merged Hugging Face folder
    mxr0 export-encoder runs/tiny-align/export --out encoders/align   the image encoder of any export (XR-0,
                                                classifier, alignment, report / VLM) as a plain DINOv2 folder
    mxr0 push runs/tiny-classify --repo-id ORG/NAME [--public] [--revision BRANCH] [--eval PATH ...]
                                                the export + a model card to the Hugging Face Hub (private)
    mxr0 push runs/tiny-classify --repo-id ORG/NAME --card-only README.md   the card only, no upload
    mxr0 config show RECIPE [overrides]         every field with its value and documentation
    mxr0 serve --model runs/tiny-report/export [--align A] [--classifier C]   OpenAI-compatible API + web page
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------------------------
def cmd_prepare(args) -> int:
    """``mxr0 prepare``: every output folder is written under its lock (``.mxr0-prepare.lock``): a second
    run into the same folder waits for the first (up to ``$MXR0_PREPARE_LOCK_TIMEOUT`` s, default 3600)
    and then reuses or rewrites it; a folder is marked complete only after every file is verified."""
    from mxr0.data.records import FolderBusyError, IncompleteFolderError  # lazy: --help stays free of torch

    try:
        return _cmd_prepare(args)
    except (FolderBusyError, IncompleteFolderError) as e:
        print(f"mxr0 prepare {args.source}: {e}", file=sys.stderr)
        return 1


def _cmd_prepare(args) -> int:
    from mxr0.data.sources import SOURCES  # lazy: --help stays free of torch

    if args.source == "cache":
        return _prepare_cache(args, None)
    if args.source != "phantom" and args.source not in SOURCES:
        print(f"mxr0 prepare: unknown source {args.source!r}; available: phantom, cache, {', '.join(SOURCES)}",
              file=sys.stderr)
        return 2
    out = args.out or f"data_cache/{args.source}"
    if args.source != "phantom":
        return _prepare_source(args, out)
    from mxr0.data.phantom import generate_phantom, preview_grid  # lazy: --help stays free of torch

    t0 = time.perf_counter()
    path = generate_phantom(out, n_studies=args.n, image_size=args.size, seed=args.seed,
                            overwrite=args.overwrite, progress=True, prior_fraction=args.prior_fraction)
    print(f"[mxr0] phantom records: {path} ({time.perf_counter() - t0:.1f} s)")
    if args.preview:
        preview_grid(path, args.preview)
        print(f"[mxr0] preview: {args.preview}")
    return _prepare_cache(args, path) if args.cache_size else 0


_QA_BOX_SOURCES = ("slake", "vqa-rad", "rexvqa", "medical-diff-vqa", "ms-cxr", "nih-boxes", "vindr-cxr",
                   "rsna-pneumonia")


_MASK_SOURCES = ("jsrt", "siim-acr", "chexmask", "tbx11k", "covid-notes", "mura")


def _prepare_source(args, out: str) -> int:
    """``mxr0 prepare <source>`` (iu-xray, mimic-cxr, chexpert, dicom-folder and the VQA / box sources):
    run the source's converter."""
    from mxr0.data.sources import SourceError, convert  # lazy: --help stays free of torch

    if not args.root:
        print(f"mxr0 prepare {args.source}: --root (the dataset folder) is required", file=sys.stderr)
        return 2
    opts: dict = {"fmt": args.format, "show_progress": True}
    if args.source == "iu-xray":
        opts.update(images=args.images, report_only=args.report_only, unsplit=args.unsplit)
    elif args.source == "mimic-cxr":
        opts.update(reports=args.reports, labeler=None if args.labeler == "none" else args.labeler,
                    check_images=not args.no_check_images, priors=not args.no_priors)
    elif args.source == "chexpert":
        opts.update(check_images=not args.no_check_images)
    elif args.source in _QA_BOX_SOURCES:
        opts.update(check_images=not args.no_check_images)
        if args.images and args.source != "vindr-cxr":
            opts["images"] = args.images
        if args.table and args.source in ("ms-cxr", "vindr-cxr", "nih-boxes"):
            opts["bbox" if args.source == "nih-boxes" else "table"] = args.table
        if args.source == "slake":
            opts["xray_only"] = args.xray_only
        elif args.source == "vqa-rad" and args.all_organs:
            opts["organs"] = None
        elif args.source == "nih-boxes":
            if args.data_entry:
                opts["data_entry"] = args.data_entry
            opts["all_images"] = args.all_images
        elif args.source == "vindr-cxr":
            opts.update(readers=args.readers, sizes=args.sizes)
    elif args.source in ("dicom-folder", "folder-csv"):
        if not args.table:
            print(f"mxr0 prepare {args.source}: --table (the CSV of studies) is required", file=sys.stderr)
            return 2
        opts.update(table=args.table, key=args.key, path_column=args.path_column, study_id=args.study_id,
                    salt=args.salt, anatomy_column=args.anatomy_column)
        if args.default_anatomy:
            opts["default_anatomy"] = args.default_anatomy
    elif args.source == "merge":
        if not args.ms_cxr:
            print("mxr0 prepare merge: --ms-cxr (the records of `mxr0 prepare ms-cxr`) is required; --root is the "
                  "records of `mxr0 prepare mimic-cxr`", file=sys.stderr)
            return 2
        opts.update(ms_cxr=args.ms_cxr, check_laterality=not args.no_check_laterality)
    elif args.source in _MASK_SOURCES:  # jsrt, siim-acr, chexmask, tbx11k, covid-notes, mura
        opts.update(check_images=not args.no_check_images)
        if args.images and args.source in ("jsrt", "siim-acr", "chexmask", "tbx11k"):
            opts["images"] = args.images
        if args.table and args.source in ("siim-acr", "chexmask"):
            opts["table"] = args.table
        elif args.table and args.source == "tbx11k":
            opts["annotations"] = args.table
        if args.source == "chexmask":
            opts.update(dataset=args.chexmask_dataset, min_rca=args.min_rca)
    t0 = time.perf_counter()
    try:
        path = convert(args.source, args.root, out, **opts)
    except (SourceError, FileNotFoundError, ValueError) as e:
        print(f"mxr0 prepare {args.source}: {e}", file=sys.stderr)
        return 1
    print(f"[mxr0] {args.source} records: {path} ({time.perf_counter() - t0:.1f} s)")
    return _prepare_cache(args, path) if args.cache_size else 0


def _prepare_cache(args, records) -> int:
    """``--cache-size N``: cache the images of ``records`` in ``<records folder>/cache-N``; with
    ``records=None`` (``mxr0 prepare cache``) those of ``--root``, into ``--out`` if given."""
    from mxr0.data.cache import build_cache  # lazy: --help stays free of torch

    if records is None:
        if not args.root or not args.cache_size:
            print("mxr0 prepare cache: --root (a records file or folder) and --cache-size are required",
                  file=sys.stderr)
            return 2
        records = Path(args.root)
        folder = records if records.is_dir() else records.parent
        out = Path(args.out) if args.out else folder / f"cache-{args.cache_size}"
    else:
        out = Path(records).parent / f"cache-{args.cache_size}"
    t0 = time.perf_counter()
    try:
        path = build_cache(records, out, size=args.cache_size, bits=args.cache_bits, workers=args.workers,
                           progress=True, overwrite=args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"mxr0 prepare: {e}", file=sys.stderr)
        return 1
    m = json.loads((out / "cache.json").read_text())
    print(f"[mxr0] cache {args.cache_size}px {args.cache_bits}-bit: {m['files']} files ({m['written']} written, "
          f"{m['skipped']} already cached, {m['failed']} unreadable), {m['studies']} studies "
          f"({m['studies_dropped']} dropped{', see cache.json' if m['failed'] else ''}) "
          f"({time.perf_counter() - t0:.1f} s)")
    print(f"[mxr0] cached records: {path}  (recipe: data.source=records data.path={out})")
    return 0


def cmd_train(args) -> int:
    from mxr0.config import load_recipe  # lazy: --help stays free of torch
    from mxr0.train.loop import train  # lazy: --help stays free of torch

    recipe = load_recipe(args.recipe, args.overrides)
    result = train(recipe, resume=args.resume)
    from accelerate import PartialState

    metric = result["metrics"].get(result["main_metric"])
    if metric is not None and PartialState().is_main_process:
        print(f"[mxr0] {result['main_metric']} = {metric:.4f}")
    return 0


def cmd_eval_classify(args) -> int:
    from mxr0.data.records import read_records  # lazy: --help stays free of torch
    from mxr0.eval.classify import evaluate_classifier, markdown_table  # lazy: --help stays free of torch

    records = read_records(args.data, splits=[args.split])
    if args.anatomies:
        records = [r for r in records if r["anatomy"] in args.anatomies]
    metrics = evaluate_classifier(args.model, records, batch_size=args.batch_size, views=args.views)
    table = markdown_table(metrics, title=f"{args.model} on {args.data} [{args.split}]")
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return 0


def cmd_generate(args) -> int:
    from mxr0.models.download import ModelNotFound  # lazy: --help stays free of torch

    try:
        return _generate(args)
    except ModelNotFound as e:
        print(f"mxr0 generate: {e}", file=sys.stderr)
        return 1


def _generate(args) -> int:
    from mxr0.generate import generate_split, generate_study  # lazy: --help stays free of torch

    if args.image and args.data:
        print("mxr0 generate: give either --image (one study) or --data (a split), not both", file=sys.stderr)
        return 2
    if args.task != "report":
        return _generate_task(args)
    if args.image:
        text = generate_study(args.model, args.image, views=args.view or None, indication=args.indication,
                              technique=args.technique, comparison=args.comparison, stream=True,
                              max_new_tokens=args.max_new_tokens, revision=args.revision,
                              prior_image=args.prior_image, prior_report=args.prior_report,
                              prior_view=args.prior_view)
        if not text:
            print("(empty report)")
        return 0
    if not (args.data and args.out):
        print("mxr0 generate: --data and --out are needed for a split (or --image for one study)", file=sys.stderr)
        return 2
    records = _split_records(args)
    out = generate_split(args.model, records, args.out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         num_beams=args.num_beams, do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                         seed=args.seed, revision=args.revision)
    print(f"[mxr0] predictions: {out}")
    if args.write_refs:
        from mxr0.generate import load_settings, write_references  # lazy: --help stays free of torch

        sections = load_settings(args.model, args.revision)["target_sections"]
        refs = write_references(records, args.write_refs, sections)
        print(f"[mxr0] references: {refs}  (mxr0 eval reports --pred {out} --ref {refs})")
    return 0


def _split_records(args) -> list[dict]:
    """The records of ``--data`` / ``--split`` after ``--anatomies`` and ``--limit``."""
    from mxr0.data.records import read_records  # lazy: --help stays free of torch

    records = read_records(args.data, splits=[args.split])
    if args.anatomies:
        records = [r for r in records if r["anatomy"] in args.anatomies]
    return records[: args.limit] if args.limit else records


def _generate_task(args) -> int:
    """``mxr0 generate --task vqa|grounding|localisation|grounded_report``: one image + --prompt, or a split."""
    from mxr0.generate import ask_image, generate_task  # lazy: --help stays free of torch

    if args.image:
        if not args.prompt:
            print(f"mxr0 generate --task {args.task} --image: give the question / phrase with --prompt", file=sys.stderr)
            return 2
        text, boxes = ask_image(args.model, args.image[0], args.task, args.prompt, overlay=args.overlay,
                                revision=args.revision)
        print(text if not boxes else f"{text}\nboxes (x1, y1, x2, y2 normalised to the original image): {boxes}")
        if args.overlay and args.task != "vqa":
            print(f"[mxr0] overlay: {args.overlay}")
        return 0
    if not (args.data and args.out):
        print("mxr0 generate: --data and --out are needed for a split (or --image for one image)", file=sys.stderr)
        return 2
    records = _split_records(args)
    out, metrics = generate_task(args.model, records, args.out, args.task, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, overlay_dir=args.overlay, revision=args.revision)
    print(f"[mxr0] answers: {out}")
    print(f"[mxr0] scores ({out.name}.metrics.json): " + " ".join(
        f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "/" not in k))
    if args.overlay:
        print(f"[mxr0] overlays in {args.overlay}")
    return 0


def cmd_serve(args) -> int:
    try:
        from mxr0.serve.app import serve  # lazy: fastapi / uvicorn are the optional serve extra; torch loads here
    except ImportError as e:
        print(f"mxr0 serve: {e.name or e} is missing: install the serve extra (pip install -e '.[serve]')", file=sys.stderr)
        return 1
    from mxr0.models.download import ModelNotFound  # lazy: keeps `mxr0 --help` from importing torch

    try:
        serve(args.model, align=args.align, classifier=args.classifier, host=args.host, port=args.port,
              token=args.token or os.environ.get("MXR0_SERVE_TOKEN") or None, cors_origins=args.cors_origin,
              max_batch=args.max_batch, max_queue=args.max_queue, max_body_mb=args.max_body_mb, device=args.device,
              name=args.name, batch_wait_ms=args.batch_wait_ms, precision=args.precision)
    except (ModelNotFound, FileNotFoundError, ValueError, OSError) as e:
        print(f"mxr0 serve: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_export(args) -> int:
    from mxr0.train.export import export_checkpoint  # lazy: --help stays free of torch

    out = export_checkpoint(args.run_dir, checkpoint=args.checkpoint, out_dir=args.out)
    print(f"[mxr0] exported {out}")
    return 0


def cmd_export_encoder(args) -> int:
    from mxr0.models.encoder import EncoderSourceError  # lazy: --help stays free of torch
    from mxr0.models.encoder_export import export_encoder  # lazy: --help stays free of torch

    try:
        out = export_encoder(args.source, args.out, overwrite=args.overwrite)
    except (EncoderSourceError, FileExistsError, FileNotFoundError) as e:
        print(f"mxr0 export-encoder: {e}", file=sys.stderr)
        return 1
    print(f"[mxr0] encoder exported: {out}")
    return 0


def cmd_push(args) -> int:
    from mxr0.hub import HubError, push_run, render_model_card  # lazy: --help stays free of torch

    try:
        if args.card_only:
            card = render_model_card(args.run_dir, extra_eval=args.eval, repo_id=args.repo_id)
            Path(args.card_only).write_text(card)
            print(f"[mxr0] model card: {args.card_only}")
            return 0
        url = push_run(args.run_dir, args.repo_id, private=not args.public, revision=args.revision,
                       commit_message=args.message, create_pr=args.create_pr, endpoint=args.endpoint,
                       extra_eval=args.eval)
    except (HubError, FileNotFoundError, ValueError) as e:
        print(f"mxr0 push: {e}", file=sys.stderr)
        return 1
    print(f"[mxr0] pushed: {url}")
    return 0


def cmd_config(args) -> int:
    from mxr0.config import describe, dump_recipe, load_recipe  # lazy: --help stays free of torch

    recipe = load_recipe(args.recipe, args.overrides)
    print("\n".join(describe(recipe)) if args.action == "show" else dump_recipe(recipe))
    return 0


def cmd_demo(args) -> int:
    from mxr0.demo import run_demo  # lazy: --help stays free of torch

    return run_demo(out=args.out, data=args.data, fast=args.fast, xr0=not args.skip_xr0, report=not args.skip_report)


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mxr0", description="mxr0: train and evaluate radiology vision-language models.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="INFO-level logs")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the embedded end-to-end demo on phantom studies")
    d.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    d.add_argument("--data", default="data_cache/phantom", help="where the phantom set is drawn")
    d.add_argument("--fast", action="store_true", help="a smaller, quicker demo (smoke test)")
    d.add_argument("--skip-xr0", action="store_true", help="leave out the XR-0 self-supervised part")
    d.add_argument("--skip-report", action="store_true", help="leave out the report-generation part")
    d.set_defaults(fn=cmd_demo)

    pr = sub.add_parser("prepare", help="convert a source into canonical study records")
    pr.add_argument("source", help="phantom, iu-xray, mimic-cxr, chexpert, dicom-folder, folder-csv, slake, vqa-rad, "
                    "rexvqa, medical-diff-vqa, ms-cxr, nih-boxes, vindr-cxr, rsna-pneumonia, tbx11k, jsrt, siim-acr, "
                    "chexmask, covid-notes, mura, or cache (resize the images and masks of the records at --root; "
                    "needs --cache-size)")
    pr.add_argument("--out", default=None, help="output folder (default data_cache/<source>)")
    pr.add_argument("--n", type=int, default=2000, help="phantom: studies to draw")
    pr.add_argument("--size", type=int, default=128, help="phantom: image side in pixels")
    pr.add_argument("--seed", type=int, default=0, help="phantom: random seed")
    pr.add_argument("--overwrite", action="store_true", help="phantom: draw again even if the same set exists; "
                    "--cache-size: rebuild a cache made with other settings")
    pr.add_argument("--preview", help="phantom: write a contact sheet PNG with boxes drawn")
    pr.add_argument("--prior-fraction", type=float, default=0.0,
                    help="phantom: share of chest studies drawn as longitudinal pairs (prior image + report, comparison "
                         "statements); default 0 (none)")
    pr.add_argument("--root", help="the source's dataset folder (all sources but phantom; "
                    "cache: a records file or folder)")
    pr.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="records file format")
    pr.add_argument("--images", help="iu-xray: folder of the PNG images (default ROOT/images); slake, vqa-rad, "
                    "rexvqa, nih-boxes, rsna-pneumonia: the image folder; medical-diff-vqa, ms-cxr: the "
                    "MIMIC-CXR-JPG folder; jsrt, siim-acr, chexmask, tbx11k: the image folder (defaults: see each "
                    "converter)")
    pr.add_argument("--report-only", action="store_true",
                    help="iu-xray: write studies whose images are missing, with no images")
    pr.add_argument("--unsplit", choices=["skip", "train"], default="skip",
                    help="iu-xray: studies outside the R2Gen split are skipped or put in train")
    pr.add_argument("--reports", help="mimic-cxr: the mimic-cxr-reports folder (default ROOT/mimic-cxr-reports)")
    pr.add_argument("--labeler", choices=["chexpert", "negbio", "none"], default="chexpert",
                    help="mimic-cxr: which label table to read")
    pr.add_argument("--no-priors", action="store_true",
                    help="mimic-cxr: do not link studies to the same subject's previous study (StudyDate / StudyTime)")
    pr.add_argument("--ms-cxr", help="merge: the MS-CXR records (file or folder of `mxr0 prepare ms-cxr`); --root "
                    "is the MIMIC-CXR records folder")
    pr.add_argument("--no-check-laterality", action="store_true",
                    help="merge: skip the prior / current mirrored-image check (it reads two images per study)")
    pr.add_argument("--no-check-images", action="store_true",
                    help="mimic-cxr, chexpert and the VQA / box sources: keep records whose image files are absent")
    pr.add_argument("--table", help="dicom-folder: CSV with a study key and label or report columns; ms-cxr, "
                    "vindr-cxr, nih-boxes, siim-acr (RLE table), chexmask (its CSV), tbx11k (COCO json), folder-csv: "
                    "the annotation / box table, when not the default under ROOT")
    pr.add_argument("--xray-only", action="store_true", help="slake: keep only the X-ray images (not CT / MRI)")
    pr.add_argument("--all-organs", action="store_true", help="vqa-rad: keep head and abdomen too (default chest)")
    pr.add_argument("--data-entry", help="nih-boxes: Data_Entry_2017*.csv (or a wide 0/1 label table) when not "
                    "under ROOT")
    pr.add_argument("--all-images", action="store_true", help="nih-boxes: also write every labelled image without "
                    "boxes")
    pr.add_argument("--readers", choices=["fuse", "all"], default="fuse",
                    help="vindr-cxr: merge overlapping boxes of different radiologists (default) or keep all")
    pr.add_argument("--sizes", help="vindr-cxr: CSV of image_id and width/height (when the DICOMs are absent)")
    pr.add_argument("--key", help="dicom-folder: study key column (default StudyInstanceUID / study_id / study)")
    pr.add_argument("--path-column", help="dicom-folder: column of DICOM paths relative to ROOT")
    pr.add_argument("--study-id", choices=["hash", "key"], default="hash",
                    help="dicom-folder: study_id is a hash of the key (default) or the key as given")
    pr.add_argument("--anatomy-column", help="dicom-folder, folder-csv: CSV column of the body part (default "
                    "anatomy / body_part / BodyPartExamined; else the DICOM BodyPartExamined tag)")
    pr.add_argument("--default-anatomy", help="dicom-folder (default chest), folder-csv (default other): anatomy of "
                    "studies with no body part at all")
    pr.add_argument("--chexmask-dataset", default="auto", help="chexmask: the source dataset of the CSV "
                    "(chestx-ray14, chexpert, mimic-cxr, vindr-cxr, padchest; default: from its id column)")
    pr.add_argument("--min-rca", type=float, default=0.7, help="chexmask: drop masks whose Dice RCA (Mean) is lower")
    pr.add_argument("--salt", default=None, help="dicom-folder: secret salt for the hashed study ids (default: "
                    "$MXR0_STUDY_ID_SALT, else a random salt kept in OUT/.study-id-salt; never logged)")
    pr.add_argument("--cache-size", type=int, default=None,
                    help="also write a training cache: images resized to this shortest side (e.g. 518), in "
                         "OUT/cache-N (resumable; see mxr0/data/cache.py)")
    pr.add_argument("--cache-bits", type=int, choices=[8, 16], default=8, help="cache: PNG bit depth (default 8)")
    pr.add_argument("--workers", type=int, default=None, help="cache: decoding processes (default min(4, CPUs))")
    pr.set_defaults(fn=cmd_prepare)

    t = sub.add_parser("train", help="train a recipe (use `accelerate launch -m mxr0 train` for several processes)")
    t.add_argument("recipe", help="YAML recipe, e.g. recipes/tiny/classify.yaml")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.freeze_encoder=true")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest checkpoint of the run folder (or a given checkpoint folder)")
    t.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="evaluate models and generated reports")
    esub = ev.add_subparsers(dest="what", required=True)
    e = esub.add_parser("classify", help="per-label AUROC of an exported classifier on canonical records")
    e.add_argument("--model", required=True, help="exported model folder")
    e.add_argument("--data", required=True, help="records file or folder")
    e.add_argument("--split", default="test")
    e.add_argument("--anatomies", nargs="*", default=["chest"])
    e.add_argument("--views", nargs="*", default=None)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--out", help="write the metrics as JSON here")
    e.set_defaults(fn=cmd_eval_classify)

    from mxr0.eval import align_cli  # lazy: --help stays free of torch
    from mxr0.eval.reports import cli as reports_cli  # lazy: --help stays free of torch
    from mxr0.eval.vision import cli as vision_cli  # lazy: --help stays free of torch

    er = esub.add_parser("reports", help="CheXbert F1, RadGraph F1, BLEU/ROUGE-L/CIDEr-D with bootstrap CIs",
                         description=reports_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reports_cli.add_arguments(er)
    er.set_defaults(fn=reports_cli.run)
    evs = esub.add_parser("vision", help="frozen-encoder suite: linear probe, kNN, segmentation, fairness",
                          description=vision_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vision_cli.add_arguments(evs)
    evs.set_defaults(fn=vision_cli.run)

    ea = esub.add_parser("align", help="dual encoder: retrieval R@K, zero-shot AUROC, phrase-grounding mIoU/CNR",
                         description=align_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    align_cli.add_arguments(ea)
    ea.set_defaults(fn=align_cli.run)

    g = sub.add_parser("generate", help="write reports with an exported VLM: one study (streamed) or a split (JSONL)")
    g.add_argument("--model", required=True, help="export folder of a report-generation run, or a Hub repo id")
    g.add_argument("--revision", default=None, help="branch, tag or commit of a Hub --model (default main)")
    g.add_argument("--image", action="append", default=[], help="an image of the study (PNG / JPEG / DICOM); repeat")
    g.add_argument("--view", action="append", default=[], help="view of each --image (PA, AP, LATERAL); default PA then LATERAL")
    g.add_argument("--indication", default="")
    g.add_argument("--technique", default="")
    g.add_argument("--comparison", default="")
    g.add_argument("--prior-image", default=None, help="with --image: the prior study's frontal image (a model trained "
                   "with model.views containing prior; MAIRA-2 order)")
    g.add_argument("--prior-view", default="PA", help="view of --prior-image (PA or AP; default PA)")
    g.add_argument("--prior-report", default="", help="with --prior-image: the prior report text (Findings: … "
                   "Impression: … headers are read; plain text is the findings)")
    g.add_argument("--data", help="records file or folder (a split is generated)")
    g.add_argument("--split", default="test")
    g.add_argument("--anatomies", nargs="*", default=["chest"])
    g.add_argument("--limit", type=int, default=0, help="first N studies only")
    g.add_argument("--out", help="predictions JSONL (resumes: studies already there are skipped)")
    g.add_argument("--write-refs", metavar="REFS.jsonl",
                   help="also write the studies' reference reports (for mxr0 eval reports --ref)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--num-beams", type=int, default=1)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy / beam search")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--task", default="report",
                   choices=["report", "vqa", "grounding", "localisation", "grounded_report"],
                   help="what to generate (an instruction export trained on it): reports, VQA answers, boxes, …")
    g.add_argument("--prompt", default="", help="with --image and --task vqa|grounding|localisation: the question, "
                   "phrase or finding name")
    g.add_argument("--overlay", default=None, help="box tasks: with --image a PNG path, with --data a folder of PNGs "
                   "(predicted boxes red, reference green)")
    g.set_defaults(fn=cmd_generate)

    sv = sub.add_parser("serve", help="an OpenAI-compatible endpoint, task endpoints and a web page for exported "
                        "models (research use only; needs the serve extra)")
    sv.add_argument("--model", required=True, help="report / instruction VLM export (folder or Hub id)")
    sv.add_argument("--align", default=None, help="dual-encoder export: zero-shot scores and patch-similarity maps")
    sv.add_argument("--classifier", default=None, help="classifier export: finding probabilities")
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; others need --token)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN on /v1/ (default "
                    "$MXR0_SERVE_TOKEN); required for a non-loopback --host")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="allow this browser origin (repeatable; default: same origin only)")
    sv.add_argument("--name", default=None, help="the VLM's model id in the API (default: the run folder's name)")
    sv.add_argument("--max-batch", type=int, default=16, help="requests per batched generate call")
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    sv.add_argument("--batch-wait-ms", type=float, default=50.0,
                    help="how long an idle worker waits for requests still being prepared before starting a batch")
    sv.add_argument("--max-body-mb", type=float, default=48, help="request size limit in MiB (413 above)")
    sv.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    sv.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16-weights", "auto"],
                    help="the VLM's precision (mxr0.precision; batched = one-by-one identity holds in fp32 only)")
    sv.set_defaults(fn=cmd_serve)

    x = sub.add_parser("export", help="write a run's checkpoint as a Hugging Face folder (LoRA merged)")
    x.add_argument("run_dir", help="a training run folder (holds recipe.yaml and checkpoints/)")
    x.add_argument("--checkpoint", default="latest", help="checkpoint folder or 'latest'")
    x.add_argument("--out", default=None, help="output folder (default RUN_DIR/export-step-N)")
    x.add_argument("--merge", action="store_true", default=True,
                   help="merge LoRA adapters into the weights (always done; the adapter is kept in adapter/)")
    x.set_defaults(fn=cmd_export)

    xe = sub.add_parser("export-encoder", help="write the image encoder of any export (XR-0, classifier, alignment, "
                        "report / VLM) as a standalone Hugging Face encoder folder")
    xe.add_argument("source", help="an export folder or Hub id: XR-0 / DINOv2 / RAD-DINO encoder, classifier, "
                    "alignment dual encoder (its vision tower) or report / VLM (its vision tower)")
    xe.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, "
                    "preprocessor_config.json; AutoModel / AutoImageProcessor load it)")
    xe.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    xe.set_defaults(fn=cmd_export_encoder)

    ph = sub.add_parser("push", help="upload a run's export with a model card to the Hugging Face Hub (private by default)")
    ph.add_argument("run_dir", help="a training run folder (recipe.yaml, results.json, export/)")
    ph.add_argument("--repo-id", required=True, help="Hub repository OWNER/NAME (created when missing)")
    ph.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    ph.add_argument("--revision", default=None, help="branch to push to (created when missing; default main)")
    ph.add_argument("--eval", nargs="+", default=[], metavar="PATH",
                    help="evaluation outputs for the card (mxr0 eval JSON / Markdown, or folders of them)")
    ph.add_argument("--card-only", metavar="OUT.md", help="write the model card here and upload nothing")
    ph.add_argument("--endpoint", default=None, help="Hub server URL (default: $HF_ENDPOINT or huggingface.co)")
    ph.add_argument("--message", default=None, help="commit message")
    ph.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to the branch")
    ph.set_defaults(fn=cmd_push)

    c = sub.add_parser("config", help="show or dump a resolved recipe")
    c.add_argument("action", choices=["show", "dump"])
    c.add_argument("recipe")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    from mxr0.config import ConfigError  # lazy: --help stays free of torch
    from mxr0.train.checkpoint import CheckpointError  # lazy: --help stays free of torch

    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"mxr0: configuration error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # a corrupt / missing checkpoint, a failed save: named, no traceback
        print(f"mxr0: checkpoint error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
