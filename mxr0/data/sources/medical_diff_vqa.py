"""Medical-Diff-VQA (PhysioNet ``medical-diff-vqa`` 1.0.0, built on MIMIC-CXR-JPG) → canonical records.

Layout:

- under ``root``: ``mimic_pair_questions.csv`` with columns ``study_id, subject_id, ref_id,
  question_type, question, answer, split``; ``question_type`` is ``abnormality``, ``presence``,
  ``view``, ``location``, ``level``, ``type`` or ``difference``; ``split`` ``train`` / ``val`` / ``test``
  (→ ``train`` / ``validation`` / ``test``). ``ref_id`` is the reference (earlier or later) study of the
  same patient that ``difference`` questions compare with ("what has changed compared to the
  reference image?"). Optionally ``mimic_all.csv`` (``subject_id, study_id, <14 labels>, dicom_id,
  view, split, study_date, study_order``): the one image per study that the dataset was built on.
- under ``images`` (default ``root``): the MIMIC-CXR-JPG folder, ``files/p1X/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``
  and, when ``mimic_all.csv`` is absent, ``mimic-cxr-2.0.0-metadata.csv(.gz)`` to pick each study's
  image: its first PA image, else AP / AP supine (by ``dicom_id``); a study without a frontal image is
  skipped (counted).

Rules:

- One record per (study, reference study): ``study_id`` ``mdvqa-s<study_id>-s<ref_id>``, images
  ``[main image (role current), reference image (role prior)]``, all the pair's questions in ``qa``.
  The reference image is there for the ``difference`` questions; the other question types are about
  the main image.
- QA: ``yes`` / ``no`` answers (the ``presence`` questions) are ``closed`` with options ``["yes", "no"]``,
  every other answer ``open``; ``question_type`` as given.
- With ``check_images`` a missing main image skips the record; a missing reference image drops the
  record's ``difference`` questions and the prior image (both counted). No labels, sex or age
  (``mimic_all.csv``'s labels are marked "for reference only" by its authors).
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
    closed_answer,
    find_table,
    normalise_view,
    progress,
    read_table,
    records_path,
    relative_path,
)
from mxr0.data.sources.mimic_cxr import image_path

__all__ = ["QUESTION_TYPES", "add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "medical-diff-vqa"
QUESTION_TYPES = ("abnormality", "presence", "view", "location", "level", "type", "difference")
_SPLITS = {"train": "train", "val": "validation", "validate": "validation", "test": "test"}
_COLUMNS = ("study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split")
_FRONTAL_RANK = {"PA": 0, "AP": 1, "AP_SUPINE": 2}


def _study_images(root: Path, images: Path) -> dict[str, tuple[str, str, str]]:
    """``{study_id: (subject_id, dicom_id, view)}`` from ``mimic_all.csv`` or the MIMIC metadata."""
    table = find_table(root, "mimic_all.csv", required=False)
    out: dict[str, tuple[str, str, str]] = {}
    if table is not None:
        for rowno, row in read_table(table, ("subject_id", "study_id", "dicom_id")):
            if not row["study_id"].isdigit() or not row["subject_id"].isdigit():
                raise SourceError(table, "study_id and subject_id must be numbers", rowno, "study_id")
            out[row["study_id"]] = (row["subject_id"], row["dicom_id"], normalise_view(row.get("view", "")))
        return out
    meta = find_table(images, "mimic-cxr-2.0.0-metadata.csv", required=False)
    if meta is None:
        raise FileNotFoundError(f"{root}: no mimic_all.csv, and no mimic-cxr-2.0.0-metadata.csv(.gz) under {images}: "
                                "give one to map each study to its image")
    best: dict[str, tuple[int, str, str, str]] = {}
    for _, row in read_table(meta, ("dicom_id", "subject_id", "study_id", "ViewPosition")):
        view = normalise_view(row["ViewPosition"])
        if view not in _FRONTAL_RANK:
            continue
        cand = (_FRONTAL_RANK[view], row["dicom_id"], row["subject_id"], view)
        if row["study_id"] not in best or cand < best[row["study_id"]]:
            best[row["study_id"]] = cand
    return {st: (su, d, v) for st, (_, d, su, v) in best.items()}


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  check_images: bool = True, show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of Medical-Diff-VQA under ``root`` (see the module docstring)."""
    root = Path(root)
    img_root = Path(images) if images is not None else root
    qtable = find_table(root, "mimic_pair_questions.csv")
    study_images = _study_images(root, img_root)
    skips = Skips(SOURCE)
    pairs: dict[tuple[str, str], dict] = {}
    for rowno, row in progress(read_table(qtable, _COLUMNS), "medical-diff-vqa", show_progress, unit="question"):
        for col in ("study_id", "subject_id", "ref_id"):
            if not row[col].isdigit():
                raise SourceError(qtable, f"{col} {row[col]!r} is not a MIMIC-CXR id", rowno, col)
        split = _SPLITS.get(row["split"].lower())
        if split is None:
            raise SourceError(qtable, f"split {row['split']!r} is not train, val or test", rowno, "split")
        qtype = row["question_type"].lower()
        if qtype not in QUESTION_TYPES:
            raise SourceError(qtable, f"question_type {row['question_type']!r} is not one of {list(QUESTION_TYPES)}",
                              rowno, "question_type")
        if not row["question"] or not row["answer"]:
            field = "question" if not row["question"] else "answer"
            raise SourceError(qtable, f"empty {field}", rowno, field)
        key = (row["study_id"], row["ref_id"])
        rec = pairs.get(key)
        if rec is None:
            rec = pairs[key] = empty_record(f"mdvqa-s{key[0]}-s{key[1]}", split, SOURCE, "chest")
        elif rec["split"] != split:
            raise SourceError(qtable, f"study pair {key} is also in the {rec['split']} split", rowno, "split")
        answer, options = closed_answer(row["answer"])
        rec["qa"].append({"question": row["question"], "answer": answer,
                          "answer_type": "closed" if options else "open", "question_type": qtype,
                          "options": options})
    records = []
    for (study, ref), rec in pairs.items():
        main = study_images.get(study)
        if main is None:
            skips.add("main study has no frontal image in the image table", f"s{study}")
            continue
        main_path = image_path(img_root, main[0], study, main[1])
        if check_images and not main_path.is_file():
            skips.add("image file missing", str(main_path))
            continue
        rec["images"] = [{"path": relative_path(main_path, out_dir), "view": main[2], "role": "current"}]
        prior = study_images.get(ref)
        prior_path = image_path(img_root, prior[0], ref, prior[1]) if prior else None
        if prior_path is None or (check_images and not prior_path.is_file()):
            n_diff = sum(q["question_type"] == "difference" for q in rec["qa"])
            skips.add("reference image missing: difference question dropped", str(prior_path or f"s{ref}"), n=n_diff)
            rec["qa"] = [q for q in rec["qa"] if q["question_type"] != "difference"]
            if not rec["qa"]:
                skips.add("study pair left without questions", rec["study_id"])
                continue
        else:
            rec["images"].append({"path": relative_path(prior_path, out_dir), "view": prior[2], "role": "prior"})
            rec["prior_study_id"] = f"s{ref}"  # the reference study, under the MIMIC-CXR converter's id
        records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare medical-diff-vqa``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the MIMIC-CXR-JPG folder (default ROOT)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            check_images: bool = True, fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert Medical-Diff-VQA under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, images=images, check_images=check_images,
                                   show_progress=show_progress)
    log.info("%s: %d study pairs, %d questions (skipped: %s)", SOURCE, len(records),
             sum(len(r["qa"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
