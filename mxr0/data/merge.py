"""Records-level join of prepared sources: MS-CXR phrases and boxes onto their MIMIC-CXR study (``mxr0 prepare
merge``), with a patient-level split-leakage check and a prior / current laterality check.

Inputs are two prepared records files (or folders): ``root`` from ``mxr0 prepare mimic-cxr`` and ``ms_cxr`` from
``mxr0 prepare ms-cxr`` (both point at the same MIMIC-CXR-JPG images). Output: ``out/records.jsonl`` (or
``.parquet``), the roots of both inputs declared, and ``out/merge_report.json`` (every count below, with the
conflicts and flipped images named).

Rules:

- **Join.** An MS-CXR record (``mscxr-<dicom_id>``, one image) is joined through its image's MIMIC path
  ``files/p1X/p<subject>/s<study>/<dicom_id>.jpg``: the study ``s<study>`` is the MIMIC record it joins, and the
  image with the same ``<dicom_id>`` file name in that record carries its boxes (``image_index`` set to it). The
  boxed image is moved first when it is a frontal view, so the report's main image is the one with the boxes
  (grounded-report examples, `mxr0.data.instruct`). The MIMIC record keeps its report, labels and split; an
  MS-CXR category MIMIC's labeler did not call positive is counted (``label_disagreements``), never changed.
  An MS-CXR image whose study or image is not among the MIMIC records stays an MS-CXR record of its own
  (counted). An image path without the MIMIC layout is an error naming the file, row and field.
- **Split leakage** (patient level, subject ``p<subject>`` from the MIMIC path of any image): the MIMIC split
  wins. An MS-CXR image whose own split differs from its subject's MIMIC split is a conflict (counted and
  named: subject, image, both splits); kept MS-CXR records take the MIMIC split of their subject. A subject
  left in more than one split after the merge is named in ``leaks`` (MIMIC's own split is patient-level, so
  this is empty unless the inputs were edited).
- **Laterality** (``check_laterality``): for each record with a prior frontal image (role ``prior``), the
  current and prior frontals are compared at 64 px: when the prior correlates better with the mirrored current
  than with the current (by more than ``flip_margin``), one of them is mirrored; the one whose heart side is
  wrong (the cardiac silhouette lies mostly on the image's right, the patient's left) is named, the prior when
  that cannot tell. Unreadable images are counted. Records are kept unchanged: the report lists them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np

from mxr0.data.records import CHEXPERT_LABELS, read_records, read_roots, write_records
from mxr0.data.sources import SourceError, records_path, relative_path

__all__ = ["convert", "merge_records", "mimic_ids", "laterality_flips"]

log = logging.getLogger(__name__)

_MIMIC_PATH = re.compile(r"(?:^|[/\\])p(\d+)[/\\]s(\d+)[/\\]([^/\\]+?)\.(?:jpg|jpeg|png|dcm)$", re.I)
_FRONTAL = ("PA", "AP", "AP_SUPINE")


def mimic_ids(path: str) -> tuple[str, str, str] | None:
    """``(subject, study, dicom_id)`` of a MIMIC-CXR image path (``…/p<subject>/s<study>/<dicom_id>.jpg``), or None."""
    m = _MIMIC_PATH.search(str(path))
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _subject(rec: dict) -> str | None:
    for im in rec["images"]:
        ids = mimic_ids(im["path"])
        if ids:
            return ids[0]
    return None


def merge_records(mimic: list[dict], ms_cxr: list[dict], *, ms_source: str = "ms-cxr records",
                  check_laterality: bool = True, flip_margin: float = 0.05) -> tuple[list[dict], dict]:
    """The merged records and the report (counts, conflicts, leaks, flipped images); see the module docstring.

    ``ms_source`` names the MS-CXR records file in errors."""
    by_id = {r["study_id"]: r for r in mimic}
    out_ms: list[dict] = []
    report: dict = {"mimic_studies": len(mimic), "ms_cxr_images": len(ms_cxr), "joined_images": 0,
                    "joined_boxes": 0, "studies_with_boxes": 0, "ms_cxr_without_mimic_study": [],
                    "label_disagreements": Counter(), "split_conflicts": [], "leaks": {}}
    subject_split: dict[str, str] = {}
    for r in mimic:
        s = _subject(r)
        if s is not None:
            subject_split.setdefault(s, r["split"])
    joined: set[str] = set()
    for row, ms in enumerate(ms_cxr):
        if not ms["images"]:
            raise SourceError(ms_source, "an MS-CXR record without an image", row, "images")
        ids = mimic_ids(ms["images"][0]["path"])
        if ids is None:
            raise SourceError(ms_source, f"image path {ms['images'][0]['path']!r} is not a MIMIC-CXR path "
                              "(…/p<subject>/s<study>/<dicom_id>.jpg)", row, "images[0].path")
        subject, study, dicom = ids
        mimic_split = subject_split.get(subject)
        if mimic_split is not None and mimic_split != ms["split"]:
            report["split_conflicts"].append({"subject": f"p{subject}", "image": dicom, "ms_cxr_split": ms["split"],
                                              "mimic_split": mimic_split})
        target = by_id.get(f"s{study}")
        index = None
        if target is not None:
            index = next((i for i, im in enumerate(target["images"]) if im.get("role", "current") == "current"
                          and mimic_ids(im["path"]) is not None and mimic_ids(im["path"])[2] == dicom), None)
        if target is None or index is None:
            report["ms_cxr_without_mimic_study"].append(ms["study_id"])
            rec = dict(ms)
            if mimic_split is not None:
                rec["split"] = mimic_split
            out_ms.append(rec)
            continue
        if target["images"][index]["view"] in _FRONTAL and index != 0:
            _move_first(target, index)
            index = 0
        for b in ms["boxes"]:
            target["boxes"].append({**b, "image_index": index})
        for name in CHEXPERT_LABELS:
            if ms["labels"].get(name) == 1 and target["labels"].get(name) != 1:
                report["label_disagreements"][name] += 1
        report["joined_images"] += 1
        report["joined_boxes"] += len(ms["boxes"])
        joined.add(target["study_id"])
    report["studies_with_boxes"] = len(joined)
    report["label_disagreements"] = dict(report["label_disagreements"])
    report["n_split_conflicts"] = len(report["split_conflicts"])
    report["n_ms_cxr_without_mimic_study"] = len(report["ms_cxr_without_mimic_study"])
    merged = list(mimic) + out_ms
    splits_of: dict[str, set] = {}
    for r in merged:
        s = _subject(r)
        if s is not None:
            splits_of.setdefault(s, set()).add(r["split"])
    report["leaks"] = {f"p{s}": sorted(v) for s, v in splits_of.items() if len(v) > 1}
    if check_laterality:
        report.update(laterality_flips(merged, flip_margin))
    return merged, report


def _move_first(rec: dict, index: int) -> None:
    """Put image ``index`` first, renumbering the boxes' and masks' ``image_index``."""
    order = [index] + [i for i in range(len(rec["images"])) if i != index]
    new_of = {old: new for new, old in enumerate(order)}
    rec["images"] = [rec["images"][i] for i in order]
    for item in rec["boxes"] + rec["masks"]:
        item["image_index"] = new_of[int(item.get("image_index", 0))]


# ---------------------------------------------------------------------------------------------
# laterality
# ---------------------------------------------------------------------------------------------
def _small(path: str, size: int = 64) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (size * 2, size * 2))  # JPEG: decode at a reduced scale
        a = np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return (a - a.mean()) / (a.std() + 1e-6)


def heart_side(img: np.ndarray) -> float:
    """> 0 when the lower-middle of the chest is brighter on the image's right (the normal heart side)."""
    n = img.shape[0]
    band = img[int(0.45 * n):int(0.8 * n)]
    left, right = band[:, int(0.25 * n):int(0.5 * n)], band[:, int(0.5 * n):int(0.75 * n)]
    return float(right.mean() - left.mean())


def laterality_flips(records: list[dict], margin: float = 0.05) -> dict:
    """``laterality_checked`` (pairs compared), ``laterality_unreadable`` and ``flipped`` (a list of
    ``{study_id, image, role, same, mirrored}``: the image named mirrored, and the two correlations)."""
    checked, unreadable, flipped = 0, 0, []
    for r in records:
        cur = next((im for im in r["images"] if im.get("role", "current") == "current" and im["view"] in _FRONTAL), None)
        pri = next((im for im in r["images"] if im.get("role") == "prior"), None)
        if cur is None or pri is None:
            continue
        try:
            a, b = _small(cur["path"]), _small(pri["path"])
        except (OSError, ValueError):
            unreadable += 1
            continue
        checked += 1
        same = float((a * b).mean())
        mirrored = float((a[:, ::-1] * b).mean())
        if mirrored > same + margin:
            ha, hb = heart_side(a), heart_side(b)
            named = cur if ha < 0 <= hb else pri
            flipped.append({"study_id": r["study_id"], "image": named["path"],
                            "role": named.get("role", "current"), "same": round(same, 4),
                            "mirrored": round(mirrored, 4)})
            log.warning("merge: %s: the %s image %s looks mirrored against the other (correlation %.3f, "
                        "mirrored %.3f)", r["study_id"], named.get("role", "current"), named["path"], same, mirrored)
    return {"laterality_checked": checked, "laterality_unreadable": unreadable, "flipped": flipped,
            "n_flipped": len(flipped)}


# ---------------------------------------------------------------------------------------------
def convert(root: str | os.PathLike, out: str | os.PathLike, *, ms_cxr: str | os.PathLike | None = None,
            check_laterality: bool = True, fmt: str = "jsonl", show_progress: bool = True) -> Path:
    """``mxr0 prepare merge --root MIMIC_RECORDS --ms-cxr MS_CXR_RECORDS --out DIR``: merge the two prepared
    records sets into ``out/records.jsonl`` and write ``out/merge_report.json``; return the records path."""
    if ms_cxr is None:
        raise ValueError("merge needs the MS-CXR records (--ms-cxr, a records file or folder from `mxr0 prepare ms-cxr`)")
    mimic_path, ms_path = _records_file(root), _records_file(ms_cxr)
    mimic = read_records(mimic_path)
    ms = read_records(ms_path)
    merged, report = merge_records(mimic, ms, ms_source=str(ms_path), check_laterality=check_laterality)
    path = records_path(out, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    for r in merged:
        for item in r["images"] + r["masks"]:
            item["path"] = relative_path(item["path"], path.parent)
    roots = [*read_roots(mimic_path), *read_roots(ms_path)]
    write_records(merged, path, roots=roots)
    (path.parent / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("merge: %d records; %d MS-CXR images joined (%d boxes) onto %d MIMIC studies; %d split conflicts; "
             "%d leaking subjects; %d flipped images", len(merged), report["joined_images"], report["joined_boxes"],
             report["studies_with_boxes"], report["n_split_conflicts"], len(report["leaks"]),
             report.get("n_flipped", 0))
    return path


def _records_file(p: str | os.PathLike) -> Path:
    p = Path(p)
    if p.is_dir():
        for name in ("records.parquet", "records.jsonl"):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(f"{p}: no records.jsonl or records.parquet (prepare it with `mxr0 prepare`)")
    return p
