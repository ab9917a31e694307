"""JSRT chest radiographs with the SCR organ masks → canonical records with ``masks``.

Layout under ``root`` (the SCR / common GitHub layout; the staged copy in ``../shared/data/jsrt``):

- ``images/<ID>.png`` (``JPCLN001`` … have a lung nodule, ``JPCNN001`` … none; 8- or 16-bit PNG; the raw
  2048² ``.IMG`` files must be converted to PNG first);
- ``masks/<organ>/<ID>.png`` (or ``.gif``, SCR's format): organ folders ``left_lung``, ``right_lung``,
  ``heart``, ``left_clavicle``, ``right_clavicle`` (``left lung`` / ``Left Lung`` spellings accepted).
  Masks are 0 / 255 and aligned to the image. Masks of the image's size are referenced in place; others
  (SCR's are 1024² for 2048² images: same frame, another resolution) and GIFs are written once, resized
  with nearest neighbour, to ``out/masks/<ID>_<organ>.png``. ``left_lung`` is the **patient's** left, on
  the image's right, as in SCR;
- ``index.csv`` (optional): ``file`` and ``nodule`` (1 / 0) columns; without it the nodule flag comes
  from the ``JPCLN`` / ``JPCNN`` prefix. A ``nodule`` cell that contradicts the prefix is an error naming
  the row.

One record per image: ``study_id`` ``jsrt-<ID>``, view ``PA`` (JSRT films are PA), anatomy ``chest``,
``source_labels`` ``{"jsrt:nodule": 1 | 0}`` and the CheXpert ``Lung Lesion`` set to the same flag (JSRT's
nodules are lung lesions; its non-nodule images have none). Masks present for the image are listed
under their organ name (`mxr0.data.records.MASK_NAMES`); an image without any mask is kept (counted).
Split: SHA-256 buckets of the ID, 80 / 10 / 10 (`mxr0.data.sources.hash_split`), or ``split`` from a
``split`` column of ``index.csv``. Images and masks are referenced in place (no copy).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from mxr0.data.records import empty_record, write_records
from mxr0.data.sources import (
    SPLIT_NAMES,
    Skips,
    SourceError,
    add_check_images,
    hash_split,
    read_table,
    records_path,
    relative_path,
)
from mxr0.data.sources.rle import image_size, write_mask

__all__ = ["ORGANS", "add_arguments", "build_records", "convert"]

log = logging.getLogger(__name__)

SOURCE = "jsrt"
ORGANS = ("right_lung", "left_lung", "heart", "right_clavicle", "left_clavicle")
_MASK_SUFFIXES = (".png", ".gif")


def _organ_folders(mask_root: Path) -> dict[str, list[Path]]:
    """``{organ: [folders]}`` (``left_lung``, ``left lung``, ``Left-Lung`` … all count; looked up in order)."""
    out: dict[str, list[Path]] = {}
    if not mask_root.is_dir():
        return out
    for d in sorted(p for p in mask_root.iterdir() if p.is_dir()):
        name = d.name.strip().lower().replace(" ", "_").replace("-", "_")
        if name in ORGANS:
            out.setdefault(name, []).append(d)
    return {o: out[o] for o in ORGANS if o in out}


def build_records(root: str | os.PathLike, out_dir: str | os.PathLike, *, images: str | os.PathLike | None = None,
                  masks: str | os.PathLike | None = None, check_images: bool = True,
                  show_progress: bool = False) -> tuple[list[dict], Skips]:
    """``(records, skips)`` of the JSRT folder (see the module docstring)."""
    root, out_dir = Path(root), Path(out_dir)
    img_root = Path(images) if images is not None else root / "images"
    if not img_root.is_dir():
        raise FileNotFoundError(f"{img_root}: JSRT image folder not found (expected ROOT/images/<ID>.png)")
    organs = _organ_folders(Path(masks) if masks is not None else root / "masks")
    skips = Skips(SOURCE)
    flags: dict[str, int] = {}
    flag_rows: dict[str, int] = {}
    splits: dict[str, str] = {}
    index = root / "index.csv"
    if index.is_file():
        for rowno, row in read_table(index, ("file",)):
            stem = Path(row["file"]).stem
            if row.get("nodule", "") != "":
                if row["nodule"] not in ("0", "1"):
                    raise SourceError(index, f"nodule {row['nodule']!r} is not 0 or 1", rowno, "nodule")
                flags[stem], flag_rows[stem] = int(row["nodule"]), rowno
            if row.get("split"):
                split = SPLIT_NAMES.get(row["split"].lower())
                if split is None:
                    raise SourceError(index, f"split {row['split']!r} is not train / validation / test", rowno, "split")
                splits[stem] = split
    files = sorted(p for p in img_root.iterdir() if p.suffix.lower() in (".png",) and p.is_file())
    records = []
    for p in files:
        stem = p.stem
        prefix = stem[:5].upper()
        by_name = {"JPCLN": 1, "JPCNN": 0}.get(prefix)
        flag = flags.get(stem, by_name)
        if by_name is not None and stem in flags and flags[stem] != by_name:
            raise SourceError(index, f"{stem}: nodule={flags[stem]} contradicts its {prefix} name", flag_rows[stem],
                              "nodule")
        rec = empty_record(f"jsrt-{stem}", splits.get(stem) or hash_split(stem), SOURCE, "chest")
        rec["images"] = [{"path": relative_path(p, out_dir), "view": "PA", "role": "current"}]
        if flag is not None:
            rec["source_labels"]["jsrt:nodule"] = flag
            rec["labels"]["Lung Lesion"] = flag
        else:
            skips.note("nodule flag unknown (no JPCLN / JPCNN prefix, no index.csv row)", stem)
        size = image_size(p) if organs else None
        for organ, folders in organs.items():
            mask = next((d / f"{stem}{s}" for d in folders for s in _MASK_SUFFIXES if (d / f"{stem}{s}").is_file()),
                        None)
            if mask is None:
                continue
            if mask.suffix.lower() != ".png" or (size is not None and image_size(mask) != size):
                import numpy as np
                from PIL import Image

                with Image.open(mask) as im:
                    arr = np.asarray(im.convert("L")) > 0
                mask = write_mask(out_dir / "masks" / f"{stem}_{organ}.png", arr, size)
            rec["masks"].append({"name": organ, "path": relative_path(mask, out_dir), "image_index": 0})
        if not rec["masks"]:
            skips.note("image without any organ mask (kept)", stem)
        records.append(rec)
    if not records:
        raise FileNotFoundError(f"{img_root}: no PNG images found")
    return records, skips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``mxr0 prepare jsrt``'s options (keyword arguments of `convert`)."""
    parser.add_argument("--images", help="the image folder (default ROOT/images)")
    add_check_images(parser)


def convert(root: str | os.PathLike, out: str | os.PathLike, *, images: str | os.PathLike | None = None,
            masks: str | os.PathLike | None = None, check_images: bool = True, fmt: str = "jsonl",
            show_progress: bool = True) -> Path:
    """Convert the JSRT folder ``root`` into ``out/records.jsonl``; return its path."""
    path = records_path(out, fmt)
    records, skips = build_records(root, path.parent, images=images, masks=masks, check_images=check_images,
                                   show_progress=show_progress)
    log.info("%s: %d images, %d masks (skipped: %s)", SOURCE, len(records), sum(len(r["masks"]) for r in records),
             skips.summary())
    return write_records(records, path, roots=[r for r in (root, images, masks) if r is not None])
