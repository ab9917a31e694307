"""The frontal (PA / AP) chest radiograph: scene and findings, then airways, bones, breasts and support devices."""

from __future__ import annotations

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.chest_findings import _Device, _Finding
from mxr0.data.phantom.chest_scene import _chest_scene, _Scene
from mxr0.data.phantom.chest_signs import _draw_signs
from mxr0.data.phantom.common import _FOV_CM, _SIGN, F, _Ctx, _finish, _sig


def _airways(sc: _Scene) -> None:
    """Trachea and main bronchi: air inside the mediastinum."""
    g, geo = sc.ctx.g, sc.geo
    tx = geo["cx"] + geo["trachea_dx"]
    cy_ = geo["carina_y"]
    trach = D.stroke(g, D.seg_dist(g, tx, -0.05, tx, cy_), 0.03, soft=2.0)
    bron = D.stroke(g, D.seg_dist(g, [tx, tx], [cy_, cy_], [tx - 0.07, tx + 0.08], [cy_ + 0.06, cy_ + 0.08]),
                    0.02, soft=2.0).max(axis=0)
    sc.img -= np.maximum(trach, bron) * np.maximum(sc.med, _sig(geo["apex"] + 0.02 - g.y, 2 * g.px) * sc.body) * F(0.07)


def _spine(sc: _Scene) -> np.ndarray:
    """Vertebral column with its end plates and pedicles, fainter behind the heart."""
    g, rng = sc.ctx.g, sc.ctx.rng
    cx = sc.geo["cx"]
    vw = rng.uniform(0.028, 0.034)
    col = _sig(vw - np.abs(sc.dx), 1.5 * g.px) * sc.body
    sp = rng.uniform(0.045, 0.052)
    phase = np.mod((g.y - rng.uniform(0, sp)) / sp, 1.0)
    spine = col * (0.55 + 0.45 * _sig(phase - 0.2, 0.08))
    lev = np.arange(-0.02, 1.02, sp) + rng.uniform(0, sp)
    ped = g.zeros()
    for ly in lev:
        for px_c in (cx - vw * 0.7, cx + vw * 0.7):
            D.paint(ped, g, (px_c - 0.02, ly - 0.03, px_c + 0.02, ly + 0.03),
                    lambda sub: D.gauss(sub, px_c, ly, 0.006, 0.009))
    return (spine * F(0.1) + ped * F(0.05)) * (0.55 + 0.45 * (1.0 - sc.heart))


def _ribs(sc: _Scene) -> np.ndarray:
    """Posterior ribs: arcs that rise from the spine, peak just lateral to it and curve down along the
    chest wall; fainter anterior ribs run from the chest wall down and medially."""
    g, rng, geo = sc.ctx.g, sc.ctx.rng, sc.geo
    cx, hw, apex, px = geo["cx"], geo["hw"], geo["apex"], g.px
    nr = 10
    rib_top = apex - 0.04 + np.arange(nr) * ((geo["dome"][-1] + 0.06 - apex) / nr) + rng.normal(0, 0.004, nr)
    ribs = g.zeros()
    for s in (-1, 1):
        rcx = cx + s * rng.uniform(0.05, 0.07)
        rx = hw + 0.045 - (rcx - cx) * s
        ry = 0.12 + 0.012 * np.arange(nr) + rng.uniform(-0.01, 0.01, nr)
        w = rng.uniform(0.017, 0.021) * (1.0 + 0.03 * np.arange(nr))
        xa, xb = sorted((cx + s * 0.03, cx + s * (hw + 0.05)))
        for k in range(nr):  # each rib on its own window: the upper half of an ellipse
            D.paint(ribs, g, (xa, rib_top[k] - w[k], xb, rib_top[k] + ry[k] + w[k]),
                    lambda sub: D.ring(sub, rcx, rib_top[k] + ry[k], rx, ry[k], w[k], soft=1.3)
                    * _sig(rib_top[k] + ry[k] - sub.y, 2 * px) * _sig(s * (sub.x - cx) - 0.03, 2 * px))
        ant_y = rib_top[1:8] + 0.1
        ant = D.paint_segments(g, [(cx + s * (hw + 0.03), ay_, cx + s * 0.1, ay_ + 0.11, 0.02) for ay_ in ant_y], soft=2.0)
        ribs = np.maximum(ribs, 0.4 * ant)
    return ribs


def _shoulder_girdle(sc: _Scene) -> np.ndarray:
    """Clavicles, humeral heads and necks, and the scapulae (projected over the lungs on an AP view)."""
    g, rng, geo = sc.ctx.g, sc.ctx.rng, sc.geo
    cx, hw, apex = geo["cx"], geo["hw"], geo["apex"]
    ap = geo["view"] == "AP"
    cl_y = geo["clav_y"]
    clav = g.zeros()
    for s in (-1, 1):
        tilt = 0.0 if ap else rng.uniform(0.02, 0.04)
        pts = np.array([[cx + s * 0.035, cl_y + 0.02], [cx + s * 0.13, cl_y - 0.005 * 0],
                        [cx + s * 0.24, cl_y - tilt], [cx + s * (hw + 0.07), cl_y - tilt - 0.035]])
        D.paint_capsules(g, [(*pts[i], *pts[i + 1], 0.012) for i in range(3)], cortex=0.5, out=clav)
        # humeral head, neck and scapula at the shoulder
        hx_ = cx + s * (sc.arm_x - 0.01)
        hy_ = sc.sh_y + rng.uniform(0.02, 0.04)
        hh = D.capsule(g, hx_, hy_, hx_ + s * 0.02, hy_ + 0.2, rng.uniform(0.04, 0.05), cortex=0.5)
        hh = np.maximum(hh, D.ellipse(g, hx_ - s * 0.01, hy_, 0.055, 0.055, soft=1.2) * 0.9)
        scap_u = hw - 0.05 if ap else hw + 0.02
        scap = D.ellipse(g, cx + s * scap_u, apex + 0.16, 0.055, 0.14, angle=-s * 0.25, soft=3.0)
        clav = np.maximum(clav, np.maximum(hh, scap * 0.3))
    return clav


def _device_layer(sc: _Scene, d: _Device) -> np.ndarray:
    """The radiopaque layer of one tube, line or pacemaker; sets an endotracheal tube's height above the carina."""
    g, rng, geo = sc.ctx.g, sc.ctx.rng, sc.geo
    cx, hw, cy_, cl_y = geo["cx"], geo["hw"], geo["carina_y"], geo["clav_y"]
    tx = cx + geo["trachea_dx"]
    if d.kind == "ett":
        tip = cy_ - rng.uniform(0.04, 0.09)
        d.prm["cm"] = (cy_ - tip) * _FOV_CM
        return D.stroke(g, D.seg_dist(g, tx + 0.003, -0.02, tx + 0.002, tip), 0.013, soft=1.2)
    if d.kind == "ng":
        pts = [[cx + 0.012, -0.02], [cx + 0.018, cy_], [cx + 0.03, geo["dome"][1]],
               [cx + rng.uniform(0.12, 0.17), geo["dome"][1] + rng.uniform(0.06, 0.09)]]
        return D.stroke(g, D.polyline_dist(g, pts), 0.011, soft=1.2)
    if d.kind == "cvc":
        tip = (cx - 0.035, cy_ + rng.uniform(0.04, 0.08))
        if d.prm["route"] == "ij":
            sx = -1 if d.side == "right" else 1
            pts = [[cx + sx * 0.075, -0.02], [cx + sx * 0.06, cl_y + 0.02], [cx - 0.04 + 0.02 * (sx > 0), cy_ - 0.02], tip]
        else:
            sx = _SIGN[d.side]
            pts = [[cx + sx * (hw + 0.05), cl_y + 0.03], [cx + sx * 0.2, cl_y + 0.045],
                   [cx + sx * 0.06, cl_y + 0.06], [cx - 0.03, cy_ - 0.02], tip]
        return D.stroke(g, D.polyline_dist(g, pts), 0.011, soft=1.2)
    # pacemaker: generator over the infraclavicular chest wall, leads to the right heart
    hcx, hcy = geo["heart"][:2]
    sx = _SIGN[d.side]
    gx, gy = cx + sx * rng.uniform(0.2, 0.26), cl_y + rng.uniform(0.06, 0.1)
    gen = D.superellipse(g, gx, gy, 0.04, 0.028, 4.0, angle=rng.uniform(-0.3, 0.3), soft=1.0)
    ra = (cx - 0.02 + rng.normal(0, 0.01), hcy - rng.uniform(0.02, 0.06))
    rv = (hcx + rng.uniform(0.0, 0.04), hcy + rng.uniform(0.02, 0.05))
    svc = (cx - 0.03, cy_ + 0.03)
    l1 = D.polyline_dist(g, [[gx, gy], [cx + sx * 0.08, cl_y + 0.05], svc, ra])
    l2 = D.polyline_dist(g, [[gx, gy], [cx + sx * 0.08, cl_y + 0.055], svc, rv])
    return np.maximum(gen, D.stroke(g, np.minimum(l1, l2), 0.01, soft=1.2))


def _draw_chest_frontal(ctx: _Ctx, geo: dict, fs: dict[str, _Finding], devs: list[_Device]) -> tuple[np.ndarray, dict]:
    """Draw the frontal (PA/AP) chest image; fills each finding's and device's boxes; returns masks."""
    sc = _chest_scene(ctx, geo)
    _draw_signs(sc, fs)
    airf = sc.air * sc.air_keep
    sc.img -= airf * F(0.25) + sc.air * sc.extra_dark
    sc.img += sc.marks * airf * sc.marks_keep
    _airways(sc)
    bones = _spine(sc)
    bones += _ribs(sc) * sc.torso * F(0.05)
    bones += _shoulder_girdle(sc) * F(0.13)
    sc.img += bones * F(ctx.bone)
    cx, dome = geo["cx"], geo["dome"]
    if ctx.sex == "F":  # breast shadows over the lower lateral lung fields
        br = D.ellipse(ctx.g, [cx - 0.2, cx + 0.2], [dome[-1] - 0.01, dome[1] - 0.01], 0.15, 0.1, soft=6.0).max(axis=0)
        sc.img += br * F(ctx.rng.uniform(0.03, 0.05))
    metal = ctx.g.zeros()
    for d in devs:  # radiopaque tubes, lines and a pacemaker
        lay = _device_layer(sc, d)
        d.box = D.mask_bbox(lay, 0.3)
        metal = np.maximum(metal, lay)
    img = sc.img * (1.0 - metal * F(0.9)) + metal * F(0.97)
    hemi, med, heart = sc.hemi, sc.med, sc.heart
    masks = {
        "right_lung": (hemi[-1] * (1 - med) * (1 - heart)) > 0.5,  # patient's right = image left
        "left_lung": (hemi[1] * (1 - med) * (1 - heart)) > 0.5,
        "heart": heart > 0.5,
    }
    return _finish(ctx, img), masks
