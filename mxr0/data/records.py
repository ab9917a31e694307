"""The canonical study record: one row per imaging study, the same for every source.

Every converter (`mxr0/data/sources/`), the phantom generator and every task speak this format, so
no task ever parses a raw dataset. A record is a plain dict; on disk a set of records is a JSONL or
Parquet file whose image and mask paths are relative to the file's folder (a dataset folder can be
moved or copied as a whole).

This docstring is the one description of the record; other modules refer to it rather than
repeat it. Fields (see `features` for the exact `datasets` / Parquet schema):

- ``study_id`` (str, unique), ``split`` (``train`` / ``validation`` / ``test``), ``source`` (str),
  ``anatomy`` (one of ``ANATOMIES``; `anatomy_of` maps DICOM BodyPartExamined codes, CSV values and
  MURA body parts to them, unknown values to ``other``).
- ``images``: list of ``{path, view, role}``; ``view`` is a DICOM ViewPosition-style code
  (``PA``, ``AP``, ``LATERAL``, ``LL``, … or ``""`` when unknown), ``role`` ``current`` or ``prior``
  (an image of the prior study named by ``prior_study_id``).
- report sections: ``indication``, ``technique``, ``comparison``, ``findings``, ``impression``
  (``""`` when absent).
- ``labels``: the 14 CheXpert observations in CheXbert's order, each ``1`` (positive), ``0``
  (negative), ``-1`` (uncertain) or ``None`` (not mentioned).
- ``source_labels``: the source's own findings beside the CheXpert labels, a flat object keyed
  ``"<prefix>:<name>"`` (`source_label_key`), e.g. ``{"nih:Emphysema": 1, "jsrt:nodule": 1,
  "mura:abnormal": 0}``; values as in ``labels``. The prefix is the short source family (``nih``,
  ``jsrt``, ``mura``, ``tbx11k``, ``covid``, ``siim``, …: lower-case letters, digits, ``_ . -``), the
  name is the source's own spelling. Absent findings are simply not keys. (Parquet stores it as a list
  of ``{name, value}``; `read_records` gives the object back.)
- prior study (MAIRA-2's inputs; all empty when the study has no prior): ``prior_study_id`` (str, the
  prior study's id, never the record's own), ``prior_findings`` and ``prior_impression`` (str, the
  prior report's sections); the prior's images are in ``images`` with ``role: prior``. `prior_report`
  joins the two sections into the prompt's "Prior report" text. Prior sections need a
  ``prior_study_id`` or a prior image; ``prior_study_id`` is otherwise optional (a pair from a VQA
  set may show a reference image without knowing its study).
- ``boxes``: list of ``{phrase, label, image_index, x0, y0, x1, y1}``; coordinates normalised to
  [0, 1] in the frame of the original image ``images[image_index]``, ``x`` to the image's right
  (the patient's left), ``y`` down.
- ``masks``: list of ``{name, path, image_index}``: 8-bit PNG masks, 0 outside and 255 inside, of the
  same size and frame as ``images[image_index]`` (converters resize a source's masks to their image with
  nearest neighbour; `mxr0.data.cache` resizes both together). Names are lower-case organ or finding
  names, ``MASK_NAMES`` for the known ones (``left_lung`` is the patient's left, the image's right); the
  frozen segmentation suite reads them by name.
- ``qa``: list of ``{question, answer, answer_type, question_type, options}``; ``answer_type`` is
  ``closed`` (yes/no or multiple choice, ``options`` lists the choices) or ``open``.
- ``sex`` (``M`` / ``F`` / ``""``), ``age`` (years, float or None).

Image roots: image and mask paths may leave the records folder (``../../data/mimic-cxr-jpg/…``) only
into folders the records file declares in its sidecar ``<stem>.roots.json`` (``{"roots": [...]}``,
written by `write_records` / `declare_roots`; the records folder itself is always allowed). A path
that resolves (symlinks followed) outside every root, holds a NUL byte or names a folder, FIFO or
device is refused at validation with its file, line / row and field. A records file without a
sidecar (prepared before roots existed) may point into its own folder only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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
    "forearm",
    "humerus",
    "femur",
    "lower_leg",
    "other",
)

#: Free-text anatomy values (DICOM BodyPartExamined codes, CSV columns, MURA's ``XR_*`` folders), upper-cased
#: with spaces / dashes as ``_``, mapped to ``ANATOMIES``; `anatomy_of` uses it.
ANATOMY_ALIASES: dict[str, str] = {
    **{a.upper(): a for a in ANATOMIES},
    "THORAX": "chest", "CHEST_LAT": "chest", "CHEST_PA": "chest", "LUNG": "chest", "RIBS": "chest", "RIB": "chest",
    "PORT_CHEST": "chest", "CXR": "chest", "TORAX": "chest", "THORAXAP": "chest", "THORAX_AP": "chest",
    "ABDOMEN_PELVIS": "abdomen", "ABD": "abdomen", "KUB": "abdomen",
    "HIPS": "hip", "PELVIS_HIP": "pelvis", "SACRUM": "pelvis",
    "KNEES": "knee", "PATELLA": "knee",
    "HANDS": "hand", "FINGER": "hand", "FINGERS": "hand", "THUMB": "hand",
    "WRISTS": "wrist", "SCAPHOID": "wrist",
    "FOOT_ANKLE": "foot", "FEET": "foot", "TOE": "foot", "TOES": "foot", "CALCANEUS": "foot", "HEEL": "foot",
    "ANKLES": "ankle",
    "SHOULDERS": "shoulder", "CLAVICLE": "shoulder", "SCAPULA": "shoulder",
    "ELBOWS": "elbow",
    "CSPINE": "spine", "TSPINE": "spine", "LSPINE": "spine", "C_SPINE": "spine", "T_SPINE": "spine", "L_SPINE": "spine",
    "LSSPINE": "spine", "CERVICAL_SPINE": "spine", "THORACIC_SPINE": "spine", "LUMBAR_SPINE": "spine", "NECK": "spine",
    "WHOLESPINE": "spine", "WHOLE_SPINE": "spine",
    "HEAD": "skull", "SKULL_FACE": "skull", "FACE": "skull", "SINUS": "skull", "SINUSES": "skull", "MANDIBLE": "skull",
    "FOREARMS": "forearm", "RADIUS": "forearm", "ULNA": "forearm",
    "UPPER_ARM": "humerus", "ARM": "humerus",
    "THIGH": "femur", "UPPER_LEG": "femur",
    "LEG": "lower_leg", "TIBIA": "lower_leg", "FIBULA": "lower_leg", "TIBIA_FIBULA": "lower_leg", "TIB_FIB": "lower_leg",
}


def anatomy_of(value: Any) -> tuple[str, bool]:
    """``(anatomy, known)``: ``value`` (a DICOM BodyPartExamined code such as ``CHEST`` / ``LSPINE``, a CSV
    value, a MURA folder such as ``XR_WRIST``) mapped to one of ``ANATOMIES``; an unknown or empty value
    gives ``("other", False)`` (converters count those)."""
    if not isinstance(value, str):
        return "other", False
    key = value.strip().upper().replace(" ", "_").replace("-", "_").replace("/", "_")
    if key.startswith("XR_"):
        key = key[3:]
    if not key:
        return "other", False
    hit = ANATOMY_ALIASES.get(key)
    if hit is not None:
        return hit, hit != "other" or key == "OTHER"
    return "other", False


#: Mask names the converters write (others are allowed): the JSRT / CheXmask organs and SIIM-ACR's finding.
MASK_NAMES: tuple[str, ...] = ("right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle", "pneumothorax")

PRIOR_FIELDS: tuple[str, ...] = ("prior_study_id", "prior_findings", "prior_impression")
"""The prior-study fields (strings, ``""`` when absent); the prior's images are ``images`` with role ``prior``."""

_SOURCE_LABEL_PREFIX = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")
MAX_SOURCE_LABEL_KEY = 100


def source_label_key(prefix: str, name: str) -> str:
    """The ``source_labels`` key of finding ``name`` of source family ``prefix`` (``"nih", "Emphysema"`` →
    ``"nih:Emphysema"``)."""
    key = f"{prefix}:{name}"
    problem = _source_label_key_problem(key)
    if problem:
        raise ValueError(f"source_labels key {key!r}: {problem}")
    return key


def _source_label_key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return "keys must be strings"
    prefix, sep, name = key.partition(":")
    if not sep or not prefix or not name.strip():
        return "expected '<prefix>:<name>' (e.g. 'nih:Emphysema')"
    if not set(prefix) <= _SOURCE_LABEL_PREFIX:
        return "the prefix may hold lower-case letters, digits, '_', '.' and '-' only"
    if len(key) > MAX_SOURCE_LABEL_KEY or "\x00" in key or "\n" in key:
        return f"must be one line of at most {MAX_SOURCE_LABEL_KEY} characters"
    return None


def prior_report(record: dict) -> str:
    """The prior report as one text ("Findings: … Impression: …", the present sections only; ``""`` when
    the record has no prior report)."""
    parts = []
    for key, title in (("prior_findings", "Findings"), ("prior_impression", "Impression")):
        text = (record.get(key) or "").strip()
        if text:
            parts.append(f"{title}: {text}")
    return " ".join(parts)
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
            "source_labels": [{"name": Value("string"), "value": Value("int8")}],
            **{k: Value("string") for k in PRIOR_FIELDS},
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
    """Raised when records fail validation; lists every bad row (file, line / row and field), up to
    ``MAX_REPORTED_ROWS`` rows, each with all its problems."""

    def __init__(self, source: str, problems: list[str], n_bad_rows: int, n_rows: int):
        self.source = source
        self.problems = problems
        self.n_bad_rows = n_bad_rows
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = ""
        if n_bad_rows > MAX_REPORTED_ROWS:
            more = f"\n  … and {n_bad_rows - MAX_REPORTED_ROWS} more bad rows (the first {MAX_REPORTED_ROWS} are listed)"
        elif len(problems) > len(shown):
            more = f"\n  … and {len(problems) - len(shown)} more problems"
        super().__init__(
            f"{source}: {n_bad_rows} of {n_rows} study records are invalid:\n  "
            + "\n  ".join(shown)
            + more
            + "\nFix the rows above (the record format is documented in mxr0/data/records.py)."
        )


class RootsError(ValueError):
    """A ``*.roots.json`` sidecar is unreadable or malformed."""


#: At most this many bad rows are listed in a `RecordError` (all their problems each); the count is exact.
MAX_REPORTED_ROWS = 200
MAX_REPORTED_PROBLEMS = 2000


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
        "source_labels": {},
        **{k: "" for k in PRIOR_FIELDS},
        "boxes": [],
        "masks": [],
        "qa": [],
        "sex": "",
        "age": None,
    }


def _check_choice(errs: list[str], field: str, value: Any, choices: Iterable) -> None:
    if isinstance(value, (list, dict)) or value not in choices:
        errs.append(f"{field}={_short(value)} is not one of {sorted(c for c in choices if c is not None)}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any, n: int = 60) -> str:
    """``repr(v)`` cut to ``n`` characters (errors never echo a whole report or a long value)."""
    r = repr(v)
    return r if len(r) <= n else r[: n - 1] + "…"


def _path_problem(field: str, p: Any) -> str | None:
    if not isinstance(p, str):
        return f"{field}: expected a path string, got {type(p).__name__}"
    if not p:
        return f"{field}: empty path"
    if "\x00" in p:
        return f"{field}: {_short(p)} contains a NUL byte; no file system path can hold one"
    return None


def _list_field(errs: list[str], rec: dict, key: str) -> list:
    v = rec.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        errs.append(f"{key}: expected a list, got {type(v).__name__}")
        return []
    return v


def _check_identity(errs: list[str], rec: dict) -> None:
    """Unknown and missing fields, ``study_id``, ``split``, ``anatomy`` and the text fields."""
    known = set(empty_record("x"))
    for key in rec:
        if key not in known:
            errs.append(f"{key if isinstance(key, str) and len(key) <= 40 else _short(key, 40)}: unknown field (valid: {sorted(known)})")
    for key in ("study_id", "split", "anatomy", "images"):
        if key not in rec:
            errs.append(f"{key}: missing")
    sid = rec.get("study_id")
    if "study_id" in rec and (not isinstance(sid, str) or not sid):
        errs.append(f"study_id: {_short(sid)} must be a non-empty string")
    elif isinstance(sid, str) and "\x00" in sid:
        errs.append(f"study_id: {_short(sid)} contains a NUL byte")
    if "split" in rec:
        _check_choice(errs, "split", rec["split"], SPLITS)
    if "anatomy" in rec:
        _check_choice(errs, "anatomy", rec["anatomy"], ANATOMIES)
    for s in REPORT_SECTIONS + ("source",) + PRIOR_FIELDS:
        if s in rec and rec[s] is not None and not isinstance(rec[s], str):
            errs.append(f"{s}: expected a string, got {type(rec[s]).__name__}")


def _check_images(errs: list[str], rec: dict) -> list:
    """``images``: a list of objects with a path, a view and a role; returns the list (empty if not one)."""
    images = _list_field(errs, rec, "images")
    for i, im in enumerate(images):
        if not isinstance(im, dict):
            errs.append(f"images[{i}]: expected an object with a path, got {type(im).__name__}")
            continue
        bad = _path_problem(f"images[{i}].path", im.get("path"))
        if bad:
            errs.append(bad)
        _check_choice(errs, f"images[{i}].view", im.get("view", ""), VIEWS)
        _check_choice(errs, f"images[{i}].role", im.get("role", "current"), IMAGE_ROLES)
    return images


def _check_labels(errs: list[str], rec: dict) -> None:
    """``labels`` (CheXpert observations) and ``source_labels`` (``<prefix>:<name>`` keys): 1, 0, -1 or null."""
    labels = rec.get("labels", {})
    if labels is None:
        labels = {}
    if not isinstance(labels, dict):
        errs.append(f"labels: expected an object keyed by CheXpert observation, got {type(labels).__name__}")
    else:
        for name, v in labels.items():
            if name not in CHEXPERT_LABELS:
                errs.append(f"labels.{name if isinstance(name, str) and len(name) <= 40 else _short(name, 40)}: unknown observation (valid: {list(CHEXPERT_LABELS)})")
            elif isinstance(v, (bool, list, dict)) or v not in LABEL_VALUES:
                errs.append(f"labels.{name}={_short(v)}: expected 1, 0, -1 or null")
    slabels = rec.get("source_labels")
    if slabels is not None and not isinstance(slabels, dict):
        errs.append(f"source_labels: expected an object keyed '<prefix>:<name>' (e.g. 'nih:Emphysema'), "
                    f"got {type(slabels).__name__}")
    elif slabels:
        for name, v in slabels.items():
            shown = name if isinstance(name, str) and len(name) <= 60 else _short(name, 60)
            bad = _source_label_key_problem(name)
            if bad:
                errs.append(f"source_labels.{shown}: {bad}")
            elif isinstance(v, (bool, list, dict)) or v not in LABEL_VALUES:
                errs.append(f"source_labels.{shown}={_short(v)}: expected 1, 0, -1 or null")


def _check_prior(errs: list[str], rec: dict, images: list) -> None:
    """``prior_study_id`` and the prior report, which needs a prior study or a prior image."""
    sid, pid = rec.get("study_id"), rec.get("prior_study_id")
    if isinstance(pid, str) and pid and isinstance(sid, str) and pid == sid:
        errs.append(f"prior_study_id: {_short(pid)} is the study itself")
    elif isinstance(pid, str) and "\x00" in pid:
        errs.append(f"prior_study_id: {_short(pid)} contains a NUL byte")
    has_prior_image = any(isinstance(im, dict) and im.get("role") == "prior" for im in images)
    for k in ("prior_findings", "prior_impression"):
        if isinstance(rec.get(k), str) and rec[k].strip() and not pid and not has_prior_image:
            errs.append(f"{k}: a prior report needs its prior_study_id or a prior image (images[*].role 'prior')")


def _check_boxes(errs: list[str], rec: dict, images: list) -> None:
    """``boxes``: normalised (x0, y0, x1, y1) on one of the images, optional phrase and label strings."""
    for i, b in enumerate(_list_field(errs, rec, "boxes")):
        if not isinstance(b, dict):
            errs.append(f"boxes[{i}]: expected an object, got {type(b).__name__}")
            continue
        for k in ("phrase", "label"):
            if k in b and not isinstance(b[k], str):
                errs.append(f"boxes[{i}].{k}: expected a string, got {type(b[k]).__name__}")
        coords = [b.get(k) for k in ("x0", "y0", "x1", "y1")]
        if not all(_is_num(c) for c in coords):
            errs.append(f"boxes[{i}]: x0, y0, x1, y1 must be finite numbers, got {_short(coords, 120)}")
        else:
            x0, y0, x1, y1 = coords
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                errs.append(f"boxes[{i}]: ({x0}, {y0}, {x1}, {y1}) must satisfy 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
        idx = b.get("image_index", 0)
        if not _is_int(idx) or not 0 <= idx < max(len(images), 1):
            errs.append(f"boxes[{i}].image_index={_short(idx)} does not name one of the {len(images)} images")


def _check_masks(errs: list[str], rec: dict, images: list) -> None:
    """``masks``: a name and a path on one of the images."""
    for i, m in enumerate(_list_field(errs, rec, "masks")):
        if not isinstance(m, dict):
            errs.append(f"masks[{i}]: expected an object with a name and a path, got {type(m).__name__}")
            continue
        if not isinstance(m.get("name"), str) or not m.get("name"):
            errs.append(f"masks[{i}].name: needs a non-empty string")
        bad = _path_problem(f"masks[{i}].path", m.get("path"))
        if bad:
            errs.append(bad)
        idx = m.get("image_index", 0)
        if not _is_int(idx) or not 0 <= idx < max(len(images), 1):
            errs.append(f"masks[{i}].image_index={_short(idx)} does not name one of the {len(images)} images")


def _check_qa(errs: list[str], rec: dict) -> None:
    """``qa``: question and answer strings, the answer type, and options that hold the answer."""
    for i, q in enumerate(_list_field(errs, rec, "qa")):
        if not isinstance(q, dict):
            errs.append(f"qa[{i}]: expected an object with a question and an answer, got {type(q).__name__}")
            continue
        for k in ("question", "answer"):
            if not isinstance(q.get(k), str):
                errs.append(f"qa[{i}].{k}: needs a string, got {type(q.get(k)).__name__}")
        if "question_type" in q and not isinstance(q["question_type"], str):
            errs.append(f"qa[{i}].question_type: expected a string, got {type(q['question_type']).__name__}")
        _check_choice(errs, f"qa[{i}].answer_type", q.get("answer_type", "open"), ANSWER_TYPES)
        opts = q.get("options")
        if opts is None:
            opts = []
        if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
            errs.append(f"qa[{i}].options: expected a list of strings, got {_short(opts)}")
        elif opts and isinstance(q.get("answer"), str) and q["answer"] not in opts:
            errs.append(f"qa[{i}].answer: {_short(q['answer'])} is not among its options {_short(opts, 120)}")


def validate_record(rec: Any) -> list[str]:
    """Every problem of one record as ``"field: message"`` strings (empty when valid).

    Checks fields and types only; where paths point is checked by `validate_records` with the
    records file's declared roots."""
    if not isinstance(rec, dict):
        return [f"record: is a {type(rec).__name__}, expected a JSON object"]
    errs: list[str] = []
    _check_identity(errs, rec)
    images = _check_images(errs, rec)
    _check_labels(errs, rec)
    _check_prior(errs, rec, images)
    _check_boxes(errs, rec, images)
    _check_masks(errs, rec, images)
    _check_qa(errs, rec)
    if "sex" in rec:
        _check_choice(errs, "sex", rec["sex"], SEXES)
    age = rec.get("age")
    if age is not None and (not _is_num(age) or not 0 <= age < 130):
        errs.append(f"age={_short(age)}: expected years in [0, 130) or null")
    return errs


def normalise_record(rec: dict) -> dict:
    """Fill absent optional fields with their empty values and defaults (after validation)."""
    out = empty_record(rec["study_id"], rec["split"], rec.get("source", ""), rec["anatomy"])
    for k, v in rec.items():
        if k == "labels":
            out["labels"] = {**out["labels"], **(v or {})}
        elif k == "source_labels":
            out["source_labels"] = dict(v or {})
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


class _Resolver:
    """Symlink-resolving ``realpath`` with a cache of folders (one ``lstat`` per new folder or file)."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def real(self, path: str) -> str:
        hit = self._dirs.get(path)
        if hit is not None:
            return hit
        parent, name = os.path.split(path)
        if parent == path:  # the file system root
            out = path
        elif name in ("", "."):
            out = self.real(parent)
        elif name == "..":
            out = os.path.dirname(self.real(parent))
        else:
            out = os.path.join(self.real(parent), name)
            if os.path.islink(out):
                out = os.path.realpath(out)
        self._dirs[path] = out
        return out

    def real_file(self, path: str) -> str:
        """Like `real`, without caching the last component (folders are cached, files are not)."""
        parent, name = os.path.split(path)
        if name in ("", ".", "..") or parent == path:
            return self.real(path)
        out = os.path.join(self.real(parent), name)
        return os.path.realpath(out) if os.path.islink(out) else out


def roots_file(records_file: str | os.PathLike) -> Path:
    """The sidecar that declares the image roots of ``records_file``: ``records.jsonl`` →
    ``records.roots.json`` (JSON ``{"roots": [...]}``, folders relative to the records folder or absolute)."""
    p = Path(records_file)
    return p.with_name(f"{p.stem}.roots.json")


def _roots_text(folder: Path, roots: Iterable[str | os.PathLike]) -> list[str]:
    out = []
    for r in roots:
        r = os.fspath(r)
        if "\x00" in r:
            raise ValueError(f"image root {r!r} contains a NUL byte")
        try:
            rel = os.path.relpath(os.path.abspath(r), os.path.abspath(folder))
        except ValueError:  # another drive
            rel = os.path.abspath(r)
        if rel not in out:
            out.append(rel)
    return out


def declare_roots(records_file: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> Path:
    """Declare the folders the image and mask paths of ``records_file`` may point into (beside the
    records folder itself, always allowed); writes ``roots_file(records_file)`` atomically.

    Converters call it through `write_records`; for a folder prepared before roots existed, run e.g.
    ``python -c "from mxr0.data.records import declare_roots; declare_roots('data_cache/ms-cxr/records.jsonl',
    ['/data/mimic-cxr-jpg'])"``."""
    path = Path(records_file)
    text = _roots_text(path.parent, roots)
    side = roots_file(path)
    tmp = side.with_name(f".{side.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"version": 1, "roots": text}, indent=2) + "\n")
    os.replace(tmp, side)
    return side


_WARNED_UNDECLARED: set[str] = set()


def read_roots(records_file: str | os.PathLike) -> list[Path]:
    """The absolute image roots of ``records_file``: its folder plus those its sidecar declares.

    A records file without a sidecar (prepared before roots were declared) gets its own folder only,
    and a one-time message says how to declare others."""
    path = Path(records_file)
    folder = path.parent.absolute()
    side = roots_file(path)
    roots = [folder]
    if not side.exists():
        if str(side) not in _WARNED_UNDECLARED:
            _WARNED_UNDECLARED.add(str(side))
            log.info("%s declares no image roots (no %s beside it): image and mask paths must stay inside %s. "
                     "If they point elsewhere, prepare the folder again with `mxr0 prepare`, or declare the "
                     "folders with mxr0.data.records.declare_roots(%r, [FOLDER, ...])", path, side.name, folder,
                     str(path))
        return roots
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        listed = data["roots"]
        if not isinstance(listed, list) or not all(isinstance(r, str) and r and "\x00" not in r for r in listed):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise RootsError(f"{side}: field roots: expected a JSON object {{\"roots\": [folder, ...]}} of non-empty "
                         "folder strings; write it with mxr0.data.records.declare_roots") from None
    roots += [Path(os.path.normpath(folder / r)) for r in listed]
    return roots


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class _PathChecker:
    """Checks that image / mask paths resolve inside the declared roots and name regular files
    (or nothing yet: a missing file is the training loop's unreadable sample, not a record error)."""

    def __init__(self, base: Path, roots: list[Path], side_name: str, check_files: bool):
        self.base, self.side_name, self.check_files = base.absolute(), side_name, check_files
        self.res = _Resolver()
        self.roots = [self.res.real(str(Path(r).absolute())) for r in roots]
        self.shown = ", ".join(str(r) for r in roots)

    def problem(self, field: str, p: str) -> str | None:
        full = p if os.path.isabs(p) else os.path.join(self.base, p)
        real = self.res.real_file(full)
        if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots):
            return (f"{field}: {_short(p)} resolves outside the declared image roots ({self.shown}); fix the path, "
                    f"or if that folder is meant, declare it in {self.side_name} (mxr0.data.records.declare_roots)")
        if self.check_files:
            try:
                mode = os.stat(real).st_mode
            except FileNotFoundError:
                return None
            except OSError as e:
                return f"{field}: {_short(p)} cannot be checked ({type(e).__name__})"
            if not stat.S_ISREG(mode):
                kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a regular file")
                return f"{field}: {_short(p)} is {kind}, not an image file"
        return None


def validate_records(records: Iterable[Any], source: str = "records", *, base: str | os.PathLike | None = None,
                     roots: list[Path] | None = None, lines: list[int] | None = None,
                     check_files: bool = True) -> list[dict]:
    """Validate all records (duplicate study ids included) and return them normalised.

    With ``base`` (the records folder), image and mask paths must resolve (symlinks followed) inside
    ``roots`` (default: ``base`` only) and, when ``check_files`` and present, be regular files.
    ``lines`` gives the file line of each row for the messages. Raises `RecordError` listing every
    bad row (up to ``MAX_REPORTED_ROWS``) with all its problems, not only the first.
    """
    checker = None
    if base is not None:
        base = Path(base)
        side = roots_file(Path(source)).name if source.endswith((".jsonl", ".json", ".parquet")) else "records.roots.json"
        checker = _PathChecker(base, list(roots) if roots is not None else [base], side, check_files)
    problems: list[str] = []
    bad_rows = 0
    seen: dict[str, str] = {}
    out = []
    n = 0
    for i, rec in enumerate(records):
        n += 1
        where = f"line {lines[i]}, row {i}" if lines is not None else f"row {i}"
        if isinstance(rec, _BadLine):
            errs = [str(rec)]
        else:
            try:
                errs = validate_record(rec)
            except Exception as e:  # a shape validate_record did not foresee: still report the row
                errs = [f"record: cannot be checked ({type(e).__name__})"]
            if checker is not None and isinstance(rec, dict):
                for kind in ("images", "masks"):
                    items = rec.get(kind)
                    for j, item in enumerate(items if isinstance(items, list) else []):
                        p = item.get("path") if isinstance(item, dict) else None
                        if _path_problem("", p) is None:
                            bad = checker.problem(f"{kind}[{j}].path", p)
                            if bad:
                                errs.append(bad)
            sid = rec.get("study_id") if isinstance(rec, dict) else None
            if isinstance(sid, str) and sid:
                if sid in seen:
                    errs.append(f"study_id: {_short(sid)} also used by {seen[sid]}")
                seen.setdefault(sid, where)
        if errs:
            bad_rows += 1
            if bad_rows <= MAX_REPORTED_ROWS:
                problems.extend(f"{where}: {e}" for e in errs)
        else:
            out.append(normalise_record(rec))
    if bad_rows:
        raise RecordError(source, problems, bad_rows, n)
    return out


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of each non-blank line; a line that is not UTF-8 or not JSON becomes
    a `_BadLine` (the message never quotes the line's bytes)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield lineno, _BadLine(f"record: the line is not UTF-8 text (invalid byte at column {e.start + 1}); "
                                       "save the records file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, _BadLine(f"record: not valid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                yield lineno, _BadLine("record: JSON nested too deeply")


class _BadLine(str):
    pass


def read_records(path: str | os.PathLike, splits: Iterable[str] | None = None, resolve_paths: bool = True) -> list[dict]:
    """Load and validate records from a ``.jsonl`` or ``.parquet`` file (or a folder holding
    ``records.jsonl`` / ``records.parquet``).

    Image and mask paths must resolve inside the file's folder or a root its ``*.roots.json``
    sidecar declares (see `declare_roots`), and name regular files when present. They are resolved
    against the file's folder when ``resolve_paths``. ``splits`` keeps only those splits (after
    validating every row).
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
    lines: list[int] | None = None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        raw: list[Any] = [_from_table_row(r) for r in pq.read_table(path).to_pylist()]
    elif path.suffix in (".jsonl", ".json"):
        pairs = list(_iter_jsonl(path))
        lines = [n for n, _ in pairs]
        raw = [r for _, r in pairs]
    else:
        raise ValueError(f"{path}: unsupported records file (expected .jsonl or .parquet)")
    records = validate_records(raw, source=str(path), base=path.parent, roots=read_roots(path), lines=lines)
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


def write_records(records: Iterable[dict], path: str | os.PathLike,
                  roots: Iterable[str | os.PathLike] | None = None) -> Path:
    """Validate and write records atomically as JSONL or Parquet (by the file's suffix), with the
    sidecar ``roots_file(path)`` declaring ``roots``: the folders besides the records folder that
    image and mask paths may point into (a converter passes the dataset folders it read). A path
    outside them is a `RecordError`."""
    path = Path(path)
    extra = [Path(r) for r in (roots or [])]
    records = validate_records(records, source=str(path), base=path.parent, roots=[path.parent, *extra],
                               check_files=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    declare_roots(path, extra)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix == ".parquet":
        from datasets import Dataset

        Dataset.from_list([_to_table_row(r) for r in records], features=features()).to_parquet(str(tmp))
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# prepared folders: one writer at a time, complete only when verified
# ---------------------------------------------------------------------------------------------
LOCK_NAME = ".mxr0-prepare.lock"
#: Seconds a second `mxr0 prepare` into the same folder waits for the first (env ``MXR0_PREPARE_LOCK_TIMEOUT``).
DEFAULT_LOCK_TIMEOUT = 3600.0


class FolderBusyError(TimeoutError):
    """Another process kept writing the folder for longer than the lock timeout."""


class IncompleteFolderError(RuntimeError):
    """A prepared folder lacks files its records name (it is never marked complete nor reused)."""


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "mxr0 prepare", timeout: float | None = None):
    """Hold ``folder/.mxr0-prepare.lock`` (an OS file lock, released when the process ends, even
    killed). A second writer prints that it waits, waits up to ``timeout`` seconds (default
    ``MXR0_PREPARE_LOCK_TIMEOUT`` or `DEFAULT_LOCK_TIMEOUT`), then raises `FolderBusyError`."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if timeout is None:
        timeout = float(os.environ.get("MXR0_PREPARE_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
    lock = FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("%s: %s is being written by another process (lock %s); waiting up to %.0f s for it to finish",
                    what, folder, folder / LOCK_NAME, timeout)
        t0 = time.monotonic()
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise FolderBusyError(
                f"{what}: {folder} is still being written by another process after {timeout:.0f} s (lock "
                f"{folder / LOCK_NAME}). Wait for it to finish, write to another folder, or raise "
                "MXR0_PREPARE_LOCK_TIMEOUT") from None
        log.warning("%s: %s is free after %.0f s; going on", what, folder, time.monotonic() - t0)
    try:
        yield
    finally:
        lock.release()


def missing_files(records: Iterable[dict], base: str | os.PathLike) -> list[str]:
    """Image and mask paths of ``records`` (relative to ``base`` unless absolute) that are absent or empty."""
    bad = []
    for r in records:
        for item in r["images"] + r["masks"]:
            p = item["path"] if os.path.isabs(item["path"]) else os.path.join(base, item["path"])
            try:
                if os.stat(p).st_size > 0:
                    continue
            except OSError:
                pass
            bad.append(item["path"])
    return bad


def _to_table_row(rec: dict) -> dict:
    """A normalised record in the table layout of `features` (``source_labels`` as ``[{name, value}]``)."""
    out = dict(rec)
    out["source_labels"] = [{"name": k, "value": v} for k, v in (rec.get("source_labels") or {}).items()]
    return out


def _from_table_row(row: Any) -> Any:
    """A Parquet / `datasets` row back in the record layout (``source_labels`` as an object)."""
    if isinstance(row, dict) and isinstance(row.get("source_labels"), list):
        items = row["source_labels"]
        if all(isinstance(it, dict) and set(it) == {"name", "value"} for it in items):
            row = {**row, "source_labels": {it["name"]: it["value"] for it in items}}
    return row


def to_dataset(records: list[dict]):
    """The records as a `datasets.Dataset` with the canonical features (``source_labels`` stored as a
    list of ``{name, value}``; `from_dataset_row` turns a row back into a record)."""
    from datasets import Dataset

    return Dataset.from_list([_to_table_row(normalise_record(r)) for r in records], features=features())


def from_dataset_row(row: dict) -> dict:
    """A row of `to_dataset` (or of a records Parquet file) as a record."""
    return _from_table_row(row)
