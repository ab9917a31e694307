"""A preprocessed image cache: every image of a records set decoded and downsized once, for training.

A 2-3k px radiograph (DICOM, 16-bit PNG, JPEG) costs tens of milliseconds to decode at every step,
so the data loader starves the GPU. :func:`build_cache` reads each image once with
:func:`mxr0.data.xray.read_xray` (so DICOM VOI, MONOCHROME1 inversion and colour reduction are
already applied), resizes it so that its **shortest side** is ``size`` pixels, and writes it as an
8- or 16-bit grayscale PNG. Training then points ``data.path`` at the cache folder::

    mxr0 prepare mimic-cxr --root ... --out data_cache/mimic-cxr --cache-size 518
    # recipe: data.source=records data.path=data_cache/mimic-cxr/cache-518

What the model sees does not change beyond resampling:

- the aspect ratio is kept and nothing is cropped or padded, so any later
  :class:`~mxr0.data.transforms.ImageTransform` (or augmentation) with a size <= the cache size
  sees the same field of view;
- images whose shortest side is already <= ``size`` are never upscaled (only re-encoded as PNG);
- downsizing is antialiased (Pillow LANCZOS on the float image, clipped back to [0, 1]);
- ``bits=16`` keeps 1/65535 precision (use it for 12-16-bit DICOM sources if contrast detail
  matters); ``bits=8`` (default) quantises to 1/255, like the JPEG sources themselves.

Boxes are normalised to the frame of their image, and resizing keeps the whole frame, so they stay
valid as they are. Masks (``masks[*].path``) are resized with the same rule using nearest neighbour
(label values are kept exactly) and stored as 8-bit PNG.

Layout of ``out_dir``:

- ``images/<xx>/<stem>-<hash>.png`` and ``masks/<xx>/<stem>-<hash>.png``: ``hash`` is a digest of
  the source path as written in the records plus the source file's size and modification time,
  ``xx`` its first two characters (no folder holds more than ~1/256 of the files). Names are stable
  across runs, and an image changed in place gets a new name.
- ``records.jsonl`` (or ``records.parquet`` when the source was Parquet): the source records,
  identical except that image and mask paths point to the cached files (relative to ``out_dir``).
- ``cache.json``: size, bits, the source records file, counts and the unreadable files.

Unreadable images or masks (corrupt, missing, unsupported) are logged with their path and reason,
counted and listed in ``cache.json``, and **their whole study is dropped** from the cached records:
a study that silently lost one of its images would break ``image_index`` of its boxes and masks and
mislabel a frontal/lateral pair, while a missing study only makes the set slightly smaller.

Resumable: each file is written atomically (temporary name, then rename), so a killed run leaves
no partial file; a rerun skips the cached files that are present and valid, removes leftover
temporary files, and writes the rest. The records and ``cache.json`` are written last, and
``cache.json`` says ``"complete": true`` only after every cached file the records name has been
verified (present, not empty; `IncompleteFolderError` otherwise); `mxr0.data.loading` refuses a
cache folder that is not complete. At the end cached files no longer referenced by the records
(e.g. after a source image changed) are removed. One builder per folder at a time: `build_cache`
holds the folder's lock (``.mxr0-prepare.lock``), so a second one waits for the first, then resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mxr0.data.records import IncompleteFolderError, folder_lock, missing_files, read_records, write_records
from mxr0.data.xray import XrayReadError, read_xray, write_png

log = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "build_cache", "cached_size"]

#: Bumped when the cached pixels would change for the same settings (forces a rebuild).
CACHE_VERSION = 1
_KINDS = ("images", "masks")
_TMP = re.compile(r"^\..*\.tmp$")


def cached_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) of an ``h`` x ``w`` image in a cache of ``size``: shortest side ``size``,
    aspect ratio kept (long side rounded), never upscaled."""
    if min(h, w) <= size:
        return h, w
    if h <= w:
        return size, max(size, round(w * size / h))
    return max(size, round(h * size / w)), size


def _name(key: str, st: os.stat_result) -> str:
    """The stable, unique cache name of a source file: ``<xx>/<stem>-<hash16>.png``."""
    digest = hashlib.sha1(f"{key}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).stem)[:60] or "image"
    return f"{digest[:2]}/{stem}-{digest}.png"


def _valid(path: Path, kind: str, size: int, bits: int) -> bool:
    """Whether an existing cached file looks right (header only: writes are atomic, so a file that
    exists is complete; this guards against files from other settings or copied by hand)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            want = "L" if kind == "masks" or bits == 8 else "I;16"
            return im.format == "PNG" and im.mode == want and min(im.size) <= size
    except Exception:  # noqa: BLE001 - any unreadable file is simply rewritten
        return False


def _resize_image(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape
    nh, nw = cached_size(h, w, size)
    if (nh, nw) == (h, w):
        return img
    out = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F").resize(
        (nw, nh), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def _write_mask(src: Path, dest: Path, size: int) -> tuple[int, int]:
    """Resize a mask PNG with nearest neighbour and write it atomically as 8-bit; return its old size."""
    from PIL import Image

    with Image.open(src) as im:
        im.load()
        if im.mode != "L":
            im = im.convert("L")
        w, h = im.size
        nh, nw = cached_size(h, w, size)
        out = im if (nh, nw) == (h, w) else im.resize((nw, nh), Image.Resampling.NEAREST)
        arr = np.asarray(out)

    write_png(dest, arr.astype(np.float32) / 255.0, bits=8)
    return h, w


def _cache_one(job: tuple[str, str, str], out_dir: str, size: int, bits: int) -> tuple[str, str, str]:
    """Cache one source file. Returns ``(status, name or "", reason or "")`` with status
    ``written``, ``skipped`` (already cached) or ``failed``. Never raises for a bad file."""

    kind, key, src = job
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return "failed", "", "file not found"
    except OSError as e:
        return "failed", "", f"cannot stat the file ({e.strerror or e})"
    name = _name(key, st)
    dest = Path(out_dir) / kind / name
    if dest.exists() and _valid(dest, kind, size, bits):
        return "skipped", name, ""
    try:
        if kind == "masks":
            _write_mask(Path(src), dest, size)
        else:
            write_png(dest, _resize_image(read_xray(src), size), bits=bits)
    except XrayReadError as e:
        return "failed", "", e.reason
    except Exception as e:  # noqa: BLE001 - one bad file must not stop a 300k-image build
        return "failed", "", f"{type(e).__name__}: {e}"
    return "written", name, ""


def _records_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("records.parquet", "records.jsonl"):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"{path}: no records.jsonl or records.parquet in this folder; "
                                "create one with `mxr0 prepare <source>`")
    if not path.exists():
        raise FileNotFoundError(f"{path}: records file not found; create one with `mxr0 prepare <source>`")
    return path


def _cache_files(out: Path):
    """(``kind/shard/name`` key, entry) of every file under the cache's image and mask folders."""
    for kind in _KINDS:
        base = out / kind
        if not base.is_dir():
            continue
        for sub in os.scandir(base):
            if sub.is_dir():
                for f in os.scandir(sub.path):
                    yield f"{kind}/{sub.name}/{f.name}", f


def _remove_tmp_files(out: Path) -> int:
    n = 0
    for _, f in _cache_files(out):
        if _TMP.match(f.name):
            os.unlink(f.path)
            n += 1
    return n


def _prune(out: Path, keep: set[str]) -> int:
    """Remove cached files that the new records do not reference; return how many."""
    n = 0
    for key, f in _cache_files(out):
        if f.name.endswith(".png") and key not in keep:
            os.unlink(f.path)
            n += 1
    return n


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def build_cache(records_path: str | os.PathLike, out_dir: str | os.PathLike, size: int = 518, bits: int = 8,
                workers: int | None = None, progress: bool = True, overwrite: bool = False,
                splits: Iterable[str] | None = None) -> Path:
    """Write every image (and mask) of the records at ``records_path`` downsized to a shortest side
    of ``size`` into ``out_dir``, with records pointing to them; return the new records file.

    ``records_path`` is a records file or a folder holding one. ``bits`` is 8 or 16. ``workers``
    processes decode in parallel (default ``min(4, cpu count)``; 0 or 1 works in this process).
    ``progress`` shows a tqdm bar. ``splits`` caches only those splits (default all). An existing
    cache in ``out_dir`` made with another size, bit depth or source is refused unless
    ``overwrite``, which deletes it first; one made with the same settings is resumed / updated.
    See the module docstring for the layout, the resampling and what happens to unreadable files.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size must be an int >= 8 pixels, got {size!r}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    src = _records_file(Path(records_path)).resolve()
    out = Path(out_dir)
    if out.resolve() == src.parent:
        raise ValueError(f"{out}: the cache folder must not be the records' own folder; "
                         f"use e.g. {out / f'cache-{size}'}")
    with folder_lock(out, what="mxr0 prepare cache"):
        return _build_locked(src, out, size, bits, workers, progress, overwrite, splits)


def _prepare_folder(out: Path, settings: dict, overwrite: bool) -> None:
    """Check an existing cache's settings (or delete it with ``overwrite``), mark the folder incomplete and
    remove the temporary files an interrupted run left."""
    meta_path = out / "cache.json"
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = {}
        differs = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if differs and not overwrite:
            detail = ", ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in differs.items())
            raise ValueError(f"{out} holds a cache made with other settings ({detail}); "
                             "choose another folder or pass overwrite=True (--overwrite) to rebuild it")
        if differs:
            overwrite = True
    if overwrite:
        for kind in _KINDS:
            shutil.rmtree(out / kind, ignore_errors=True)
        for f in ("cache.json", "records.jsonl", "records.parquet", "records.roots.json"):
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(meta_path, {**settings, "complete": False})
    n_tmp = _remove_tmp_files(out)
    if n_tmp:
        log.info("removed %d temporary files left by an interrupted run", n_tmp)


def _jobs(records: list[dict], root: Path) -> list[tuple[str, str, str]]:
    """One ``(kind, path as in the records, full path)`` job per distinct source file (a prior image may be
    shared by several studies)."""
    jobs: dict[tuple[str, str], tuple[str, str, str]] = {}
    for r in records:
        for kind, items in (("images", r["images"]), ("masks", r["masks"])):
            for item in items:
                key = item["path"]
                if (kind, key) not in jobs:
                    full = key if os.path.isabs(key) else str(root / key)
                    jobs[(kind, key)] = (kind, key, full)
    return list(jobs.values())


def _run_jobs(job_list: list[tuple[str, str, str]], out: Path, size: int, bits: int, workers: int | None,
              progress: bool) -> tuple[dict, dict]:
    """Cache every file of ``job_list`` (``workers`` processes): ``({(kind, key): (status, name, reason)},
    counts by status)``; unreadable files are logged."""
    from functools import partial

    from tqdm.auto import tqdm

    work = partial(_cache_one, out_dir=str(out), size=size, bits=bits)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    results: dict[tuple[str, str], tuple[str, str, str]] = {}
    counts = {"written": 0, "skipped": 0, "failed": 0}
    bar = tqdm(total=len(job_list), desc=f"cache {size}px", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(job_list) < 8:
            it = map(work, job_list)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=workers)
            it = pool.map(work, job_list, chunksize=max(1, min(16, len(job_list) // (workers * 8))))
        try:
            for job, res in zip(job_list, it):
                results[(job[0], job[1])] = res
                counts[res[0]] += 1
                if res[0] == "failed":
                    log.warning("cannot cache %s '%s': %s", job[0][:-1], job[2], res[2])
                    bar.set_postfix(failed=counts["failed"], refresh=False)
                bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    finally:
        bar.close()
    return results, counts


def _cached_records(records: list[dict], results: dict) -> tuple[list[dict], list[dict], list[str]]:
    """(the records whose files were all cached, pointed at the cached files; the unreadable files; the ids
    of the studies dropped for them)."""
    kept, failures, dropped = [], [], []
    for r in records:
        bad = [(kind, item["path"]) for kind in _KINDS for item in r[kind]
               if results[(kind, item["path"])][0] == "failed"]
        if bad:
            dropped.append(r["study_id"])
            continue
        for kind in _KINDS:
            for item in r[kind]:
                item["path"] = f"{kind}/{results[(kind, item['path'])][1]}"
        kept.append(r)
    for (kind, key), (status, _, reason) in results.items():
        if status == "failed":
            failures.append({"kind": kind[:-1], "path": key, "reason": reason})
    return kept, failures, dropped


def _build_locked(src: Path, out: Path, size: int, bits: int, workers: int | None, progress: bool, overwrite: bool,
                  splits: Iterable[str] | None) -> Path:
    records = read_records(src, splits=splits, resolve_paths=False)
    # The source relative to the cache, so that a data folder moved as a whole still matches.
    settings = {"version": CACHE_VERSION, "size": size, "bits": bits,
                "source": os.path.relpath(src, out.resolve()),
                "splits": sorted(splits) if splits is not None else None}
    meta_path = out / "cache.json"
    _prepare_folder(out, settings, overwrite)
    job_list = _jobs(records, src.parent)
    t0 = time.perf_counter()
    results, counts = _run_jobs(job_list, out, size, bits, workers, progress)
    kept, failures, dropped = _cached_records(records, results)

    missing = missing_files(kept, out)
    if missing:
        raise IncompleteFolderError(
            f"{out}: {len(missing)} cached files are missing or empty after caching (e.g. {missing[0]}); the "
            "cache is not marked complete. Run `mxr0 prepare cache` again (it resumes), or with --overwrite")
    rec_out = out / ("records.parquet" if src.suffix == ".parquet" else "records.jsonl")
    write_records(kept, rec_out)
    pruned = _prune(out, {item["path"] for r in kept for kind in _KINDS for item in r[kind]})
    summary = {
        **settings,
        "complete": True,
        "records": rec_out.name,
        "studies": len(kept),
        "studies_dropped": len(dropped),
        "files": len(job_list),
        "written": counts["written"],
        "skipped": counts["skipped"],
        "failed": counts["failed"],
        "pruned": pruned,
        "seconds": round(time.perf_counter() - t0, 1),
        "failures": failures,
        "dropped_study_ids": dropped,
    }
    _write_json(meta_path, summary)
    msg = (f"cache {out}: {len(job_list)} files ({counts['written']} written, {counts['skipped']} already cached, "
           f"{counts['failed']} unreadable), {len(kept)} studies kept, {len(dropped)} dropped")
    if failures:
        log.warning("%s; the unreadable files are listed in %s", msg, meta_path)
    else:
        log.info("%s", msg)
    return rec_out
