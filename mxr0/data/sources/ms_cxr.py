"""MS-CXR (PhysioNet ``ms-cxr``: phrase grounding on MIMIC-CXR-JPG) → canonical records.

Layout:

- under ``root``: ``MS_CXR_Local_Alignment_v1.0.0.csv`` or ``…_v1.1.0.csv`` (the newest version
  present is read; ``table`` names another file). Columns ``dicom_id, category_name, label_text,
  path, x, y, w, h, image_width, image_height`` and, from v1.1.0, ``split`` (``train`` / ``val`` /
  ``test``). One row per box: a phrase (``label_text``) with several boxes has several rows. ``x, y``
  is the box's top-left corner and ``w, h`` its size, in pixels of the original image of
  ``image_width`` × ``image_height``; ``path`` is ``files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``,
  relative to the MIMIC-CXR-JPG folder.
- under ``images`` (default ``root``): the MIMIC-CXR-JPG folder; its ``mimic-cxr-2.0.0-metadata.csv(.gz)``
  gives the views and its ``mimic-cxr-2.0.0-split.csv(.gz)`` the split for v1.0.0 (no split column),
  when present.

Rules:

- One record per image: ``study_id`` ``mscxr-<dicom_id>``; boxes normalised by the row's own
  ``image_width`` / ``image_height``; ``phrase`` the ``label_text``, ``label`` the ``category_name``
  (the eight MS-CXR categories are CheXpert observations: Atelectasis, Cardiomegaly, Consolidation,
  Edema, Lung Opacity, Pleural Effusion, Pneumonia, Pneumothorax); each category present sets that
  observation to 1, the others stay unknown.
- Split: the ``split`` column (``val`` → ``validation``); without one, MIMIC-CXR's split of the
  image; without that, ``default_split`` (default ``test``: v1.0.0 is an evaluation set), with one
  warning giving the count.
- A box outside its image or empty is skipped (counted); an image whose rows disagree on the size is
  an error. With ``check_images`` a missing JPG skips the record (counted).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path, PurePosixPath

from mxr0.data.records import CHEXPERT_LABELS, empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    find_table,
    normalise_box,
    normalise_view,
    parse_number,
    progress,
    read_table,
    records_path,
    relative_path,
)

__all__ = ["add_arguments", "build_records", "convert", "find_annotations"]

log = logging.getLogger(__name__)

SOURCE = "ms-cxr"
COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
_SPLITS = {"train": "train", "val": "validation", "validate": "validation", "validation": "validation",
           "test": "test"}


def find_annotations(root: Path) -> Path:
    """The newest ``MS_CXR_Local_Alignment_v*.csv`` under ``root``."""
    found = sorted(root.glob("MS_CXR_Local_Alignment_v*.csv"),
                   key=lambda p: [int(n) for n in re.findall(r"\d+", p.stem)])
    if not found:
        raise FileNotFoundError(f"{root}: no MS_CXR_Local_Alignment_v*.csv found")
    return found[-1]


def _mimic_table(images: Path, name: str, key: str, value: str) -> dict[str, str]:
    table = find_table(images, name, required=False)
    if table is None:
        return {}
    return {row[key]: row[value] for _, row in read_table(table, (key, value))}


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  table: str | os.PathLike | None = None, default_split: str = "test", check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of MS-CXR (see the module docstring)."""
    root = Path(root)
    img_root = Path(images) if images is not None else root
    path = Path(table) if table is not None else find_annotations(root)
    if default_split not in ("train", "validation", "test"):
        raise ValueError(f"default_split must be train, validation or test, got {default_split!r}")
    views = {k: normalise_view(v) for k, v in
             _mimic_table(img_root, "mimic-cxr-2.0.0-metadata.csv", "dicom_id", "ViewPosition").items()}
    mimic_split: dict[str, str] | None = None
    skips = Skips(SOURCE)
    defaulted: set[str] = set()
    studies: dict[str, dict] = {}
    sizes: dict[str, tuple[float, float]] = {}
    for rowno, row in progress(read_table(path, COLUMNS), path.name, show_progress, unit="box"):
        dicom = row["dicom_id"]
        if not dicom:
            raise SourceError(path, "empty dicom_id", rowno, "dicom_id")
        x, y, w, h, width, height = (parse_number(row[c], path, rowno, c)
                                     for c in ("x", "y", "w", "h", "image_width", "image_height"))
        if width <= 0 or height <= 0:
            raise SourceError(path, f"image size {width:g} x {height:g} is not positive", rowno, "image_width")
        if "split" in row and row["split"]:
            split = _SPLITS.get(row["split"].lower())
            if split is None:
                raise SourceError(path, f"split {row['split']!r} is not train, val or test", rowno, "split")
        else:
            if mimic_split is None:
                mimic_split = {k: _SPLITS.get(v, default_split) for k, v in
                               _mimic_table(img_root, "mimic-cxr-2.0.0-split.csv", "dicom_id", "split").items()}
            split = mimic_split.get(dicom)
            if split is None:
                defaulted.add(dicom)
                split = default_split
        rec = studies.get(dicom)
        if rec is None:
            rec = studies[dicom] = empty_record(f"mscxr-{dicom}", split, SOURCE, "chest")
            rel = PurePosixPath(row["path"]) if row["path"] else None
            if rel is None:
                raise SourceError(path, "empty path", rowno, "path")
            rec["images"] = [{"path": str(img_root.joinpath(*rel.parts)), "view": views.get(dicom, ""),
                              "role": "current"}]
            sizes[dicom] = (width, height)
        elif sizes[dicom] != (width, height):
            raise SourceError(path, f"image {dicom} is {width:g} x {height:g} here but "
                                    f"{sizes[dicom][0]:g} x {sizes[dicom][1]:g} on an earlier row", rowno,
                              "image_width")
        elif rec["split"] != split:
            raise SourceError(path, f"image {dicom} is in both {rec['split']} and {split}", rowno, "split")
        category = row["category_name"]
        try:
            x0, y0, x1, y1 = normalise_box(x, y, x + w, y + h, width, height)
        except ValueError as e:
            skips.add("box outside the image or empty", f"{path.name} row {rowno}: {e}")
            continue
        rec["boxes"].append({"phrase": row["label_text"] or category, "label": category, "image_index": 0,
                             "x0": x0, "y0": y0, "x1": x1, "y1": y1})
        if category in CHEXPERT_LABELS:
            rec["labels"][category] = 1
    if defaulted:
        log.warning("%s: %d images have no split column and no MIMIC-CXR split: put in %s", SOURCE, len(defaulted),
                    default_split)
    records = []
    for rec in studies.values():
        image = Path(rec["images"][0]["path"])
        if check_images and not image.is_file():
            skips.add("image file missing", str(image))
            continue
        if not rec["boxes"]:
            skips.add("image without a valid box", rec["study_id"])
            continue
        rec["images"][0]["path"] = relative_path(image, out_dir)
        records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare ms-cxr``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the MIMIC-CXR-JPG folder (default ROOT)")
    parser.add_argument("--table", help="the MS-CXR annotation table, when not the default under ROOT")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            table: str | os.PathLike | None = None, default_split: str = "test", check_images: bool = True,
            fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert MS-CXR under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, images=images, table=table, default_split=default_split,
                                   check_images=check_images, show_progress=show_progress)
    log.info("%s: %d images, %d boxes (skipped: %s)", SOURCE, len(records),
             sum(len(r["boxes"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
