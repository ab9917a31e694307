"""The canonical study record: one row per imaging study, the same for every source.

Every converter (`mxr0/data/sources/`), the phantom generator and every task speak this format, so
no task ever parses a raw dataset. A record is a plain dict; on disk a set of records is a JSONL or
Parquet file whose image and mask paths are relative to the file's folder (a dataset folder can be
moved or copied as a whole).

Fields (see ``FEATURES`` for the exact `datasets` schema):

- ``study_id`` (str, unique), ``split`` (``train`` / ``validation`` / ``test``), ``source`` (str),
  ``anatomy`` (one of ``ANATOMIES``).
- ``images``: list of ``{path, view, role}``; ``view`` is a DICOM ViewPosition-style code
  (``PA``, ``AP``, ``LATERAL``, ``LL``, … or ``""`` when unknown), ``role`` ``current`` or ``prior``.
- report sections: ``indication``, ``technique``, ``comparison``, ``findings``, ``impression``
  (``""`` when absent).
- ``labels``: the 14 CheXpert observations in CheXbert's order, each ``1`` (positive), ``0``
  (negative), ``-1`` (uncertain) or ``None`` (not mentioned).
- ``boxes``: list of ``{phrase, label, image_index, x0, y0, x1, y1}``; coordinates normalised to
  [0, 1] in the frame of the original image ``images[image_index]``, ``x`` to the image's right
  (the patient's left), ``y`` down.
- ``masks``: list of ``{name, path, image_index}`` (binary PNG masks aligned to the image).
- ``qa``: list of ``{question, answer, answer_type, question_type, options}``; ``answer_type`` is
  ``closed`` (yes/no or multiple choice, ``options`` lists the choices) or ``open``.
- ``sex`` (``M`` / ``F`` / ``""``), ``age`` (years, float or None).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

CHEXPERT_LABELS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
"""The 14 observations in CheXbert's label order."""

CHEXPERT_COMPETITION: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

SPLITS = ("train", "validation", "test")
ANATOMIES = (
    "chest",
    "abdomen",
    "pelvis",
    "hip",
    "knee",
    "hand",
    "wrist",
    "foot",
    "ankle",
    "shoulder",
    "elbow",
    "spine",
    "skull",
    "other",
)
VIEWS = ("PA", "AP", "LATERAL", "LL", "RL", "AP_SUPINE", "OBLIQUE", "")
IMAGE_ROLES = ("current", "prior")
ANSWER_TYPES = ("closed", "open")
SEXES = ("M", "F", "")
REPORT_SECTIONS = ("indication", "technique", "comparison", "findings", "impression")
LABEL_VALUES = (1, 0, -1, None)


def features():
    """The `datasets.Features` of a study record (imported lazily: `datasets` is heavy)."""
    from datasets import Features, Sequence, Value

    box = {
        "phrase": Value("string"),
        "label": Value("string"),
        "image_index": Value("int32"),
        "x0": Value("float32"),
        "y0": Value("float32"),
        "x1": Value("float32"),
        "y1": Value("float32"),
    }
    return Features(
        {
            "study_id": Value("string"),
            "split": Value("string"),
            "source": Value("string"),
            "anatomy": Value("string"),
            "images": [{"path": Value("string"), "view": Value("string"), "role": Value("string")}],
            **{s: Value("string") for s in REPORT_SECTIONS},
            "labels": {name: Value("int8") for name in CHEXPERT_LABELS},
            "boxes": [box],
            "masks": [{"name": Value("string"), "path": Value("string"), "image_index": Value("int32")}],
            "qa": [
                {
                    "question": Value("string"),
                    "answer": Value("string"),
                    "answer_type": Value("string"),
                    "question_type": Value("string"),
                    "options": Sequence(Value("string")),
                }
            ],
            "sex": Value("string"),
            "age": Value("float32"),
        }
    )


class RecordError(ValueError):
    """Raised when records fail validation; lists every bad row with its index and field."""

    def __init__(self, source: str, problems: list[str], n_bad_rows: int, n_rows: int):
        self.source = source
        self.problems = problems
        self.n_bad_rows = n_bad_rows
        shown = problems[:50]
        more = f"\n  … and {len(problems) - len(shown)} more problems" if len(problems) > len(shown) else ""
        super().__init__(
            f"{source}: {n_bad_rows} of {n_rows} study records are invalid:\n  "
            + "\n  ".join(shown)
            + more
            + "\nFix the rows above (the record format is documented in mxr0/data/records.py)."
        )


def empty_record(study_id: str, split: str = "train", source: str = "", anatomy: str = "chest") -> dict:
    """A valid record with every optional field empty; converters fill in what they know."""
    return {
        "study_id": study_id,
        "split": split,
        "source": source,
        "anatomy": anatomy,
        "images": [],
        **{s: "" for s in REPORT_SECTIONS},
        "labels": {name: None for name in CHEXPERT_LABELS},
        "boxes": [],
        "masks": [],
        "qa": [],
        "sex": "",
        "age": None,
    }


def _check_choice(errs: list[str], field: str, value: Any, choices: Iterable) -> None:
    if value not in choices:
        errs.append(f"{field}={value!r} is not one of {sorted(c for c in choices if c is not None)}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_record(rec: Any) -> list[str]:
    """Every problem of one record as ``"field: message"`` strings (empty when valid)."""
    if not isinstance(rec, dict):
        return [f"record is a {type(rec).__name__}, expected an object"]
    errs: list[str] = []
    known = set(empty_record("x"))
    for key in rec:
        if key not in known:
            errs.append(f"{key}: unknown field (valid: {sorted(known)})")
    for key in ("study_id", "split", "anatomy", "images"):
        if key not in rec:
            errs.append(f"{key}: missing")
    sid = rec.get("study_id")
    if "study_id" in rec and (not isinstance(sid, str) or not sid):
        errs.append(f"study_id: {sid!r} must be a non-empty string")
    if "split" in rec:
        _check_choice(errs, "split", rec["split"], SPLITS)
    if "anatomy" in rec:
        _check_choice(errs, "anatomy", rec["anatomy"], ANATOMIES)
    for s in REPORT_SECTIONS + ("source",):
        if s in rec and not isinstance(rec[s], str):
            errs.append(f"{s}: expected a string, got {type(rec[s]).__name__}")
    images = rec.get("images", [])
    if not isinstance(images, list):
        errs.append("images: expected a list")
        images = []
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not isinstance(im.get("path"), str) or not im.get("path"):
            errs.append(f"images[{i}].path: missing or not a string")
            continue
        _check_choice(errs, f"images[{i}].view", im.get("view", ""), VIEWS)
        _check_choice(errs, f"images[{i}].role", im.get("role", "current"), IMAGE_ROLES)
    labels = rec.get("labels", {})
    if not isinstance(labels, dict):
        errs.append("labels: expected an object keyed by CheXpert observation")
    else:
        for name, v in labels.items():
            if name not in CHEXPERT_LABELS:
                errs.append(f"labels.{name}: unknown observation (valid: {list(CHEXPERT_LABELS)})")
            elif v not in LABEL_VALUES or isinstance(v, bool):
                errs.append(f"labels.{name}={v!r}: expected 1, 0, -1 or null")
    for i, b in enumerate(rec.get("boxes", []) or []):
        coords = [b.get(k) for k in ("x0", "y0", "x1", "y1")] if isinstance(b, dict) else [None]
        if not all(_is_num(c) for c in coords):
            errs.append(f"boxes[{i}]: x0, y0, x1, y1 must be finite numbers, got {coords}")
            continue
        x0, y0, x1, y1 = coords
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            errs.append(f"boxes[{i}]: ({x0}, {y0}, {x1}, {y1}) must satisfy 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        idx = b.get("image_index", 0)
        if not isinstance(idx, int) or not 0 <= idx < max(len(images), 1):
            errs.append(f"boxes[{i}].image_index={idx!r} does not name one of the {len(images)} images")
    for i, m in enumerate(rec.get("masks", []) or []):
        if not isinstance(m, dict) or not m.get("path") or not m.get("name"):
            errs.append(f"masks[{i}]: needs a name and a path")
    for i, q in enumerate(rec.get("qa", []) or []):
        if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not isinstance(q.get("answer"), str):
            errs.append(f"qa[{i}]: needs a question and an answer string")
            continue
        _check_choice(errs, f"qa[{i}].answer_type", q.get("answer_type", "open"), ANSWER_TYPES)
        opts = q.get("options") or []
        if opts and q["answer"] not in opts:
            errs.append(f"qa[{i}]: answer {q['answer']!r} is not among its options {opts}")
    if "sex" in rec:
        _check_choice(errs, "sex", rec["sex"], SEXES)
    age = rec.get("age")
    if age is not None and (not _is_num(age) or not 0 <= age < 130):
        errs.append(f"age={age!r}: expected years in [0, 130) or null")
    return errs


def normalise_record(rec: dict) -> dict:
    """Fill absent optional fields with their empty values and defaults (after validation)."""
    out = empty_record(rec["study_id"], rec["split"], rec.get("source", ""), rec["anatomy"])
    for k, v in rec.items():
        if k == "labels":
            out["labels"] = {**out["labels"], **(v or {})}
        elif v is not None or k == "age":
            out[k] = v
    out["images"] = [{"path": im["path"], "view": im.get("view", ""), "role": im.get("role", "current")} for im in out["images"]]
    out["boxes"] = [
        {"phrase": b.get("phrase", ""), "label": b.get("label", ""), "image_index": b.get("image_index", 0),
         **{k: float(b[k]) for k in ("x0", "y0", "x1", "y1")}}
        for b in out["boxes"]
    ]
    out["masks"] = [{"name": m["name"], "path": m["path"], "image_index": m.get("image_index", 0)} for m in out["masks"]]
    out["qa"] = [
        {"question": q["question"], "answer": q["answer"], "answer_type": q.get("answer_type", "open"),
         "question_type": q.get("question_type", ""), "options": list(q.get("options") or [])}
        for q in out["qa"]
    ]
    return out


def validate_records(records: Iterable[dict], source: str = "records") -> list[dict]:
    """Validate all records (duplicate study ids included) and return them normalised.

    Raises `RecordError` listing every problem of every bad row, not only the first.
    """
    problems: list[str] = []
    bad_rows = 0
    seen: dict[str, int] = {}
    out = []
    n = 0
    for i, rec in enumerate(records):
        n += 1
        errs = validate_record(rec)
        if not errs:
            sid = rec["study_id"]
            if sid in seen:
                errs.append(f"study_id: {sid!r} also used by row {seen[sid]}")
            seen.setdefault(sid, i)
        if errs:
            bad_rows += 1
            problems.extend(f"row {i}: {e}" for e in errs)
        else:
            out.append(normalise_record(rec))
    if problems:
        raise RecordError(source, problems, bad_rows, n)
    return out


def _iter_jsonl(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield _BadLine(f"line {lineno} is not valid JSON ({e.msg} at column {e.colno})")


class _BadLine(str):
    pass


def read_records(path: str | os.PathLike, splits: Iterable[str] | None = None, resolve_paths: bool = True) -> list[dict]:
    """Load and validate records from a ``.jsonl`` or ``.parquet`` file (or a folder holding
    ``records.jsonl`` / ``records.parquet``).

    Image and mask paths are resolved against the file's folder when ``resolve_paths``.
    ``splits`` keeps only those splits (after validating every row).
    """
    path = Path(path)
    if path.is_dir():
        for name in ("records.parquet", "records.jsonl"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no records.jsonl or records.parquet in this folder; "
                                    "create one with `mxr0 prepare <source>`")
    if not path.exists():
        raise FileNotFoundError(f"{path}: records file not found; create one with `mxr0 prepare <source>`")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        raw: list[Any] = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        raw = list(_iter_jsonl(path))
    else:
        raise ValueError(f"{path}: unsupported records file (expected .jsonl or .parquet)")
    problems = [f"row {i}: {r}" for i, r in enumerate(raw) if isinstance(r, _BadLine)]
    if problems:
        raise RecordError(str(path), problems, len(problems), len(raw))
    records = validate_records(raw, source=str(path))
    if splits is not None:
        keep = set(splits)
        unknown = keep - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; valid: {list(SPLITS)}")
        records = [r for r in records if r["split"] in keep]
    if resolve_paths:
        root = path.parent
        for r in records:
            for item in r["images"] + r["masks"]:
                if not os.path.isabs(item["path"]):
                    item["path"] = str(root / item["path"])
    return records


def write_records(records: Iterable[dict], path: str | os.PathLike) -> Path:
    """Validate and write records atomically as JSONL or Parquet (by the file's suffix)."""
    path = Path(path)
    records = validate_records(records, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list(records, features=features()).to_parquet(str(tmp))
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def to_dataset(records: list[dict]):
    """The records as a `datasets.Dataset` with the canonical features."""
    from datasets import Dataset

    return Dataset.from_list(records, features=features())
