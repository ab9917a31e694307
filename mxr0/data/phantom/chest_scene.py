"""The frontal chest before its findings: thorax geometry, body outline, diaphragm, lungs, heart and lung markings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.chest_findings import _Finding
from mxr0.data.phantom.common import _SIGN, F, _Ctx, _sig


def _chest_geometry(ctx: _Ctx, view: str, fs: dict[str, _Finding]) -> dict:
    rng = ctx.rng
    male = ctx.sex == "M"
    hw = rng.uniform(0.3, 0.335) * (1.05 if male else 0.96)
    apex = rng.uniform(0.1, 0.15)
    dome_r = rng.uniform(0.66, 0.71) + (rng.uniform(0.02, 0.04) if view == "AP" else 0.0)
    dome = {-1: dome_r, 1: dome_r + rng.uniform(0.012, 0.035)}  # right (image left) dome higher
    if "atelectasis" in fs:  # volume loss lifts the hemidiaphragm
        for s, prm in fs["atelectasis"].prm.items():
            dome[_SIGN[s]] -= prm[3] * (1.0 if fs["atelectasis"].certain else 0.4)
    cp = {s: dome[s] + rng.uniform(0.07, 0.1) for s in (-1, 1)}
    ctr = min(0.49, rng.uniform(0.4, 0.48) + 0.0008 * (ctx.age - 50.0))
    if "cardiomegaly" in fs:
        ctr = fs["cardiomegaly"].prm["ctr"]
    if view == "AP":
        ctr *= 1.08
    mw = fs["ecm"].prm["mw"] if "ecm" in fs else rng.uniform(0.045, 0.058)
    cx = 0.5 + rng.normal(0.0, 0.01)
    hwidth = ctr * 2.0 * hw  # heart width: CTR x inner thoracic width
    # The heart is an ellipse whose long axis runs from the right atrium (image upper left) to the
    # apex (image lower right); its axes are solved so that its horizontal extent is ``hwidth``.
    tilt = rng.uniform(0.35, 0.6)
    k = rng.uniform(0.74, 0.84)
    ha = (hwidth / 2.0) / math.sqrt(math.cos(tilt) ** 2 + (k * math.sin(tilt)) ** 2)
    hb = k * ha
    vhalf = math.sqrt((ha * math.sin(tilt)) ** 2 + (hb * math.cos(tilt)) ** 2)
    hcy = dome[1] - max(0.045, 0.3 * vhalf) - rng.uniform(0.0, 0.02)
    return {
        "cx": cx, "hw": hw, "ex": (hw + 0.02) / 2.0, "apex": apex, "dome": dome, "cp": cp, "mw": mw,
        "ctr": ctr, "upk": 0.55 * hw,
        "heart": (cx + hwidth / 6.0, hcy, ha, hb, tilt), "heart_top": hcy - vhalf,
        "hilum_y": apex + rng.uniform(0.27, 0.31), "carina_y": apex + rng.uniform(0.19, 0.23),
        "clav_y": apex + rng.uniform(0.04, 0.07) - (0.03 if view == "AP" else 0.0),
        "trachea_dx": rng.normal(0.0, 0.004), "view": view,
    }


def _diaphragm(geo: dict, s: int, dx: np.ndarray) -> np.ndarray:
    """Height (y) of the hemidiaphragm on side ``s`` (image direction) at horizontal offset ``dx``."""
    u = s * dx
    k = (geo["cp"][s] - geo["dome"][s]) / (geo["hw"] - geo["upk"]) ** 2
    return geo["dome"][s] + np.where(u > geo["upk"], k, 0.3 * k) * (u - geo["upk"]) ** 2


@dataclass
class _Scene:
    """A frontal chest being drawn: the density layers its anatomy, finding and device steps share.

    ``dx`` is the horizontal offset from the midline; ``hemi``, ``yd`` and ``lung_e`` are keyed by image
    direction (-1 the image's left = the patient's right). The aeration layers start neutral; the findings
    darken (``extra_dark``), fill (``air_keep``) or hide (``marks_keep``) the lungs, and take their place
    out of ``avail`` (the aerated lung still free for a nodule or an opacity).
    """

    ctx: _Ctx
    geo: dict
    dx: np.ndarray
    img: np.ndarray
    body: np.ndarray
    torso: np.ndarray
    sh_y: float  # shoulder height
    arm_x: float  # half distance between the arms
    yd: dict  # hemidiaphragm heights
    yd_all: np.ndarray
    lung_e: dict  # each hemithorax's ellipse (cx, cy, rx, ry)
    hemi: dict
    med: np.ndarray  # mediastinum
    heart: np.ndarray
    hil: dict  # hilum centres
    marks: np.ndarray  # lung markings: vessels, hila, texture
    air: np.ndarray = field(init=False)
    air_keep: np.ndarray = field(init=False)  # multiplicative loss of aeration (fluid, opacity, collapse)
    extra_dark: np.ndarray = field(init=False)  # extra lucency (pneumothorax)
    marks_keep: np.ndarray = field(init=False)
    avail: np.ndarray = field(init=False)
    ptx_gap: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.air = np.maximum(self.hemi[-1], self.hemi[1]) * (1.0 - self.med) * (1.0 - self.heart)
        self.air_keep = np.ones_like(self.air)
        self.extra_dark = self.ctx.g.zeros()
        self.marks_keep = np.ones_like(self.air)
        self.avail = self.air.copy()
        self.ptx_gap = self.ctx.g.zeros()


def _outline(ctx: _Ctx, geo: dict, dx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Body outline (neck, shoulders, arms, chest wall): ``(image, body, torso, shoulder y, arm x)``."""
    g, rng = ctx.g, ctx.rng
    y, px = g.y, g.px
    cx, hw, apex = geo["cx"], geo["hw"], geo["apex"]
    neck = rng.uniform(0.075, 0.095)
    wall = hw + rng.uniform(0.045, 0.065)
    frac_y = np.clip((y - apex) / (geo["dome"][1] - apex), 0.0, 1.0)
    hwb = wall * (0.9 + 0.1 * frac_y ** 0.6) + 0.03 * np.clip(y - geo["dome"][1], 0.0, 1.0)
    torso = _sig(hwb - np.abs(dx), 1.5 * px) * _sig(y - (apex - 0.06), 2 * px)
    neckm = _sig(neck - np.abs(dx), 1.5 * px)
    sh_y = apex - rng.uniform(0.0, 0.03)
    shoulders = D.ellipse(g, [cx - wall + 0.02, cx + wall - 0.02], sh_y, 0.15, 0.075, soft=2.0).max(axis=0)
    arm_x = wall + rng.uniform(0.05, 0.08)
    arms = D.capsule(g, [cx - arm_x, cx + arm_x], sh_y + 0.03, [cx - arm_x - 0.02, cx + arm_x + 0.02], sh_y + 0.2,
                     0.07, cortex=0.0, soft=2.0)
    body = np.maximum(np.maximum(torso, neckm), np.maximum(shoulders, arms))
    img = F(0.03) + body * (F(0.27) + F(0.11) * np.clip(1.0 - (dx / (wall + 0.1)) ** 2, 0.0, 1.0))
    return img, body, torso, sh_y, arm_x


def _abdomen(ctx: _Ctx, geo: dict, dx: np.ndarray, body: np.ndarray, img: np.ndarray) -> tuple[dict, np.ndarray]:
    """Adds the abdomen below the hemidiaphragms and the stomach bubble to ``img``; returns the diaphragm heights."""
    g, rng = ctx.g, ctx.rng
    yd = {s: _diaphragm(geo, s, dx) for s in (-1, 1)}
    yd_all = np.where(dx < 0, yd[-1], yd[1])
    below = _sig(g.y - yd_all, 1.2 * g.px)
    img += body * below * F(0.12)
    sb = D.ellipse(g, geo["cx"] + rng.uniform(0.12, 0.19), geo["dome"][1] + rng.uniform(0.04, 0.06),
                   rng.uniform(0.04, 0.06), rng.uniform(0.022, 0.032), soft=2.0)
    img -= sb * below * F(0.13)  # stomach gas bubble under the LEFT hemidiaphragm (image right)
    return yd, yd_all


def _thorax(ctx: _Ctx, geo: dict, dx: np.ndarray, yd: dict, yd_all: np.ndarray,
            body: np.ndarray) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """Hemithoraces, mediastinum (with the aortic knob) and heart: ``(lung ellipses, hemithoraces, med, heart)``."""
    g, rng = ctx.g, ctx.rng
    y, px = g.y, g.px
    cx, hw, apex, mw, ex = geo["cx"], geo["hw"], geo["apex"], geo["mw"], geo["ex"]
    lung_e = {}
    hemi = {}
    for s in (-1, 1):
        ecy = geo["cp"][s] - 0.05
        e = (cx + s * ex, ecy, hw - ex + 0.006, ecy - apex)
        lung_e[s] = e
        inside = D.ellipse(g, *e, soft=1.2)
        hemi[s] = inside * _sig(yd[s] - y, 1.2 * px) * _sig(s * dx - mw * 0.8, 1.2 * px)
    med = _sig(mw - np.abs(dx - 0.004), 1.5 * px) * _sig(yd_all - y, 1.5 * px) * body
    knob_y = apex + rng.uniform(0.15, 0.19)
    med = np.maximum(med, D.ellipse(g, cx + mw + 0.004, knob_y, 0.032, 0.028, soft=1.5))
    hcx, hcy, ha, hb, htilt = geo["heart"]
    heart = D.ellipse(g, hcx, hcy, ha, hb, angle=htilt, soft=1.2) * _sig(yd_all + 0.004 - y, 1.2 * px)
    return lung_e, hemi, med, heart


def _markings(ctx: _Ctx, geo: dict) -> tuple[dict, np.ndarray]:
    """Lung markings: vessels radiating from the hila, the hila and a faint texture: ``(hilum centres, layer)``."""
    g, rng = ctx.g, ctx.rng
    x, y = g.x, g.y
    cx, mw = geo["cx"], geo["mw"]
    segs = []
    hil = {}
    for s in (-1, 1):
        hx, hy = cx + s * (mw + rng.uniform(0.02, 0.035)), geo["hilum_y"] + rng.normal(0, 0.01)
        hil[s] = (hx, hy)
        for ang in np.linspace(-1.3, 1.25, 6) + rng.normal(0, 0.12, 6):
            L = rng.uniform(0.13, 0.22)
            vx, vy = s * math.cos(ang), math.sin(ang)
            mx, my = hx + vx * 0.55 * L, hy + vy * 0.55 * L
            segs.append((hx, hy, mx, my, 0.009))
            for da in (-0.35, 0.3):
                a2 = ang + da + rng.normal(0, 0.08)
                segs.append((mx, my, mx + s * math.cos(a2) * 0.5 * L, my + math.sin(a2) * 0.5 * L, 0.006))
    vessels = D.paint_segments(g, segs, soft=1.6)
    rh = np.minimum(np.hypot(x - hil[-1][0], y - hil[-1][1]), np.hypot(x - hil[1][0], y - hil[1][1]))
    vessels *= np.exp(-rh / 0.2)
    hila = sum(D.gauss(g, hx, hy, 0.022, 0.04) for hx, hy in hil.values())
    texture = D.smooth_noise(rng, ctx.size, 14)
    marks = vessels * F(0.075) + hila * F(0.07) + texture * F(0.01)
    return hil, marks


def _chest_scene(ctx: _Ctx, geo: dict) -> _Scene:
    """The frontal chest's anatomy before its findings, drawn in the order of the random draws."""
    dx = ctx.g.x - geo["cx"]
    img, body, torso, sh_y, arm_x = _outline(ctx, geo, dx)
    yd, yd_all = _abdomen(ctx, geo, dx, body, img)
    lung_e, hemi, med, heart = _thorax(ctx, geo, dx, yd, yd_all, body)
    img += med * F(0.1) + heart * F(0.12)
    hil, marks = _markings(ctx, geo)
    return _Scene(ctx, geo, dx, img, body, torso, sh_y, arm_x, yd, yd_all, lung_e, hemi, med, heart, hil, marks)
