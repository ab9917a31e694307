"""ReXVQA (``rajpurkarlab/ReXVQA`` on the Hugging Face Hub) → canonical records.

ReXVQA asks ~696k four-choice questions about the chest X-rays of ReXGradient-160K
(``rajpurkarlab/ReXGradient-160K``; not MIMIC-CXR). Layout under ``root``:

- ``metadata/train_vqa_data.json``, ``metadata/valid_vqa_data.json``, ``metadata/test_vqa_data.json``
  (also accepted directly in ``root``); ``valid_mini_vqa_data.json`` (a subset of ``valid``) is not
  read. Each is a JSON object ``{question id: question}`` (a list of questions with an ``id`` is also
  accepted); ``train`` → ``train``, ``valid`` → ``validation``, ``test`` → ``test``.
- ``deid_png/<PatientID>/<AccessionNumber>/studies/<StudyUID>/series/<SeriesUID>/instances/<SOPUID>.png``:
  the ReXGradient-160K images (``images``: the folder holding ``deid_png/``; default ``root``).

Field names of a question, as read by public code that loads these files (a ``ReXVQABenchmark``
class in benchmark repositories and a ReXVQA project README found with the code search; the Hub
dataset card itself was not reachable from here): ``question``; ``options`` (list of four strings
``"A. …"``); ``correct_answer`` (the letter); ``correct_answer_explanation``; ``task_name`` (the
reasoning skill, e.g. presence assessment, location analysis, negation detection, differential
diagnosis, geometric reasoning); ``category``, ``class``, ``subcategory``; ``study_id``;
``StudyInstanceUid``; ``PatientID``, ``PatientAge``, ``PatientSex``, ``StudyDate``; ``Indication``,
``Comparison``, ``Findings``, ``Impression``; ``ImagePath`` (list of paths relative to the metadata
folder, ``../deid_png/…png``), ``ImageModality`` and ``ImageViewPosition`` (lists parallel to
``ImagePath``).

Rules:

- One record per study (``study_id`` ``rexvqa-<study_id>``, falling back to ``StudyInstanceUid``), with
  all its questions; a study in two split files is an error. Images are the union of the questions'
  ``ImagePath`` (in order), views from ``ImageViewPosition``, frontal first.
- QA: ``answer_type`` ``closed``; ``options`` are the four option texts without their ``"A. "``
  prefixes (in order, so the letters can be rebuilt), ``answer`` the text of the ``correct_answer``
  letter; ``question_type`` the ``task_name`` lower-cased (``category`` when absent). The explanation
  has no field in the record and is dropped.
- Report sections ``indication``, ``comparison``, ``findings``, ``impression`` from the study's first
  question; ``sex`` from ``PatientSex`` (M / F), ``age`` from ``PatientAge`` (``72``, ``072Y``, ``6M``;
  out-of-range ages become unknown, counted). No labels.
- With ``check_images`` image files that do not exist are dropped (counted) and a study left without
  images is skipped; ``check_images=False`` keeps every path.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import re
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    frontal_first,
    normalise_view,
    parse_age,
    progress,
    read_json,
    records_path,
    relative_path,
)

__all__ = ["add_arguments", "build_records", "convert", "parse_options"]

log = logging.getLogger(__name__)

SOURCE = "rexvqa"
SPLIT_FILES = (("train", "train"), ("valid", "validation"), ("test", "test"))
_OPTION = re.compile(r"^\s*([A-Z])\s*[.):]\s*(.*)$", re.S)
_SECTIONS = (("Indication", "indication"), ("Comparison", "comparison"), ("Findings", "findings"),
             ("Impression", "impression"))


def parse_options(options: list, path: Path, qid: str) -> tuple[list[str], list[str]]:
    """``(letters, texts)`` of a question's options (``"A. Pleural effusion"`` → ``A``, ``Pleural effusion``);
    options without a letter prefix get A, B, C … by position."""
    if not isinstance(options, list) or not options:
        raise SourceError(path, f"question {qid}: options must be a non-empty list", field="options")
    letters, texts = [], []
    for k, opt in enumerate(options):
        m = _OPTION.match(str(opt))
        letters.append(m.group(1) if m else chr(ord("A") + k))
        texts.append((m.group(2) if m else str(opt)).strip())
    if len(set(letters)) != len(letters):
        raise SourceError(path, f"question {qid}: option letters {letters} repeat", field="options")
    return letters, texts


def _split_file(root: Path, stem: str) -> Path | None:
    for folder in (root / "metadata", root):
        if (folder / f"{stem}_vqa_data.json").is_file():
            return folder / f"{stem}_vqa_data.json"
    return None


def _items(data, path: Path) -> list[tuple[str, dict]]:
    if isinstance(data, dict):
        return [(str(k), v) for k, v in data.items()]
    if isinstance(data, list):
        return [(str(v.get("id", i)) if isinstance(v, dict) else str(i), v) for i, v in enumerate(data)]
    raise SourceError(path, f"expected a JSON object of questions, got {type(data).__name__}")


def _image_candidates(raw: str, json_dir: Path, images: Path) -> list[Path]:
    rel = posixpath.normpath(raw.replace("\\", "/"))
    while rel.startswith("../"):
        rel = rel[3:]
    rel = rel.lstrip("/")
    cands = [Path(os.path.normpath(json_dir / raw)), images / rel]
    if rel.startswith("deid_png/"):
        cands.append(images / rel[len("deid_png/"):])
    return cands


def _qa(item: dict, path: Path, qid: str) -> dict:
    for f in ("question", "options", "correct_answer"):
        if item.get(f) in (None, "", []):
            raise SourceError(path, f"question {qid}: missing {f!r}", field=f)
    letters, texts = parse_options(item["options"], path, qid)
    correct = str(item["correct_answer"]).strip()
    m = _OPTION.match(correct)
    letter = m.group(1) if m else correct.upper()
    if letter in letters:
        answer = texts[letters.index(letter)]
    elif correct in texts:
        answer = correct
    else:
        raise SourceError(path, f"question {qid}: correct_answer {item['correct_answer']!r} is none of the "
                                f"option letters {letters}", field="correct_answer")
    qtype = str(item.get("task_name") or item.get("category") or "").strip().lower()
    return {"question": str(item["question"]).strip(), "answer": answer, "answer_type": "closed",
            "question_type": qtype, "options": texts}


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  check_images: bool = True, show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of ReXVQA under ``root`` (see the module docstring)."""
    root = Path(root)
    img_root = Path(images) if images is not None else root
    files = [(split, _split_file(root, stem)) for stem, split in SPLIT_FILES]
    if not any(f for _, f in files):
        raise FileNotFoundError(f"{root}: no metadata/{{train,valid,test}}_vqa_data.json found")
    skips = Skips(SOURCE)
    studies: dict[str, dict] = {}
    seen_images: dict[str, set] = {}
    for split, path in files:
        if path is None:
            continue
        for qid, item in progress(_items(read_json(path), path), path.name, show_progress, unit="question"):
            if not isinstance(item, dict):
                raise SourceError(path, f"question {qid} is not an object")
            key = str(item.get("study_id") or item.get("StudyInstanceUid") or "").strip()
            if not key:
                raise SourceError(path, f"question {qid}: no study_id or StudyInstanceUid", field="study_id")
            qa = _qa(item, path, qid)
            sid = f"rexvqa-{key}"
            rec = studies.get(sid)
            if rec is None:
                rec = studies[sid] = empty_record(sid, split, SOURCE, "chest")
                for src, dst in _SECTIONS:
                    rec[dst] = " ".join(str(item.get(src) or "").split())
                sex = str(item.get("PatientSex") or "").strip().upper()[:1]
                rec["sex"] = sex if sex in ("M", "F") else ""
                age = parse_age(item.get("PatientAge"))
                if age is not None and not 0 <= age < 130:
                    skips.add("age out of range (kept as unknown)", f"{sid}: {item.get('PatientAge')!r}")
                    age = None
                rec["age"] = age
                seen_images[sid] = set()
            elif rec["split"] != split:
                raise SourceError(path, f"question {qid}: study {key} is also in the {rec['split']} split",
                                  field="study_id")
            rec["qa"].append(qa)
            paths = item.get("ImagePath") or []
            if isinstance(paths, str):
                paths = [paths]
            views = item.get("ImageViewPosition") or []
            for k, raw in enumerate(paths):
                if not raw or raw in seen_images[sid]:
                    continue
                seen_images[sid].add(raw)
                view = normalise_view(views[k] if isinstance(views, list) and k < len(views) else "")
                cands = _image_candidates(str(raw), path.parent, img_root)
                found = next((c for c in cands if c.is_file()), None)
                if found is None:
                    if check_images:
                        skips.add("image file missing", str(cands[1]))
                        continue
                    found = cands[1]
                rec["images"].append({"path": relative_path(found, out_dir), "view": view, "role": "current"})
    records = []
    for rec in studies.values():
        if not rec["images"] and check_images:
            skips.add("study without any image file", rec["study_id"])
            continue
        rec["images"] = frontal_first(rec["images"])
        records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare rexvqa``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            check_images: bool = True, fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert ReXVQA under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, images=images, check_images=check_images,
                                   show_progress=show_progress)
    log.info("%s: %d studies, %d questions (skipped: %s)", SOURCE, len(records),
             sum(len(r["qa"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
