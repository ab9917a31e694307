"""CheXpert (``CheXpert-v1.0`` or ``CheXpert-v1.0-small``) → canonical records.

``root`` is the dataset folder holding ``train.csv`` and ``valid.csv`` (columns ``Path, Sex, Age,
Frontal/Lateral, AP/PA`` and the 14 observations, ``1.0`` / ``0.0`` / ``-1.0`` / blank, matched by
name). ``Path`` starts with the dataset folder's name (``CheXpert-v1.0-small/train/patient00001/
study1/view1_frontal.jpg``), so it is resolved against ``root``'s parent, or against ``root`` when
the path is relative to it.

- Studies are the ``patientNNNNN/studyN`` folders; ``study_id`` is ``<split folder>/patient/study``
  (``train/patient00001/study1``). CheXpert labels are given per study (repeated on each image row);
  the first row's labels are kept and disagreeing rows are counted.
- ``train.csv`` → ``train``, ``valid.csv`` → ``validation``. The CSVs have no official test split
  (the 500-study test set was released later with CheXlocalize): a ``test.csv`` next to them, in the
  same format (Sex/Age/view columns optional), becomes ``test`` when present.
- ``Sex`` Male/Female → ``M``/``F`` (Unknown → ``""``); ``Age`` in years; the view is ``LATERAL``
  for Lateral rows (or ``LL``/``RL`` from ``AP/PA``), else the ``AP/PA`` column (``AP``, ``PA``),
  blank → ``""``.
- With ``check_images`` a missing JPG is skipped (counted) and a study left without images is skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path, PurePosixPath

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    frontal_first,
    normalise_view,
    parse_labels,
    progress,
    read_table,
    records_path,
    relative_path,
)

__all__ = ["add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "chexpert"
CSV_SPLITS = (("train.csv", "train"), ("valid.csv", "validation"), ("test.csv", "test"))
_SEX = {"male": "M", "female": "F", "unknown": "", "": ""}


def _resolve(root: Path, rel: str) -> Path:
    """The image file of a ``Path`` cell (see the module docstring)."""
    parts = PurePosixPath(rel).parts
    if parts and parts[0] == root.name:
        return root.parent.joinpath(*parts)
    return root.joinpath(*parts)


def _view(row: dict[str, str], path: Path, rowno: int) -> str:
    fl, appa = row.get("Frontal/Lateral", "").lower(), row.get("AP/PA", "")
    if fl == "lateral":
        return normalise_view(appa) if normalise_view(appa) in ("LL", "RL") else "LATERAL"
    if fl not in ("frontal", ""):
        raise SourceError(path, f"{row['Frontal/Lateral']!r} is not Frontal or Lateral", rowno, "Frontal/Lateral")
    return normalise_view(appa)


def _age(row: dict[str, str], path: Path, rowno: int) -> float | None:
    raw = row.get("Age", "")
    if not raw:
        return None
    try:
        age = float(raw)
    except ValueError:
        raise SourceError(path, f"age {raw!r} is not a number", rowno, "Age") from None
    if not 0 <= age < 130:
        raise SourceError(path, f"age {raw!r} is outside [0, 130)", rowno, "Age")
    return age


def _study_key(rel: str, path: Path, rowno: int) -> str:
    parts = PurePosixPath(rel).parts
    idx = next((i for i, p in enumerate(parts) if p.startswith("patient")), None)
    if idx is None or idx + 2 >= len(parts) or idx == 0:
        raise SourceError(path, f"path {rel!r} is not <split>/patientNNNNN/studyN/<image>", rowno, "Path")
    return "/".join(parts[idx - 1: idx + 2])


def _read_csv(root: Path, csv_path: Path, split: str, out_dir: Path, check_images: bool, skips: Skips,
              studies: dict[str, dict], show_progress: bool) -> None:
    for rowno, row in progress(read_table(csv_path, ("Path",)), csv_path.name, show_progress, unit="image"):
        key = _study_key(row["Path"], csv_path, rowno)
        labels = parse_labels(row, csv_path, rowno)
        sex = row.get("Sex", "").lower()
        if sex not in _SEX:
            raise SourceError(csv_path, f"sex {row['Sex']!r} is not Male, Female or Unknown", rowno, "Sex")
        image = _resolve(root, row["Path"])
        view = _view(row, csv_path, rowno)
        rec = studies.get(key)
        if rec is None:
            rec = studies[key] = empty_record(key, split, SOURCE, "chest")
            rec.update(labels=labels, sex=_SEX[sex], age=_age(row, csv_path, rowno))
        elif rec["split"] != split:
            raise SourceError(csv_path, f"study {key} also appears in the {rec['split']} CSV", rowno, "Path")
        elif rec["labels"] != labels:
            skips.add("image row with labels differing from its study's first row (first kept)", row["Path"])
        if check_images and not image.is_file():
            skips.add("image file missing", str(image))
            continue
        rec["images"].append({"path": relative_path(image, out_dir), "view": view, "role": "current"})


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of every CheXpert study listed in the CSVs under ``root``."""
    root = Path(root)
    if not (root / "train.csv").is_file() and not (root / "valid.csv").is_file():
        raise FileNotFoundError(f"{root}: no train.csv or valid.csv (give the CheXpert-v1.0[-small] folder)")
    skips = Skips(SOURCE)
    studies: dict[str, dict] = {}
    for name, split in CSV_SPLITS:
        if (root / name).is_file():
            _read_csv(root, root / name, split, Path(out_dir), check_images, skips, studies, show_progress)
    records = []
    for rec in studies.values():
        if not rec["images"]:
            skips.add("study without any image file", rec["study_id"])
            continue
        rec["images"] = frontal_first(rec["images"])
        records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare chexpert``'s options (keyword arguments of `convert`)."""
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert CheXpert under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, check_images=check_images, show_progress=show_progress)
    log.info("%s: %d studies (skipped: %s)", SOURCE, len(records), skips.summary())
    return write_records(records, path, roots=[root])
