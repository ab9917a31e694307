"""Converters from public and hospital X-ray datasets into canonical study records.

Each converter reads a source in its original layout and writes ``<out>/records.jsonl`` (or
``records.parquet``) through :func:`mxr0.data.records.write_records`, with image paths relative to
the records file. Use them from Python::

    from mxr0.data.sources import convert
    convert("mimic-cxr", root="/data/mimic-cxr-jpg/2.0.0", out="data_cache/mimic")

or from the shell: ``mxr0 prepare mimic-cxr --root /data/mimic-cxr-jpg/2.0.0 --out data_cache/mimic``.

Sources (``SOURCES``): ``iu-xray``, ``mimic-cxr``, ``chexpert``, ``dicom-folder``. The modules are
imported lazily, so importing this package is cheap. The helpers below (tables, labels, views,
relative paths, skip counting) are shared by the converters.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mxr0.data.records import CHEXPERT_LABELS, VIEWS

__all__ = [
    "SOURCES",
    "SourceError",
    "Skips",
    "convert",
    "get_converter",
    "normalise_view",
    "parse_label",
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
}


class SourceError(ValueError):
    """A source file is malformed; the message names the file, the row and the field."""

    def __init__(self, path: str | os.PathLike, message: str, row: int | None = None, field: str | None = None):
        where = str(path) + (f", row {row}" if row is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.path, self.row, self.field = str(path), row, field


def get_converter(name: str) -> Callable[..., Path]:
    """The converter function registered under ``name`` (see ``SOURCES``)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; available: {', '.join(SOURCES)}")
    module, func = SOURCES[name].split(":")
    return getattr(importlib.import_module(module), func)


def convert(name: str, root: str | os.PathLike, out: str | os.PathLike, **options: Any) -> Path:
    """Convert source ``name`` found at ``root`` into records under ``out``; return the records file."""
    return get_converter(name)(root, out, **options)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def find_table(root: Path, name: str, required: bool = True) -> Path | None:
    """``root/name`` or ``root/name.gz`` (the MIMIC tables ship gzipped)."""
    for cand in (root / name, root / f"{name}.gz"):
        if cand.is_file():
            return cand
    if required:
        raise FileNotFoundError(f"{root}: neither {name} nor {name}.gz found")
    return None


def read_table(path: str | os.PathLike, required_columns: tuple[str, ...] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(row number, row)`` of a CSV (plain or ``.gz``); row 2 is the first after the header.

    Raises :class:`SourceError` naming the file when a required column is missing.
    """
    path = Path(path)
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in required_columns if c not in header]
        if missing:
            raise SourceError(path, f"missing column(s) {missing}; found {header}")
        for i, row in enumerate(reader, start=2):
            yield i, {k: (v or "").strip() for k, v in row.items() if k is not None}


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
    """Counts skipped items by reason, logs the first few of each and a summary at the end."""

    def __init__(self, source: str, show: int = 5):
        self.source, self.show, self.counts = source, show, Counter()

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


def progress(iterable, desc: str, enabled: bool, total: int | None = None, unit: str = "study"):
    """A tqdm bar over ``iterable`` (or the iterable itself when disabled)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit)
