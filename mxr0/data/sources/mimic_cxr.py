"""MIMIC-CXR-JPG (with the MIMIC-CXR free-text reports) → canonical records.

Layout under ``root`` (the ``mimic-cxr-jpg/2.0.0`` folder; tables plain or ``.gz``):

- ``files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``;
- ``mimic-cxr-2.0.0-split.csv``: ``dicom_id,study_id,subject_id,split`` (``train`` / ``validate`` /
  ``test``; ``validate`` → ``validation``);
- ``mimic-cxr-2.0.0-metadata.csv``: ``dicom_id,subject_id,study_id,...,ViewPosition,...``; the view
  comes from ``ViewPosition`` (``PA``, ``AP``, ``LATERAL``, ``LL``, ``LAO`` …, see
  :func:`mxr0.data.sources.normalise_view`), falling back to ``ViewCodeSequence_CodeMeaning``
  (``postero-anterior``, ``left lateral`` …); anything else is ``""``;
- ``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv`` (``labeler``): ``subject_id,study_id`` and the 14
  observations, matched by column name; a study without a label row gets all ``None``;
- reports ``mimic-cxr-reports/files/p1X/pXXXXXXXX/sYYYYYYYY.txt`` (``reports`` to place them
  elsewhere), split into sections by :func:`mxr0.data.sources.sections.split_sections`. A study
  without a report keeps empty sections (counted, logged).

One study (``study_id`` ``s<study_id>``) is one record with all its images (role ``current``,
frontal views first). Images are referenced in place; with ``check_images`` a missing JPG is
skipped (counted), and a study left without images is skipped. MIMIC-CXR-JPG has no sex or age.

Prior studies (``priors``, default on): each study is linked to the same subject's previous study, ordered
by the metadata's ``StudyDate`` (``YYYYMMDD``, shifted) and ``StudyTime`` (``HHMMSS.fff``, leading zeros may
be dropped); a study whose images disagree takes its earliest time. The prior is the kept study (one with
a record) with the latest time before the study's own; when two studies share that time the link is
ambiguous and not made (counted, as are studies without a date). The record gets ``prior_study_id``
(``s<id>``), the prior's first frontal image (role ``prior``) and its report in ``prior_findings`` /
``prior_impression``. A date or time that is not a number is an error naming the file, row and field;
a metadata table without the two columns links nothing (logged).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    find_table,
    frontal_first,
    normalise_view,
    parse_labels,
    progress,
    read_table,
    records_path,
    relative_path,
)
from mxr0.data.sources.sections import split_sections

__all__ = ["add_arguments", "build_records", "convert", "image_path", "link_priors", "report_path"]

log = logging.getLogger(__name__)

SOURCE = "mimic-cxr"
_SPLITS = {"train": "train", "validate": "validation", "test": "test"}


@dataclass
class _Study:
    subject_id: str
    split: str
    dicoms: list[tuple[str, str]] = field(default_factory=list)  # (dicom_id, view)


def _folder(subject_id: str, study_id: str) -> Path:
    return Path(f"p{subject_id[:2]}") / f"p{subject_id}" / f"s{study_id}"


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """``root/files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``."""
    return root / "files" / _folder(subject_id, study_id) / f"{dicom_id}.jpg"


def report_path(reports: Path, subject_id: str, study_id: str) -> Path:
    """``reports/files/p1X/pXXXXXXXX/sYYYYYYYY.txt``."""
    return (reports / "files" / _folder(subject_id, study_id)).with_suffix(".txt")


def _load_views(path: Path) -> dict[str, str]:
    views: dict[str, str] = {}
    for _, row in read_table(path, ("dicom_id", "ViewPosition")):
        view = normalise_view(row["ViewPosition"])
        if not view and not row["ViewPosition"]:
            view = normalise_view(row.get("ViewCodeSequence_CodeMeaning", ""))
        views[row["dicom_id"]] = view
    return views


def _load_studies(split_csv: Path, views: dict[str, str]) -> dict[str, _Study]:
    studies: dict[str, _Study] = {}
    for rowno, row in read_table(split_csv, ("dicom_id", "study_id", "subject_id", "split")):
        for col in ("dicom_id", "study_id", "subject_id"):
            if not row[col] or (col != "dicom_id" and not row[col].isdigit()):
                raise SourceError(split_csv, f"bad {col} {row[col]!r}", rowno, col)
        split = _SPLITS.get(row["split"])
        if split is None:
            raise SourceError(split_csv, f"split {row['split']!r} is not one of {sorted(_SPLITS)}", rowno, "split")
        st = studies.setdefault(row["study_id"], _Study(row["subject_id"], split))
        if st.split != split or st.subject_id != row["subject_id"]:
            raise SourceError(split_csv, f"study {row['study_id']} has images with different splits or subjects",
                              rowno, "split")
        st.dicoms.append((row["dicom_id"], views.get(row["dicom_id"], "")))
    return studies


def _load_times(path: Path) -> dict[str, tuple[int, float]] | None:
    """``study_id`` → (StudyDate, StudyTime), the earliest over its images; None when the columns are absent."""
    times: dict[str, tuple[int, float]] = {}
    rows = read_table(path, ("study_id",))
    for rowno, row in rows:
        if "StudyDate" not in row or "StudyTime" not in row:
            log.info("%s has no StudyDate / StudyTime columns: studies are not linked to their priors", path)
            return None
        if not row["StudyDate"] or not row["StudyTime"]:
            continue  # counted as undated where linking happens
        try:
            date = int(float(row["StudyDate"]))
        except ValueError:
            raise SourceError(path, f"StudyDate {row['StudyDate']!r} is not a YYYYMMDD number", rowno, "StudyDate") from None
        try:
            when = float(row["StudyTime"])
        except ValueError:
            raise SourceError(path, f"StudyTime {row['StudyTime']!r} is not an HHMMSS number", rowno, "StudyTime") from None
        key = (date, when)
        old = times.get(row["study_id"])
        times[row["study_id"]] = key if old is None else min(old, key)
    return times


_FRONTAL = ("PA", "AP", "AP_SUPINE")


def link_priors(records: list[dict], subjects: dict[str, str], times: dict[str, tuple[int, float]],
                skips: Skips) -> int:
    """Give each record (``study_id`` ``s<id>``) its subject's previous record by (StudyDate, StudyTime):
    ``prior_study_id``, the prior's first frontal image (role ``prior``) and its report sections. ``subjects``
    maps the bare study id to its subject. Returns the number of links; undated and tied studies are counted
    in ``skips``."""
    by_subject: dict[str, list[tuple[tuple[int, float], dict]]] = {}
    for rec in records:
        sid = rec["study_id"][1:]
        if sid not in times:
            skips.add("study without StudyDate / StudyTime (not linked to a prior)", rec["study_id"])
            continue
        by_subject.setdefault(subjects[sid], []).append((times[sid], rec))
    n = 0
    for studies in by_subject.values():
        studies.sort(key=lambda t: (t[0], t[1]["study_id"]))
        for i, (key, rec) in enumerate(studies):
            earlier = [(k, r) for k, r in studies[:i] if k < key]
            if not earlier:
                continue
            latest = earlier[-1][0]
            cands = [r for k, r in earlier if k == latest]
            if len(cands) > 1:
                skips.add("prior ambiguous: two studies at the same StudyDate / StudyTime (not linked)",
                          f"{rec['study_id']}: {', '.join(r['study_id'] for r in cands)}")
                continue
            prior = cands[0]
            rec["prior_study_id"] = prior["study_id"]
            rec["prior_findings"], rec["prior_impression"] = prior["findings"], prior["impression"]
            front = next((im for im in prior["images"] if im.get("role", "current") == "current"
                          and im["view"] in _FRONTAL), None)
            if front is not None:
                rec["images"] = rec["images"] + [{"path": front["path"], "view": front["view"], "role": "prior"}]
            n += 1
    return n


def _load_labels(path: Path) -> dict[str, dict]:
    return {row["study_id"]: parse_labels(row, path, rowno)
            for rowno, row in read_table(path, ("subject_id", "study_id"))}


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, reports: str | os.PathLike | None = None,
                  labeler: str | None = "chexpert", check_images: bool = True,
                  show_progress: bool = False, priors: bool = True) -> tuple[list[dict], Skips]:
    """Canonical records of every MIMIC-CXR-JPG study under ``root`` (see the module docstring).

    ``labeler`` is ``"chexpert"``, ``"negbio"`` or ``None`` (all labels ``None``); ``priors`` links each
    study to its subject's previous one (`link_priors`).
    """
    root = Path(root)
    if labeler not in ("chexpert", "negbio", None):
        raise ValueError(f"labeler must be 'chexpert', 'negbio' or None, got {labeler!r}")
    reports_dir = Path(reports) if reports is not None else (
        root / "mimic-cxr-reports" if (root / "mimic-cxr-reports").is_dir() else root)
    meta = find_table(root, "mimic-cxr-2.0.0-metadata.csv")
    views = _load_views(meta)
    times = _load_times(meta) if priors else None
    studies = _load_studies(find_table(root, "mimic-cxr-2.0.0-split.csv"), views)
    labels = _load_labels(find_table(root, f"mimic-cxr-2.0.0-{labeler}.csv")) if labeler else {}
    skips = Skips(SOURCE)
    records: list[dict] = []
    for study_id, st in progress(sorted(studies.items()), "mimic-cxr", show_progress, len(studies)):
        rec = empty_record(f"s{study_id}", st.split, SOURCE, "chest")
        images = []
        for dicom_id, view in sorted(st.dicoms):
            path = image_path(root, st.subject_id, study_id, dicom_id)
            if check_images and not path.is_file():
                skips.add("image file missing", str(path))
                continue
            images.append({"path": relative_path(path, out_dir), "view": view, "role": "current"})
        if not images:
            skips.add("study without any image file", f"s{study_id}")
            continue
        rec["images"] = frontal_first(images)
        rpath = report_path(reports_dir, st.subject_id, study_id)
        if rpath.is_file():
            rec.update(split_sections(rpath.read_text(encoding="utf-8", errors="replace")))
        else:
            skips.add("report missing (record kept, sections empty)", str(rpath))
        if study_id in labels:
            rec["labels"] = labels[study_id]
        records.append(rec)
    if times is not None:
        n = link_priors(records, {k: st.subject_id for k, st in studies.items()}, times, skips)
        log.info("%s: %d of %d studies linked to their prior study", SOURCE, n, len(records))
    return records, skips


def _labeler(value: str) -> str | None:
    """``--labeler``: ``chexpert`` or ``negbio`` (the label table read), ``none`` → None (no labels)."""
    if value not in ("chexpert", "negbio", "none"):
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from chexpert, negbio, none)")
    return None if value == "none" else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare mimic-cxr``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--reports", help="the mimic-cxr-reports folder (default ROOT/mimic-cxr-reports)")
    parser.add_argument("--labeler", type=_labeler, default="chexpert", metavar="{chexpert,negbio,none}",
                        help="which label table to read (none: no labels)")
    parser.add_argument("--no-priors", dest="priors", action="store_false",
                        help="do not link studies to the same subject's previous study (StudyDate / StudyTime)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, reports: str | os.PathLike | None = None,
            labeler: str | None = "chexpert", check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True, priors: bool = True) -> Path:
    """Convert MIMIC-CXR-JPG under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, reports=reports, labeler=labeler,
                                   check_images=check_images, show_progress=show_progress, priors=priors)
    log.info("%s: %d studies (skipped: %s)", SOURCE, len(records), skips.summary())
    return write_records(records, path, roots=[root])
