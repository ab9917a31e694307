"""CheXmask (anatomical lung / heart masks for other datasets' images, as RLE rows) → canonical records.

CheXmask ships one CSV per source dataset, one row per image: an image-id column, ``Dice RCA (Mean)``
(the reverse-classification-accuracy quality estimate), ``Landmarks``, then ``Left Lung``, ``Right Lung``,
``Heart`` as RLE, ``Height`` and ``Width`` (the mask frame: the source image's original size). RLE
convention: CheXmask's ``get_mask_from_RLE``: absolute 1-based starts, row-major (see
:mod:`mxr0.data.sources.rle`). Image-id conventions (column → image file), by ``dataset``:

- ``chestx-ray14``: ``Image Index`` (``00000001_000.png``), file ``<images>/**/<Image Index>``;
- ``chexpert``: ``Path`` (``CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg``), relative to
  ``images`` (a leading ``CheXpert-v1.0*/`` is also tried without);
- ``mimic-cxr``: ``dicom_id``, file ``<images>/**/<dicom_id>.jpg`` (MIMIC-CXR-JPG);
- ``vindr-cxr``: ``image_id``, file ``<images>/**/<image_id>.(dicom|dcm|png|jpg)``;
- ``padchest``: ``ImageID``, file ``<images>/**/<ImageID>``;
- ``auto`` (default): the first of these columns present.

``min_rca`` (default 0.7, the CheXmask paper's quality cut-off) drops rows whose ``Dice RCA (Mean)`` is
lower (counted). Masks are written as 0 / 255 PNGs ``out/masks/<study_id>_<organ>.png``, decoded at Height ×
Width and resized (nearest neighbour) to the image file's size when that differs (a downsized copy) (organs ``left_lung``, ``right_lung``, ``heart``; the patient's left is the image's right). One record
per image: ``study_id`` ``chexmask-<dataset>-<id stem>``; anatomy ``chest``; no labels (join with the source's
own records by image for those); split from SHA-256 buckets of the id (80 / 10 / 10), unless a ``split``
column is present. Images absent under ``images`` are skipped (counted) unless ``check_images=False``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    SPLIT_NAMES,
    Skips,
    SourceError,
    add_check_images,
    hash_split,
    image_index,
    parse_number,
    progress,
    read_table,
    records_path,
    relative_path,
)
from mxr0.data.sources.rle import decode_absolute, image_size, write_mask

__all__ = ["DATASETS", "add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "chexmask"
DATASETS = {"chestx-ray14": "Image Index", "chexpert": "Path", "mimic-cxr": "dicom_id", "vindr-cxr": "image_id",
            "padchest": "ImageID"}
ORGAN_COLUMNS = {"Left Lung": "left_lung", "Right Lung": "right_lung", "Heart": "heart"}
RCA = "Dice RCA (Mean)"


def _find(index: dict[str, Path], img_root: Path, dataset: str, image_id: str) -> Path | None:
    if dataset == "chexpert":
        for rel in (image_id, re.sub(r"^CheXpert-v1\.0[^/]*/", "", image_id)):
            if (img_root / rel).is_file():
                return img_root / rel
        return None
    return index.get(image_id) or index.get(Path(image_id).stem)


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, table: str | os.PathLike | None = None,
                  images: str | os.PathLike | None = None, dataset: str = "auto", min_rca: float = 0.7,
                  check_images: bool = True, show_progress: bool = False) -> tuple[list[dict], Skips]:
    """``(records, skips)`` of one CheXmask CSV (see the module docstring); writes the mask PNGs."""
    root, out_dir = Path(root), Path(out_dir)
    if table is None:
        cands = sorted(p for p in root.glob("*.csv*") if p.is_file())
        if len(cands) != 1:
            raise FileNotFoundError(f"{root}: expected one CheXmask CSV, found {[p.name for p in cands]}; give table=...")
        table = cands[0]
    table = Path(table)
    rows = list(read_table(table))
    header = list(rows[0][1]) if rows else []
    if dataset == "auto":
        dataset = next((d for d, c in DATASETS.items() if c in header), "")
        if not dataset:
            raise SourceError(table, f"no image-id column ({', '.join(DATASETS.values())}); columns are {header}")
    elif dataset not in DATASETS:
        raise ValueError(f"dataset must be auto or one of {list(DATASETS)}, got {dataset!r}")
    id_col = DATASETS[dataset]
    missing = [c for c in (id_col, "Height", "Width") if c not in header]
    organs = {c: n for c, n in ORGAN_COLUMNS.items() if c in header}
    if missing or not organs:
        raise SourceError(table, f"missing column(s) {missing or list(ORGAN_COLUMNS)}; found {header}")
    img_root = Path(images) if images is not None else root
    index = image_index(img_root, (".png", ".jpg", ".jpeg", ".dcm", ".dicom")) if dataset != "chexpert" else {}
    split_col = next((h for h in header if h.lower() == "split"), None)
    skips = Skips(SOURCE)
    records = []
    seen: dict[str, int] = {}
    for rowno, row in progress(rows, "chexmask", show_progress, len(rows), unit="image"):
        image_id = row[id_col]
        if not image_id:
            raise SourceError(table, "empty image id", rowno, id_col)
        if image_id in seen:
            raise SourceError(table, f"image {image_id!r} also on row {seen[image_id]}", rowno, id_col)
        seen[image_id] = rowno
        if RCA in row and row[RCA] and parse_number(row[RCA], table, rowno, RCA) < min_rca:
            skips.add(f"{RCA} below {min_rca}", f"row {rowno}")
            continue
        src = _find(index, img_root, dataset, image_id)
        if src is None and check_images:
            skips.add("image file missing", image_id)
            continue
        h = parse_number(row["Height"], table, rowno, "Height")
        w = parse_number(row["Width"], table, rowno, "Width")
        if h != int(h) or w != int(w) or h < 1 or w < 1:
            raise SourceError(table, f"image size {row['Height']} x {row['Width']} is not a positive integer size",
                              rowno, "Height")
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(image_id).with_suffix("").as_posix())[-80:]
        split = SPLIT_NAMES.get(row[split_col].lower()) if split_col and row[split_col] else hash_split(image_id)
        if split is None:
            raise SourceError(table, f"split {row[split_col]!r} is not train / validation / test", rowno, split_col)
        rec = empty_record(f"chexmask-{dataset}-{stem}", split, SOURCE, "chest")
        path = src if src is not None else img_root / image_id
        size = image_size(src) if src is not None and src.suffix.lower() in (".png", ".jpg", ".jpeg") else None
        rec["images"] = [{"path": relative_path(path, out_dir), "view": "", "role": "current"}]
        for col, organ in organs.items():
            if not row[col]:
                continue
            try:
                mask = decode_absolute(row[col], int(h), int(w), "C")
            except ValueError as e:
                raise SourceError(table, f"{e}", rowno, col) from None
            mpath = write_mask(out_dir / "masks" / f"{rec['study_id']}_{organ}.png", mask, size)
            rec["masks"].append({"name": organ, "path": relative_path(mpath, out_dir), "image_index": 0})
        records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare chexmask``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT)")
    parser.add_argument("--table", help="the CheXmask CSV (default: the one CSV in ROOT)")
    parser.add_argument("--chexmask-dataset", dest="dataset", default="auto", help="the source dataset of the CSV "
                        "(chestx-ray14, chexpert, mimic-cxr, vindr-cxr, padchest; default: from its id column)")
    parser.add_argument("--min-rca", type=float, default=0.7, help="drop masks whose Dice RCA (Mean) is lower")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, table: str | os.PathLike | None = None,
            images: str | os.PathLike | None = None, dataset: str = "auto", min_rca: float = 0.7,
            check_images: bool = True, fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert one CheXmask CSV into ``out/records.jsonl`` with PNG masks under ``out/masks``."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, table=table, images=images, dataset=dataset, min_rca=min_rca,
                                   check_images=check_images, show_progress=show_progress)
    log.info("%s: %d images (skipped: %s)", SOURCE, len(records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
