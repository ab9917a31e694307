"""TBX11K tuberculosis chest X-rays (COCO boxes) → canonical records with boxes.

Inputs under ``root``:

- ``annotations``: COCO JSON files (default every ``*.json`` in ``root`` and ``root/annotations/json``):
  ``images`` (``id``, ``file_name`` such as ``tb/tb0005.png``, ``width``, ``height``), ``annotations``
  (``image_id``, ``category_id``, ``bbox = [x, y, w, h]`` in pixels of that image, top-left corner) and
  ``categories`` (``ActiveTuberculosis``, ``ObsoletePulmonaryTuberculosis``, ``PulmonaryTuberculosis``).
  The split comes from the file name: ``…val…`` → ``validation``, ``…test…`` → ``test``, else ``train``.
- ``images`` (default ``root/imgs``, else ``root``): ``file_name`` relative to it.

One record per image: ``study_id`` ``tbx11k-<file stem>`` (e.g. ``tbx11k-tb0005``), anatomy ``chest``,
view unknown (``""``); boxes normalised in the image frame with ``label`` the category name and
``phrase`` its words (``active tuberculosis``). ``source_labels``: ``tbx11k:tuberculosis`` 1 when the image has
a box or lies in the ``tb/`` folder, 0 in ``health/`` (``sick/`` images, sick but not TB, get 0 and
``tbx11k:sick_non_tb`` 1), and ``tbx11k:<category>`` 1 for each category boxed. An image in several files
is an error naming both; a box outside its image is skipped (counted).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    Skips,
    SourceError,
    add_check_images,
    normalise_box,
    progress,
    read_json,
    records_path,
    single_image_records,
)

__all__ = ["add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "tbx11k"


def _split_of(path: Path) -> str:
    name = path.stem.lower()
    return "validation" if "val" in name else "test" if "test" in name else "train"


def _phrase(category: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", category).lower()


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *,
                  annotations: list[str | os.PathLike] | str | os.PathLike | None = None,
                  images: str | os.PathLike | None = None, check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """``(records, skips)`` of the TBX11K annotations (see the module docstring)."""
    root = Path(root)
    if annotations is None:
        files = sorted(p for d in (root, root / "annotations" / "json") if d.is_dir() for p in d.glob("*.json"))
    else:
        files = [Path(a) for a in ([annotations] if isinstance(annotations, (str, os.PathLike)) else annotations)]
    if not files:
        raise FileNotFoundError(f"{root}: no COCO *.json annotation file found; give annotations=...")
    img_root = Path(images) if images is not None else (root / "imgs" if (root / "imgs").is_dir() else root)
    skips = Skips(SOURCE)
    studies: dict[str, dict] = {}
    origin: dict[str, Path] = {}
    for f in files:
        coco = read_json(f)
        if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations")):
            raise SourceError(f, "not a COCO file: needs lists 'images' and 'annotations'")
        cats = {c.get("id"): str(c.get("name", "")) for c in coco.get("categories") or [] if isinstance(c, dict)}
        by_id: dict = {}
        for i, im in enumerate(coco["images"]):
            try:
                name, width, height = str(im["file_name"]), float(im["width"]), float(im["height"])
            except (KeyError, TypeError, ValueError):
                raise SourceError(f, "image entry needs file_name, width and height", i, f"images[{i}]") from None
            key = f"tbx11k-{Path(name).stem}"
            if key in studies:
                raise SourceError(f, f"image {name!r} is also in {origin[key]}", i, f"images[{i}].file_name")
            rec = empty_record(key, _split_of(f), SOURCE, "chest")
            rec["images"] = [{"path": str(img_root / name), "view": "", "role": "current"}]
            folder = Path(name).parts[0].lower() if len(Path(name).parts) > 1 else ""
            rec["source_labels"]["tbx11k:tuberculosis"] = 1 if folder == "tb" else 0
            if folder == "sick":
                rec["source_labels"]["tbx11k:sick_non_tb"] = 1
            elif folder in ("health", "tb"):
                rec["source_labels"]["tbx11k:sick_non_tb"] = 0
            if folder == "health":
                rec["labels"]["No Finding"] = 1
            studies[key], origin[key] = rec, f
            by_id[im.get("id")] = (rec, width, height)
        for j, ann in enumerate(progress(coco["annotations"], f.name, show_progress, unit="box")):
            hit = by_id.get(ann.get("image_id")) if isinstance(ann, dict) else None
            if hit is None:
                raise SourceError(f, f"annotation names no image of the file (image_id {ann.get('image_id') if isinstance(ann, dict) else ann!r})",
                                  j, f"annotations[{j}].image_id")
            rec, width, height = hit
            cat = cats.get(ann.get("category_id"))
            if not cat:
                raise SourceError(f, f"unknown category_id {ann.get('category_id')!r}", j, f"annotations[{j}].category_id")
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                x0, y0, x1, y1 = normalise_box(x, y, x + w, y + h, width, height)
            except (KeyError, TypeError, ValueError) as e:
                skips.add("box outside the image, empty or malformed", f"{f.name} annotations[{j}]: {e}")
                continue
            rec["boxes"].append({"phrase": _phrase(cat), "label": cat, "image_index": 0,
                                 "x0": x0, "y0": y0, "x1": x1, "y1": y1})
            rec["source_labels"]["tbx11k:tuberculosis"] = 1
            rec["source_labels"][f"tbx11k:{cat}"] = 1
            rec["labels"]["No Finding"] = None
    return single_image_records(studies.values(), out_dir, check_images, skips), skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare tbx11k``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT/imgs, else ROOT)")
    parser.add_argument("--table", dest="annotations", help="a COCO json annotation file (default: every *.json in "
                        "ROOT and ROOT/annotations/json)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *,
            annotations: list[str | os.PathLike] | str | os.PathLike | None = None,
            images: str | os.PathLike | None = None, check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert TBX11K under ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, annotations=annotations, images=images,
                                   check_images=check_images, show_progress=show_progress)
    log.info("%s: %d images, %d boxes (skipped: %s)", SOURCE, len(records), sum(len(r["boxes"]) for r in records),
             skips.summary())
    return write_records(records, path, roots=[r for r in (root, images) if r is not None])
