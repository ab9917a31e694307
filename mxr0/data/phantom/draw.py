"""Vectorised numpy drawing primitives for the phantom radiographs (`mxr0.data.phantom`).

Every primitive works on a `Grid`: pixel-centre coordinates of a square image normalised to [0, 1],
``x`` growing to the image's right (the patient's LEFT on a frontal radiograph) and ``y`` growing
down. Shapes are drawn as float32 "density" layers (high = dense = bright, MONOCHROME2) with
anti-aliased edges; the callers add, multiply and combine them. No per-pixel Python loops: a shape
is a handful of whole-array numpy operations, and many shapes of one kind (ribs, vessels, bones) are
drawn at once by broadcasting over a leading axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

F32 = np.float32


class Grid:
    """Pixel-centre coordinates of a ``size`` x ``size`` image, normalised to [0, 1].

    ``x`` has shape (1, size) and ``y`` (size, 1), so expressions broadcast to (size, size)
    without materialising a meshgrid. ``px`` is the width of one pixel in normalised units.
    """

    def __init__(self, size: int):
        self.size = int(size)
        c = (np.arange(self.size, dtype=F32) + F32(0.5)) / F32(self.size)
        self.x = c[None, :]
        self.y = c[:, None]
        self.px = F32(1.0 / self.size)

    def zeros(self) -> np.ndarray:
        return np.zeros((self.size, self.size), dtype=F32)

    def window(self, x0: float, y0: float, x1: float, y1: float) -> tuple[tuple[slice, slice], Grid] | None:
        """The pixels whose centres may lie in [x0, x1] x [y0, y1] (plus one pixel), as
        ``(slices into a full image, a sub-grid with the same coordinates)``; None when empty.

        Drawing a small shape on its window instead of the whole image is what keeps thin
        lines (vessels, tubes) cheap.
        """
        n = self.size
        j0, j1 = max(0, int(np.floor(x0 * n)) - 1), min(n, int(np.ceil(x1 * n)) + 1)
        i0, i1 = max(0, int(np.floor(y0 * n)) - 1), min(n, int(np.ceil(y1 * n)) + 1)
        if j0 >= j1 or i0 >= i1:
            return None
        sub = Grid.__new__(Grid)
        sub.size, sub.px = n, self.px
        sub.x, sub.y = self.x[:, j0:j1], self.y[i0:i1, :]
        return (slice(i0, i1), slice(j0, j1)), sub


def paint_segments(g: Grid, segs: Sequence[Sequence[float]], soft: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """Anti-aliased line segments ``(x0, y0, x1, y1, width)`` merged with max, each drawn on its own window."""
    out = g.zeros() if out is None else out
    for x0, y0, x1, y1, w in segs:
        m = 0.5 * max(w, float(g.px)) + 2 * float(g.px) * soft
        win = g.window(min(x0, x1) - m, min(y0, y1) - m, max(x0, x1) + m, max(y0, y1) + m)
        if win is None:
            continue
        sl, sub = win
        np.maximum(out[sl], stroke(sub, seg_dist(sub, x0, y0, x1, y1), w, soft=soft), out=out[sl])
    return out


def paint_capsules(g: Grid, caps: Sequence[Sequence[float]], cortex: float = 0.45, soft: float = 1.0,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Tubular bones ``(x0, y0, x1, y1, r)`` (see `capsule`) merged with max, each on its own window."""
    out = g.zeros() if out is None else out
    for x0, y0, x1, y1, r in caps:
        m = r + 2 * float(g.px) * soft
        win = g.window(min(x0, x1) - m, min(y0, y1) - m, max(x0, x1) + m, max(y0, y1) + m)
        if win is None:
            continue
        sl, sub = win
        np.maximum(out[sl], capsule(sub, x0, y0, x1, y1, r, cortex=cortex, soft=soft), out=out[sl])
    return out


def paint(out: np.ndarray, g: Grid, box: tuple[float, float, float, float], fn, mode: str = "max") -> np.ndarray:
    """Evaluate ``fn(sub_grid)`` on the window ``box`` only and merge it into ``out`` (max or add)."""
    win = g.window(*box)
    if win is not None:
        sl, sub = win
        if mode == "max":
            np.maximum(out[sl], fn(sub), out=out[sl])
        else:
            out[sl] += fn(sub)
    return out


def _col(v) -> np.ndarray:
    """A scalar stays 0-d; a 1-d array of n shape parameters becomes (n, 1, 1) to broadcast."""
    a = np.asarray(v, dtype=F32)
    return a[..., None, None] if a.ndim else a


def _rotate(dx: np.ndarray, dy: np.ndarray, angle) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(angle, dtype=F32)
    if not np.any(a):
        return dx, dy
    a = _col(a)
    c, s = np.cos(a), np.sin(a)
    return dx * c + dy * s, -dx * s + dy * c


def ellipse_dist(g: Grid, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    """Normalised elliptic radius: < 1 inside the ellipse, 1 on its boundary (angle in radians)."""
    dx, dy = _rotate(g.x - _col(cx), g.y - _col(cy), angle)
    return np.sqrt((dx / _col(rx)) ** 2 + (dy / _col(ry)) ** 2)


def ellipse(g: Grid, cx, cy, rx, ry, angle=0.0, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased filled ellipse in [0, 1]; ``soft`` is the edge width in pixels."""
    d = ellipse_dist(g, cx, cy, rx, ry, angle)
    r = np.minimum(_col(rx), _col(ry))
    return np.clip((1.0 - d) * r / (soft * g.px) + 0.5, 0.0, 1.0)


def superellipse(g: Grid, cx, cy, rx, ry, power: float = 4.0, angle=0.0, soft: float = 1.0) -> np.ndarray:
    """Filled superellipse (a rounded rectangle for ``power`` ~4) in [0, 1]."""
    dx, dy = _rotate(g.x - _col(cx), g.y - _col(cy), angle)
    d = (np.abs(dx / _col(rx)) ** power + np.abs(dy / _col(ry)) ** power) ** (1.0 / power)
    r = np.minimum(_col(rx), _col(ry))
    return np.clip((1.0 - d) * r / (soft * g.px) + 0.5, 0.0, 1.0)


def ring(g: Grid, cx, cy, rx, ry, width, angle=0.0, soft: float = 1.0) -> np.ndarray:
    """An elliptic band of ``width`` (normalised units) centred on the ellipse boundary.

    The distance to the boundary is the first-order estimate |d - 1| / |grad d|, so the band keeps
    its width along flat ellipses (ribs) instead of thickening at the ends of the long axis.
    """
    dx, dy = _rotate(g.x - _col(cx), g.y - _col(cy), angle)
    rx, ry = _col(rx), _col(ry)
    X, Y = dx / rx, dy / ry
    d = np.sqrt(X * X + Y * Y) + F32(1e-9)
    grad = np.sqrt((X / rx) ** 2 + (Y / ry) ** 2) / d + F32(1e-9)
    dist = np.abs(d - 1.0) / grad
    return np.clip((0.5 * _col(width) - dist) / (soft * g.px) + 0.5, 0.0, 1.0)


def gauss(g: Grid, cx, cy, sx, sy, angle=0.0) -> np.ndarray:
    """Unnormalised 2-D gaussian bump (peak 1)."""
    dx, dy = _rotate(g.x - _col(cx), g.y - _col(cy), angle)
    return np.exp(-0.5 * ((dx / _col(sx)) ** 2 + (dy / _col(sy)) ** 2))


def seg_dist(g: Grid, x0, y0, x1, y1) -> np.ndarray:
    """Distance from every pixel centre to the segment(s) (x0, y0)-(x1, y1) (arrays broadcast)."""
    x0, y0, x1, y1 = (_col(v) for v in (x0, y0, x1, y1))
    dx, dy = x1 - x0, y1 - y0
    l2 = dx * dx + dy * dy + F32(1e-12)
    t = np.clip(((g.x - x0) * dx + (g.y - y0) * dy) / l2, 0.0, 1.0)
    ex = x0 + t * dx - g.x
    ey = y0 + t * dy - g.y
    return np.sqrt(ex * ex + ey * ey)


def polyline_dist(g: Grid, pts: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Distance to a polyline given as an (m, 2) array of (x, y) vertices."""
    p = np.asarray(pts, dtype=F32)
    d = seg_dist(g, p[:-1, 0], p[:-1, 1], p[1:, 0], p[1:, 1])
    return d.min(axis=0) if d.ndim == 3 else d


def stroke(g: Grid, dist: np.ndarray, width, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased line of ``width`` (normalised, at least one pixel) from a distance field."""
    w = np.maximum(_col(width), g.px)
    return np.clip((0.5 * w - dist) / (soft * g.px) + 0.5, 0.0, 1.0)


def capsule(g: Grid, x0, y0, x1, y1, r, cortex: float = 0.45, soft: float = 1.0) -> np.ndarray:
    """Tubular bone(s) from (x0, y0) to (x1, y1) with radius ``r``.

    The profile is brighter at the edge than in the middle (a dense cortex around a lighter
    medullary cavity), as long bones look on a radiograph. Batched inputs are merged with max.
    """
    d = seg_dist(g, x0, y0, x1, y1)
    rr = _col(r)
    inside = np.clip((rr - d) / (soft * g.px) + 0.5, 0.0, 1.0)
    rel = np.clip(d / rr, 0.0, 1.0)
    out = inside * ((1.0 - cortex) + cortex * rel * rel)
    return out.max(axis=0) if out.ndim == 3 else out


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable gaussian blur (edge-padded) with sigma in pixels; a handful of array shifts."""
    if sigma_px <= 0.05:
        return img
    r = max(1, int(round(2.5 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=F32) / F32(sigma_px)) ** 2)
    k /= k.sum()
    h, w = img.shape
    p = np.pad(img, r, mode="edge")
    tmp = k[0] * p[:, 0:w]
    for i in range(1, 2 * r + 1):
        tmp += k[i] * p[:, i:i + w]
    out = k[0] * tmp[0:h, :]
    for i in range(1, 2 * r + 1):
        out += k[i] * tmp[i:i + h, :]
    return out.astype(F32, copy=False)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise (about unit standard deviation) from a ``cells`` x ``cells`` grid."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(F32)
    img = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
    out = np.asarray(img, dtype=F32)
    return out / (out.std() + F32(1e-6))


def mask_bbox(mask: np.ndarray, thresh: float = 0.5, min_px: float = 2.0) -> tuple[float, float, float, float] | None:
    """Tight normalised box (x0, y0, x1, y1) around ``mask > thresh``, in image coordinates.

    Pixel edges are used (a single pixel i spans [i/size, (i+1)/size]); boxes thinner than
    ``min_px`` pixels are widened symmetrically so thin tubes still get a usable box.
    """
    m = mask > thresh
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    h, w = mask.shape
    x0, x1 = cols[0] / w, (cols[-1] + 1) / w
    y0, y1 = rows[0] / h, (rows[-1] + 1) / h
    (x0, x1), (y0, y1) = _widen(x0, x1, min_px / w), _widen(y0, y1, min_px / h)
    return x0, y0, x1, y1


def _widen(a: float, b: float, min_len: float) -> tuple[float, float]:
    if b - a < min_len:
        c = 0.5 * (a + b)
        a, b = c - 0.5 * min_len, c + 0.5 * min_len
        if a < 0:
            a, b = 0.0, min_len
        if b > 1:
            a, b = 1.0 - min_len, 1.0
    return float(a), float(b)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float image to 8-bit (rounded, clipped)."""
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, img: np.ndarray, compress_level: int = 6) -> None:
    """Write a 2-D image (uint8, or float in [0, 1]) as an 8-bit grayscale PNG (deterministic bytes)."""
    arr = img if img.dtype == np.uint8 else to_uint8(img)
    Image.fromarray(arr).save(path, format="PNG", compress_level=compress_level)
