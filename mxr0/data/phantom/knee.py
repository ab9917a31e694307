"""The knee study: AP (and often lateral) views, joint space narrowing, an optional fracture, report and QA."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.bones import _cortical, _fracture, _smooth
from mxr0.data.phantom.common import (
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

_SITES = ["lateral tibial plateau", "distal femur", "fibular head", "patella", "medial femoral condyle"]
"""Bones the fracture question's options come from."""


@dataclass
class _Knee:
    """What a knee study shows: side, views, size and position, medial narrowing (osteoarthritis), fracture site."""

    side: str
    lateral: bool
    sc: float  # scale
    oy: float  # vertical shift
    narrow: float  # medial joint space narrowing (0: none)
    frac: bool
    certain: bool
    site: str

    def X(self, v: float) -> float:
        return 0.5 + (v - 0.5) * self.sc

    def Y(self, v: float) -> float:
        return 0.47 + (v - 0.47) * self.sc + self.oy


def _plan_knee(ctx: _Ctx) -> _Knee:
    rng = ctx.rng
    side = _pick(rng, ["right", "left"])
    lateral = rng.random() < 0.6
    sc = rng.uniform(1.0, 1.08) if ctx.sex == "M" else rng.uniform(0.9, 0.98)
    oy = rng.normal(0, 0.02)
    old = ctx.age > 55
    narrow = rng.uniform(0.006, 0.012) if old and rng.random() < 0.6 else 0.0
    frac = rng.random() < 0.3
    certain = bool(rng.random() >= P_UNCERTAIN)
    site = _pick(rng, ["lateral tibial plateau", "distal femur", "fibular head"] + (["patella"] if lateral else [])) if frac else ""
    return _Knee(side, lateral, sc, oy, narrow, frac, certain, site)


def _knee_ap(ctx: _Ctx, k: _Knee) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    """The AP view drawn as a right knee (fibula on the image's left): ``(image, bone mask, fracture box)``."""
    g, rng, S, px = ctx.g, ctx.rng, ctx.size, ctx.g.px
    X, Y, sc = k.X, k.Y, k.sc
    u = (g.x - 0.5) / sc  # unscaled coordinates of the drawing
    v = (g.y - k.oy - 0.47) / sc + 0.47
    e = float(1.2 * px / sc)
    # femur: shaft flaring into the condyles, intercondylar notch; OA lowers the medial condyle
    hwf = 0.058 + 0.097 * _smooth((v - 0.24) / 0.2)
    ybot = 0.49 - 0.055 * (np.abs(u) / 0.155) ** 4 - 0.04 * np.exp(-((u / 0.02) ** 2)) + k.narrow * _smooth(u / 0.04)
    fem = _sig(hwf - np.abs(u), e) * _sig(ybot - v, e)
    # tibia: plateau with the two tibial spines, metaphysis tapering into the shaft
    ytop = 0.53 + 0.03 * (np.abs(u) / 0.155) ** 6 - 0.016 * np.exp(-(((np.abs(u) - 0.013) / 0.008) ** 2))
    hwt = 0.056 + 0.099 * (1.0 - _smooth((v - 0.55) / 0.24) ** 0.8)
    hwt = hwt * np.sqrt(np.clip((v - 0.522) / 0.035, 0.05, 1.0))  # rounded plateau corners
    tib = _sig(hwt - np.abs(u), e) * _sig(v - ytop, e)
    fib = np.maximum(D.ellipse(g, X(0.352), Y(0.625), 0.03 * sc, 0.027 * sc, soft=1.2),
                     D.capsule(g, X(0.355), Y(0.63), X(0.37), 1.15, 0.018 * sc, cortex=0.0))
    pat = D.ellipse(g, X(0.5), Y(0.41), 0.05 * sc, 0.06 * sc, soft=2.0)
    bones = _cortical(fem, S) + _cortical(tib, S) + 0.7 * _cortical(fib, S) + 0.25 * _cortical(pat, S)
    box = None
    if k.frac and k.site != "patella":
        if k.site == "lateral tibial plateau":  # a split through the lateral plateau
            p0, p1, r, t = (X(0.36), Y(0.565)), (X(0.46), Y(0.565)), 0.035, rng.uniform(0.4, 0.6)
        elif k.site == "distal femur":  # supracondylar, transverse
            p0, p1, r, t = (X(0.5), Y(0.2)), (X(0.5), Y(0.42)), 0.07, rng.uniform(0.4, 0.6)
        else:
            p0, p1, r, t = (X(0.36), Y(0.6)), (X(0.37), Y(0.7)), 0.03, 0.35
        line, _, box = _fracture(g, rng, *p0, *p1, r * sc, t, k.certain)
        bones = bones * (1.0 - line * F(0.85 if k.certain else 0.5))
    img = F(0.04) + _leg(ctx, k) * F(0.22) + bones * F(0.45 * ctx.bone)
    return _finish(ctx, img, noise=0.015), bones > 0.35, box


def _leg(ctx: _Ctx, k: _Knee) -> np.ndarray:
    g = ctx.g
    hw_leg = (0.25 + 0.03 * np.clip(0.5 - g.y, 0.0, 1.0)) * k.sc
    return _sig(hw_leg - np.abs(g.x - 0.5), 3 * g.px)


def _knee_lateral(ctx: _Ctx, k: _Knee, boxes: list) -> np.ndarray:
    """The lateral view, anterior (patella, tibial tuberosity) to the image's left; a patellar fracture's box
    goes to ``boxes``."""
    g, rng, S = ctx.g, ctx.rng, ctx.size
    X, Y, sc = k.X, k.Y, k.sc
    fem = np.maximum.reduce([D.capsule(g, X(0.56), -0.1, X(0.53), Y(0.38), 0.058 * sc, cortex=0.0),
                             D.ellipse(g, X(0.535), Y(0.45), 0.085 * sc, 0.075 * sc, soft=1.2),
                             D.superellipse(g, X(0.53), Y(0.38), 0.075 * sc, 0.06 * sc, 2.5, soft=1.2)])
    tib = np.maximum.reduce([D.superellipse(g, X(0.515), Y(0.575), 0.125 * sc, 0.03 * sc, 2.5, angle=0.1, soft=1.2),
                             D.ellipse(g, X(0.5), Y(0.62), 0.1 * sc, 0.06 * sc, soft=1.2),
                             D.capsule(g, X(0.5), Y(0.62), X(0.48), 1.15, 0.055 * sc, cortex=0.0),
                             D.ellipse(g, X(0.415), Y(0.655), 0.03 * sc, 0.045 * sc, soft=1.2)])
    fib = np.maximum(D.ellipse(g, X(0.6), Y(0.64), 0.028 * sc, 0.028 * sc, soft=1.2),
                     D.capsule(g, X(0.6), Y(0.65), X(0.58), 1.15, 0.017 * sc, cortex=0.0))
    pat = D.ellipse(g, X(0.375), Y(0.43), 0.03 * sc, 0.065 * sc, angle=-0.2, soft=1.2)
    lbones = _cortical(fem, S) + _cortical(tib, S) + 0.6 * _cortical(fib, S) + _cortical(pat, S)
    if k.site == "patella":
        line, _, b2 = _fracture(g, rng, X(0.375), Y(0.37), X(0.375), Y(0.49), 0.033 * sc, rng.uniform(0.4, 0.6), k.certain)
        lbones = lbones * (1.0 - line * F(0.85 if k.certain else 0.5))
        boxes.append((b2, 1))
    img = F(0.04) + _leg(ctx, k) * F(0.22) + lbones * F(0.45 * ctx.bone)
    return _finish(ctx, img, noise=0.015)


def _knee_report(ctx: _Ctx, rec: dict, k: _Knee, boxes: list, mirror: bool) -> None:
    """Labels, the fracture boxes, the report and the QA of a knee study."""
    rt, side, certain = ctx.rt, k.side, k.certain
    labels = rec["labels"]
    if not k.frac:
        labels["Fracture"], labels["No Finding"] = 0, 1
        fnd = [_pick(rt, ["No acute fracture or dislocation.", "There is no fracture or dislocation.",
                          "No acute fracture is identified."])]
        imp = _pick(rt, ["No acute fracture or dislocation.", "No acute osseous abnormality."])
    else:
        labels["Fracture"], labels["No Finding"] = (1 if certain else -1), 0
        phrase = _pick(rt, [f"fracture of the {k.site}", f"{k.site} fracture"])
        if certain:
            fnd = [_fill(_pick(rt, ["There is {a_p}.", "{A_p} is present.", "{P} is seen."]), f"acute {phrase}"),
                   "No dislocation."]
            imp = _cap(f"acute {phrase}.")
            phrase = f"acute {phrase}"
        else:
            fnd = [_fill("Subtle cortical irregularity may represent a nondisplaced {p}.", phrase)]
            imp = _fill("Possible nondisplaced {p}; CT could be considered.", phrase)
        for b, idx in boxes:
            rec["boxes"].append(_box_rec(phrase, "Fracture", _box(b, mirror), idx))
    if k.narrow:
        fnd.append(_pick(rt, ["Mild medial compartment joint space narrowing.",
                              "Medial compartment joint space narrowing with small marginal osteophytes."]))
        if not k.frac:
            imp += " Mild medial compartment osteoarthritis."
    else:
        fnd.append("Joint spaces are maintained.")
    fnd.append(_pick(rt, ["Soft tissues are unremarkable.", "No soft tissue abnormality."]))
    rec.update(indication=_pick(rt, ["Twisting injury, knee pain.", "Fall, knee pain.", "Knee pain, evaluate for fracture.",
                                     "Trauma, pain.", "Chronic knee pain."]),
               technique=(f"AP and lateral views of the {side} knee." if k.lateral else f"AP view of the {side} knee."),
               comparison=_comparison(rt, "radiograph"), findings=" ".join(fnd), impression=imp)
    rec["qa"] = _msk_qa(ctx, "knee", side, "AP", k.site or None, certain, list(_SITES))


def _knee(ctx: _Ctx, rec: dict) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """AP (and often lateral) knee. On the AP, a right knee has its fibula (lateral) on the image's left."""
    k = _plan_knee(ctx)
    ap, mask, box = _knee_ap(ctx, k)
    images = [ap]
    boxes = [(box, 0)] if box is not None else []
    if k.lateral:
        images.append(_knee_lateral(ctx, k, boxes))
    mirror = k.side == "left"
    if mirror:  # drawn as a right knee: a left knee is its mirror image
        images = [im[:, ::-1].copy() for im in images]
        mask = mask[:, ::-1].copy()
    _knee_report(ctx, rec, k, boxes, mirror)
    views = ["AP", "LATERAL"][: len(images)]
    return list(zip(images, views)), {"bones": mask}
