"""NIH ChestX-ray14 boxes (``BBox_List_2017.csv``) with ``Data_Entry_2017*.csv`` → canonical records.

Inputs, found under ``root`` unless given explicitly (tables plain, ``.gz`` or ``.zip``):

- ``bbox``: ``BBox_List_2017.csv`` (else ``BBox_List_2017_full.csv``): 984 boxes on 880 images, 8
  findings. The real header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the box header is one
  cell split by its own commas, so the columns are read by position (image, finding, x, y, w, h), not
  by name. ``x, y`` is the top-left corner, ``w, h`` the size, in pixels of the released 1024 × 1024
  PNG. That is the box frame: the boxes reach x + w ≈ 1012 while ``OriginalImage[Width`` is about
  2,500-3,000, so ``Data_Entry``'s original size (the DICOM's, before NIH resized every image to
  1024²) is *not* used to normalise. A resized copy (e.g. 512²) keeps the same normalised boxes.
- ``data_entry`` (optional): ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv``: ``Image Index,
  Finding Labels (A|B), Follow-up #, Patient ID, Patient Age, Patient Gender, View Position,
  OriginalImage[Width, Height], …`` (the bracketed headers also split on their commas; these
  columns are read by name and are not needed). Gives view (PA / AP), sex, age (``58`` or ``058Y``) and
  the image-level labels. Without it those stay unknown and the labels come from the boxes (counted).
- ``train_val_list.txt`` / ``test_list.txt`` (optional): NIH's official split (``train_val`` →
  ``train``; NIH has no separate validation list). Images listed in neither, or all images when the
  lists are absent, get ``default_split`` (default ``test``: the box images are NIH's evaluation
  images), with one warning giving the count.
- ``images`` (default ``root/images`` if it exists, else ``root``): PNGs named ``<Image Index>`` anywhere
  below (the release's ``images_001/images/…`` layout works).

Mapping of NIH findings (documented choice). Box ``label``: the CheXpert observation where the
finding *is* one (Atelectasis, Cardiomegaly, Effusion → Pleural Effusion, Pneumonia, Pneumothorax),
else NIH's own name (Infiltrate, Mass, Nodule); ``phrase`` the finding in words (``pleural effusion``,
``infiltrate``). Image ``labels`` (positives only, NIH's text-mined labels have no negatives or
uncertainty): Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion → Pleural Effusion,
Pneumonia, Pneumothorax as named; Infiltration / Infiltrate → Lung Opacity; Mass, Nodule → Lung
Lesion; Pleural_Thickening → Pleural Other; No Finding → No Finding. Emphysema, Fibrosis and Hernia
have no CheXpert observation and are not in ``labels``. All 14 NIH findings are kept as NIH labels them in
``source_labels`` (``nih:Atelectasis`` … ``nih:Pneumothorax``, NIH's spelling, ``NIH_FINDINGS_14``): for an
image with a ``Data_Entry`` row each is 1 when listed and 0 otherwise (NIH's labels are binary per image:
"No Finding" means all 14 are 0); an image known only from its boxes gets 1 for its boxed findings only.
``data_entry`` may also be a wide table (``Image Index`` and one 0 / 1 column per finding, as the
``labels_subset`` copies and many Kaggle re-releases have it).

One record per image (``study_id`` ``nih-<image stem>``); ``all_images=True`` also writes every
``Data_Entry`` image without boxes (a labels-only ChestX-ray14 set). A box row whose finding lists
several findings (``A|B``), or a box outside the image, is skipped (counted). With ``check_images`` a
missing PNG skips its record (counted).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    find_table,
    normalise_box,
    normalise_view,
    open_text,
    parse_age,
    parse_number,
    progress,
    read_table,
    records_path,
    single_image_records,
)

__all__ = ["BOX_LABELS", "FRAME", "IMAGE_LABELS", "NIH_FINDINGS_14", "add_arguments", "build_records", "convert", "read_bbox_list"]

log = logging.getLogger(__name__)

SOURCE = "nih-boxes"
FRAME = 1024.0
"""Side in pixels of the released ChestX-ray14 PNGs, the frame of ``BBox_List_2017.csv``."""

BOX_LABELS: dict[str, tuple[str, str]] = {  # NIH box finding → (label, phrase)
    "Atelectasis": ("Atelectasis", "atelectasis"),
    "Cardiomegaly": ("Cardiomegaly", "cardiomegaly"),
    "Effusion": ("Pleural Effusion", "pleural effusion"),
    "Pneumonia": ("Pneumonia", "pneumonia"),
    "Pneumothorax": ("Pneumothorax", "pneumothorax"),
    "Infiltrate": ("Infiltrate", "infiltrate"),
    "Infiltration": ("Infiltrate", "infiltrate"),
    "Mass": ("Mass", "mass"),
    "Nodule": ("Nodule", "nodule"),
}
IMAGE_LABELS: dict[str, str] = {  # NIH finding → CheXpert observation (positives)
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
    "Edema": "Edema", "Effusion": "Pleural Effusion", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
    "Infiltration": "Lung Opacity", "Infiltrate": "Lung Opacity", "Mass": "Lung Lesion", "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other", "No Finding": "No Finding",
}
NIH_FINDINGS = set(IMAGE_LABELS) | {"Emphysema", "Fibrosis", "Hernia"}
NIH_FINDINGS_14: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
"""ChestX-ray14's 14 findings (NIH's spelling); ``source_labels`` keys ``nih:<finding>``."""
_SEX = {"M": "M", "F": "F"}


def read_bbox_list(path: Path) -> list[tuple[int, str, str, tuple[float, float, float, float]]]:
    """``[(row number, image, finding, (x, y, w, h))]`` of a ``BBox_List_2017.csv``, read by position."""
    out = []
    with open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if [h.strip() for h in header[:2]] != ["Image Index", "Finding Label"]:
            raise SourceError(path, f"header {header[:3]} does not start with 'Image Index,Finding Label'", 1)
        names = ("Bbox x", "Bbox y", "Bbox w", "Bbox h")
        for rowno, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) < 6:
                raise SourceError(path, f"expected image, finding, x, y, w, h; got {len(row)} cells", rowno)
            xywh = tuple(parse_number(row[2 + k].strip(), path, rowno, names[k]) for k in range(4))
            out.append((rowno, row[0].strip(), row[1].strip(), xywh))
    return out


def _read_list(path: Path | None) -> set[str]:
    if path is None or not path.is_file():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _entry_record(rec: dict, row: dict, path: Path, rowno: int, skips: Skips) -> None:
    rec["images"][0]["view"] = normalise_view(row.get("View Position", ""))
    rec["sex"] = _SEX.get(row.get("Patient Gender", "").upper(), "")
    age = parse_age(row.get("Patient Age", ""))
    if age is not None and not 0 <= age < 130:
        skips.add("age out of range (kept as unknown)", f"{path.name} row {rowno}: {row.get('Patient Age')!r}")
        age = None
    rec["age"] = age
    if "Finding Labels" in row:
        listed = list(filter(None, (s.strip() for s in row.get("Finding Labels", "").split("|"))))
    else:  # a wide table: one 0 / 1 column per finding
        listed = []
        for finding in (*NIH_FINDINGS_14, "No Finding"):
            cell = row.get(finding, "").strip()
            if cell not in ("", "0", "1", "0.0", "1.0"):
                raise SourceError(path, f"{cell!r} is not 0 or 1", rowno, finding)
            if cell in ("1", "1.0"):
                listed.append(finding)
    for finding in listed:
        if finding not in NIH_FINDINGS:
            raise SourceError(path, f"unknown finding {finding!r}", rowno, "Finding Labels")
        if finding in IMAGE_LABELS:
            rec["labels"][IMAGE_LABELS[finding]] = 1
    canonical = {"Infiltrate": "Infiltration"}
    found = {canonical.get(f, f) for f in listed}
    for finding in NIH_FINDINGS_14:
        rec["source_labels"][f"nih:{finding}"] = int(finding in found)


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, bbox: str | os.PathLike | None = None,
                  data_entry: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                  all_images: bool = False, default_split: str = "test", check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of the ChestX-ray14 box images (see the module docstring)."""
    root = Path(root)
    if default_split not in ("train", "validation", "test"):
        raise ValueError(f"default_split must be train, validation or test, got {default_split!r}")
    bbox_path = Path(bbox) if bbox is not None else (
        find_table(root, "BBox_List_2017.csv", required=False) or find_table(root, "BBox_List_2017_full.csv",
                                                                             required=False))
    if bbox_path is None:
        raise FileNotFoundError(f"{root}: no BBox_List_2017.csv (.gz/.zip) found; give bbox=...")
    entry_path = Path(data_entry) if data_entry is not None else (
        find_table(root, "Data_Entry_2017_v2020.csv", required=False)
        or find_table(root, "Data_Entry_2017.csv", required=False))
    img_root = Path(images) if images is not None else (root / "images" if (root / "images").is_dir() else root)
    index = {p.name: p for p in img_root.rglob("*.png")} if img_root.is_dir() else {}
    train_list, test_list = _read_list(root / "train_val_list.txt"), _read_list(root / "test_list.txt")
    skips = Skips(SOURCE)
    studies: dict[str, dict] = {}
    defaulted: list[str] = []

    def record(name: str) -> dict:
        rec = studies.get(name)
        if rec is None:
            split = "test" if name in test_list else "train" if name in train_list else None
            if split is None:
                defaulted.append(name)
                split = default_split
            rec = studies[name] = empty_record(f"nih-{Path(name).stem}", split, SOURCE, "chest")
            path = index.get(name, img_root / name)
            rec["images"] = [{"path": str(path), "view": "", "role": "current"}]
        return rec

    for rowno, name, finding, (x, y, w, h) in progress(read_bbox_list(bbox_path), bbox_path.name, show_progress,
                                                       unit="box"):
        if "|" in finding:
            skips.add("box row naming several findings", f"{bbox_path.name} row {rowno}: {finding!r}")
            continue
        if finding not in BOX_LABELS:
            raise SourceError(bbox_path, f"unknown box finding {finding!r} (known: {sorted(BOX_LABELS)})", rowno,
                              "Finding Label")
        try:
            x0, y0, x1, y1 = normalise_box(x, y, x + w, y + h, FRAME, FRAME)
        except ValueError as e:
            skips.add("box outside the image or empty", f"{bbox_path.name} row {rowno}: {e}")
            continue
        label, phrase = BOX_LABELS[finding]
        rec = record(name)
        rec["boxes"].append({"phrase": phrase, "label": label, "image_index": 0,
                             "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    box_images = set(studies)
    in_entry: set[str] = set()
    if entry_path is not None:
        rows = read_table(entry_path, ("Image Index",))
        for rowno, row in rows:
            if rowno == 2 and "Finding Labels" not in row and not any(f in row for f in NIH_FINDINGS_14):
                raise SourceError(entry_path, f"neither a 'Finding Labels' column nor one column per NIH finding; "
                                              f"found {list(row)}", 1)
            name = row["Image Index"]
            if name in box_images or all_images:
                _entry_record(record(name), row, entry_path, rowno, skips)
                in_entry.add(name)
    for name in box_images - in_entry:
        skips.add("box image not in Data_Entry (labels from its boxes)", name)
        for b in studies[name]["boxes"]:
            finding = next(k for k, v in BOX_LABELS.items() if v[0] == b["label"])
            studies[name]["labels"][IMAGE_LABELS[finding]] = 1
            studies[name]["source_labels"][f"nih:{'Infiltration' if finding == 'Infiltrate' else finding}"] = 1
    if defaulted:
        log.warning("%s: %d images are in no official split list (train_val_list.txt / test_list.txt under %s): "
                    "put in %s", SOURCE, len(defaulted), root, default_split)
    return single_image_records(studies.values(), out_dir, check_images, skips), skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare nih-boxes``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT/images, else ROOT)")
    parser.add_argument("--table", dest="bbox", help="BBox_List_2017.csv, when not under ROOT")
    parser.add_argument("--data-entry", help="Data_Entry_2017*.csv (or a wide 0/1 label table), when not under ROOT")
    parser.add_argument("--all-images", action="store_true", help="also write every labelled image without boxes")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, bbox: str | os.PathLike | None = None,
            data_entry: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
            all_images: bool = False, default_split: str = "test", check_images: bool = True,
            fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert the ChestX-ray14 boxes under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, bbox=bbox, data_entry=data_entry, images=images,
                                   all_images=all_images, default_split=default_split, check_images=check_images,
                                   show_progress=show_progress)
    log.info("%s: %d images, %d boxes (skipped: %s)", SOURCE, len(records),
             sum(len(r["boxes"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
