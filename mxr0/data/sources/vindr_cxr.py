"""VinDr-CXR (Kaggle VinBigData or PhysioNet ``vindr-cxr`` 1.0.0) → canonical records.

Layouts under ``root`` (tables plain, ``.gz`` or ``.zip``):

- Kaggle "VinBigData Chest X-ray Abnormalities Detection": ``train.csv`` with columns ``image_id,
  class_name, class_id, rad_id, x_min, y_min, x_max, y_max`` (14 box classes and ``No finding``, whose
  rows have blank coordinates; three radiologists R1…R17 read each training image), DICOMs
  ``train/<image_id>.dicom``. All → ``train`` (Kaggle's test labels were never released).
- PhysioNet: ``annotations/annotations_train.csv`` and ``annotations/annotations_test.csv`` (``image_id,
  rad_id, class_name, x_min, y_min, x_max, y_max``; 22 local classes, the test boxes are a consensus of
  five readers), DICOMs ``train/`` and ``test/`` → ``train`` / ``test``.

``table`` names one annotation file instead (its images looked up in ``train/`` and ``test/``).
Coordinates are pixels of the original DICOM, so the converter needs each image's size and never
guesses it (an image of unknown size is skipped, counted):

1. ``sizes``: an optional CSV ``image_id`` + ``width, height`` (or ``Columns, Rows``, or ``dim1, dim0``
   as in the popular ``train_meta.csv``, where ``dim0`` is the number of rows);
2. else the image file: ``<split>/<image_id>.dicom`` / ``.dcm`` (``Rows`` / ``Columns`` read from the
   header only), or a ``.png`` / ``.jpg`` (its size, which must be the original resolution: an image
   with a box beyond its PNG / JPG is taken for a resized copy and skipped, counted).

Readers (``readers``): ``"fuse"`` (default) merges, per image and class, boxes of different
radiologists that overlap (IoU ≥ ``fuse_iou``, default 0.5) into their mean box, and keeps boxes only
one radiologist drew — one box per finding instance; ``"all"`` keeps every radiologist's box (near
duplicates). ``phrase`` is the class in words (``nodule or mass``), ``label`` the CheXpert observation
where the class *is* one (Atelectasis, Cardiomegaly, Consolidation, Edema, Lung Opacity, Pleural
effusion → Pleural Effusion, Pneumothorax, Pneumonia), else VinDr's class name (``Nodule/Mass``,
``Aortic enlargement`` …).

Image ``labels`` (positive when any radiologist marked it): those classes, plus Nodule/Mass, Lung
cavity, Lung cyst → Lung Lesion; Infiltration → Lung Opacity; Pleural thickening → Pleural Other; Rib
fracture, Clavicle fracture → Fracture; ``No Finding`` 1 only when every reader of the image wrote
``No finding``. Other classes (ILD, Pulmonary fibrosis, Calcification, Aortic enlargement, …) have no
CheXpert observation. One record per image (``study_id`` ``vindr-<image_id>``, anatomy chest, view
unknown ``""``: VinDr-CXR is posteroanterior by design but the tables do not say). With
``check_images`` a missing image skips its record; ``check_images=False`` keeps it when its size is
known from ``sizes`` or it has no boxes.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from mxr0.data.boxes import box_iou
from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    find_table,
    normalise_box,
    parse_number,
    progress,
    read_table,
    records_path,
    relative_path,
)

__all__ = ["BOX_LABELS", "IMAGE_LABELS", "add_arguments", "build_records", "convert", "fuse_boxes", "image_size"]

log = logging.getLogger(__name__)

SOURCE = "vindr-cxr"
NO_FINDING = "No finding"
BOX_LABELS = {  # VinDr class → CheXpert observation used as the box label (others keep their name)
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
    "Edema": "Edema", "Lung Opacity": "Lung Opacity", "Pleural effusion": "Pleural Effusion",
    "Pneumothorax": "Pneumothorax", "Pneumonia": "Pneumonia",
}
IMAGE_LABELS = {**BOX_LABELS, "Nodule/Mass": "Lung Lesion", "Lung cavity": "Lung Lesion", "Lung cyst": "Lung Lesion",
                "Infiltration": "Lung Opacity", "Pleural thickening": "Pleural Other", "Rib fracture": "Fracture",
                "Clavicle fracture": "Fracture"}
PHRASES = {"Nodule/Mass": "nodule or mass", "ILD": "interstitial lung disease", "Enlarged PA":
           "enlarged pulmonary artery"}
_COLUMNS = ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max")
_IMAGE_EXTS = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")


def fuse_boxes(boxes: list[tuple[str, tuple[float, float, float, float]]],
               threshold: float = 0.5) -> list[tuple[float, float, float, float]]:
    """Merge ``[(reader, box)]`` of one class on one image: each box joins the first cluster whose
    mean box it overlaps with IoU ≥ ``threshold`` and that has no box of the same reader yet; every
    cluster becomes its mean box (order of first appearance)."""
    clusters: list[tuple[set[str], list[tuple[float, ...]]]] = []
    for reader, box in boxes:
        for readers, members in clusters:
            mean = tuple(sum(m[k] for m in members) / len(members) for k in range(4))
            if reader not in readers and box_iou(mean, box)[0, 0] >= threshold:
                readers.add(reader)
                members.append(box)
                break
        else:
            clusters.append(({reader}, [box]))
    return [tuple(sum(m[k] for m in members) / len(members) for k in range(4)) for _, members in clusters]


def image_size(path: Path) -> tuple[float, float]:
    """``(width, height)`` of a DICOM (header only) or an image file."""
    if path.suffix.lower() in (".dicom", ".dcm"):
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        return float(ds.Columns), float(ds.Rows)
    from PIL import Image

    with Image.open(path) as im:
        return float(im.width), float(im.height)


def _load_sizes(path: Path) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for rowno, row in read_table(path, ("image_id",)):
        for wcol, hcol in (("width", "height"), ("Columns", "Rows"), ("dim1", "dim0")):
            if wcol in row and hcol in row:
                out[row["image_id"]] = (parse_number(row[wcol], path, rowno, wcol),
                                        parse_number(row[hcol], path, rowno, hcol))
                break
        else:
            raise SourceError(path, "needs width/height, Columns/Rows or dim1/dim0 columns", rowno)
    return out


def _tables(root: Path, table: str | os.PathLike | None) -> list[tuple[Path, str]]:
    if table is not None:
        t = Path(table)
        return [(t, "test" if "test" in t.name.lower() else "train")]
    physionet = [(find_table(root / "annotations", f"annotations_{s}.csv", required=False), s)
                 for s in ("train", "test")]
    found = [(p, s) for p, s in physionet if p is not None]
    if found:
        return found
    kaggle = find_table(root, "train.csv", required=False)
    if kaggle is None:
        raise FileNotFoundError(f"{root}: no annotations/annotations_train.csv (PhysioNet) or train.csv (Kaggle)")
    return [(kaggle, "train")]


def _index_images(root: Path, split: str) -> dict[str, Path]:
    """``{image_id: file}`` of the image files in ``root/<split>``, ``root/train``, ``root/test`` and
    ``root`` (earlier folders and extensions win)."""
    index: dict[str, Path] = {}
    for folder in (root, root / "test", root / "train", root / split):
        if not folder.is_dir():
            continue
        found = {}
        for p in folder.iterdir():
            ext = p.suffix.lower()
            if ext in _IMAGE_EXTS and (p.stem not in found or _IMAGE_EXTS.index(ext) <
                                       _IMAGE_EXTS.index(found[p.stem].suffix.lower())):
                found[p.stem] = p
        index.update(found)
    return index


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, table: str | os.PathLike | None = None,
                  sizes: str | os.PathLike | None = None, readers: str = "fuse", fuse_iou: float = 0.5,
                  check_images: bool = True, show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of VinDr-CXR under ``root`` (see the module docstring)."""
    root = Path(root)
    if readers not in ("fuse", "all"):
        raise ValueError(f"readers must be 'fuse' or 'all', got {readers!r}")
    size_table = _load_sizes(Path(sizes)) if sizes is not None else {}
    skips = Skips(SOURCE)
    records: list[dict] = []
    for path, split in _tables(root, table):
        rad_col = "rad_id"
        images: dict[str, dict] = {}  # image_id → {"rows": [(rowno, class, reader, box|None)]}
        for rowno, row in progress(read_table(path), path.name, show_progress, unit="row"):
            if rowno == 2:
                if "rad_id" not in row and "rad_ID" in row:
                    rad_col = "rad_ID"
                missing = [c for c in _COLUMNS if c != "rad_id" and c not in row] + (
                    [] if rad_col in row else ["rad_id"])
                if missing:
                    raise SourceError(path, f"missing column(s) {missing}; found {list(row)}")
            image_id, cls = row["image_id"], row["class_name"]
            if not image_id or not cls:
                raise SourceError(path, "empty image_id or class_name", rowno, "image_id" if not image_id else
                                  "class_name")
            coords = [row[c] for c in ("x_min", "y_min", "x_max", "y_max")]
            if cls == NO_FINDING or not any(coords):
                if cls != NO_FINDING:
                    raise SourceError(path, f"class {cls!r} has no box coordinates", rowno, "x_min")
                box = None
            else:
                box = tuple(parse_number(v, path, rowno, c)
                            for v, c in zip(coords, ("x_min", "y_min", "x_max", "y_max")))
            images.setdefault(image_id, []).append((rowno, cls, row[rad_col], box))
        index = _index_images(root, split)
        for image_id, rows in images.items():
            file = index.get(image_id)
            if file is None and check_images:
                skips.add("image file missing", f"{root / split / image_id}.dicom")
                continue
            size = size_table.get(image_id)
            has_boxes = any(box is not None for *_, box in rows)
            if size is None and file is not None and has_boxes:
                try:
                    size = image_size(file)
                except Exception as e:  # unreadable header or image
                    skips.add("image size unreadable", f"{file}: {e}")
                    continue
            if size is None and has_boxes:
                skips.add("image size unknown (no image file, not in sizes)", image_id)
                continue
            rec = empty_record(f"vindr-{image_id}", split, SOURCE, "chest")
            rec["images"] = [{"path": relative_path(file if file is not None else root / split /
                                                    f"{image_id}.dicom", out_dir), "view": "", "role": "current"}]
            by_class: dict[str, list[tuple[str, tuple]]] = {}
            outside = []
            for rowno, cls, reader, box in rows:
                if cls in IMAGE_LABELS:
                    rec["labels"][IMAGE_LABELS[cls]] = 1
                if box is None:
                    continue
                try:
                    nbox = normalise_box(*box, size[0], size[1])
                except ValueError as e:
                    outside.append(f"{path.name} row {rowno}: {e}")
                    continue
                by_class.setdefault(cls, []).append((reader, nbox))
            if outside and image_id not in size_table and file.suffix.lower() not in (".dicom", ".dcm"):
                skips.add("boxes beyond a PNG/JPG image (resized copy? give sizes=)", outside[0])
                continue
            for detail in outside:
                skips.add("box outside the image or empty", detail)
            if all(cls == NO_FINDING for _, cls, _, _ in rows):
                rec["labels"]["No Finding"] = 1
            for cls, boxes in by_class.items():
                kept = fuse_boxes(boxes, fuse_iou) if readers == "fuse" else [b for _, b in boxes]
                for x0, y0, x1, y1 in kept:
                    rec["boxes"].append({"phrase": PHRASES.get(cls, cls.lower()), "label": BOX_LABELS.get(cls, cls),
                                         "image_index": 0, "x0": x0, "y0": y0, "x1": x1, "y1": y1})
            records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare vindr-cxr``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--table", help="the annotation table, when not the default under ROOT")
    parser.add_argument("--readers", choices=["fuse", "all"], default="fuse",
                        help="merge overlapping boxes of different radiologists (default) or keep all")
    parser.add_argument("--sizes", help="CSV of image_id and width/height (when the DICOMs are absent)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, table: str | os.PathLike | None = None,
            sizes: str | os.PathLike | None = None, readers: str = "fuse", fuse_iou: float = 0.5,
            check_images: bool = True, fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert VinDr-CXR under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, table=table, sizes=sizes, readers=readers, fuse_iou=fuse_iou,
                                   check_images=check_images, show_progress=show_progress)
    log.info("%s: %d images, %d boxes (skipped: %s)", SOURCE, len(records),
             sum(len(r["boxes"]) for r in records), skips.summary())
    return write_records(records, path, roots=[root])
