"""IU X-ray (Indiana University chest X-ray collection, OpenI) → canonical records.

Inputs, found under ``root`` unless given explicitly:

- reports: the ``ecgen-radiology/*.xml`` files, either extracted or read straight from
  ``NLMCXR_reports.tgz``; one XML per study, ``AbstractText`` elements labelled COMPARISON /
  INDICATION / FINDINGS / IMPRESSION, ``parentImage id="CXR1_1_IM-0001-3001"`` per image, MeSH terms;
- split: R2Gen's ``annotation.json`` (here ``r2gen_annotation.json``), ``{"train"|"val"|"test": [{"id":
  "CXR1_1_IM-0001", ...}]}``; an id is an image id without its last ``-NNNN``. ``val`` → ``validation``.
  Studies outside the R2Gen split (those without two images) are skipped by default
  (``unsplit="skip"``, counted and logged), or kept in ``train`` (``unsplit="train"``);
- views (optional): Kaggle's ``indiana_projections.csv`` (here ``kaggle_iu_projections.csv``;
  ``uid,filename,projection`` with ``1_IM-0001-4001.dcm.png`` / Frontal|Lateral; the file name drops
  ``CXR<uid>_`` from image ``CXR1_1_IM-0001-4001``, see :func:`kaggle_name`) and the DICOM header
  dump ``nlmcxr_dicom_metadata.csv.gz`` (only ``imageid`` and ``View Position`` are read). Lateral →
  the header's LL / RL / LATERAL, else ``LATERAL``; Frontal → the header's PA / AP, else
  ``frontal_view`` (default ``""``: unknown, since a third of the frontal headers are blank);
- images: PNGs named ``<image id>.png`` (OpenI's ``NLMCXR_png``) or ``<id without CXR>.dcm.png``
  (Kaggle), anywhere under ``images`` (default ``root/images``).

Images are referenced in place (paths relative to the records file), not copied. A study keeps
the images that exist; a study with none is skipped (counted, logged) unless ``report_only=True``,
which writes every study with ``images=[]`` — for report-only tasks (the shared copy has no images).
CheXpert labels are not part of IU X-ray: every label is ``None`` (not mentioned). MeSH terms are
parsed (:class:`IUReport`) but the record has no field for them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    find_table,
    frontal_first,
    normalise_view,
    progress,
    read_table,
    records_path,
    relative_path,
)
from mxr0.data.sources.sections import clean_text

__all__ = ["IUReport", "add_arguments", "build_records", "convert", "iter_reports", "kaggle_name", "load_projections", "load_r2gen_split", "parse_report_xml", "view_of"]

log = logging.getLogger(__name__)

SOURCE = "iu-xray"
_LABELS = {"COMPARISON": "comparison", "INDICATION": "indication", "FINDINGS": "findings",
           "IMPRESSION": "impression", "TECHNIQUE": "technique"}
_R2GEN_SPLITS = {"train": "train", "val": "validation", "test": "test"}


@dataclass
class IUReport:
    """One parsed ``ecgen-radiology`` XML."""

    uid: str
    sections: dict[str, str]
    image_ids: list[str]
    mesh_major: list[str] = field(default_factory=list)
    mesh_minor: list[str] = field(default_factory=list)


def parse_report_xml(data: bytes | str, name: str = "<xml>") -> IUReport:
    """Parse one report XML; raises :class:`SourceError` naming ``name`` when it is malformed."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise SourceError(name, f"not valid XML ({e})") from None
    uid_el = root.find("uId")
    uid = uid_el.get("id", "") if uid_el is not None else ""
    if not uid:
        raise SourceError(name, "no <uId id=...> element", field="uId")
    sections = {s: "" for s in _LABELS.values()}
    for el in root.iter("AbstractText"):
        key = _LABELS.get((el.get("Label") or "").upper())
        if key:
            sections[key] = clean_text(" ".join([sections[key], "".join(el.itertext())]))
    images = [el.get("id", "") for el in root.iter("parentImage") if el.get("id")]
    mesh = root.find("MeSH")
    major = [clean_text(e.text or "") for e in mesh.iter("major")] if mesh is not None else []
    minor = [clean_text(e.text or "") for e in mesh.iter("minor")] if mesh is not None else []
    return IUReport(uid, sections, images, major, minor)


def iter_reports(reports: str | os.PathLike) -> Iterator[IUReport]:
    """Every report of a folder of XMLs (``ecgen-radiology/``) or of ``NLMCXR_reports.tgz``, by uid."""
    reports = Path(reports)
    if reports.is_dir():
        for p in sorted(reports.glob("*.xml"), key=_xml_order):
            yield parse_report_xml(p.read_bytes(), str(p))
        return
    parsed: list[tuple[tuple[int, str], IUReport]] = []
    with tarfile.open(reports, "r|*") as tar:  # streamed: random access into a .tgz re-decompresses
        for m in tar:
            f = tar.extractfile(m) if m.isfile() and m.name.endswith(".xml") else None
            if f is not None:
                parsed.append((_xml_order(Path(m.name)), parse_report_xml(f.read(), f"{reports}:{m.name}")))
    parsed.sort(key=lambda t: t[0])
    yield from (rep for _, rep in parsed)


def _xml_order(p: Path) -> tuple[int, str]:
    return (int(p.stem), "") if p.stem.isdigit() else (1 << 30, p.stem)


def r2gen_id(image_id: str) -> str:
    """R2Gen's study id for an image id: ``CXR1_1_IM-0001-3001`` → ``CXR1_1_IM-0001``."""
    return image_id.rsplit("-", 1)[0]


def load_r2gen_split(path: str | os.PathLike) -> dict[str, str]:
    """R2Gen ``annotation.json`` as ``{r2gen id: train|validation|test}``."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out: dict[str, str] = {}
    for key, items in data.items():
        if key not in _R2GEN_SPLITS:
            raise SourceError(path, f"unexpected split {key!r}; expected {sorted(_R2GEN_SPLITS)}")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not item.get("id"):
                raise SourceError(path, "entry without an 'id'", row=i, field=f"{key}[{i}].id")
            out[item["id"]] = _R2GEN_SPLITS[key]
    return out


def kaggle_name(image_id: str) -> str:
    """Kaggle's file stem of an image: ``CXR1_1_IM-0001-3001`` → ``1_IM-0001-3001``,
    ``CXR2_IM-0652-1001`` → ``2_IM-0652-1001`` (the last number before ``IM`` and the image part)."""
    return "_".join(image_id.split("_")[-2:]).removeprefix("CXR")


def load_projections(path: str | os.PathLike | None, dicom_meta: str | os.PathLike | None = None,
                     frontal_view: str = "") -> dict[tuple[str, str], str]:
    """``{(uid number, Kaggle name): view}`` from Kaggle's projections CSV and, optionally, the
    DICOM header dump (see :func:`view_of`)."""
    header_view: dict[str, str] = {}
    if dicom_meta is not None:
        for _, row in read_table(dicom_meta, ("imageid", "View Position")):
            header_view[row["imageid"]] = normalise_view(row["View Position"])
    header_view = {kaggle_name(k): v for k, v in header_view.items()}
    views: dict[tuple[str, str], str] = {}
    if path is not None:
        for rowno, row in read_table(path, ("uid", "filename", "projection")):
            name = row["filename"].removesuffix(".png").removesuffix(".dcm")
            proj, hv = row["projection"].lower(), header_view.get(name, "")
            if proj == "lateral":
                views[row["uid"], name] = hv if hv in ("LL", "RL", "LATERAL") else "LATERAL"
            elif proj == "frontal":
                views[row["uid"], name] = hv if hv in ("PA", "AP", "AP_SUPINE") else frontal_view
            else:
                raise SourceError(path, f"projection {row['projection']!r} is not Frontal or Lateral",
                                  rowno, "projection")
    return views


def view_of(views: dict[tuple[str, str], str], uid: str, image_id: str) -> str:
    """The view of image ``image_id`` of study ``uid`` (``CXR1``); ``""`` when not listed."""
    return views.get((uid.removeprefix("CXR"), kaggle_name(image_id)), "")


def _index_images(images: Path) -> dict[str, Path]:
    """``{file stem: path}`` of every PNG under ``images`` (OpenI ``<image id>.png`` and Kaggle
    ``<kaggle name>.dcm.png``; looked up by :func:`_find_image`)."""
    return {p.name.removesuffix(".png").removesuffix(".dcm"): p for p in images.rglob("*.png")}


def _find_image(index: dict[str, Path], image_id: str) -> Path | None:
    return index.get(image_id) or index.get(kaggle_name(image_id))


def _first_existing(root: Path, *names: str) -> Path | None:
    for n in names:
        if (root / n).exists():
            return root / n
    return None


def build_records(reports: str | os.PathLike, out_dir: str | os.PathLike, *, split_file: str | os.PathLike,
                  images: str | os.PathLike | None = None, projections: str | os.PathLike | None = None,
                  dicom_meta: str | os.PathLike | None = None, frontal_view: str = "",
                  report_only: bool = False, unsplit: str = "skip",
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """Canonical records of every IU X-ray study (see the module docstring for the rules)."""
    if unsplit not in ("skip", "train"):
        raise ValueError(f"unsplit must be 'skip' or 'train', got {unsplit!r}")
    if images is None and not report_only:
        raise ValueError("IU X-ray: give the PNG folder (images=..., --images) or report_only=True "
                         "for records without images")
    splits = load_r2gen_split(split_file)
    views = load_projections(projections, dicom_meta, frontal_view)
    index = _index_images(Path(images)) if images is not None else {}
    skips = Skips(SOURCE)
    records: list[dict] = []
    for rep in progress(iter_reports(reports), "iu-xray", show_progress):
        found = sorted({splits[r2gen_id(i)] for i in rep.image_ids if r2gen_id(i) in splits})
        if len(found) > 1:
            raise SourceError(split_file, f"study {rep.uid} has images in several splits {found}")
        if not found and unsplit == "skip":
            skips.add("not in the R2Gen split", rep.uid)
            continue
        rec = empty_record(rep.uid, found[0] if found else "train", SOURCE, "chest")
        rec.update(rep.sections)
        found_images = []
        for i in rep.image_ids:
            p = _find_image(index, i)
            if p is not None:
                found_images.append({"path": relative_path(p, out_dir), "view": view_of(views, rep.uid, i),
                                     "role": "current"})
            elif images is not None:
                skips.add("image file missing", i)
        rec["images"] = frontal_first(found_images)
        if not rec["images"] and not report_only:
            skips.add("study without any image file", rep.uid)
            continue
        records.append(rec)
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare iu-xray``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="folder of the PNG images (default ROOT/images)")
    parser.add_argument("--report-only", action="store_true",
                        help="write studies whose images are missing, with no images")
    parser.add_argument("--unsplit", choices=["skip", "train"], default="skip",
                        help="studies outside the R2Gen split are skipped or put in train")


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            reports: str | os.PathLike | None = None, split_file: str | os.PathLike | None = None,
            projections: str | os.PathLike | None = None, dicom_meta: str | os.PathLike | None = None,
            frontal_view: str = "", report_only: bool = False, unsplit: str = "skip", fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert IU X-ray found under ``root`` into ``out/records.jsonl``; return its path.

    ``root`` holds ``ecgen-radiology/`` or ``NLMCXR_reports.tgz``, the R2Gen ``annotation.json``
    (or ``r2gen_annotation.json``) and optionally the projections CSV, the DICOM header dump and
    ``images/``; each can be given explicitly instead.
    """
    root = Path(root)
    reports = reports or _first_existing(root, "ecgen-radiology", "NLMCXR_reports.tgz")
    split_file = split_file or _first_existing(root, "r2gen_annotation.json", "annotation.json")
    if reports is None or split_file is None:
        raise FileNotFoundError(f"{root}: need ecgen-radiology/ or NLMCXR_reports.tgz and R2Gen's "
                                "annotation.json (r2gen_annotation.json)")
    projections = projections or _first_existing(root, "kaggle_iu_projections.csv", "indiana_projections.csv")
    if dicom_meta is None:
        dicom_meta = find_table(root, "nlmcxr_dicom_metadata.csv", required=False)
    if images is None and not report_only:
        images = _first_existing(root, "images")
    path = records_path(out, fmt)
    records, skips = build_records(reports, path.parent, split_file=split_file, images=images,
                                   projections=projections, dicom_meta=dicom_meta, frontal_view=frontal_view,
                                   report_only=report_only, unsplit=unsplit, show_progress=show_progress)
    log.info("%s: %d studies (skipped: %s)", SOURCE, len(records), skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
