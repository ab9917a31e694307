"""Writing a phantom data set (`generate_phantom`): the study plan, the worker pool, reuse of a finished folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.common import DEFAULT_ANATOMY_MIX, PHANTOM_ANATOMIES, PHANTOM_VERSION
from mxr0.data.phantom.study import draw_study
from mxr0.data.records import (
    LOCK_NAME,
    IncompleteFolderError,
    RecordError,
    RootsError,
    folder_lock,
    missing_files,
    read_records,
    write_records,
)

log = logging.getLogger(__name__)


def _write_study(job: tuple[int, str, str], out_dir: str, image_size: int, seed: int, lateral_fraction: float,
                 prior_fraction: float = 0.0) -> dict:
    """Draw one planned ``(index, anatomy, split)`` study, write its PNGs under ``out_dir``; returns its record."""
    index, anatomy, split = job
    rec, images, masks = draw_study(index, anatomy, split, image_size, seed, lateral_fraction, prior_fraction)
    for im, (arr, _) in zip(rec["images"], images):
        D.save_png(os.path.join(out_dir, im["path"]), arr)
    for m in rec["masks"]:
        D.save_png(os.path.join(out_dir, m["path"]), masks[m["name"]].astype(np.uint8) * np.uint8(255))
    return rec


def _largest_remainder(n: int, weights: Sequence[float]) -> list[int]:
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    raw = w * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _normalise_mix(anatomy_mix: Mapping[str, float] | None) -> dict[str, float]:
    mix = dict(DEFAULT_ANATOMY_MIX if anatomy_mix is None else anatomy_mix)
    bad = [a for a in mix if a not in PHANTOM_ANATOMIES]
    if bad:
        raise ValueError(f"anatomy_mix: unsupported anatomies {bad}; the phantom draws {list(PHANTOM_ANATOMIES)}")
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"anatomy_mix: weights must be >= 0 with a positive sum, got {mix}")
    total = sum(mix.values())
    return {a: round(mix[a] / total, 6) for a in PHANTOM_ANATOMIES if mix.get(a, 0) > 0}


def _plan(n: int, seed: int, mix: dict[str, float], fractions: Sequence[float]) -> list[tuple[int, str, str]]:
    """(index, anatomy, split) per study: exact anatomy quotas and per-anatomy stratified splits."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E3779B9]))
    names = list(mix)
    anat = np.repeat(np.array(names, dtype=object), _largest_remainder(n, [mix[a] for a in names]))
    anat = anat[rng.permutation(n)]
    split = np.empty(n, dtype=object)
    for a in names:
        idx = np.flatnonzero(anat == a)
        counts = _largest_remainder(len(idx), fractions)
        split[idx[rng.permutation(len(idx))]] = np.repeat(np.array(["train", "validation", "test"], dtype=object), counts)
    return [(i, str(anat[i]), str(split[i])) for i in range(n)]


def _meta(n_studies: int, image_size: int, seed: int, mix: dict, fractions: Sequence[float], lateral_fraction: float,
          prior_fraction: float = 0.0) -> dict:
    meta = {"version": PHANTOM_VERSION, "n_studies": int(n_studies), "image_size": int(image_size), "seed": int(seed),
            "anatomy_mix": mix, "split_fractions": [float(f) for f in fractions],
            "lateral_fraction": float(lateral_fraction)}
    if prior_fraction > 0:  # only then: phantom.json of a set without pairs is unchanged
        meta["prior_fraction"] = float(prior_fraction)
    return meta


_OWN_NAMES = {"images", "masks", "records.jsonl", "records.roots.json", "phantom.json", ".phantom-incomplete", LOCK_NAME}


def _is_phantom_dir(out: Path) -> bool:
    """True when ``out`` holds nothing but what `generate_phantom` writes (or is empty)."""
    return all(p.name in _OWN_NAMES or p.name.startswith((".records.jsonl.tmp", ".phantom.json.tmp", ".records.roots.json.tmp"))
               for p in out.iterdir())


def generate_phantom(out_dir: str | os.PathLike, n_studies: int = 2000, image_size: int = 128, seed: int = 0,
                     anatomy_mix: Mapping[str, float] | None = None,
                     split_fractions: Sequence[float] = (0.8, 0.1, 0.1), lateral_fraction: float = 0.3,
                     workers: int | None = None, progress: bool = True, overwrite: bool = False,
                     prior_fraction: float = 0.0) -> Path:
    """Draw ``n_studies`` phantom studies into ``out_dir`` and return the path of ``records.jsonl``.

    Writes ``images/<study_id>_<k>.png`` (8-bit grayscale; ``k`` = 0 is the frontal image),
    ``masks/<study_id>_<organ>.png`` (0/255; ``right_lung``/``left_lung``/``heart`` on chest
    frontals, named by the PATIENT's side, so ``left_lung`` lies in the image's right half; ``bones``
    on the others), ``records.jsonl`` (canonical records, paths relative to ``out_dir``) and last
    ``phantom.json`` (the arguments and `PHANTOM_VERSION`). When ``phantom.json`` already matches
    the arguments, ``overwrite`` is false and every image and mask file it names exists and is not
    empty, nothing is drawn and the existing records are reused; an interrupted or damaged folder
    is drawn again. ``phantom.json`` is written only after every file has been verified
    (`IncompleteFolderError` otherwise). One writer at a time: the folder's lock
    (`mxr0.data.records.folder_lock`) makes a concurrent call wait, then reuse the finished folder.

    ``anatomy_mix`` maps anatomies of `PHANTOM_ANATOMIES` to weights (default
    `DEFAULT_ANATOMY_MIX`: 60 % chest); quotas are exact and each anatomy is split train /
    validation / test by ``split_fractions``. ``lateral_fraction`` of the chest studies get a
    second, lateral image. ``workers`` processes draw in parallel (default ``min(4, cpu count)``;
    0 or 1 draws in this process); the output does not depend on it.

    ``prior_fraction`` (default 0: no pairs, the set is exactly as without it) makes that share of the chest
    studies longitudinal pairs (`draw_study`): a prior frontal image ``images/<study_id>_prior.png`` (role
    ``prior``), the prior report, and comparison statements (new / unchanged / worse / better / resolved).
    """
    if not 0.0 <= prior_fraction <= 1.0:
        raise ValueError(f"prior_fraction must lie in [0, 1], got {prior_fraction}")
    if n_studies < 1:
        raise ValueError(f"n_studies must be >= 1, got {n_studies}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or sum(split_fractions) <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, validation, test), got {split_fractions}")
    if not 0.0 <= lateral_fraction <= 1.0:
        raise ValueError(f"lateral_fraction must lie in [0, 1], got {lateral_fraction}")
    out = Path(out_dir)
    mix = _normalise_mix(anatomy_mix)
    fr = [f / sum(split_fractions) for f in split_fractions]
    meta = _meta(n_studies, image_size, seed, mix, [round(f, 6) for f in fr], lateral_fraction, prior_fraction)
    if out.exists() and not overwrite and not (out / "phantom.json").exists() and not _is_phantom_dir(out):
        raise FileExistsError(f"{out} holds files that generate_phantom did not write; "
                              "choose another folder or pass overwrite=True")
    with folder_lock(out, what="mxr0 prepare phantom"):
        return _generate_locked(out, meta, n_studies, image_size, seed, mix, fr, lateral_fraction, workers,
                                progress, overwrite, prior_fraction)


def _incomplete(out: Path, rec_path: Path, n_studies: int) -> str | None:
    """Why the finished-looking phantom folder ``out`` cannot be reused (None when it can)."""
    if (out / ".phantom-incomplete").exists():
        return "an earlier run did not finish"
    try:
        records = read_records(rec_path, resolve_paths=False)
    except (RecordError, RootsError, OSError) as e:
        return f"its records cannot be read ({type(e).__name__})"
    if len(records) != n_studies:
        return f"it holds {len(records)} studies, not {n_studies}"
    missing = missing_files(records, out)
    if missing:
        return f"{len(missing)} of its image / mask files are missing or empty (e.g. {missing[0]})"
    return None


def _generate_locked(out: Path, meta: dict, n_studies: int, image_size: int, seed: int, mix: dict, fr: list,
                     lateral_fraction: float, workers: int | None, progress: bool, overwrite: bool,
                     prior_fraction: float = 0.0) -> Path:
    meta_path, rec_path = out / "phantom.json", out / "records.jsonl"
    if not overwrite and meta_path.exists() and rec_path.exists():
        try:
            same = json.loads(meta_path.read_text()) == meta
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            problem = _incomplete(out, rec_path, n_studies)
            if problem is None:
                return rec_path
            log.warning("%s: %s; drawing it again", out, problem)
    if out.exists() and not overwrite and not _is_phantom_dir(out):
        raise FileExistsError(f"{out} holds files that generate_phantom did not write; "
                              "choose another folder or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".phantom-incomplete").write_text("generate_phantom is writing this folder\n")
    meta_path.unlink(missing_ok=True)
    for sub in ("images", "masks"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    jobs = _plan(n_studies, seed, mix, fr)
    work = partial(_write_study, out_dir=str(out), image_size=image_size, seed=seed, lateral_fraction=lateral_fraction,
                   prior_fraction=prior_fraction)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=n_studies, desc="phantom", unit="study", disable=not progress)
    records: list[dict] = []
    try:
        if workers <= 1 or n_studies < 32:
            for job in jobs:
                records.append(work(job))
                bar.update(1)
        else:
            import multiprocessing as mp

            # forkserver, not fork: forking a process that runs threads (a pytest-xdist worker, a server, a notebook
            # with torch's thread pools) can copy a held lock into the child, which then never starts (seen: a
            # test-suite hang); the fork server is a clean single-threaded process that imports this module once
            with mp.get_context("forkserver").Pool(workers) as pool:
                for rec in pool.imap(work, jobs, chunksize=max(1, min(32, n_studies // (workers * 8)))):
                    records.append(rec)
                    bar.update(1)
    finally:
        bar.close()
    write_records(records, rec_path)
    missing = missing_files(records, out)
    if missing:
        raise IncompleteFolderError(
            f"{out}: {len(missing)} image / mask files of the {n_studies} phantom studies are missing or empty "
            f"after drawing (e.g. {missing[0]}); the folder is not marked complete. Another program may have "
            "changed it: run again with --overwrite (overwrite=True)")
    tmp = out / f".phantom.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    (out / ".phantom-incomplete").unlink(missing_ok=True)
    return rec_path

