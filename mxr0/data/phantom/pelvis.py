"""The AP pelvis study: lumbar spine and sacrum, both hip bones and proximal femurs, an optional fracture, report and QA."""

from __future__ import annotations

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.bones import _cortical, _fracture
from mxr0.data.phantom.common import (
    _SIGN,
    P_UNCERTAIN,
    F,
    _box,
    _box_rec,
    _cap,
    _comparison,
    _Ctx,
    _fill,
    _finish,
    _pick,
    _sig,
)
from mxr0.data.phantom.qa import _msk_qa

_SITES = ("femoral neck", "superior pubic ramus", "iliac wing")


def _sacrum(ctx: _Ctx, cx: float, oy: float, wid: float) -> tuple[np.ndarray, np.ndarray]:
    """L4/L5 and the sacrum (an inverted, slightly curved triangle with rows of foramina): ``(density, sacrum)``."""
    g = ctx.g
    dx = g.x - cx
    spine = np.maximum.reduce([D.superellipse(g, cx, 0.13 + oy, 0.07, 0.042, 4.0, soft=1.2),
                               D.superellipse(g, cx, 0.015 + oy, 0.068, 0.04, 4.0, soft=1.2),
                               D.capsule(g, cx - 0.125, 0.15 + oy, cx + 0.125, 0.15 + oy, 0.013, cortex=0.0)])
    ts = (g.y - (0.2 + oy)) / 0.4
    sac = (_sig(0.125 * wid * np.clip(1.0 - ts, 0.0, 1.0) ** 0.85 - np.abs(dx), 1.5 * g.px) * _sig(ts, 0.02)
           * _sig(1.0 - ts, 0.02))
    lev = 0.27 + oy + np.arange(4) * 0.06
    foram = g.zeros()
    for ly in lev:
        for fx_ in (cx - 0.036, cx + 0.036):
            D.paint(foram, g, (fx_ - 0.03, ly - 0.03, fx_ + 0.03, ly + 0.03), lambda sub: D.ellipse(sub, fx_, ly, 0.011, 0.009))
    return _cortical(np.maximum(spine, sac), ctx.size) * (1.0 - 0.45 * foram), sac


def _hip(ctx: _Ctx, s: int, cx: float, oy: float, wid: float, sac: np.ndarray) -> tuple[np.ndarray, dict]:
    """One hip bone and proximal femur (``s``: image direction): ``(density, landmarks)``, the landmarks
    being the femoral head ``h``, the neck's end ``n`` and the iliac wing's centre ``w``."""
    g = ctx.g
    y, px, dx = g.y, g.px, g.x - cx
    # hip bone: iliac wing (a thin fan with a dense crest), iliac body down to the acetabulum,
    # pubic and ischial rami around the dark obturator foramen; medially the sacroiliac joint
    wcx, wcy = cx + s * 0.235 * wid, 0.3 + oy
    wing = D.ellipse(g, wcx, wcy, 0.19 * wid, 0.145, angle=s * 0.35, soft=1.5) * _sig(0.42 + oy - y, 0.03)
    hx, hy = cx + s * 0.2 * wid, 0.6 + oy
    il_body = D.capsule(g, cx + s * 0.16 * wid, 0.37 + oy, hx + s * 0.01, hy - 0.04, 0.07, cortex=0.0, soft=1.5)
    ilium = np.maximum(wing, il_body) * _sig(s * dx - 0.075 * wid, 1.5 * px) * (1.0 - 0.6 * sac)
    ring = D.ring(g, cx + s * 0.102 * wid, 0.72 + oy, 0.09 * wid, 0.066, 0.036, soft=1.2) * _sig(s * dx - 0.006, px)
    isch = D.ellipse(g, cx + s * 0.16 * wid, 0.78 + oy, 0.04, 0.032, soft=1.2)
    hip = np.maximum(np.maximum(ilium, ring), isch)
    roof = D.ring(g, hx, hy, 0.07, 0.07, 0.014) * _sig(hy - y, 0.01)
    # proximal femur: head in the acetabulum, neck, greater and lesser trochanters, shaft
    nx, ny = hx + s * 0.085, hy + 0.07
    femur = np.maximum.reduce([D.ellipse(g, hx, hy, 0.058, 0.058, soft=1.2),
                               D.capsule(g, hx, hy, nx, ny, 0.034, cortex=0.0),
                               D.ellipse(g, hx + s * 0.105, hy + 0.05, 0.04, 0.05, soft=1.5),
                               D.ellipse(g, hx + s * 0.05, hy + 0.145, 0.02, 0.018, soft=1.2),
                               D.capsule(g, nx, ny - 0.01, hx + s * 0.06, 1.15, 0.05, cortex=0.0)])
    density = 0.8 * _cortical(hip, ctx.size) + _cortical(femur, ctx.size) + 0.3 * roof
    return density, {"h": (hx, hy), "n": (nx, ny), "w": wcx}


def _fracture_axis(rng: np.random.Generator, site: str, s: int, cx: float, oy: float, lm: dict) -> tuple:
    """The bone axis ``(x0, y0, x1, y1, r, t)`` a fracture at ``site`` crosses (`_fracture`)."""
    (hx, hy), (nx, ny), wcx = lm["h"], lm["n"], lm["w"]
    if site == "femoral neck":
        return (hx + s * 0.02, hy + 0.015, nx, ny, 0.034, rng.uniform(0.3, 0.6))
    if site == "superior pubic ramus":
        return (cx + s * 0.05, 0.655 + oy, cx + s * 0.16, 0.655 + oy, 0.02, rng.uniform(0.3, 0.7))
    return (wcx - s * 0.02, 0.2 + oy, wcx + s * 0.05, 0.2 + oy, 0.06, 0.5)


def _pelvis_report(ctx: _Ctx, rec: dict, frac: bool, certain: bool, fside: str, site: str, box: tuple | None) -> None:
    """Labels, the fracture box, the report and the QA of a pelvis study."""
    rt = ctx.rt
    labels = rec["labels"]
    degen = ctx.age > 60 and rt.random() < 0.5
    if not frac:
        labels["Fracture"], labels["No Finding"] = 0, 1
        fnd = [_pick(rt, ["No acute fracture or dislocation.", "There is no fracture or dislocation."]),
               _pick(rt, ["The sacroiliac joints and pubic symphysis are intact.", "The pelvic ring is intact."])]
        imp = _pick(rt, ["No acute fracture or dislocation.", "No acute osseous abnormality of the pelvis."])
    else:
        labels["Fracture"], labels["No Finding"] = (1 if certain else -1), 0
        phrase = _pick(rt, [f"{fside} {site} fracture", f"fracture of the {fside} {site}"])
        if certain:
            kind = _pick(rt, ["acute", "mildly displaced", "nondisplaced"])
            phrase = f"{kind} {phrase}"
            fnd = [_fill(_pick(rt, ["There is {a_p}.", "{A_p} is present."]), phrase)]
            imp = _cap(phrase) + "."
        else:
            fnd = [_fill("Cortical irregularity may represent a nondisplaced {p}.", phrase)]
            imp = _fill("Possible {p}. CT could be considered for further evaluation.", phrase)
        if box is not None:
            rec["boxes"].append(_box_rec(phrase, "Fracture", _box(box)))
    if degen:
        fnd.append("Mild degenerative changes of both hips.")
    rec.update(indication=_pick(rt, ["Fall, hip pain.", "Trauma.", "Hip pain, unable to bear weight.",
                                     "Evaluate for fracture.", "Pelvic pain after a fall."]),
               technique="AP view of the pelvis.", comparison=_comparison(rt, "radiograph"),
               findings=" ".join(fnd), impression=imp)
    rec["qa"] = _msk_qa(ctx, "pelvis", fside if frac else "", "AP", f"{fside} {site}" if frac else None, certain,
                        [f"{s_} {b}" for s_ in ("left", "right") for b in _SITES])


def _pelvis(ctx: _Ctx, rec: dict) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """AP pelvis, displayed facing the patient: the patient's left hip is on the image's right."""
    g, rng = ctx.g, ctx.rng
    wid = (rng.uniform(1.02, 1.08) if ctx.sex == "F" else rng.uniform(0.94, 1.0))
    cx = 0.5 + rng.normal(0, 0.01)
    oy = rng.normal(0, 0.015)
    bones, sac = _sacrum(ctx, cx, oy, wid)
    frac = rng.random() < 0.3
    certain = bool(rng.random() >= P_UNCERTAIN)
    fside = _pick(rng, ["left", "right"])
    site = _pick(rng, _SITES) if frac else ""
    seg = None
    for side in ("right", "left"):
        s = _SIGN[side]
        hip, landmarks = _hip(ctx, s, cx, oy, wid, sac)
        bones += hip
        if frac and side == fside:
            seg = _fracture_axis(rng, site, s, cx, oy, landmarks)
    brim = D.ring(g, cx, 0.52 + oy, 0.19 * wid, 0.15, 0.012) * _sig(g.y - (0.45 + oy), 0.03)
    bones += 0.25 * brim
    box = None
    if seg is not None:
        line, _, box = _fracture(g, rng, *seg[:4], seg[4], seg[5], certain)
        if site == "iliac wing":  # a vertical-ish crack through the wing
            bx, by = seg[0] + 0.5 * (seg[2] - seg[0]), seg[1]
            line = D.stroke(g, D.seg_dist(g, bx, by - 0.08, bx + 0.02, by + 0.06), 0.01 if certain else 0.006)
            box = (bx - 0.04, by - 0.09, bx + 0.06, by + 0.08)
        bones = bones * (1.0 - line * F(0.85 if certain else 0.5))
    body = np.maximum(D.ellipse(g, cx, 0.42, 0.56 * wid, 0.62, soft=3.0),
                      D.paint_capsules(g, [(cx - 0.24, 0.7, cx - 0.26, 1.2, 0.2), (cx + 0.24, 0.7, cx + 0.26, 1.2, 0.2)],
                                       cortex=0.0, soft=3.0))
    gas = sum(D.gauss(g, cx + rng.uniform(-0.25, 0.25), rng.uniform(0.08, 0.4), rng.uniform(0.02, 0.04),
                      rng.uniform(0.015, 0.03)) for _ in range(3))
    img = F(0.04) + body * F(0.3) - gas * body * F(0.08) + bones * F(0.42 * ctx.bone)
    img = _finish(ctx, img, noise=0.016)
    mask = bones > 0.35
    _pelvis_report(ctx, rec, frac, certain, fside, site, box)
    return [(img, "AP")], {"bones": mask}
