"""Run-length encoded masks (SIIM-ACR, CheXmask) → binary arrays and PNGs.

Conventions (each source states its own; getting one wrong transposes or shifts every mask):

- ``siim``: SIIM-ACR pneumothorax, ``train-rle.csv`` (stage 1): pairs ``start length`` where the first
  ``start`` is a 0-based offset and every later one the gap after the previous run ("relative"), over
  the image flattened **column-major** (down the first column, then the next: Fortran order). The
  stage-2 tables use the standard Kaggle RLE instead: absolute 1-based starts, also column-major.
  `decode_siim` tells them apart per row (a relative row read as absolute has decreasing starts; an
  absolute row read as relative runs past the image) and takes ``mode`` when both fit.
- ``chexmask``: CheXmask's ``get_mask_from_RLE``: absolute 1-based starts over the image flattened
  **row-major** (C order), shape ``(Height, Width)`` from the row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["decode_absolute", "decode_relative", "decode_siim", "encode_absolute", "encode_relative", "write_mask"]


def _pairs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    vals = np.asarray([int(v) for v in rle.split()], dtype=np.int64)
    if len(vals) % 2:
        raise ValueError(f"odd number of values ({len(vals)}): expected start / length pairs")
    starts, lengths = vals[0::2], vals[1::2]
    if (lengths < 0).any() or (starts < 0).any():
        raise ValueError("negative start or length")
    return starts, lengths


def _fill(flat_len: int, begins: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    flat = np.zeros(flat_len, dtype=bool)
    if len(begins) and (begins.min() < 0 or (begins + lengths).max() > flat_len):
        raise ValueError(f"a run lies outside the {flat_len} pixels of the image")
    for b, n in zip(begins.tolist(), lengths.tolist()):
        flat[b:b + n] = True
    return flat


def decode_relative(rle: str, height: int, width: int, order: str = "F") -> np.ndarray:
    """SIIM stage-1 relative RLE → bool [height, width] (``order`` ``F`` = column-major)."""
    starts, lengths = _pairs(rle)
    ends = np.cumsum(starts + lengths)
    return _fill(height * width, ends - lengths, lengths).reshape((height, width), order=order)


def decode_absolute(rle: str, height: int, width: int, order: str = "C") -> np.ndarray:
    """Standard 1-based absolute RLE → bool [height, width] (``order`` ``C`` row-major, ``F`` column-major)."""
    starts, lengths = _pairs(rle)
    if len(starts) and starts.min() < 1:
        raise ValueError("absolute RLE starts are 1-based; found a 0")
    return _fill(height * width, starts - 1, lengths).reshape((height, width), order=order)


def _fits_relative(starts: np.ndarray, lengths: np.ndarray, n: int) -> bool:
    return int((starts + lengths).sum()) <= n


def _fits_absolute(starts: np.ndarray, lengths: np.ndarray, n: int) -> bool:
    if not len(starts) or starts.min() < 1 or int(starts[-1] + lengths[-1] - 1) > n:
        return False
    return bool((starts[1:] >= starts[:-1] + lengths[:-1]).all())


def decode_siim(rle: str, height: int, width: int, mode: str = "relative") -> tuple[np.ndarray, str]:
    """``(mask, mode used)`` of a SIIM-ACR ``EncodedPixels`` cell (column-major; relative or absolute, see
    the module docstring; ``mode`` decides when both readings fit). ``-1`` / blank → an empty mask."""
    text = rle.strip()
    if text in ("", "-1"):
        return np.zeros((height, width), dtype=bool), mode
    starts, lengths = _pairs(text)
    n = height * width
    rel, ab = _fits_relative(starts, lengths, n), _fits_absolute(starts, lengths, n)
    if rel and (mode == "relative" or not ab):
        return decode_relative(text, height, width, "F"), "relative"
    if ab:
        return decode_absolute(text, height, width, "F"), "absolute"
    raise ValueError(f"runs fit neither the relative nor the absolute reading of a {height} x {width} image")


def encode_relative(mask: np.ndarray, order: str = "F") -> str:
    """The SIIM stage-1 relative RLE of a bool mask (the inverse of `decode_relative`; for fixtures)."""
    flat = np.asarray(mask, dtype=bool).flatten(order=order).astype(np.int8)
    d = np.diff(np.concatenate([[0], flat, [0]]))
    begins, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    out, pos = [], 0
    for b, e in zip(begins.tolist(), ends.tolist()):
        out += [b - pos, e - b]
        pos = e
    return " ".join(map(str, out)) if out else "-1"


def encode_absolute(mask: np.ndarray, order: str = "C") -> str:
    """The 1-based absolute RLE of a bool mask (inverse of `decode_absolute`; for fixtures)."""
    flat = np.asarray(mask, dtype=bool).flatten(order=order).astype(np.int8)
    d = np.diff(np.concatenate([[0], flat, [0]]))
    begins, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return " ".join(f"{b + 1} {e - b}" for b, e in zip(begins.tolist(), ends.tolist()))


def write_mask(path: str | Path, mask: np.ndarray, size: tuple[int, int] | None = None) -> Path:
    """Write a bool mask as an 8-bit 0 / 255 PNG, atomically; ``size`` ``(height, width)`` resizes it first
    (nearest neighbour: a mask in another resolution of its image's frame)."""
    import os

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    im = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
    im.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(height, width)`` of a PNG / JPEG from its header (None when unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - any unreadable file: no size
        return None
