"""SLAKE 1.0 (English questions) → canonical records.

Layout under ``root`` (the SLAKE release folder):

- ``train.json``, ``validate.json``, ``test.json``: each a JSON list of questions
  ``{img_id, img_name, question, answer, q_lang, location, modality, answer_type, base_type,
  content_type, triple, qid}``, e.g. ``{"img_id": 120, "img_name": "xmlab120/source.jpg", "question":
  "What modality is used to take this image?", "answer": "X-Ray", "q_lang": "en", "location": "Lung",
  "modality": "X-Ray", "answer_type": "OPEN", "content_type": "Modality", ...}``. When a split's full
  file is absent, ``<split>_en_xray.json`` (the English chest X-ray subsets some repositories ship,
  same format) is read instead. ``validate`` → ``validation``.
- ``imgs/<img_name>`` (``imgs/xmlab120/source.jpg``): the images (``images`` to place them elsewhere).

Rules:

- Only English questions (``q_lang == "en"``) are kept; SLAKE has each question in Chinese too.
  ``xray_only=True`` keeps only ``modality == "X-Ray"`` images (SLAKE also has CT and MRI; the record
  has no modality field, so mixing them into an X-ray model is the caller's choice).
- One record per image: ``study_id`` ``slake-<img_id>``, its questions in ``qa`` in file order. An
  image whose questions appear in two split files is an error (SLAKE splits by image).
- ``answer_type`` ``CLOSED`` → ``closed``, ``OPEN`` → ``open``; a closed yes/no answer becomes
  ``yes`` / ``no`` with options ``["yes", "no"]``, other closed answers ("Left", "Lung") keep their
  text with no options. ``question_type`` is ``content_type`` lower-cased (``abnormality``,
  ``organ``, ``position``, ``kg``, ``modality``, ``size``, ``plane``, ``quantity``, ``color``, ``shape``).
- ``anatomy`` from ``location``: Lung / Chest_* → ``chest``, Abdomen → ``abdomen``, Pelvic Cavity →
  ``pelvis``, anything else (Brain*, Neck) → ``other``. The view is unknown (``""``); no labels, sex
  or age.
- A question with an empty answer (train.json has one) is skipped (counted); a question missing a
  field is an error naming the file, row and field.
- With ``check_images`` an image file that does not exist skips its record (counted, logged);
  ``check_images=False`` keeps it (the shared copy has the questions only).
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
    progress,
    read_json,
    records_path,
    single_image_records,
)

__all__ = ["add_arguments", "anatomy_of", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "slake"
SPLIT_FILES = (("train", "train"), ("validate", "validation"), ("test", "test"))
_ANATOMY = {"lung": "chest", "chest": "chest", "abdomen": "abdomen", "pelvic cavity": "pelvis", "pelvis": "pelvis"}
_FIELDS = ("img_id", "img_name", "question", "answer", "q_lang", "answer_type")


def anatomy_of(location: str) -> str:
    """The record anatomy of a SLAKE ``location`` (``Chest_heart`` → ``chest``, ``Brain_Tissue`` → ``other``)."""
    loc = location.strip().lower()
    return _ANATOMY.get(loc) or _ANATOMY.get(loc.split("_")[0], "other")


def _split_file(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.json", f"{stem}_en_xray.json"):
        if (root / name).is_file():
            return root / name
    return None


def _qa(item: dict, path: Path, i: int) -> dict:
    kind = str(item["answer_type"]).strip().upper()
    if kind not in ("OPEN", "CLOSED"):
        raise SourceError(path, f"answer_type {item['answer_type']!r} is not OPEN or CLOSED", i, "answer_type")
    answer = str(item["answer"]).strip()
    options: list[str] = []
    if kind == "CLOSED":
        answer, options = closed_answer(answer)
    return {"question": str(item["question"]).strip(), "answer": answer,
            "answer_type": "closed" if kind == "CLOSED" else "open",
            "question_type": str(item.get("content_type") or "").strip().lower(), "options": options}


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  xray_only: bool = False, check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of the English SLAKE questions under ``root`` (see the module docstring)."""
    root = Path(root)
    img_root = Path(images) if images is not None else root / "imgs"
    files = [(stem, split, _split_file(root, stem)) for stem, split in SPLIT_FILES]
    if not any(f for _, _, f in files):
        raise FileNotFoundError(f"{root}: no SLAKE train.json / validate.json / test.json "
                                "(or *_en_xray.json) found")
    skips = Skips(SOURCE)
    studies: dict[str, dict] = {}
    where: dict[str, str] = {}
    for _stem, split, path in files:
        if path is None:
            continue
        items = read_json(path)
        if not isinstance(items, list):
            raise SourceError(path, f"expected a JSON list of questions, got {type(items).__name__}")
        for i, item in enumerate(progress(items, path.name, show_progress, unit="question")):
            if not isinstance(item, dict):
                raise SourceError(path, "question is not an object", i)
            for f in _FIELDS:
                if item.get(f) is None or (f not in ("question", "answer") and str(item[f]).strip() == ""):
                    raise SourceError(path, f"missing {f!r}", i, f)
            if item["q_lang"] != "en":
                continue
            if not str(item["question"]).strip() or not str(item["answer"]).strip():
                skips.add("empty question or answer", f"{path.name} row {i} (qid {item.get('qid')})")
                continue
            if xray_only and item.get("modality") != "X-Ray":
                skips.add("not an X-ray (xray_only)", f"{item['img_name']} ({item.get('modality')})")
                continue
            sid = f"slake-{item['img_id']}"
            rec = studies.get(sid)
            if rec is None:
                rec = studies[sid] = empty_record(sid, split, SOURCE, anatomy_of(str(item.get("location", ""))))
                rec["images"] = [{"path": str(img_root / str(item["img_name"])), "view": "", "role": "current"}]
                where[sid] = path.name
            elif rec["split"] != split:
                raise SourceError(path, f"image {item['img_id']} also has questions in {where[sid]} "
                                        f"({rec['split']}); SLAKE splits by image", i, "img_id")
            rec["qa"].append(_qa(item, path, i))
    return single_image_records(studies.values(), out_dir, check_images, skips), skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare slake``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT/imgs)")
    parser.add_argument("--xray-only", action="store_true", help="keep only the X-ray images (not CT / MRI)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            xray_only: bool = False, check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert SLAKE under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, images=images, xray_only=xray_only,
                                   check_images=check_images, show_progress=show_progress)
    log.info("%s: %d images, %d questions (skipped: %s)", SOURCE, len(records),
             sum(len(r["qa"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
