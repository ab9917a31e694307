"""``mxr0 generate``: reports, VQA answers or boxes from an exported VLM, for one study (streamed) or a split
(resumable JSONL)."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("mxr0.cli")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Declare ``mxr0 generate``."""
    g = commands.add_parser("generate", help="write reports with an exported VLM: one study (streamed) or a split "
                            "(JSONL)")
    g.add_argument("--model", required=True, help="export folder of a report-generation run, or a Hub repo id")
    g.add_argument("--revision", default=None, help="branch, tag or commit of a Hub --model (default main)")
    g.add_argument("--image", action="append", default=[], help="an image of the study (PNG / JPEG / DICOM); repeat")
    g.add_argument("--view", action="append", default=[],
                   help="view of each --image (PA, AP, LATERAL); default PA then LATERAL")
    g.add_argument("--indication", default="")
    g.add_argument("--technique", default="")
    g.add_argument("--comparison", default="")
    # MAIRA-2's input order: current frontal, current lateral, prior frontal, prior report (mxr0.data.chat)
    g.add_argument("--prior-image", default=None, help="with --image: the prior study's frontal image (a model "
                   "trained with model.views containing prior)")
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
    # the choices are mxr0.precision's; bf16 changes some greedy outputs (BENCHMARKS.md), fp32 is the reference
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "bf16-weights", "auto"],
                   help="the VLM's precision (default fp32)")
    g.add_argument("--task", default="report",
                   choices=["report", "vqa", "grounding", "localisation", "grounded_report"],
                   help="what to generate (an instruction export trained on it): reports, VQA answers, boxes, …")
    g.add_argument("--prompt", default="", help="with --image and --task vqa|grounding|localisation: the question, "
                   "phrase or finding name")
    g.add_argument("--overlay", default=None, help="box tasks: with --image a PNG path, with --data a folder of PNGs "
                   "(predicted boxes red, reference green)")
    g.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from mxr0.models.download import ModelNotFound  # lazy: keep mxr0 --help fast

    try:
        return _generate(args)
    except ModelNotFound as e:
        print(f"mxr0 generate: {e}", file=sys.stderr)
        return 1


def _generate(args: argparse.Namespace) -> int:
    from mxr0.generate import generate_split  # lazy: keep mxr0 --help fast

    if args.image and args.data:
        print("mxr0 generate: give either --image (one study) or --data (a split), not both", file=sys.stderr)
        return 2
    if args.task != "report":
        return _generate_task(args)
    if args.image:
        return _one_study(args)
    if not (args.data and args.out):
        print("mxr0 generate: --data and --out are needed for a split (or --image for one study)", file=sys.stderr)
        return 2
    records = _split_records(args)
    out = generate_split(args.model, records, args.out, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                         num_beams=args.num_beams, do_sample=args.sample, temperature=args.temperature, top_p=args.top_p,
                         seed=args.seed, revision=args.revision, precision=args.precision)
    print(f"[mxr0] predictions: {out}")
    if args.write_refs:
        from mxr0.generate import load_settings, write_references  # lazy: keep mxr0 --help fast

        sections = load_settings(args.model, args.revision)["target_sections"]
        refs = write_references(records, args.write_refs, sections)
        print(f"[mxr0] references: {refs}  (mxr0 eval reports --pred {out} --ref {refs})")
    return 0


def _split_records(args: argparse.Namespace) -> list[dict]:
    """The records of ``--data`` / ``--split`` after ``--anatomies`` and ``--limit``."""
    from mxr0.data.records import read_records  # lazy: keep mxr0 --help fast

    records = read_records(args.data, splits=[args.split])
    if args.anatomies:
        records = [r for r in records if r["anatomy"] in args.anatomies]
    return records[: args.limit] if args.limit else records


def _generate_task(args: argparse.Namespace) -> int:
    """``mxr0 generate --task vqa|grounding|localisation|grounded_report``: one image + --prompt, or a split."""
    from mxr0.generate import ask_image, generate_task  # lazy: keep mxr0 --help fast

    if args.image:
        if not args.prompt:
            print(f"mxr0 generate --task {args.task} --image: give the question / phrase with --prompt", file=sys.stderr)
            return 2
        if args.task in ("vqa", "grounding"):
            return _one_image(args)
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


def _pipeline(args: argparse.Namespace):
    import mxr0  # lazy: keep mxr0 --help fast

    return mxr0.Pipeline.from_pretrained(args.model, revision=args.revision, precision=args.precision)


def _one_study(args: argparse.Namespace) -> int:
    """``--image`` with ``--task report``: one study's report from `mxr0.Pipeline`, streamed to stdout."""
    from mxr0.data.instruct import FRONTAL, LATERAL  # lazy: keep mxr0 --help fast
    from mxr0.data.records import prior_report  # lazy: keep mxr0 --help fast
    from mxr0.generate import prior_sections  # lazy: keep mxr0 --help fast

    views = args.view or ["PA", "LATERAL", "PA"][: len(args.image)]
    frontal = next((p for p, v in zip(args.image, views) if v in FRONTAL), None)
    lateral = next((p for p, v in zip(args.image, views) if v in LATERAL), None)
    if frontal is None:
        print("mxr0 generate: the study needs a frontal image (view PA or AP): pass --view PA for the first --image",
              file=sys.stderr)
        return 2
    prior = args.prior_image
    if prior and args.prior_view not in FRONTAL:
        log.warning("--prior-view %s is not a frontal view (PA / AP): the prior image is left out", args.prior_view)
        prior = None
    pipe = _pipeline(args)
    if (prior or args.prior_report) and "prior" not in pipe.vlm["cfg"].views:
        log.warning("this model was trained without the prior view (model.views=%s): the prior image and report are "
                    "ignored", pipe.vlm["cfg"].views)
    if args.prior_report and not prior:
        log.warning("a prior report is shown to the model only with its prior image (--prior-image)")
    gen = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    try:
        out = pipe.report(frontal, lateral=lateral, prior=prior, prior_report=prior_report(prior_sections(args.prior_report)),
                          indication=args.indication, technique=args.technique, comparison=args.comparison,
                          on_delta=lambda s: print(s, end="", flush=True), **gen)
    finally:
        pipe.close()
    print()
    if not out["text"]:
        print("(empty report)")
    return 0


def _one_image(args: argparse.Namespace) -> int:
    """``--image`` with ``--task vqa|grounding``: the answer (and boxes) from `mxr0.Pipeline`."""
    pipe = _pipeline(args)
    try:
        image = pipe.read(args.image[0])
        out = pipe.ask(image, args.prompt) if args.task == "vqa" else pipe.ground(image, args.prompt)
    finally:
        pipe.close()
    boxes = out.get("boxes_normalized", [])
    print(out["text"] if not boxes else f"{out['text']}\nboxes (x1, y1, x2, y2 normalised to the original image): {boxes}")
    if args.overlay and args.task != "vqa":
        from mxr0.eval.grounding import draw_overlay  # lazy: keep mxr0 --help fast

        draw_overlay(image.pixels, args.overlay, pred=boxes, phrase=args.prompt)
        print(f"[mxr0] overlay: {args.overlay}")
    return 0
