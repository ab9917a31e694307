"""The PA hand study: skeleton, an optional (displaced) fracture, the image, report and QA."""

from __future__ import annotations

import math

import numpy as np

from mxr0.data.phantom.bones import _Bones, _fracture, _soft
from mxr0.data.phantom.common import P_UNCERTAIN, F, _box, _box_rec, _cap, _comparison, _Ctx, _fill, _finish, _pick
from mxr0.data.phantom.qa import _msk_qa


def _hand_skeleton(ctx: _Ctx) -> tuple[str, _Bones, list[list[float]]]:
    """The side, the bones (radius, ulna, carpals, metacarpals, phalanges) and the soft tissue capsules of a
    right hand, scaled, rotated and shifted."""
    rng = ctx.rng
    side = _pick(rng, ["right", "left"])
    sc = 1.12 * (rng.uniform(1.0, 1.08) if ctx.sex == "M" else rng.uniform(0.9, 0.98))
    rot = rng.normal(0, 0.07)
    ox, oy = rng.normal(0, 0.015), rng.normal(0, 0.015)
    c, s_ = math.cos(rot), math.sin(rot)

    def T(px_: float, py_: float) -> tuple[float, float]:  # scale/rotate about the wrist, shift
        qx, qy = (px_ - 0.5) * sc, (py_ - 0.8) * sc
        return 0.5 + qx * c - qy * s_ + ox, 0.8 + qx * s_ + qy * c + oy

    B = _Bones()
    caps_soft = []

    def bone(name, p0, p1, r):
        a, b = T(*p0), T(*p1)
        B.add(name, a[0], a[1], b[0], b[1], r * sc)

    bone("distal radius", (0.43, 1.15), (0.435, 0.875), 0.05)
    bone("distal ulna", (0.6, 1.15), (0.585, 0.885), 0.032)
    carp = [(0.435, 0.83, 0.03), (0.49, 0.835, 0.026), (0.545, 0.83, 0.024), (0.575, 0.815, 0.014),
            (0.415, 0.78, 0.025), (0.46, 0.772, 0.022), (0.505, 0.775, 0.027), (0.555, 0.78, 0.026)]
    for cx_, cy_, r in carp:
        a, b = T(cx_ - 0.004, cy_), T(cx_ + 0.004, cy_ + 0.003)
        B.add("carpal", a[0], a[1], b[0], b[1], r * sc * 1.15, flare=0.0)
    mc_base = [(0.455, 0.735), (0.5, 0.735), (0.543, 0.74), (0.58, 0.75)]
    mc_head = [(0.415, 0.51), (0.49, 0.495), (0.565, 0.515), (0.63, 0.545)]
    rad = [0.02, 0.02, 0.018, 0.017]
    lens = [(0.13, 0.08, 0.055), (0.14, 0.09, 0.06), (0.13, 0.085, 0.057), (0.105, 0.065, 0.05)]
    fingers = ["index", "middle", "ring", "little"]
    ordinal = ["second", "third", "fourth", "fifth"]
    gap = 0.016
    for i in range(4):
        (bx0, by0), (hx, hy) = mc_base[i], mc_head[i]
        bone(f"{ordinal[i]} metacarpal", (bx0, by0), (hx, hy), rad[i])
        ux, uy = hx - bx0, hy - by0
        nn = math.hypot(ux, uy)
        ux, uy = ux / nn, uy / nn
        spread = rng.normal(0, 0.05)
        ux, uy = ux * math.cos(spread) - uy * math.sin(spread), ux * math.sin(spread) + uy * math.cos(spread)
        px_, py_ = hx + ux * gap, hy + uy * gap
        for j, (L, nm) in enumerate(zip(lens[i], ("proximal", "middle", "distal"))):
            r = rad[i] * (0.8, 0.68, 0.58)[j]
            bone(f"{nm} phalanx of the {fingers[i]} finger", (px_, py_), (px_ + ux * L, py_ + uy * L), r)
            px_, py_ = px_ + ux * (L + gap), py_ + uy * (L + gap)
        caps_soft.append([*T(bx0, by0), *T(px_ - ux * gap, py_ - uy * gap), rad[i] * sc])
    # thumb: metacarpal oblique towards the image's left, then two phalanges
    tb, th = (0.415, 0.75), (0.335, 0.625)
    bone("first metacarpal", tb, th, 0.021)
    ux, uy = th[0] - tb[0], th[1] - tb[1]
    nn = math.hypot(ux, uy)
    ux, uy = ux / nn, uy / nn
    a = 0.25
    ux, uy = ux * math.cos(a) - uy * math.sin(a), ux * math.sin(a) + uy * math.cos(a)
    px_, py_ = th[0] + ux * gap, th[1] + uy * gap
    for L, nm, r in ((0.09, "proximal phalanx of the thumb", 0.017), (0.065, "distal phalanx of the thumb", 0.014)):
        bone(nm, (px_, py_), (px_ + ux * L, py_ + uy * L), r)
        px_, py_ = px_ + ux * (L + gap), py_ + uy * (L + gap)
    caps_soft.append([*T(*tb), *T(px_, py_), 0.02 * sc])
    caps_soft.append([*T(0.5, 0.72), *T(0.5, 0.6), 0.1 * sc])
    caps_soft.append([*T(0.5, 0.85), *T(0.51, 1.2), 0.1 * sc])
    return side, B, caps_soft


def _hand_fracture(rng: np.random.Generator, B: _Bones) -> tuple[tuple | None, bool, bool]:
    """Maybe break a metacarpal, a proximal phalanx or the distal radius (a certain shaft fracture is often
    displaced: ``B`` gets the distal fragment): ``(fracture or None, certain, displaced)``."""
    frac = rng.random() < 0.3
    certain = bool(rng.random() >= P_UNCERTAIN)
    fx = None
    displaced = False
    if frac:
        cands = [i for i, n in enumerate(B.names) if "metacarpal" in n or "proximal phalanx" in n or n == "distal radius"]
        i = cands[int(rng.integers(len(cands)))]
        x0, y0, x1, y1, r = B.caps[i]
        t = rng.uniform(0.35, 0.7) if B.names[i] != "distal radius" else rng.uniform(0.78, 0.88)
        if certain and B.names[i] != "distal radius" and rng.random() < 0.6:  # displaced distal fragment
            bxp, byp = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            nx, ny = -(y1 - y0), x1 - x0
            nn = math.hypot(nx, ny)
            off = rng.uniform(0.3, 0.6) * r * (1 if rng.random() < 0.5 else -1)
            displaced = True
            B.caps[i] = [x0, y0, bxp, byp, r]
            B.caps.append([bxp + nx / nn * off, byp + ny / nn * off, x1 + nx / nn * off * 0.6, y1 + ny / nn * off * 0.6, r])
            B.names.append(B.names[i])
        fx = (i, B.names[i], x0, y0, x1, y1, r, t)
    return fx, certain, displaced


def _hand_report(ctx: _Ctx, rec: dict, side: str, fx: tuple | None, certain: bool, displaced: bool,
                 box: tuple | None, mirror: bool, B: _Bones) -> None:
    """Labels, the fracture box, the report and the QA of a hand study."""
    rt = ctx.rt
    labels = rec["labels"]
    old = ctx.age > 60
    degen = old and rt.random() < 0.6
    if fx is None:
        labels["Fracture"], labels["No Finding"] = 0, 1
        fnd = [_pick(rt, ["No acute fracture or dislocation.", "There is no fracture or dislocation.",
                          "No acute fracture is identified. No dislocation."])]
        if degen:
            fnd.append(_pick(rt, ["Mild degenerative changes of the first carpometacarpal joint.",
                                  "Mild osteoarthritis of the interphalangeal joints."]))
        else:
            fnd.append("Joint spaces are preserved.")
        fnd.append(_pick(rt, ["Soft tissues are unremarkable.", "No soft tissue swelling."]))
        imp = _pick(rt, ["No acute fracture or dislocation.", "No acute osseous abnormality."])
    else:
        name = fx[1]
        phrase = _pick(rt, [f"fracture of the {name}", f"{name} fracture"])
        labels["Fracture"], labels["No Finding"] = (1 if certain else -1), 0
        if certain:
            kind = "mildly displaced" if displaced else _pick(rt, ["transverse", "oblique", "nondisplaced"])
            fnd = [_fill("There is {a_p}.", f"{kind} {phrase}"), "No dislocation.",
                   _pick(rt, ["Soft tissue swelling is present.", "Adjacent soft tissue swelling."])]
            phrase = f"{kind} {phrase}"
            imp = _cap(f"acute {phrase}.") if rt.random() < 0.5 else _cap(phrase) + "."
        else:
            fnd = [_fill("Subtle lucency may represent a nondisplaced {p}.", phrase), "No dislocation."]
            imp = _fill("Possible nondisplaced {p}. Consider follow-up radiographs.", phrase)
        rec["boxes"].append(_box_rec(phrase, "Fracture", _box(box, mirror)))
    rec.update(indication=_pick(rt, ["Fall on outstretched hand, pain.", "Trauma, pain.", "Hand pain after injury.",
                                     "Punched a wall, pain over the knuckles.", "Swelling and tenderness."]),
               technique=f"PA view of the {side} hand.", comparison=_comparison(rt, "radiograph"),
               findings=" ".join(fnd), impression=imp)
    rec["qa"] = _msk_qa(ctx, "hand", side, "PA", fx[1] if fx else None, certain,
                        [n for n in dict.fromkeys(B.names) if n != "carpal"])


def _hand(ctx: _Ctx, rec: dict) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """PA hand, fingers up, seen from the dorsum: a right hand has its thumb on the image's left."""
    g, rng = ctx.g, ctx.rng
    side, B, caps_soft = _hand_skeleton(ctx)
    fx, certain, displaced = _hand_fracture(rng, B)
    bones = B.draw(g)
    tissue = _soft(g, caps_soft, 0.022)
    img = F(0.04) + tissue * F(0.2)
    box = None
    if fx is not None:
        _, name, x0, y0, x1, y1, r, t = fx
        line, _, box = _fracture(g, rng, x0, y0, x1, y1, r, t, certain)
        bones = bones * (1.0 - line * F(0.85 if certain else 0.55))
    img += bones * F(0.55 * ctx.bone)
    img = _finish(ctx, img, noise=0.015)
    mask = bones > 0.25
    mirror = side == "left"
    if mirror:  # a left hand is the mirror image (thumb on the image's right)
        img, mask = img[:, ::-1].copy(), mask[:, ::-1].copy()
    _hand_report(ctx, rec, side, fx, certain, displaced, box, mirror, B)
    return [(img, "PA")], {"bones": mask}
