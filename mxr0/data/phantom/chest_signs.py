"""How each chest finding changes the frontal image (fluid, collapse, opacities, nodules, edema) and where its box lies."""

from __future__ import annotations

import math

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.chest_findings import _Finding
from mxr0.data.phantom.chest_scene import _Scene
from mxr0.data.phantom.common import _SIGN, F, _sig


def _zone_center(rng: np.random.Generator, geo: dict, f: _Finding, air: np.ndarray, margin: float) -> tuple[float, float]:
    """A point of the finding's lung zone whose surroundings (``margin``) are aerated lung.

    Rejection sampling on the drawn air map keeps nodules and opacities off the heart, the
    mediastinum and the diaphragm, where they would be hidden. A retrocardiac opacity sits behind
    the heart on purpose (left lower lobe, just left of the spine: image right of the midline).
    """
    s = _SIGN[f.side]
    apex, dome = geo["apex"], geo["dome"][s]
    lo, hi = {"upper": (apex + 0.06, apex + 0.22), "middle": (apex + 0.22, apex + 0.38),
              "lower": (apex + 0.38, dome - 0.03)}[f.zone]
    if f.prm.get("retro"):
        return geo["cx"] + s * rng.uniform(0.06, 0.1), dome - rng.uniform(0.05, 0.08)
    size = air.shape[0]

    def a(px_: float, py_: float) -> float:
        i, j = int(np.clip(py_ * size, 0, size - 1)), int(np.clip(px_ * size, 0, size - 1))
        return float(air[i, j])

    best, best_v = None, -1.0
    for _ in range(40):
        yy = rng.uniform(lo, max(hi, lo + 0.02))
        xx = geo["cx"] + s * rng.uniform(0.06, geo["hw"] - 0.02)
        v = min(a(xx, yy), a(xx - margin, yy), a(xx + margin, yy), a(xx, yy - margin), a(xx, yy + margin))
        if v > best_v:
            best, best_v = (xx, yy), v
        if v > 0.95:
            break
    return best


def _effusion(sc: _Scene, f: _Finding) -> None:
    """Fluid with a meniscus in the costophrenic angle of each affected side."""
    g, geo = sc.ctx.g, sc.geo
    for side, (h, curv) in f.prm.items():
        s = _SIGN[side]
        u = s * sc.dx
        ulat = geo["hw"]
        level = geo["cp"][s] - h + curv * np.clip((ulat - u) / ulat, 0.0, 1.0) ** 1.5
        fluid = sc.hemi[s] * _sig(g.y - level, 2.0 * g.px)
        k = 1.0 if f.certain else 0.75
        sc.air_keep *= 1.0 - k * fluid
        sc.avail *= 1.0 - fluid
        sc.img += fluid * F(0.09 * k)
        f.boxes.append(D.mask_bbox(fluid * (1 - sc.med)))


def _ptx(sc: _Scene, f: _Finding) -> None:
    """A lucent rim without markings around the collapsed lung, and its visceral pleural line."""
    g, geo = sc.ctx.g, sc.geo
    y, px = g.y, g.px
    s = _SIGN[f.side]
    e = sc.lung_e[s]
    fr = f.prm["f"]
    ax, ay = geo["cx"] + s * 0.07, geo["dome"][s]
    ce = (ax + fr * (e[0] - ax), ay + fr * (e[1] - ay), fr * e[2], fr * e[3])
    collapsed = D.ellipse(g, *ce, soft=1.0)
    gap = sc.hemi[s] * (1.0 - collapsed) * (1.0 - sc.med) * _sig(geo["dome"][s] - 0.03 - y, 3 * px)
    k = 1.0 if f.certain else 0.6
    sc.marks_keep *= 1.0 - gap
    sc.avail *= 1.0 - gap
    sc.ptx_gap = gap
    sc.extra_dark += gap * F(0.14 * k)
    sc.air_keep *= 1.0 - collapsed * sc.hemi[s] * F(0.15 * k)  # the collapsed lung is denser
    line = D.ring(g, *ce, width=max(0.006, 1.1 / sc.ctx.size)) * sc.hemi[s] * _sig(geo["dome"][s] - 0.03 - y, 3 * px)
    sc.img += line * (1.0 - sc.med) * F(0.25 * k)
    f.boxes.append(D.mask_bbox(gap))


def _opacity(sc: _Scene, f: _Finding) -> None:
    """Overlapping blobs in the finding's zone; air bronchograms inside a lobar pneumonia."""
    g, rng = sc.ctx.g, sc.ctx.rng
    s = _SIGN[f.side]
    ox, oy = _zone_center(rng, sc.geo, f, sc.avail, 0.03)
    sz = f.prm["s"]
    blob = g.zeros()
    for _ in range(3):
        blob = np.maximum(blob, D.gauss(g, ox + rng.normal(0, 0.025), oy + rng.normal(0, 0.025),
                                        sz * rng.uniform(0.6, 1.1), sz * rng.uniform(0.6, 1.1),
                                        angle=rng.uniform(0, math.pi)))
    blob *= np.clip(0.8 + 0.35 * D.smooth_noise(rng, sc.ctx.size, 10), 0.0, 1.2)
    blob = np.clip(blob * 1.25, 0.0, 1.0) * sc.hemi[s] * (1.0 - sc.ptx_gap)
    dens = (rng.uniform(0.9, 1.0) if f.prm["dense"] else rng.uniform(0.62, 0.78)) * (1.0 if f.certain else 0.55)
    sc.air_keep *= 1.0 - dens * blob
    sc.img += blob * sc.heart * F(0.1 * dens)  # retrocardiac density adds to the heart shadow
    if f.prm["pneumonia"]:  # air bronchograms inside lobar consolidation
        bx = [ox + s * rng.uniform(-0.04, 0.0), oy - rng.uniform(0.0, 0.03)]
        pts = [bx, [bx[0] + s * 0.04, bx[1] + rng.uniform(0.01, 0.04)], [bx[0] + s * 0.07, bx[1] + rng.uniform(0.03, 0.07)]]
        br = D.stroke(g, D.polyline_dist(g, pts), 0.006, soft=1.5) * blob
        sc.air_keep = np.clip(sc.air_keep + br * F(0.35), 0.0, 1.0)
    f.boxes.append(D.mask_bbox(blob, 0.35))


def _lesion(sc: _Scene, f: _Finding) -> None:
    """A round nodule, or a lobulated mass, in aerated lung."""
    g, rng = sc.ctx.g, sc.ctx.rng
    x, y = g.x, g.y
    lx, ly = _zone_center(rng, sc.geo, f, sc.avail, f.prm["r"] + 0.012)
    r = f.prm["r"]
    if f.size == "mass":
        ang = np.arctan2(y - ly, x - lx)
        rr = r * (1.0 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.06 * np.sin(5 * ang + rng.uniform(0, 6.3)))
        disk = np.clip((rr - np.hypot(x - lx, y - ly)) / (1.3 * g.px) + 0.5, 0.0, 1.0)
    else:
        disk = D.ellipse(g, lx, ly, r, r * rng.uniform(0.85, 1.0), soft=1.2)
    k = 1.0 if f.certain else 0.6
    sc.air_keep *= 1.0 - F(0.95 * k) * disk
    sc.img += disk * F(0.1 * k)
    f.boxes.append(D.mask_bbox(disk))


def _edema(sc: _Scene, f: _Finding) -> None:
    """Perihilar haze, stronger markings and Kerley B lines at the lateral bases (no box)."""
    g, rng, geo = sc.ctx.g, sc.ctx.rng, sc.geo
    amp = {"mild": 0.45, "moderate": 0.62}[f.size] * (1.0 if f.certain else 0.6)
    haze = sum(D.gauss(g, hx + s * 0.05, hy + 0.02, rng.uniform(0.09, 0.12), rng.uniform(0.12, 0.16))
               for s, (hx, hy) in sc.hil.items())
    sc.air_keep *= 1.0 - F(amp) * np.clip(haze, 0.0, 1.0)
    sc.marks = sc.marks * F(1.0 + amp)
    # Kerley B lines: short horizontal lines at the lateral lung bases
    for s in (-1, 1):
        ys = geo["dome"][s] - rng.uniform(0.02, 0.1, 3)
        xs = geo["cx"] + s * (geo["hw"] - rng.uniform(0.02, 0.04, 3))
        kl = D.stroke(g, D.seg_dist(g, xs, ys, xs - s * 0.035, ys), 0.004).max(axis=0)
        sc.img += kl * sc.hemi[s] * F(0.05 * amp)


def _atelectasis(sc: _Scene, f: _Finding) -> None:
    """A plate-like band above the (lifted) hemidiaphragm of each affected side."""
    g, rng, geo = sc.ctx.g, sc.ctx.rng, sc.geo
    for side, (L, tilt, w, _lift, u) in f.prm.items():
        s = _SIGN[side]
        ay_ = geo["dome"][s] - rng.uniform(0.04, 0.08)
        ax_ = geo["cx"] + s * u
        x0, x1 = ax_ - s * 0.5 * L * math.cos(tilt), ax_ + s * 0.5 * L * math.cos(tilt)
        y0, y1 = ay_ - 0.5 * L * math.sin(tilt), ay_ + 0.5 * L * math.sin(tilt)
        band = D.stroke(g, D.seg_dist(g, x0, y0, x1, y1), w, soft=1.5) * sc.hemi[s]
        sc.air_keep *= 1.0 - band * F(1.0 if f.certain else 0.55)
        sc.img += band * F(0.04 if f.certain else 0.02)
        f.boxes.append(D.mask_bbox(band))


def _cardiomegaly(sc: _Scene, f: _Finding) -> None:
    """The heart is already drawn at the finding's size: only its box."""
    f.boxes.append(D.mask_bbox(sc.heart))


def _ecm(sc: _Scene, f: _Finding) -> None:
    """The mediastinum is already drawn at the finding's width: only the box of its part above the heart."""
    g, geo = sc.ctx.g, sc.geo
    upper = sc.med * _sig(geo["heart_top"] + 0.02 - g.y, 2 * g.px) * _sig(g.y - (geo["apex"] - 0.03), 2 * g.px)
    f.boxes.append(D.mask_bbox(upper))


_SIGNS = {"effusion": _effusion, "ptx": _ptx, "opacity": _opacity, "lesion": _lesion, "edema": _edema,
          "atelectasis": _atelectasis, "cardiomegaly": _cardiomegaly, "ecm": _ecm}
"""Each finding's drawer, in drawing order (a pneumothorax before the opacity it keeps out of its rim)."""


def _draw_signs(sc: _Scene, fs: dict[str, _Finding]) -> None:
    """Draw the study's findings onto the scene and fill their boxes."""
    for kind, draw in _SIGNS.items():
        if kind in fs:
            draw(sc, fs[kind])
