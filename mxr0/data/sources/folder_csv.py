"""A folder of X-ray files of any anatomy (PNG, JPEG or DICOM) and a CSV table → canonical records.

The generic converter for a local collection: the same table conventions as
:mod:`mxr0.data.sources.dicom_folder` (study key, one file per row in a path column, CheXpert label
columns, report sections or a free-text report, ``split``, ``sex``, ``age``; see its docstring), with:

- files of any format :func:`mxr0.data.xray.read_xray` reads, re-written as PNGs under
  ``out/images/<study_id>/<n>.png`` (never named after the original file names, which often carry
  patient names or ids);
- the anatomy from a CSV column (``anatomy_column``; default the first of ``anatomy``, ``body_part``,
  ``BodyPartExamined`` …) or, for DICOM files, the ``BodyPartExamined`` tag, mapped to the record's
  ``ANATOMIES`` (:func:`mxr0.data.records.anatomy_of`); unknown values become ``other`` and are
  counted, studies with no value get ``default_anatomy`` (default ``other`` here: a generic folder is
  not assumed to be chest);
- the view from a ``view`` / ``ViewPosition`` / ``projection`` column (DICOM headers win);
- ``study_id``: ``img-`` + a salted hash of the key (``study_id="hash"``, default) or the key as given.

The record format is described in :mod:`mxr0.data.records`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from mxr0.data.records import write_records
from mxr0.data.sources import SourceError, read_table, records_path
from mxr0.data.sources.dicom_folder import add_table_arguments
from mxr0.data.sources.dicom_folder import build_records as _build

__all__ = ["add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "folder-csv"
PATH_COLUMNS = ("path", "file", "filename", "file_path", "image", "image_path", "Path")


def build_records(root: str | os.PathLike, table: str | os.PathLike, out_dir: str | os.PathLike, *,
                  key: str | None = None, path_column: str | None = None, anatomy_column: str | None = None,
                  view_column: str | None = None, default_anatomy: str = "other", study_id: str = "hash",
                  salt: str | None = None, png_bits: int = 8, show_progress: bool = False):
    """``(records, skips)`` of the folder (see the module docstring); ``skips.notes`` counts the anatomy
    values mapped to ``other`` and the studies without any."""

    table = Path(table)
    header = next((list(row) for _, row in read_table(table)), [])
    if path_column is None:
        path_column = next((c for c in PATH_COLUMNS if c in header), None)
        if path_column is None:
            raise SourceError(table, f"no path column ({' / '.join(PATH_COLUMNS)}); columns are {header}")
    return _build(root, table, out_dir, key=key, path_column=path_column, study_id=study_id, salt=salt,
                  png_bits=png_bits, show_progress=show_progress, anatomy_column=anatomy_column,
                  default_anatomy=default_anatomy, view_column=view_column, source=SOURCE, id_prefix="img-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare folder-csv``'s options (keyword arguments of `convert`)."""
    add_table_arguments(parser, "CSV with a study key, a file path and label or report columns")
    parser.add_argument("--default-anatomy", default="other", help="anatomy of studies with no body part at all")


def convert(root: str | os.PathLike, out: str | os.PathLike, *, table: str | os.PathLike, key: str | None = None,
            path_column: str | None = None, anatomy_column: str | None = None, view_column: str | None = None,
            default_anatomy: str = "other", study_id: str = "hash", salt: str | None = None, png_bits: int = 8,
            fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """Convert the files under ``root`` described by ``table`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, table, path.parent, key=key, path_column=path_column,
                                   anatomy_column=anatomy_column, view_column=view_column,
                                   default_anatomy=default_anatomy, study_id=study_id, salt=salt, png_bits=png_bits,
                                   show_progress=show_progress)
    log.info("%s: %d studies (skipped: %s)", SOURCE, len(records), skips.summary())
    return write_records(records, path)
