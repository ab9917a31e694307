"""RSNA Pneumonia Detection Challenge (Kaggle, stage 2) → canonical records.

Inputs under ``root`` (tables plain, ``.gz`` or ``.zip``; the ``kaggle_`` prefixed names are accepted too):

- ``stage_2_train_labels.csv``: ``patientId, x, y, width, height, Target``; one row per box (``x, y`` the
  top-left corner, ``width, height`` the size, in pixels of the DICOM), or one row with blank
  coordinates and ``Target`` 0 for an image without opacity. ``patientId`` names one image.
- ``stage_2_detailed_class_info.csv`` (optional): ``patientId, class`` with ``Lung Opacity``, ``No Lung
  Opacity / Not Normal`` or ``Normal``.
- ``stage_2_train_images_dicom_headers.csv`` (optional): a header dump with ``PatientID`` (= ``patientId``),
  ``ViewPosition`` (AP / PA), ``PatientSex``, ``PatientAge`` and, when dumped, ``Rows`` / ``Columns``.
- ``stage_2_train_images/<patientId>.dcm`` (``images`` to place them elsewhere).

Image size, needed to normalise the boxes: the header dump's ``Rows`` / ``Columns`` when it has them,
else the DICOM's own header when the file is present, else ``image_size`` (default 1024: every
stage-2 DICOM is 1024 × 1024, as the challenge documents; pass ``image_size=None`` to skip images
of unknown size instead, counted). A box beyond the image is skipped (counted).

Records: one per image (``study_id`` ``rsna-<patientId>``, anatomy chest), all in ``split`` (default
``train``: the challenge's test labels are not part of the Kaggle data). Boxes: ``phrase``
``pneumonia``, ``label`` ``Pneumonia`` (the challenge marks "lung opacities suspicious for
pneumonia"). Labels: ``Target`` 1 → Pneumonia 1 and Lung Opacity 1; ``Target`` 0 → both 0, and with
the class table ``Normal`` → No Finding 1, ``No Lung Opacity / Not Normal`` → No Finding 0. View, sex
and age from the header dump (ages outside [0, 130) — the dump has a few, e.g. 148 — become unknown,
counted). With ``check_images`` a missing DICOM skips its record (counted).
"""

from __future__ import annotations

import argparse
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
    parse_age,
    parse_number,
    progress,
    read_table,
    records_path,
    relative_path,
)
from mxr0.data.sources.vindr_cxr import image_size as _file_size

__all__ = ["add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "rsna-pneumonia"
_CLASSES = {"Lung Opacity", "No Lung Opacity / Not Normal", "Normal"}


def _find(root: Path, name: str) -> Path | None:
    return find_table(root, name, required=False) or find_table(root, f"kaggle_{name}", required=False)


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  image_size: int | None = 1024, split: str = "train", check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of the RSNA pneumonia labels under ``root`` (see the module docstring)."""
    root = Path(root)
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be train, validation or test, got {split!r}")
    labels_path = _find(root, "stage_2_train_labels.csv")
    if labels_path is None:
        raise FileNotFoundError(f"{root}: no stage_2_train_labels.csv (.zip/.gz, or kaggle_ prefixed) found")
    img_root = Path(images) if images is not None else root / "stage_2_train_images"
    skips = Skips(SOURCE)
    headers: dict[str, dict[str, str]] = {}
    header_path = _find(root, "stage_2_train_images_dicom_headers.csv")
    if header_path is not None:
        headers = {row["PatientID"]: row for _, row in read_table(header_path, ("PatientID",))}
    classes: dict[str, str] = {}
    class_path = _find(root, "stage_2_detailed_class_info.csv")
    if class_path is not None:
        for rowno, row in read_table(class_path, ("patientId", "class")):
            if row["class"] not in _CLASSES:
                raise SourceError(class_path, f"class {row['class']!r} is not one of {sorted(_CLASSES)}", rowno,
                                  "class")
            classes[row["patientId"]] = row["class"]
    rows: dict[str, list[tuple[int, int, tuple | None]]] = {}
    for rowno, row in progress(read_table(labels_path, ("patientId", "x", "y", "width", "height", "Target")),
                               labels_path.name, show_progress, unit="row"):
        pid = row["patientId"]
        if not pid:
            raise SourceError(labels_path, "empty patientId", rowno, "patientId")
        if row["Target"] not in ("0", "1"):
            raise SourceError(labels_path, f"Target {row['Target']!r} is not 0 or 1", rowno, "Target")
        target = int(row["Target"])
        cells = [row[c] for c in ("x", "y", "width", "height")]
        if target == 1:
            x, y, w, h = (parse_number(v, labels_path, rowno, c) for v, c in zip(cells, ("x", "y", "width", "height")))
            box = (x, y, x + w, y + h)
        elif any(cells):
            raise SourceError(labels_path, "Target 0 with box coordinates", rowno, "Target")
        else:
            box = None
        rows.setdefault(pid, []).append((rowno, target, box))
    records = []
    for pid, items in rows.items():
        targets = {t for _, t, _ in items}
        if len(targets) > 1:
            raise SourceError(labels_path, f"patientId {pid} has rows with Target 0 and 1", items[-1][0], "Target")
        dcm = img_root / f"{pid}.dcm"
        if check_images and not dcm.is_file():
            skips.add("image file missing", str(dcm))
            continue
        head = headers.get(pid, {})
        rec = empty_record(f"rsna-{pid}", split, SOURCE, "chest")
        rec["images"] = [{"path": relative_path(dcm, out_dir), "view": normalise_view(head.get("ViewPosition", "")),
                          "role": "current"}]
        if head:
            sex = head.get("PatientSex", "").upper()
            rec["sex"] = sex if sex in ("M", "F") else ""
            age = parse_age(head.get("PatientAge", ""))
            if age is not None and not 0 <= age < 130:
                skips.add("age out of range (kept as unknown)", f"{pid}: {head.get('PatientAge')!r}")
                age = None
            rec["age"] = age
        target = targets.pop()
        rec["labels"]["Pneumonia"] = rec["labels"]["Lung Opacity"] = target
        cls = classes.get(pid)
        if target == 0 and cls is not None:
            rec["labels"]["No Finding"] = 1 if cls == "Normal" else 0
        boxes = [b for _, _, b in items if b is not None]
        if boxes:
            size = None
            if head.get("Columns") and head.get("Rows"):
                size = (parse_number(head["Columns"], header_path, None, "Columns"),
                        parse_number(head["Rows"], header_path, None, "Rows"))
            elif dcm.is_file():
                size = _file_size(dcm)
            elif image_size is not None:
                size = (float(image_size), float(image_size))
            if size is None:
                skips.add("image size unknown (no Rows/Columns, no DICOM, image_size=None)", pid)
                continue
            for rowno, _, b in items:
                if b is None:
                    continue
                try:
                    x0, y0, x1, y1 = normalise_box(*b, *size)
                except ValueError as e:
                    skips.add("box outside the image or empty", f"{labels_path.name} row {rowno}: {e}")
                    continue
                rec["boxes"].append({"phrase": "pneumonia", "label": "Pneumonia", "image_index": 0,
                                     "x0": x0, "y0": y0, "x1": x1, "y1": y1})
        records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare rsna-pneumonia``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT/stage_2_train_images)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            image_size: int | None = 1024, split: str = "train", check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert the RSNA pneumonia labels under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, images=images, image_size=image_size, split=split,
                                   check_images=check_images, show_progress=show_progress)
    log.info("%s: %d images, %d boxes (skipped: %s)", SOURCE, len(records),
             sum(len(r["boxes"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
