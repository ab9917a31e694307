"""Converters from public and hospital X-ray datasets into canonical study records.

Each converter reads a source in its original layout and writes ``<out>/records.jsonl`` (or
``records.parquet``) through :func:`mxr0.data.records.write_records`, with image paths relative to
the records file and the dataset folders they point into declared as the file's image roots
(``records.roots.json``, see :mod:`mxr0.data.records`). Use them from Python::

    from mxr0.data.sources import convert
    convert("mimic-cxr", root="/data/mimic-cxr-jpg/2.0.0", out="data_cache/mimic")

or from the shell: ``mxr0 prepare mimic-cxr --root /data/mimic-cxr-jpg/2.0.0 --out data_cache/mimic``.

Sources (``SOURCES``):

- reports and labels: ``iu-xray``, ``mimic-cxr``, ``chexpert``, ``dicom-folder``;
- visual question answering: ``slake`` (SLAKE, English), ``vqa-rad``, ``rexvqa``, ``medical-diff-vqa``
  (with the prior study as a ``prior`` image);
- boxes: ``ms-cxr`` (phrases with boxes), ``nih-boxes`` (ChestX-ray14 ``BBox_List_2017.csv``, all 14 NIH
  findings in ``source_labels``), ``vindr-cxr``, ``rsna-pneumonia``, ``tbx11k`` (COCO boxes);
- masks: ``jsrt`` (lungs, heart, clavicles; nodule flag), ``siim-acr`` (pneumothorax RLE → PNG),
  ``chexmask`` (lung / heart RLE rows for another source's images);
- any anatomy: ``folder-csv`` (PNG / JPEG / DICOM files and a CSV), ``mura`` (MURA's ``XR_<PART>`` layout,
  study-level abnormal flag), ``dicom-folder`` (anatomy from a CSV column or BodyPartExamined);
- clinical notes: ``covid-notes`` (the Figure1 / Actualmed COVID-19 sets; notes as the indication).

The record format (fields, source-specific labels, masks, priors) is described once, in
:mod:`mxr0.data.records`.

Each converter module also declares its own ``mxr0 prepare <source>`` options in ``add_arguments(parser)``
(collected by :func:`add_source_arguments`; each option's ``dest`` is a keyword argument of its converter).

The modules are imported lazily, so importing this package is cheap. The helpers below (tables,
JSON, labels, views, boxes, closed answers, relative paths, skip counting) are shared by the
converters.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import io
import json
import logging
import math
import os
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mxr0.data.records import CHEXPERT_LABELS, VIEWS, anatomy_of, folder_lock

__all__ = [
    "SOURCES",
    "SourceError",
    "Skips",
    "add_check_images",
    "add_source_arguments",
    "closed_answer",
    "convert",
    "describe",
    "get_converter",
    "hash_split",
    "image_index",
    "map_anatomy",
    "normalise_box",
    "normalise_view",
    "parse_age",
    "parse_label",
    "read_json",
    "read_table",
    "relative_path",
]

log = logging.getLogger(__name__)

#: Source name → ``module:function`` of its converter (each ``convert(root, out, **options) -> Path``).
SOURCES: dict[str, str] = {
    "iu-xray": "mxr0.data.sources.iu_xray:convert",
    "mimic-cxr": "mxr0.data.sources.mimic_cxr:convert",
    "chexpert": "mxr0.data.sources.chexpert:convert",
    "dicom-folder": "mxr0.data.sources.dicom_folder:convert",
    "slake": "mxr0.data.sources.slake:convert",
    "vqa-rad": "mxr0.data.sources.vqa_rad:convert",
    "rexvqa": "mxr0.data.sources.rexvqa:convert",
    "medical-diff-vqa": "mxr0.data.sources.medical_diff_vqa:convert",
    "ms-cxr": "mxr0.data.sources.ms_cxr:convert",
    "nih-boxes": "mxr0.data.sources.nih_boxes:convert",
    "vindr-cxr": "mxr0.data.sources.vindr_cxr:convert",
    "rsna-pneumonia": "mxr0.data.sources.rsna_pneumonia:convert",
    "tbx11k": "mxr0.data.sources.tbx11k:convert",
    "jsrt": "mxr0.data.sources.jsrt:convert",
    "siim-acr": "mxr0.data.sources.siim_acr:convert",
    "chexmask": "mxr0.data.sources.chexmask:convert",
    "covid-notes": "mxr0.data.sources.covid_notes:convert",
    "mura": "mxr0.data.sources.mura:convert",
    "folder-csv": "mxr0.data.sources.folder_csv:convert",
    "merge": "mxr0.data.merge:convert",  # not a dataset: joins prepared records (MS-CXR boxes onto MIMIC-CXR reports)
}


class SourceError(ValueError):
    """A source file is malformed; the message names the file, the row and the field."""

    def __init__(self, path: str | os.PathLike, message: str, row: int | None = None, field: str | None = None):
        where = str(path) + (f", row {row}" if row is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.field = str(path), row, field


def _module(name: str):
    """The module of the converter registered under ``name``."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name].split(":")[0])


def get_converter(name: str) -> Callable[..., Path]:
    """The converter function registered under ``name`` (see ``SOURCES``)."""
    return getattr(_module(name), SOURCES[name].split(":")[1])


def describe(name: str) -> str:
    """The first paragraph of source ``name``'s converter module docstring (what it converts), as one line of
    plain text."""
    return " ".join((_module(name).__doc__ or name).replace("``", "").strip().split("\n\n")[0].split())


def add_check_images(parser: argparse.ArgumentParser) -> None:
    """``--no-check-images`` (the converter's ``check_images=False``), shared by the sources that check image files."""
    parser.add_argument("--no-check-images", dest="check_images", action="store_false",
                        help="keep records whose image files are absent")


def _add_merge_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare merge``'s options (`mxr0.data.merge.convert`)."""
    parser.add_argument("--ms-cxr", dest="ms_cxr", required=True,
                        help="the MS-CXR records (file or folder of `mxr0 prepare ms-cxr`); --root is the MIMIC-CXR "
                             "records folder (of `mxr0 prepare mimic-cxr`)")
    parser.add_argument("--no-check-laterality", dest="check_laterality", action="store_false",
                        help="skip the prior / current mirrored-image check (it reads two images per study)")


# mxr0.data.merge is not a converter module of this package: its options are declared here.
_DECLARED_HERE: dict[str, Callable[[argparse.ArgumentParser], None]] = {"merge": _add_merge_arguments}


def add_source_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    """Declare source ``name``'s own ``mxr0 prepare`` options on ``parser``: its converter module's
    ``add_arguments(parser)``. Each option's ``dest`` is a keyword argument of the converter; its default is the
    converter's, or ``argparse.SUPPRESS`` where an absent option must leave the converter's default."""
    declare = _DECLARED_HERE.get(name) or _module(name).add_arguments
    declare(parser)


def convert(name: str, root: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Path:
    """Convert source ``name`` found at ``root`` into records under ``out``; return the records file.

    Holds ``out``'s prepare lock (`mxr0.data.records.folder_lock`): a second conversion into the same
    folder waits for the first (then rewrites the records) or fails with `FolderBusyError`."""

    converter = get_converter(name)
    with folder_lock(out, what=f"mxr0 prepare {name}"):
        return converter(root, out, **options)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def find_table(root: Path, name: str, required: bool = True) -> Path | None:
    """``root/name``, ``root/name.gz`` or ``root/name.zip`` (the MIMIC tables ship gzipped, Kaggle's zipped)."""
    for cand in (root / name, root / f"{name}.gz", root / f"{name}.zip"):
        if cand.is_file():
            return cand
    if required:
        raise FileNotFoundError(f"{root}: none of {name}, {name}.gz, {name}.zip found")
    return None


def _open_binary(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if not m.endswith("/") and not m.startswith("__MACOSX")]
            if len(members) != 1:
                raise SourceError(path, f"expected one file in the zip archive, found {members}")
            return io.BytesIO(zf.read(members[0]))
    return open(path, "rb")


def open_text(path: str | os.PathLike) -> io.TextIOWrapper:
    """A text stream (UTF-8, BOM dropped, for :mod:`csv`) of a plain, ``.gz`` or one-file ``.zip`` table."""
    return io.TextIOWrapper(_open_binary(Path(path)), encoding="utf-8-sig", newline="")


def read_table(path: str | os.PathLike, required_columns: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(row number, row)`` of a CSV (plain, ``.gz`` or a ``.zip`` holding one CSV); row 2 is
    the first after the header.

    Raises :class:`SourceError` naming the file when a required column is missing.
    """
    path = Path(path)
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required_columns if c not in header]
        if missing:
            raise SourceError(path, f"missing column(s) {missing}; found {header}")
        for i, row in enumerate(reader, start=2):
            yield i, {k: (v or "").strip() for k, v in row.items() if k is not None}


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; :class:`SourceError` naming the file (and line) when it is not valid JSON."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise SourceError(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


# ---------------------------------------------------------------------------------------------
# field values
# ---------------------------------------------------------------------------------------------
_LABEL_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-0.0": 0, "-1": -1, "-1.0": -1, "": None, "nan": None}


def parse_label(value: str, path: str | os.PathLike, row: int, field: str) -> int | None:
    """A CheXpert-style label cell (``1.0``, ``0.0``, ``-1.0`` or blank) as 1 / 0 / -1 / None."""
    try:
        return _LABEL_VALUES[value.strip().lower()]
    except KeyError:
        raise SourceError(path, f"label {value!r} is not 1.0, 0.0, -1.0 or blank", row, field) from None


def parse_labels(row: dict[str, str], path: str | os.PathLike, rowno: int) -> dict[str, int | None]:
    """The 14 CheXpert observations of a table row, matched by column name (absent → None)."""
    return {name: parse_label(row.get(name, ""), path, rowno, name) for name in CHEXPERT_LABELS}


_VIEW_ALIASES = {
    "PA": "PA", "POSTERO-ANTERIOR": "PA", "POSTEROANTERIOR": "PA",
    "AP": "AP", "ANTERO-POSTERIOR": "AP", "ANTEROPOSTERIOR": "AP",
    "AP SUPINE": "AP_SUPINE", "AP_SUPINE": "AP_SUPINE", "SUPINE": "AP_SUPINE",
    "LATERAL": "LATERAL", "LAT": "LATERAL", "XTABLE LATERAL": "LATERAL", "LATERAL DECUBITUS": "LATERAL",
    "LL": "LL", "LEFT LATERAL": "LL", "RL": "RL", "RIGHT LATERAL": "RL",
    "LAO": "OBLIQUE", "RAO": "OBLIQUE", "LPO": "OBLIQUE", "RPO": "OBLIQUE", "OBLIQUE": "OBLIQUE",
}


def normalise_view(value: str | None) -> str:
    """A ViewPosition-like value (``PA``, ``postero-anterior``, ``XTABLE LATERAL``, ``LAO`` …) as one
    of the record's ``VIEWS``; unknown or blank values (``AP AXIAL``, ``SWIMMERS``, ``AP LLD``) → ``""``."""
    view = _VIEW_ALIASES.get(" ".join(str(value or "").upper().split()), "")
    assert view in VIEWS
    return view


_VIEW_RANK = {"PA": 0, "AP": 0, "AP_SUPINE": 0, "": 1}


def frontal_first(images: list[dict]) -> list[dict]:
    """Images reordered (stable) frontal views first, then unknown views, then laterals and
    obliques: tasks take the first image whose view they allow."""
    return sorted(images, key=lambda im: _VIEW_RANK.get(im["view"], 2))


def normalise_box(x0: float, y0: float, x1: float, y1: float, width: float, height: float,
                  tolerance: float = 0.01) -> tuple[float, float, float, float]:
    """Pixel corners ``(x0, y0)`` top left, ``(x1, y1)`` bottom right in an image of ``width`` ×
    ``height`` pixels → coordinates normalised to [0, 1] (x right, y down).

    Corners up to ``tolerance`` × the side outside the image are clamped onto it (annotation tools
    round); a box further out, empty or with a non-positive image size raises ``ValueError``.
    """
    if not (width > 0 and height > 0):
        raise ValueError(f"image size {width} x {height} is not positive")
    out = []
    for v, side in ((x0, width), (y0, height), (x1, width), (y1, height)):
        f = float(v) / float(side)
        if not -tolerance <= f <= 1 + tolerance:
            raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) lies outside the {width:g} x {height:g} image")
        out.append(min(max(f, 0.0), 1.0))
    if not (out[0] < out[2] and out[1] < out[3]):
        raise ValueError(f"box ({x0}, {y0}, {x1}, {y1}) is empty")
    return out[0], out[1], out[2], out[3]


def parse_number(value: str, path: str | os.PathLike, row: int, field: str) -> float:
    """A numeric table cell as a finite float; :class:`SourceError` naming the cell otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SourceError(path, f"{value!r} is not a number", row, field) from None
    if not math.isfinite(v):
        raise SourceError(path, f"{value!r} is not a finite number", row, field)
    return v


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD])?\s*$", re.I)
_AGE_UNIT = {"Y": 1.0, "M": 12.0, "W": 52.0, "D": 365.0}


def parse_age(value: Any) -> float | None:
    """A patient age (``72``, ``"058Y"``, ``"6M"``, DICOM AgeString style) in years; None when blank or
    unreadable. Callers check the range (the records accept [0, 130))."""
    if value is None or value == "":
        return None
    m = _AGE.match(str(value))
    if not m:
        return None
    return float(m.group(1)) / _AGE_UNIT[(m.group(2) or "Y").upper()]


YES_NO = ("yes", "no")


def closed_answer(answer: str) -> tuple[str, list[str]]:
    """A closed question's ``(answer, options)``: yes / no answers (any case) become ``"yes"`` /
    ``"no"`` with options ``["yes", "no"]``; any other answer is kept as given, with no options."""
    low = answer.strip().lower()
    if low in YES_NO:
        return low, list(YES_NO)
    return answer, []


def relative_path(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` relative to the records folder ``base`` (absolute when on another drive)."""
    try:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(base))
    except ValueError:
        return os.path.abspath(path)


def records_path(out: str | os.PathLike, fmt: str) -> Path:
    """``out/records.jsonl`` or ``out/records.parquet``."""
    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be 'jsonl' or 'parquet', got {fmt!r}")
    return Path(out) / f"records.{fmt}"


class Skips:
    """Counts skipped items by reason, logs the first few of each and a summary at the end; `note`
    counts things kept but changed (e.g. an unknown anatomy kept as ``other``) in ``notes``."""

    def __init__(self, source: str, show: int = 5):
        self.source, self.show, self.counts = source, show, Counter()
        self.notes: Counter = Counter()

    def note(self, reason: str, detail: str = "", n: int = 1) -> None:
        """Count ``n`` kept-but-changed items for ``reason`` (the first ``show`` logged)."""
        if n <= 0:
            return
        self.notes[reason] += n
        if self.notes[reason] - n < self.show:
            log.warning("%s: %s %s", self.source, reason, detail)

    def add(self, reason: str, detail: str = "", n: int = 1) -> None:
        """Count ``n`` skips for ``reason``; the first ``show`` of each reason are logged."""
        if n <= 0:
            return
        self.counts[reason] += n
        if self.counts[reason] - n < self.show:
            log.warning("%s: skipped (%s) %s", self.source, reason, detail)

    def summary(self) -> str:
        """``"3 image file missing, 1 ..."`` (``"none"``), logged as a warning when not empty."""
        text = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common()) or "none"
        if self.counts:
            log.warning("%s: skipped in total: %s", self.source, text)
        return text


def map_anatomy(value: Any, skips: Skips, where: str = "") -> str:
    """``value`` (a BodyPartExamined code, a CSV cell, a MURA ``XR_*`` folder) as one of the record's
    ``ANATOMIES`` (:func:`mxr0.data.records.anatomy_of`); an unknown non-empty value becomes ``other``
    and is counted in ``skips.notes`` as ``"anatomy <VALUE> → other"`` (an empty one as ``"anatomy
    missing → other"``)."""

    anatomy, known = anatomy_of(value)
    if not known:
        text = str(value or "").strip()
        skips.note(f"anatomy {text.upper()!s} → other" if text else "anatomy missing → other", where)
    return anatomy


SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
               "valid": "validation", "validate": "validation", "dev": "validation", "test": "test"}


def hash_split(key: str, validation: int = 10, test: int = 10) -> str:
    """A deterministic split of ``key`` (SHA-256 buckets: ``validation`` % validation, ``test`` % test,
    the rest train); the same key always lands in the same split (use the patient id to keep patients whole)."""
    import hashlib

    bucket = int(hashlib.sha256(("split:" + key).encode("utf-8")).hexdigest(), 16) % 100
    return "train" if bucket < 100 - validation - test else "validation" if bucket < 100 - test else "test"


def image_index(folder: Path, suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm")) -> dict[str, Path]:
    """``{file name: path}`` and ``{stem: path}`` of the image files under ``folder`` (first found wins)."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in suffixes and p.is_file():
            out.setdefault(p.name, p)
            out.setdefault(p.stem, p)
    return out


def progress(iterable, desc: str, enabled: bool, total: int | None = None, unit: str = "study"):
    """A tqdm bar over ``iterable`` (or the iterable itself when disabled)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit)


def single_image_records(studies, out_dir: str | os.PathLike, check_images: bool, skips: Skips) -> list[dict]:
    """The one-image records of ``studies`` (dicts with an absolute ``images[0].path``) whose image file exists
    (missing ones counted in ``skips``; all kept when not ``check_images``), paths made relative to ``out_dir``."""
    records = []
    for rec in studies:
        image = Path(rec["images"][0]["path"])
        if check_images and not image.is_file():
            skips.add("image file missing", str(image))
            continue
        rec["images"][0]["path"] = relative_path(image, out_dir)
        records.append(rec)
    return records
