"""``mxr0 eval align``: retrieval, zero-shot classification and phrase grounding of an exported dual
encoder on canonical records, with similarity-map overlays.

    mxr0 eval align --model runs/tiny-align/export --data data_cache/phantom --split test \\
        --out runs/tiny-align/eval --overlays 8
    mxr0 eval align --model my-org/mxr0-align --data /data/ms_cxr/records.parquet --views PA AP

Writes ``align_metrics.json``, ``align_metrics.md`` and ``overlays/*.png`` (image, similarity map,
reference boxes, phrase) into ``--out``.
"""
# (the docstring is `mxr0 eval align --help`'s description.) Wire it with add_arguments(subparser) and run(args).

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mxr0.data.align_dataset import AlignDataset, TextCollator
from mxr0.data.records import read_records
from mxr0.data.transforms import ImageTransform
from mxr0.eval.align import alignment_metrics, markdown_report, save_overlay, write_results
from mxr0.models.dual_encoder import image_outputs, make_text_encoder


def evaluate_export(model_dir: str | Path, records: list[dict], views: list[str] | None = None, batch_size: int = 64,
                    prompts: dict | None = None, overlays_dir: str | Path | None = None, n_overlays: int = 8,
                    device: str | None = None) -> dict[str, float]:
    """All alignment metrics of an exported dual encoder (`mxr0.tasks.align` export or any
    ``VisionTextDualEncoderModel`` folder with a DINOv2-family vision tower, a tokenizer and an
    image-processor config) on ``records``; optionally writes overlay PNGs."""
    from transformers import AutoModel, AutoTokenizer


    model_dir = Path(model_dir)
    settings_file = model_dir / "mxr0_align.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(str(model_dir)).eval().to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    transform = ImageTransform.from_pretrained(str(model_dir))
    max_length = int(settings.get("max_text_length", min(getattr(tokenizer, "model_max_length", 512), 512)))
    sections = settings.get("text_sections", ["findings", "impression"])
    merged = {**(settings.get("zero_shot_prompts") or {}), **(prompts or {})}
    ds = AlignDataset(records, transform, sections, views)
    if len(ds) == 0:
        raise ValueError(f"no study among {len(records)} records has an image of views {views} and a "
                         f"{'/'.join(sections)} text")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=TextCollator(tokenizer, max_length))
    encode = make_text_encoder(model, tokenizer, max_length, batch_size)
    images, patches, hws = [], [], []
    grid = (1, 1)
    with torch.no_grad():
        for batch in loader:
            img, pt, grid = image_outputs(model, batch["pixel_values"].to(device))
            images.append(torch.nn.functional.normalize(img.float(), dim=-1).cpu())
            patches.append(torch.nn.functional.normalize(pt.float(), dim=-1).cpu())
            hws.append(batch["orig_hw"])
    image_emb, patch_emb = torch.cat(images), torch.cat(patches)
    text_emb = encode(ds.texts)
    metrics, extras = alignment_metrics(image_emb, text_emb, patch_emb, grid, transform.size, ds.records, ds.texts,
                                        ds.image_index, torch.cat(hws).numpy(), transform, encode,
                                        float(model.logit_scale.detach()), merged)
    if overlays_dir is not None and n_overlays > 0 and extras["items"]:
        for it, sim in list(zip(extras["items"], extras["maps"]))[:n_overlays]:
            safe = "".join(ch if ch.isalnum() else "_" for ch in it["phrase"])[:40]
            save_overlay(Path(overlays_dir) / f"{it['study_id']}_{safe}.png", ds[it["row"]]["pixel_values"].numpy(),
                         sim, it["boxes"], it["phrase"])
    return metrics


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", required=True, help="exported dual-encoder folder (or Hub id)")
    p.add_argument("--data", required=True, help="records file or folder (canonical study records)")
    p.add_argument("--split", default="test")
    p.add_argument("--anatomies", nargs="*", default=["chest"], help="keep studies of these anatomies (none: all)")
    p.add_argument("--views", nargs="*", default=["PA", "AP"], help="evaluate the first current image of these views")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--prompts", help="JSON file {observation: {positive: [...], negative: [...]}} overriding prompts")
    p.add_argument("--overlays", type=int, default=8, help="similarity-map overlay PNGs to write (needs --out)")
    p.add_argument("--out", help="write align_metrics.json / .md and overlays/ here")
    return p


def run(args) -> int:

    records = read_records(args.data, splits=[args.split])
    if args.anatomies:
        records = [r for r in records if r["anatomy"] in args.anatomies]
    prompts = json.loads(Path(args.prompts).read_text()) if args.prompts else None
    overlays = Path(args.out) / "overlays" if args.out else None
    metrics = evaluate_export(args.model, records, views=args.views or None, batch_size=args.batch_size,
                              prompts=prompts, overlays_dir=overlays, n_overlays=args.overlays)
    title = f"{args.model} on {args.data} [{args.split}]"
    print(markdown_report(metrics, title))
    if args.out:
        write_results(args.out, metrics, title)
        print(f"[mxr0] results in {args.out}/align_metrics.md" + (f", overlays in {overlays}" if overlays else ""))
    return 0 if np.isfinite(metrics.get("mean_r5", np.nan)) else 1
