"""SIIM-ACR Pneumothorax Segmentation (run-length masks) → canonical records with a ``pneumothorax`` mask.

Inputs under ``root``:

- ``table`` (default the first of ``train-rle.csv``, ``stage_2_train.csv``,
  ``siim-pneumothorax-train-rle.csv`` found, plain / ``.gz`` / ``.zip``): ``ImageId, EncodedPixels``
  (the stage-1 header has a space: `` EncodedPixels``; both spellings are read). One row per
  pneumothorax region, several rows per image are merged; ``-1`` means no pneumothorax. RLE convention:
  see :mod:`mxr0.data.sources.rle` (stage 1 relative, stage 2 absolute, both column-major; told apart
  per row). Checked on the real table: decoded this way ~80 % of the masks' centroids lie in the upper
  half of the image and laterally (apical / lateral pneumothoraces), as expected on erect films.
- ``images`` (default ``root``): the images anywhere below, named ``<ImageId>.dcm`` (the release's
  ``dicom-images-train/<study>/<series>/<ImageId>.dcm``) or ``<ImageId>.png`` / ``.jpg``. DICOMs are decoded
  once to ``out/images/<n>.png`` (8-bit; no header field is copied), their masks decoded at the DICOM's
  size; PNG / JPEG copies are referenced in place and their masks decoded at ``size`` × ``size`` (the
  release's 1024² frame) then resized to the copy with nearest neighbour.

One record per image: ``study_id`` ``siim-<n>`` where ``n`` is the first 16 hex digits of SHA-256 of the
ImageId (the ImageIds are DICOM UIDs), anatomy ``chest``, view from the DICOM header (``PA`` / ``AP``) or
unknown, ``labels["Pneumothorax"]`` and ``source_labels["siim:pneumothorax"]`` 1 or 0, and for a positive
image the union of its regions as ``masks = [{"name": "pneumothorax", …}]`` written as a 0 / 255 PNG
``out/masks/<study_id>_pneumothorax.png`` at the image's size. Split: SHA-256 buckets of the ImageId
(80 / 10 / 10; the release has no patient id in the table). Images absent under ``images`` are skipped
(counted); with ``check_images=False`` they are kept with the path they would have and masks decoded at
``size`` (default 1024², the release's size).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    find_table,
    hash_split,
    image_index,
    normalise_view,
    open_text,
    progress,
    records_path,
    relative_path,
)
from mxr0.data.sources.rle import decode_siim, image_size, write_mask
from mxr0.data.xray import XrayReadError, read_dicom_meta, read_xray, write_png

__all__ = ["add_arguments", "build_records", "convert", "read_rle_table"]

log = logging.getLogger(__name__)

SOURCE = "siim-acr"
TABLES = ("train-rle.csv", "stage_2_train.csv", "siim-pneumothorax-train-rle.csv")


def read_rle_table(path: Path) -> dict[str, list[tuple[int, str]]]:
    """``{ImageId: [(row number, EncodedPixels), …]}`` in file order."""
    import csv

    out: dict[str, list[tuple[int, str]]] = {}
    with open_text(path) as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["ImageId", "EncodedPixels"]:
            raise SourceError(path, f"header {header[:2]} is not 'ImageId, EncodedPixels'", 1)
        for rowno, row in enumerate(reader, start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 2 or not row[0].strip():
                raise SourceError(path, "expected ImageId and EncodedPixels", rowno, "ImageId")
            out.setdefault(row[0].strip(), []).append((rowno, row[1].strip()))
    return out


def _sid(image_id: str) -> str:
    return "siim-" + hashlib.sha256(image_id.encode("utf-8")).hexdigest()[:16]


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, table: str | os.PathLike | None = None,
                  images: str | os.PathLike | None = None, check_images: bool = True, size: int = 1024,
                  mode: str = "relative", show_progress: bool = False) -> tuple[list[dict], Skips]:
    """``(records, skips)``; writes the masks (and PNGs of DICOM images) under ``out_dir``."""

    root, out_dir = Path(root), Path(out_dir)
    if table is not None:
        tpath = Path(table)
    else:
        tpath = next((t for t in (find_table(root, n, required=False) for n in TABLES) if t is not None), None)
        if tpath is None:
            raise FileNotFoundError(f"{root}: none of {', '.join(TABLES)} (.gz / .zip) found; give table=...")
    rows = read_rle_table(tpath)
    index = image_index(Path(images) if images is not None else root)
    skips = Skips(SOURCE)
    modes: dict[str, int] = {}
    records = []
    for image_id, cells in progress(rows.items(), "siim-acr", show_progress, len(rows), unit="image"):
        sid = _sid(image_id)
        rec = empty_record(sid, hash_split(image_id), SOURCE, "chest")
        src = index.get(image_id)
        if src is None and check_images:
            skips.add("image file missing", image_id)
            continue
        height = width = size
        view = ""
        shown = None
        if src is not None and src.suffix.lower() == ".dcm":
            try:
                view = normalise_view(read_dicom_meta(src).get("ViewPosition"))
                img = read_xray(src)
            except XrayReadError as e:
                skips.add("unreadable DICOM", str(e).splitlines()[0])
                continue
            height, width = img.shape
            dest = out_dir / "images" / f"{sid}.png"
            write_png(dest, img)
            path = dest
        elif src is not None:
            path = src  # a PNG / JPEG copy: the RLE is in the release's size x size frame, resized below
            shown = image_size(src)
        else:
            path = (Path(images) if images is not None else root) / f"{image_id}.dcm"
        rec["images"] = [{"path": relative_path(path, out_dir), "view": view, "role": "current"}]
        mask = np.zeros((height, width), dtype=bool)
        positive = False
        try:
            for rowno, cell in cells:
                if cell in ("-1", ""):
                    continue
                try:
                    part, used = decode_siim(cell, height, width, mode)
                except ValueError as e:
                    raise SourceError(tpath, f"ImageId {image_id}: {e}", rowno, "EncodedPixels") from None
                modes[used] = modes.get(used, 0) + 1
                mask |= part
                positive = True
        except SourceError as e:
            skips.add("RLE that fits no reading of the image", str(e))
            continue
        flag = int(positive)
        rec["labels"]["Pneumothorax"] = flag
        rec["source_labels"]["siim:pneumothorax"] = flag
        if positive:
            mpath = write_mask(out_dir / "masks" / f"{sid}_pneumothorax.png", mask, shown)
            rec["masks"] = [{"name": "pneumothorax", "path": relative_path(mpath, out_dir), "image_index": 0}]
        records.append(rec)
    if modes:
        log.info("%s: RLE rows read as %s", SOURCE, ", ".join(f"{k} ({v})" for k, v in sorted(modes.items())))
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare siim-acr``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT, searched recursively)")
    parser.add_argument("--table", help="the RLE table, when not the default under ROOT")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, table: str | os.PathLike | None = None,
            images: str | os.PathLike | None = None, check_images: bool = True, size: int = 1024,
            fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert SIIM-ACR under ``root`` into ``out/records.jsonl`` with PNG masks under ``out/masks``."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, table=table, images=images, check_images=check_images,
                                   size=size, show_progress=show_progress)
    log.info("%s: %d images, %d with a pneumothorax mask (skipped: %s)", SOURCE, len(records),
             sum(bool(r["masks"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
