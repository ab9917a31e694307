"""VQA-RAD → canonical records.

Layout under ``root`` (the OSF release, https://osf.io/89kps/):

- ``VQA_RAD Dataset Public.json``: a JSON list of questions ``{qid, image_name, image_case_url,
  image_organ, answer, answer_type, question_type, question, question_rephrase, phrase_type,
  evaluation, question_relation, qid_linked_id, question_frame}``; ``image_organ`` is ``CHEST``,
  ``HEAD`` or ``ABD``; ``answer_type`` ``CLOSED`` / ``OPEN`` (some copies pad it with spaces);
  ``question_type`` a code such as ``PRES``, ``POS``, ``ABN``, ``SIZE`` (sometimes two, ``"PRES, POS"``);
  ``phrase_type`` ``freeform``, ``para``, ``test_freeform`` or ``test_para``. ``answer`` may be a
  JSON number; it is kept as text.
- ``VQA_RAD Image Folder/<image_name>`` (``images`` to place them elsewhere).

Rules:

- Split: VQA-RAD has no official split file; the common convention (used since the dataset's
  release) is that questions whose ``phrase_type`` starts with ``test_`` form the test set and all
  others the training set. There is no validation split. Test questions can ask about images that
  also have training questions, so one record per (image, split): ``study_id`` ``vqa-rad-<split>-<image
  stem>`` (``vqa-rad-test-synpic54610``) — an evaluation must not assume unseen images.
- ``organs`` keeps the ``image_organ`` values listed (default chest only: ``("CHEST",)``);
  ``organs=None`` keeps all. ``anatomy``: CHEST → ``chest``, ABD → ``abdomen``, HEAD → ``other``.
- QA: ``question`` and ``answer`` as given (stripped); ``question_rephrase`` is not used (the
  paraphrases have their own ``para`` rows). Closed yes/no answers become ``yes`` / ``no`` with options
  ``["yes", "no"]``; other answers keep their text. ``question_type`` is the code lower-cased.
- The view is unknown (``""``); VQA-RAD mixes X-ray, CT and MRI without a modality field.
- With ``check_images`` a missing image file skips its records (counted, logged).
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

__all__ = ["IMAGE_FOLDER", "JSON_NAME", "add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "vqa-rad"
JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"
_ANATOMY = {"CHEST": "chest", "ABD": "abdomen", "HEAD": "other"}
_FIELDS = ("image_name", "question", "answer", "answer_type", "phrase_type", "image_organ")


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  organs: tuple[str, ...] | None = ("CHEST",), check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of VQA-RAD under ``root`` (see the module docstring)."""
    root = Path(root)
    path = root / JSON_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{root}: {JSON_NAME!r} not found (give the VQA-RAD release folder)")
    img_root = Path(images) if images is not None else root / IMAGE_FOLDER
    keep = {o.strip().upper() for o in organs} if organs is not None else None
    items = read_json(path)
    if not isinstance(items, list):
        raise SourceError(path, f"expected a JSON list of questions, got {type(items).__name__}")
    skips = Skips(SOURCE)
    studies: dict[str, dict] = {}
    for i, item in enumerate(progress(items, "vqa-rad", show_progress, unit="question")):
        if not isinstance(item, dict):
            raise SourceError(path, "question is not an object", i)
        for f in _FIELDS:
            if item.get(f) is None or str(item[f]).strip() == "":
                raise SourceError(path, f"missing {f!r}" + (f" (qid {item.get('qid')})" if "qid" in item else ""),
                                  i, f)
        organ = str(item["image_organ"]).strip().upper()
        if organ not in _ANATOMY:
            raise SourceError(path, f"image_organ {item['image_organ']!r} is not one of {sorted(_ANATOMY)}",
                              i, "image_organ")
        if keep is not None and organ not in keep:
            skips.add(f"organ not kept ({organ})", str(item["image_name"]))
            continue
        kind = str(item["answer_type"]).strip().upper()
        if kind not in ("OPEN", "CLOSED"):
            raise SourceError(path, f"answer_type {item['answer_type']!r} is not OPEN or CLOSED", i, "answer_type")
        phrase = str(item["phrase_type"]).strip().lower()
        if phrase not in ("freeform", "para", "test_freeform", "test_para"):
            raise SourceError(path, f"phrase_type {item['phrase_type']!r} is not freeform, para, test_freeform "
                                    "or test_para", i, "phrase_type")
        split = "test" if phrase.startswith("test_") else "train"
        name = str(item["image_name"]).strip()
        sid = f"vqa-rad-{split}-{Path(name).stem}"
        rec = studies.get(sid)
        if rec is None:
            rec = studies[sid] = empty_record(sid, split, SOURCE, _ANATOMY[organ])
            rec["images"] = [{"path": str(img_root / name), "view": "", "role": "current"}]
        elif rec["anatomy"] != _ANATOMY[organ]:
            raise SourceError(path, f"image {name} is given organs {rec['anatomy']} and {organ}", i, "image_organ")
        answer = str(item["answer"]).strip()
        options: list[str] = []
        if kind == "CLOSED":
            answer, options = closed_answer(answer)
        rec["qa"].append({"question": str(item["question"]).strip(), "answer": answer,
                          "answer_type": kind.lower(),
                          "question_type": " ".join(str(item.get("question_type") or "").split()).lower(),
                          "options": options})
    return single_image_records(studies.values(), out_dir, check_images, skips), skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare vqa-rad``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help=f"the image folder (default ROOT/{IMAGE_FOLDER})")
    parser.add_argument("--all-organs", dest="organs", action="store_const", const=None, default=argparse.SUPPRESS,
                        help="keep head and abdomen too (default chest)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            organs: tuple[str, ...] | None = ("CHEST",), check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert VQA-RAD under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, images=images, organs=organs, check_images=check_images,
                                   show_progress=show_progress)
    log.info("%s: %d records, %d questions (skipped: %s)", SOURCE, len(records),
             sum(len(r["qa"]) for r in records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
