"""The left lateral chest radiograph: sternum to the image's left, spine to the right, findings seen side-on."""

from __future__ import annotations

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.chest_findings import _Device, _Finding
from mxr0.data.phantom.common import F, _Ctx, _finish, _sig


def _draw_chest_lateral(ctx: _Ctx, geo: dict, fs: dict[str, _Finding], devs: list[_Device]) -> np.ndarray:
    """A left lateral view: anterior (sternum) to the image's left, spine on the right.

    The heart sits anteriorly on the diaphragm, the retrosternal and retrocardiac spaces are dark
    lung, the posterior costophrenic sulcus is the lowest point of the lungs (where an effusion
    collects first), the vertebral bodies stack along the back.
    """
    g, rng, S = ctx.g, ctx.rng, ctx.size
    x, y, px = g.x, g.y, g.px
    depth = rng.uniform(0.27, 0.31) * (1.04 if ctx.sex == "M" else 0.97)
    bx = 0.5 + rng.normal(0, 0.01)
    apex = geo["apex"]
    body = D.superellipse(g, bx, 0.62, depth + 0.07, 0.62, 2.4, soft=2.0)
    body = np.maximum(body, D.capsule(g, bx + 0.05, -0.1, bx + 0.03, apex + 0.05, 0.11, cortex=0.0, soft=2.0))
    img = F(0.03) + body * (F(0.3) + F(0.08) * np.clip(1 - ((x - bx) / (depth + 0.07)) ** 2, 0, 1))
    dome = geo["dome"][-1] + 0.01
    t = (x - (bx - 0.06)) / depth
    yd = dome + np.where(t < 0, 0.05, 0.16) * t ** 2  # posterior costophrenic sulcus is the deepest
    below = _sig(y - yd, 1.5 * px)
    img += body * below * F(0.12)
    img -= D.ellipse(g, bx - 0.05, dome + 0.05, 0.05, 0.025, soft=2.0) * below * F(0.1)  # gastric bubble
    lungs = D.superellipse(g, bx + 0.02, (apex + dome + 0.16) / 2, depth - 0.02, (dome + 0.16 - apex) / 2, 2.2, soft=1.5)
    lungs = lungs * _sig(yd - y, 1.5 * px)
    ctr = geo["ctr"] / 0.45
    ha, hb = 0.15 * ctr ** 0.8, 0.115 * ctr ** 0.4
    hcx, hcy = bx - depth + 0.05 + 0.8 * ha, dome - 0.05
    heart = D.ellipse(g, hcx, hcy, ha, hb, angle=-0.6, soft=1.5) * _sig(yd + 0.005 - y, px)
    aorta = D.ring(g, bx + 0.02, apex + 0.2, 0.08, 0.06, 0.03) * _sig(apex + 0.2 - y, 0.02)
    air = lungs * (1 - heart)
    keep = np.ones_like(air)
    if "effusion" in fs:
        f = fs["effusion"]
        h = max(v[0] for v in f.prm.values())
        level = dome + 0.15 - 1.1 * h + 0.08 * np.clip((bx + depth - x) / (2 * depth), 0, 1) ** 1.5
        fluid = lungs * _sig(y - level, 2 * px)
        keep *= 1 - fluid * (1.0 if f.certain else 0.75)
    zone_y = {"upper": apex + 0.14, "middle": apex + 0.3, "lower": dome - 0.08}
    if "opacity" in fs:
        f = fs["opacity"]
        blob = D.gauss(g, bx + rng.uniform(-0.02, 0.12), zone_y[f.zone], f.prm["s"] * 1.2, f.prm["s"]) * lungs
        keep *= 1 - blob * (0.8 if f.prm["dense"] else 0.5) * (1.0 if f.certain else 0.55)
    if "lesion" in fs:
        f = fs["lesion"]
        disk = D.ellipse(g, bx + rng.uniform(-0.02, 0.1), zone_y[f.zone], f.prm["r"], f.prm["r"])
        keep *= 1 - 0.9 * disk * (1.0 if f.certain else 0.6)
    if "edema" in fs:
        keep *= 1 - 0.4 * D.gauss(g, bx + 0.02, geo["hilum_y"], 0.13, 0.15)
    if "atelectasis" in fs:
        band = D.stroke(g, D.seg_dist(g, bx - 0.05, dome - 0.05, bx + 0.12, dome - 0.02), 0.022) * lungs
        keep *= 1 - 0.8 * band
    img += heart * F(0.13) + aorta * F(0.05) - air * keep * F(0.24)
    img += D.gauss(g, bx + 0.03, geo["hilum_y"], 0.04, 0.05) * F(0.06) + D.smooth_noise(rng, S, 12) * air * F(0.012)
    trach = D.stroke(g, D.seg_dist(g, bx - 0.01, -0.05, bx + 0.03, geo["carina_y"]), 0.028, soft=2)
    img -= trach * F(0.08)
    # spine (posterior, with a gentle kyphosis), scapula, sternum
    sp = rng.uniform(0.05, 0.056)
    lev = np.arange(0.0, 1.05, sp) + rng.uniform(0, sp)
    vx = bx + depth - 0.07 - 0.035 * np.sin(np.pi * lev)
    vert = g.zeros()
    for vx_, ly in zip(vx, lev):
        D.paint(vert, g, (vx_ - 0.05, ly - sp * 0.5, vx_ + 0.05, ly + sp * 0.5),
                lambda sub: D.superellipse(sub, vx_, ly, 0.04, sp * 0.36, 3.0, soft=1.2))
    post = D.paint_capsules(g, [(vx_ + 0.045, ly, vx_ + 0.075, ly + 0.02, 0.008) for vx_, ly in zip(vx, lev)])
    stern = D.capsule(g, bx - depth - 0.035, apex + 0.1, bx - depth - 0.01, dome - 0.08, 0.013)
    scap = D.ellipse(g, bx + depth * 0.55, apex + 0.2, 0.06, 0.16, angle=0.2, soft=3.0)
    ribs = D.ring(g, bx + 0.05, apex + 0.28 + np.arange(6) * 0.075, depth, 0.3, 0.014).max(axis=0) * lungs
    img += (vert * F(0.17) + post * F(0.06) + stern * F(0.1) + ribs * F(0.03) + scap * F(0.04)) * F(ctx.bone)
    metal = g.zeros()
    for d in devs:
        if d.kind == "ett":
            lay = D.stroke(g, D.seg_dist(g, bx - 0.005, -0.02, bx + 0.022, geo["carina_y"] - 0.06), 0.008)
        elif d.kind == "ng":
            lay = D.stroke(g, D.polyline_dist(g, [[bx + 0.05, -0.02], [bx + 0.08, dome], [bx - 0.02, dome + 0.08]]), 0.007)
        elif d.kind == "pacemaker":
            gy = geo["clav_y"] + 0.08
            gen = D.superellipse(g, bx - depth - 0.03, gy, 0.016, 0.03, 4.0)
            lead = D.stroke(g, D.polyline_dist(g, [[bx - depth - 0.03, gy], [bx, geo["carina_y"]], [hcx, hcy]]), 0.006)
            lay = np.maximum(gen, lead)
        else:
            lay = D.stroke(g, D.polyline_dist(g, [[bx + 0.03, -0.02], [bx + 0.0, geo["carina_y"] + 0.06]]), 0.006)
        metal = np.maximum(metal, lay)
    img = img * (1 - metal * F(0.8)) + metal * F(0.85)
    return _finish(ctx, img)

