"""Bone drawing shared by the hand, knee and pelvis studies: tubular bones, cortical density, soft tissue, fractures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.common import F


@dataclass
class _Bones:
    """Tubular bones as capsules (x0, y0, x1, y1, r) plus free-form density layers."""

    caps: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    knobs: list[list[float]] = field(default_factory=list)  # flared ends (heads and bases)

    def add(self, name: str, x0: float, y0: float, x1: float, y1: float, r: float, flare: float = 1.3) -> None:
        self.caps.append([x0, y0, x1, y1, r])
        self.names.append(name)
        if flare > 1.0:
            for (ax, ay), (bx, by) in (((x0, y0), (x1, y1)), ((x1, y1), (x0, y0))):
                k = min(0.6, 1.6 * r / (math.hypot(bx - ax, by - ay) + 1e-9))
                ex, ey = ax + (bx - ax) * k * 0.35, ay + (by - ay) * k * 0.35
                self.knobs.append([ax + (bx - ax) * 0.1 * k, ay + (by - ay) * 0.1 * k, ex, ey, r * flare])

    def draw(self, g: D.Grid) -> np.ndarray:
        out = D.paint_capsules(g, self.knobs, cortex=0.35)
        return D.paint_capsules(g, self.caps, cortex=0.5, out=out)


def _fracture(g: D.Grid, rng: np.random.Generator, x0: float, y0: float, x1: float, y1: float, r: float,
              t: float, certain: bool) -> tuple[np.ndarray, tuple[float, float], tuple]:
    """A lucent fracture line across the bone axis (x0,y0)-(x1,y1) at fraction ``t``.

    Returns the line layer (to subtract from the bone), the break point and the box around it.
    """
    bx, by = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    ang = math.atan2(y1 - y0, x1 - x0) + math.pi / 2 + rng.uniform(-0.5, 0.5)  # transverse to oblique
    half = 1.6 * r
    dx, dy = math.cos(ang) * half, math.sin(ang) * half
    w = rng.uniform(0.008, 0.012) if certain else rng.uniform(0.005, 0.007)
    w = max(w, 1.3 / g.size)
    line = D.stroke(g, D.seg_dist(g, bx - dx, by - dy, bx + dx, by + dy), w, soft=1.0)
    pad = 2.0 * r
    return line, (bx, by), (bx - pad, by - pad, bx + pad, by + pad)


def _smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep of ``t`` clipped to [0, 1]."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _cortical(mask: np.ndarray, size: int) -> np.ndarray:
    """Bone density from a bone mask: a brighter cortical rim around a lighter medulla."""
    inner = D.blur(mask, 1.8 * size / 128.0)
    return mask * (F(0.68) + F(1.5) * np.clip(mask - inner, 0.0, 1.0))


def _soft(g: D.Grid, caps: Sequence[Sequence[float]], extra: float) -> np.ndarray:
    """Soft tissue around bones: capsules ``extra`` wider than the bones, with blurred edges."""
    return D.paint_capsules(g, [(x0, y0, x1, y1, r + extra) for x0, y0, x1, y1, r in caps], cortex=0.0, soft=2.5)
