"""The Figure1 and Actualmed COVID-19 chest X-ray sets (metadata with clinical notes) → canonical records.

Layout: ``root`` is one set (``metadata.csv`` + ``images/``) or a folder holding several (e.g.
``figure1/`` and ``actualmed/``, each with its own ``metadata.csv`` and ``images/``). ``metadata.csv`` columns
(the COVID-Net repositories' format): ``patientid, offset, sex, age, finding, survival, temperature,
pO2 saturation, view, modality, [imagename,] artifacts/distortion, notes``. Figure1's file is **latin-1**
(not UTF-8): each table is read as UTF-8 and, failing that, as latin-1 (logged).

- image: ``imagename`` (Actualmed) or ``<patientid>.<png|jpg|jpeg>`` (Figure1, whose ``patientid`` is per
  image: ``COVID-00003a`` / ``COVID-00003b`` are two images of patient ``COVID-00003``) under ``images/``;
  rows whose image is absent are skipped (counted);
- ``notes`` → the record's ``indication`` (the clinical context the image was taken for), whitespace
  collapsed; ``N/A`` → empty; acquisition dates (``date taken (YYYYMMDD): 20200313``) are removed;
- ``finding``: ``COVID-19`` → ``source_labels["covid:COVID-19"] = 1``; ``Pneumonia`` →
  ``covid:Pneumonia`` 1 and CheXpert ``Pneumonia`` 1; ``No finding`` → ``covid:No finding`` 1 and CheXpert
  ``No Finding`` 1; the other two ``covid:*`` keys of a row with a finding are 0; blank → no labels;
- ``view``: ``PA`` / ``AP`` / ``AP erect`` / ``AP supine`` → the record's views; ``sex`` M / F; ``age``
  when a plain number (``50+``, ``early 40s`` → unknown, counted);
- ``study_id`` ``covid-<set>-<image stem>`` (Actualmed's stems are DICOM UIDs: a 16-hex SHA-256 digest
  instead); split from SHA-256 buckets of ``<set>:<patient>`` (80 / 10 / 10), so a patient's images share a
  split. Anatomy ``chest``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
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
    normalise_view,
    parse_age,
    records_path,
    relative_path,
)

__all__ = ["FINDINGS", "add_arguments", "build_records", "convert", "read_metadata"]

log = logging.getLogger(__name__)

SOURCE = "covid-notes"
FINDINGS = {"COVID-19": None, "Pneumonia": "Pneumonia", "No finding": "No Finding"}
_DATE = re.compile(r",?\s*date taken \(YYYYMMDD\):\s*\d{6,8}", re.I)
_SEX = {"M": "M", "F": "F", "MALE": "M", "FEMALE": "F"}


def read_metadata(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``[(row number, row)]`` of a ``metadata.csv``, read as UTF-8 or else latin-1."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.info("%s is not UTF-8: read as latin-1", path)
        text = raw.decode("latin-1")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in ("patientid", "finding", "notes") if c not in header]
    if missing:
        raise SourceError(path, f"missing column(s) {missing}; found {header}")
    return [(i, {k: (v or "").strip() for k, v in row.items() if k is not None}) for i, row in enumerate(reader, 2)]


def clean_notes(text: str) -> str:
    """Notes as an indication: dates removed, whitespace collapsed, ``N/A`` / punctuation-only → ``""``."""
    text = " ".join(_DATE.sub("", text).split()).strip(" ,;")
    return "" if text.upper() in ("N/A", "NA", "NONE", "") else text


def _view(value: str) -> str:
    v = normalise_view(value)
    if not v and value.strip():
        v = normalise_view(value.split()[0])
        if v == "AP" and "supine" in value.lower():
            v = "AP_SUPINE"
    return v


def _sets(root: Path) -> list[Path]:
    if (root / "metadata.csv").is_file():
        return [root]
    found = sorted(d for d in root.iterdir() if d.is_dir() and (d / "metadata.csv").is_file())
    if not found:
        raise FileNotFoundError(f"{root}: no metadata.csv here nor in a sub-folder")
    return found


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """``(records, skips)`` of the set(s) under ``root`` (see the module docstring)."""
    root, out_dir = Path(root), Path(out_dir)
    skips = Skips(SOURCE)
    records: list[dict] = []
    seen: dict[str, str] = {}
    for folder in _sets(root):
        name = re.sub(r"[^a-z0-9]+", "", folder.name.lower().replace("-covid-chestxray-dataset", "")) or "set"
        table = folder / "metadata.csv"
        img_dir = folder / "images"
        files = {p.name: p for p in img_dir.iterdir() if p.is_file()} if img_dir.is_dir() else {}
        stems = {p.stem: p for p in files.values()}
        for rowno, row in read_metadata(table):
            pid = row["patientid"]
            if not pid:
                raise SourceError(table, "empty patientid", rowno, "patientid")
            image_name = row.get("imagename", "")
            src = files.get(image_name) if image_name else stems.get(pid)
            if image_name and src is None:
                src = stems.get(Path(image_name).stem)  # a staged copy re-saved as another format
            if src is None:
                if check_images:
                    skips.add("image file missing", f"{folder.name}: {image_name or pid}")
                    continue
                src = img_dir / (image_name or f"{pid}.png")
            stem = src.stem
            key = hashlib.sha256(stem.encode()).hexdigest()[:16] if (len(stem) > 40 or "." in stem) else stem
            sid = f"covid-{name}-{key}"
            if sid in seen:
                raise SourceError(table, f"image {src.name!r} also on {seen[sid]}", rowno,
                                  "imagename" if image_name else "patientid")
            seen[sid] = f"{table.name} row {rowno}"
            patient = re.sub(r"[a-z]$", "", pid) if not image_name else pid
            rec = empty_record(sid, hash_split(f"{name}:{patient}"), SOURCE, "chest")
            rec["images"] = [{"path": relative_path(src, out_dir), "view": _view(row.get("view", "")), "role": "current"}]
            rec["indication"] = clean_notes(row["notes"])
            finding = row["finding"]
            if finding:
                match = next((f for f in FINDINGS if f.lower() == finding.lower()), None)
                if match is None:
                    raise SourceError(table, f"finding {finding!r} is not one of {list(FINDINGS)}", rowno, "finding")
                for f, chexpert in FINDINGS.items():
                    rec["source_labels"][f"covid:{f}"] = int(f == match)
                if FINDINGS[match]:
                    rec["labels"][FINDINGS[match]] = 1
            sex = row.get("sex", "").upper()
            if sex and sex not in _SEX:
                raise SourceError(table, f"sex {row['sex']!r} is not M / F", rowno, "sex")
            rec["sex"] = _SEX.get(sex, "")
            if row.get("age"):
                age = parse_age(row["age"])
                if age is None or not 0 <= age < 130:
                    skips.note("age not a plain number (kept unknown)", f"{table.name} row {rowno}: {row['age']!r}")
                else:
                    rec["age"] = age
            records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare covid-notes``'s options (keyword arguments of `convert`)."""
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert the COVID-19 set(s) under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, check_images=check_images, show_progress=show_progress)
    log.info("%s: %d images, %d with notes (skipped: %s)", SOURCE, len(records),
             sum(bool(r["indication"]) for r in records), skips.summary())
    return write_records(records, path, roots=[root])
