"""A hospital DICOM export (a folder of ``.dcm`` files and a CSV table) → canonical records.

The table has one row per study or per image and names the study in a key column:

- ``key`` (default: the first of ``StudyInstanceUID``, ``study_id``, ``study`` present in the CSV);
- ``path_column`` (default: the first of ``path``, ``file``, ``filename``, ``file_path``,
  ``dicom_path``, ``Path`` present): a DICOM file relative to ``root``, one image per row (several
  rows may share a study key). Without a path column the key must be ``StudyInstanceUID``: every
  ``*.dcm`` under ``root`` is read (header only) and grouped by its StudyInstanceUID;
- labels: any column named like one of the 14 CheXpert observations (case-insensitive), cells
  ``1``/``0``/``-1``/blank (``1.0`` … accepted);
- report: columns named like a section (``indication``, ``technique``, ``comparison``, ``findings``,
  ``impression``) and/or one free-text column (``report``, ``report_text``, ``text``) that is split
  with :func:`mxr0.data.sources.sections.split_sections` (explicit section columns win);
- ``split`` (optional): ``train`` / ``validation`` (``val``, ``valid``, ``validate``) / ``test``; without
  it studies are assigned deterministically from a hash of the key (80 / 10 / 10 %);
- ``sex`` (M/F/Male/Female) and ``age`` (years, ages above 89 recorded as 90, as HIPAA's safe harbour
  requires) when present;
- anatomy: ``anatomy_column`` (default the first of ``anatomy``, ``body_part``, ``BodyPartExamined``,
  ``bodypart`` present, any case), else the first image's ``BodyPartExamined`` tag, mapped to the
  record's ``ANATOMIES`` by :func:`mxr0.data.records.anatomy_of` (``CHEST``, ``LSPINE``, ``HAND``, ``Knee``
  …). An unknown value becomes ``other``; a study with no value at all gets ``default_anatomy`` (default
  ``chest``); both are counted and logged;
- ``view`` (optional, any case; ``view_column``): the view when the file's header has none (PNG / JPEG
  files of `mxr0.data.sources.folder_csv`).

Labels, report text, split, sex, age and anatomy come from the first row of a study.

Privacy: records never receive a DICOM tag other than the view (``ViewPosition`` from
:func:`mxr0.data.xray.read_dicom_meta`, which returns technical tags only). The ``study_id`` is
``dcm-`` + the first 16 hex digits of SHA-256(``salt`` + key) by default (``study_id="hash"``), or the
CSV key as given (``study_id="key"``: only for keys that are already pseudonymous). The salt is random
by default, kept beside the records in ``.study-id-salt`` (or given with ``salt`` / ``--salt`` /
``$MXR0_STUDY_ID_SALT``), so the ids cannot be recomputed from patient-derived keys without it. PNGs are named
``images/<study_id>/<n>.png``, never after the DICOM file names. Free text in the CSV is copied as
given: de-identify reports before converting.

Each image is decoded with :func:`mxr0.data.xray.read_xray` and written with
:func:`mxr0.data.xray.write_png` under ``out/images``; unreadable files are skipped (counted, logged)
and a study left without images is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import secrets
from pathlib import Path

import pydicom

from mxr0.data.records import ANATOMIES, CHEXPERT_LABELS, REPORT_SECTIONS, empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    frontal_first,
    map_anatomy,
    normalise_view,
    parse_label,
    progress,
    read_table,
    records_path,
)
from mxr0.data.sources.sections import split_sections
from mxr0.data.xray import XrayReadError, read_dicom_meta, read_xray, write_png

__all__ = ["add_arguments", "add_table_arguments", "build_records", "convert", "hashed_study_id", "study_id_salt"]

log = logging.getLogger(__name__)

SOURCE = "dicom-folder"
KEY_COLUMNS = ("StudyInstanceUID", "study_id", "study")
PATH_COLUMNS = ("path", "file", "filename", "file_path", "dicom_path", "Path")
TEXT_COLUMNS = ("report", "report_text", "text")
ANATOMY_COLUMNS = ("anatomy", "body_part", "BodyPartExamined", "bodypart", "body part", "body_part_examined")
VIEW_COLUMNS = ("view", "ViewPosition", "view_position", "projection")
_SPLITS = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
           "validate": "validation", "test": "test"}
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F", "": "", "o": "", "u": "", "unknown": ""}


SALT_FILE = ".study-id-salt"
SALT_ENV = "MXR0_STUDY_ID_SALT"


def study_id_salt(out_dir: str | os.PathLike, salt: str | None = None) -> str:
    """The salt of the hashed study ids: ``salt`` when given (non-empty), else ``$MXR0_STUDY_ID_SALT``,
    else the one kept in ``out_dir/.study-id-salt``, else a new random one written there (mode 0600), so
    that reruns into the same folder keep the same ids. It is never logged nor put in model cards."""
    if salt:
        return salt
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV]
    path = Path(out_dir) / SALT_FILE
    try:
        kept = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        kept = ""
    if kept:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new + "\n")
    log.info("%s: new random study-id salt kept in %s (keep it private; same folder, same ids)", SOURCE, path)
    return new


def hashed_study_id(key: str, salt: str = "") -> str:
    """``dcm-`` + 16 hex digits of SHA-256(salt + key): stable, and not the key itself."""
    return "dcm-" + hashlib.sha256((salt + key).encode("utf-8")).hexdigest()[:16]


def _hash_split(key: str) -> str:
    bucket = int(hashlib.sha256(("split:" + key).encode("utf-8")).hexdigest(), 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def _pick(header: list[str], given: str | None, candidates: tuple[str, ...], what: str, table: Path) -> str | None:
    if given is not None:
        if given not in header:
            raise SourceError(table, f"{what} column {given!r} not found; columns are {header}")
        return given
    return next((c for c in candidates if c in header), None)


def _columns(header: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """``{canonical name: CSV column}`` for columns matching ``names`` case-insensitively."""
    lower = {h.lower(): h for h in header}
    return {n: lower[n.lower()] for n in names if n.lower() in lower}


def _study_fields(row: dict[str, str], table: Path, rowno: int, cols: dict[str, dict[str, str]]) -> dict:
    """Labels, sections, sex and age of the first row of a study."""
    out: dict = {"labels": {n: parse_label(row[c], table, rowno, c) for n, c in cols["labels"].items()}}
    text = next((row[c] for c in cols["text"].values() if row[c]), "")
    sections = split_sections(text) if text else {}
    sections.update({s: " ".join(row[c].split()) for s, c in cols["sections"].items() if row[c]})
    out.update(sections)
    if "sex" in cols["demo"]:
        sex = row[cols["demo"]["sex"]].lower()
        if sex not in _SEX:
            raise SourceError(table, f"sex {row[cols['demo']['sex']]!r} is not M/F/Male/Female", rowno, "sex")
        out["sex"] = _SEX[sex]
    if "age" in cols["demo"] and row[cols["demo"]["age"]]:
        raw = row[cols["demo"]["age"]]
        try:
            age = float(raw)
        except ValueError:
            raise SourceError(table, f"age {raw!r} is not a number", rowno, "age") from None
        if not 0 <= age < 130:
            raise SourceError(table, f"age {raw!r} is outside [0, 130)", rowno, "age")
        out["age"] = min(age, 90.0)
    return out


def _scan_studies(root: Path, show_progress: bool, skips: Skips) -> dict[str, list[Path]]:
    """``{StudyInstanceUID: [files]}`` of every ``*.dcm`` under ``root`` (headers only)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".dcm")
    out: dict[str, list[Path]] = {}
    for p in progress(files, "scan DICOM headers", show_progress, unit="file"):
        try:
            uid = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).get(
                "StudyInstanceUID")
        except Exception:  # noqa: BLE001 - any unreadable header is a counted skip
            uid = None
        if not uid:
            skips.add("DICOM without a readable StudyInstanceUID", p.name)
            continue
        out.setdefault(str(uid), []).append(p)
    return out


def _first_column(header: list[str], given: str | None, names: tuple[str, ...], what: str, table: Path) -> str | None:
    if given is not None:
        if given not in header:
            raise SourceError(table, f"{what} column {given!r} not found; columns are {header}")
        return given
    found = _columns(header, names)
    return next((found[n] for n in names if n in found), None)


def build_records(root: str | os.PathLike, table: str | os.PathLike, out_dir: str | os.PathLike, *,
                  key: str | None = None, path_column: str | None = None, study_id: str = "hash",
                  salt: str | None = None, png_bits: int = 8, show_progress: bool = False,
                  anatomy_column: str | None = None, default_anatomy: str = "chest", view_column: str | None = None,
                  source: str = SOURCE, id_prefix: str = "dcm-") -> tuple[list[dict], Skips]:
    """Convert the export: write PNGs under ``out_dir/images`` and return the records (see the module docstring).

    ``salt`` (see `study_id_salt`; default: the environment's or the folder's own random salt) keys the
    hashed study ids. ``source`` / ``id_prefix`` name the records of a wrapper (`folder_csv`)."""

    if default_anatomy not in ANATOMIES:
        raise ValueError(f"default_anatomy must be one of {list(ANATOMIES)}, got {default_anatomy!r}")
    root, table, out_dir = Path(root), Path(table), Path(out_dir)
    if study_id not in ("hash", "key"):
        raise ValueError(f"study_id must be 'hash' or 'key', got {study_id!r}")
    if study_id == "hash":
        salt = study_id_salt(out_dir, salt)
    rows = list(read_table(table))
    header = list(rows[0][1]) if rows else []
    key = _pick(header, key, KEY_COLUMNS, "study key", table)
    path_column = _pick(header, path_column, PATH_COLUMNS, "path", table)
    if key is None:
        if path_column is None:
            raise SourceError(table, f"no study key column ({' / '.join(KEY_COLUMNS)}) or path column "
                                     f"({' / '.join(PATH_COLUMNS)}); columns are {header}")
        key = path_column
    if path_column is None and key != "StudyInstanceUID":
        raise SourceError(table, f"without a path column the study key must be StudyInstanceUID, got {key!r}")
    cols = {"labels": _columns(header, CHEXPERT_LABELS), "sections": _columns(header, REPORT_SECTIONS),
            "text": _columns(header, TEXT_COLUMNS), "demo": _columns(header, ("sex", "age"))}
    split_col = next((h for h in header if h.lower() == "split"), None)
    anatomy_col = _first_column(header, anatomy_column, ANATOMY_COLUMNS, "anatomy", table)
    view_col = _first_column(header, view_column, VIEW_COLUMNS, "view", table)
    skips = Skips(source)
    anatomy_given: dict[str, bool] = {}
    row_views: dict[str, list[str]] = {}
    studies: dict[str, dict] = {}
    files: dict[str, list[Path]] = {}
    for rowno, row in rows:
        k = row[key]
        if not k:
            raise SourceError(table, "empty study key", rowno, key)
        if k not in studies:
            split = _SPLITS.get(row[split_col].lower()) if split_col and row[split_col] else _hash_split(k)
            if split is None:
                raise SourceError(table, f"split {row[split_col]!r} is not train/validation/test", rowno, split_col)
            sid = hashed_study_id(k, salt).replace("dcm-", id_prefix, 1) if study_id == "hash" else k
            studies[k] = {**empty_record(sid, split, source, default_anatomy), **_study_fields(row, table, rowno, cols)}
            if anatomy_col and row[anatomy_col]:
                studies[k]["anatomy"] = map_anatomy(row[anatomy_col], skips, f"({table.name} row {rowno})")
                anatomy_given[k] = True
        if path_column is not None:
            if not row[path_column]:
                raise SourceError(table, "empty file path", rowno, path_column)
            files.setdefault(k, []).append(root / row[path_column])
            row_views.setdefault(k, []).append(row[view_col] if view_col else "")
    if path_column is None:
        scanned = _scan_studies(root, show_progress, skips)
        files = {k: scanned.get(k, []) for k in studies}
        skips.add("DICOM study not in the table", n=len(set(scanned) - set(studies)))
    records = []
    for k, rec in progress(studies.items(), source, show_progress, len(studies)):
        images = []
        body_part = None
        views = row_views.get(k, [])
        for j, p in enumerate(files.get(k, [])):
            try:
                meta = read_dicom_meta(p) if _is_dicom(p) else {}
                view = normalise_view(meta.get("ViewPosition") or (views[j] if j < len(views) else ""))
                body_part = body_part or meta.get("BodyPartExamined")
                dest = Path("images") / rec["study_id"] / f"{len(images)}.png"
                write_png(out_dir / dest, read_xray(p), bits=png_bits)
            except (XrayReadError, FileNotFoundError) as e:
                skips.add("unreadable or missing image" if source != SOURCE else "unreadable or missing DICOM",
                          str(e).splitlines()[0])
                continue
            images.append({"path": dest.as_posix(), "view": view, "role": "current"})
        if not images:
            skips.add("study without any readable image", rec["study_id"])
            continue
        if not anatomy_given.get(k):
            if body_part:
                rec["anatomy"] = map_anatomy(str(body_part), skips, f"(BodyPartExamined of study {rec['study_id']})")
            else:
                skips.note(f"anatomy missing (no column value, no BodyPartExamined) → {default_anatomy}", rec["study_id"])
        rec["images"] = frontal_first(images)
        records.append(rec)
    if skips.notes:
        log.warning("%s: anatomy: %s", source, ", ".join(f"{n} {r}" for r, n in skips.notes.most_common()))
    return records, skips


def _is_dicom(path: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM preamble (``DICM`` at byte 128)."""
    if path.suffix.lower() == ".dcm":
        return True
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def add_table_arguments(parser: argparse.ArgumentParser, table_help: str) -> None:
    """The table options dicom-folder and folder-csv share: ``--table`` (required) and its columns, study ids."""
    parser.add_argument("--table", required=True, help=table_help)
    parser.add_argument("--key", help="study key column (default StudyInstanceUID / study_id / study)")
    parser.add_argument("--path-column", help="column of file paths relative to ROOT")
    parser.add_argument("--study-id", choices=["hash", "key"], default="hash",
                        help="study_id is a hash of the key (default) or the key as given")
    parser.add_argument("--salt", default=None, help="secret salt for the hashed study ids (default: "
                        "$MXR0_STUDY_ID_SALT, else a random salt kept in OUT/.study-id-salt; never logged)")
    parser.add_argument("--anatomy-column", help="CSV column of the body part (default anatomy / body_part / "
                        "BodyPartExamined; else the DICOM BodyPartExamined tag)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare dicom-folder``'s options (keyword arguments of `convert`)."""
    add_table_arguments(parser, "CSV with a study key and label or report columns")
    parser.add_argument("--default-anatomy", default="chest", help="anatomy of studies with no body part at all")


def convert(root: str | os.PathLike, out: str | os.PathLike, *, table: str | os.PathLike, key: str | None = None,
            path_column: str | None = None, study_id: str = "hash", salt: str | None = None, png_bits: int = 8,
            anatomy_column: str | None = None, default_anatomy: str = "chest",
            fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert the DICOM export under ``root`` described by ``table`` into ``out/records.jsonl``."""
    path = records_path(out, fmt)
    records, skips = build_records(root, table, path.parent, key=key, path_column=path_column, study_id=study_id,
                                   salt=salt, png_bits=png_bits, show_progress=show_progress,
                                   anatomy_column=anatomy_column, default_anatomy=default_anatomy)
    log.info("%s: %d studies (skipped: %s)", SOURCE, len(records), skips.summary())
    return write_records(records, path)
