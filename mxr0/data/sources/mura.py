"""MURA (musculoskeletal radiographs; body part in the path, study-level labels) → canonical records.

Layout (``root`` is ``MURA-v1.1`` or the folder holding it)::

    <split>/XR_<PART>/patient<id>/study<n>_<positive|negative>/image<k>.png

with ``<split>`` ``train`` or ``valid`` and ``PART`` one of ELBOW, FINGER, FOREARM, HAND, HUMERUS, SHOULDER,
WRIST. ``<split>_image_paths.csv`` and ``<split>_labeled_studies.csv`` (no header; ``path/to/study/,1``) are
read when present (the label table wins over the folder suffix; a disagreement is an error naming the row);
otherwise the folders are walked and the label is the folder's ``_positive`` / ``_negative`` suffix.

Mapping: body part → anatomy by :func:`mxr0.data.records.anatomy_of` (``XR_FINGER`` → ``hand``,
``XR_FOREARM`` → ``forearm``, ``XR_HUMERUS`` → ``humerus``, the others by name; an unknown part → ``other``,
counted). The study-level label → ``source_labels["mura:abnormal"]`` (1 / 0); no CheXpert label applies.
One record per study, its images in path order (view unknown). ``study_id``
``mura-<split>-<part>-patient<id>-study<n>``. Splits: MURA's ``valid`` set (its public evaluation set; the
test set is hidden) → ``test``; ``train`` patients → ``train`` or, for 10 % of patients by SHA-256 bucket,
``validation`` (a patient's studies stay together).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    hash_split,
    map_anatomy,
    open_text,
    records_path,
    relative_path,
)

__all__ = ["add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "mura"
_STUDY = re.compile(r"(?:^|/)(train|valid)/(XR_[A-Z]+)/(patient\d+)/(study\d+)_(positive|negative)/?$", re.I)
_SPLIT = {"train": None, "valid": "test"}


def _base(root: Path) -> Path:
    """The folder that holds ``train/`` and ``valid/`` (``root`` or its ``MURA-v1.1``)."""
    for cand in (root, *sorted(root.glob("MURA*"))):
        if (cand / "train").is_dir() or (cand / "valid").is_dir():
            return cand
    raise FileNotFoundError(f"{root}: no MURA train/ or valid/ folder here or in a MURA* sub-folder")


def _study_key(rel: str) -> tuple[str, str, str, str, str] | None:
    m = _STUDY.search(rel.replace("\\", "/").rstrip("/"))
    return (m.group(1).lower(), m.group(2).upper(), m.group(3), m.group(4), m.group(5).lower()) if m else None


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """``(records, skips)`` of MURA under ``root`` (see the module docstring)."""
    base, out_dir = _base(Path(root)), Path(out_dir)
    skips = Skips(SOURCE)
    labels: dict[tuple, int] = {}
    for split in ("train", "valid"):
        table = next((p for p in (base / f"{split}_labeled_studies.csv", base.parent / f"{split}_labeled_studies.csv")
                      if p.is_file()), None)
        if table is None:
            continue
        with open_text(table) as f:
            for rowno, row in enumerate(csv.reader(f), start=1):
                if not row or not row[0].strip():
                    continue
                key = _study_key(row[0].strip())
                if key is None or len(row) < 2 or row[1].strip() not in ("0", "1"):
                    raise SourceError(table, f"expected '<split>/XR_<PART>/patient<id>/study<n>_<label>/,<0|1>', got {row}",
                                      rowno)
                value = int(row[1].strip())
                if value != (key[4] == "positive"):
                    raise SourceError(table, f"label {value} contradicts the folder {key[3]}_{key[4]}", rowno, "label")
                labels[key[:4]] = value
    studies: dict[tuple, dict] = {}
    for split in ("train", "valid"):
        folder = base / split
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p.suffix.lower() not in (".png", ".jpg", ".jpeg") or p.name.startswith("._"):
                continue
            key = _study_key(p.parent.relative_to(base).as_posix())
            if key is None:
                skips.add("image outside a <split>/XR_<PART>/patient<id>/study<n>_<label>/ folder", str(p))
                continue
            split_name, part, patient, study, suffix = key
            rec = studies.get(key[:4])
            if rec is None:
                target = _SPLIT[split_name] or hash_split(patient, validation=10, test=0)
                rec = empty_record(f"mura-{split_name}-{part[3:].lower()}-{patient}-{study}", target, SOURCE,
                                   map_anatomy(part, skips, str(p.parent)))
                rec["source_labels"]["mura:abnormal"] = labels.get(key[:4], int(suffix == "positive"))
                studies[key[:4]] = rec
            rec["images"].append({"path": relative_path(p, out_dir), "view": "", "role": "current"})
    missing = set(labels) - set(studies)
    if missing:
        skips.add("labelled study without images", str(sorted(missing)[0]), n=len(missing))
    return list(studies.values()), skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare mura``'s options (keyword arguments of `convert`)."""
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert MURA under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, check_images=check_images, show_progress=show_progress)
    log.info("%s: %d studies, %d images (skipped: %s)", SOURCE, len(records), sum(len(r["images"]) for r in records),
             skips.summary())
    return write_records(records, path, roots=[root])
