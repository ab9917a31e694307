"""Procedurally drawn radiograph studies: the embedded default dataset of mxr0 (the "phantom").

`generate_phantom` draws a small, deterministic, multi-anatomy set of studies in the canonical
record format (`mxr0.data.records`): 8-bit grayscale PNG radiographs, organ masks, a free-text
report (indication, technique, comparison, findings, impression), the 14 CheXpert labels, one box
per localised finding, and 3-6 question/answer pairs. It is the data of the demo and of every test
of the project, so it is built to be *learnable*: each chest finding is drawn visibly (position,
size, intensity, noise and anatomy vary from study to study) and the labels, boxes, report and QA
of a study are all derived from the same sampled findings, so they never disagree.

Domain rules the drawing and the text follow
--------------------------------------------
- **Orientation.** Frontal images are displayed as if facing the patient: the patient's LEFT is on
  the IMAGE'S RIGHT. A "left pleural effusion" is drawn (and boxed) in the right half of the
  picture; the heart extends mostly to the image's right, the aortic knob, the stomach bubble and a
  chest-wall pacemaker sit on the image's right, the liver (higher right hemidiaphragm) and a right
  internal jugular line on the image's left. Boxes and masks use image coordinates (``x`` to the
  image's right, ``y`` down, normalised to [0, 1]); mask names (``left_lung``, ``right_lung``) and
  report words use the patient's side. Pelvis AP follows the same rule; a hand PA is shown fingers
  up as seen from the dorsum (a right hand has its thumb on the image's left) and an AP knee as if
  facing the patient (the fibula, lateral, is on the image's left for a right knee). Left-sided
  extremities are drawn as mirror images of right-sided ones.
- **Photometry.** MONOCHROME2: air black, soft tissue grey, bone and metal white.
- **Chest anatomy.** Lungs dark with vessels radiating from the hila; mediastinum and heart bright;
  posterior ribs as curved bands; clavicles; spine behind the mediastinum; hemidiaphragm domes with
  sharp costophrenic angles; liver below the right dome and a gas bubble below the left one.
- **Cardiothoracic ratio.** Heart width over inner thoracic width: normal 0.40-0.48 on PA,
  cardiomegaly 0.54-0.72. One third of the heart lies right of the midline, two thirds left. AP
  views magnify the heart (x1.08) and are taken with a poorer inspiration (higher domes).
- **Demographics.** Men get a wider, larger thorax and hands; bone density falls after 45 years
  (fainter bones); the cardiac size grows slightly with age.

Labels (CheXpert / CheXbert convention, ``mxr0.data.records.CHEXPERT_LABELS``)
----------------------------------------------------------------------------
- ``1`` the report states the finding; ``-1`` the report hedges it ("possible", "cannot be
  excluded", "may represent", "questionable"); such findings (about 10 % of positives) are drawn
  faintly. ``0`` the report explicitly negates it ("No pleural effusion or pneumothorax.", "The
  lungs are clear." negates Lung Opacity and Consolidation, "Heart size is normal." negates
  Cardiomegaly). ``None`` not mentioned (and not drawn).
- Consolidation implies Lung Opacity (the CheXpert hierarchy); Pneumonia is positive only when the
  report calls a consolidation pneumonia (the larger lobar consolidations).
- **No Finding** (our choice, following the CheXpert labeler's rule): ``1`` when no pathology is
  positive or uncertain, where Support Devices do not count as a pathology (a study with only a
  tube in place has No Finding = 1); otherwise ``0`` (the CheXpert labeler leaves it blank; we
  write ``0`` so that classifiers get explicit negatives).
- Non-chest studies: every chest observation is ``None`` except Fracture (``1`` / ``-1`` / ``0``)
  and No Finding. Pleural Other is never drawn (always ``None``).

Longitudinal pairs (opt-in: ``generate_phantom(prior_fraction=...)``, ``mxr0 prepare phantom --prior-fraction``)
----------------------------------------------------------------------------------------------------------
A share of the chest studies gets the same patient's prior study: the same thorax (the prior's geometry is
drawn from the current study's stream), its own texture, noise and exposure, and findings that are new
(absent before), unchanged, worse or better (another size before: effusion, pneumothorax, cardiomegaly,
edema) or resolved (a finding of the prior only). The record gets the prior frontal image (role ``prior``,
``images/<id>_prior.png``), ``prior_study_id`` and the prior report (``prior_findings`` / ``prior_impression``);
its impression states each certain finding's change with varied phrasing ("New small left pleural effusion.",
"Stable cardiomegaly.", "Interval resolution of the right basilar opacity.", "Increased moderate right pleural
effusion, previously small."), which `mxr0.eval.reports.rules.change_report` reads back exactly (tested).
Hedged findings carry no change statement. With ``prior_fraction=0`` (the default) nothing is drawn
differently: the same records, PNGs and ``phantom.json`` as without the option.

Everything is deterministic: study ``i`` draws from ``numpy.random.SeedSequence([seed, i])`` only, so
the same arguments give byte-identical records and PNGs whatever the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mxr0.data import _draw as D
from mxr0.data.records import (
    CHEXPERT_LABELS,
    LOCK_NAME,
    IncompleteFolderError,
    RecordError,
    RootsError,
    empty_record,
    folder_lock,
    missing_files,
    read_records,
    write_records,
)

log = logging.getLogger(__name__)

__all__ = [
    "PHANTOM_VERSION",
    "PHANTOM_LABELS",
    "PHANTOM_CHEST_LABELS",
    "PHANTOM_ANATOMIES",
    "DEFAULT_ANATOMY_MIX",
    "generate_phantom",
    "draw_study",
    "preview_grid",
]

PHANTOM_VERSION = "mxr0-phantom-1"
"""Bumped whenever the drawing or the text changes, so cached sets are regenerated."""

SOURCE = "phantom"

PHANTOM_ANATOMIES: tuple[str, ...] = ("chest", "hand", "knee", "pelvis")
DEFAULT_ANATOMY_MIX: dict[str, float] = {"chest": 0.6, "hand": 0.14, "knee": 0.13, "pelvis": 0.13}

PHANTOM_LABELS: tuple[str, ...] = tuple(n for n in CHEXPERT_LABELS if n != "Pleural Other")
"""CheXpert observations the phantom can be positive for, in CheXbert order (all but Pleural Other;
Fracture is positive on hand, knee and pelvis studies only)."""

PHANTOM_CHEST_LABELS: tuple[str, ...] = tuple(n for n in PHANTOM_LABELS if n != "Fracture")
"""Observations with positives among the chest studies (the classifier recipe's targets)."""

F = np.float32
_FOV_CM = 43.0  # a chest field of view (43 cm cassette): converts normalised sizes to centimetres
P_UNCERTAIN = 0.1  # share of positive findings the report hedges (drawn faintly)
_P_NORMAL_CHEST = 0.3
_P_FINDING = {  # probability of each finding given an abnormal chest study
    "cardiomegaly": 0.34, "ecm": 0.17, "effusion": 0.36, "ptx": 0.27,
    "opacity": 0.36, "lesion": 0.32, "edema": 0.22, "atelectasis": 0.27,
}
_SIGN = {"right": -1, "left": 1}  # patient's side -> image direction (patient's left = image right)
_PATHOLOGY = tuple(n for n in CHEXPERT_LABELS if n not in ("Support Devices", "No Finding"))


# =============================================================================================
# Small helpers
# =============================================================================================
def _pick(rt: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rt.integers(len(items)))]


def _choice(rng: np.random.Generator, items: Sequence[str], p: Sequence[float]) -> str:
    return items[int(rng.choice(len(items), p=np.asarray(p) / np.sum(p)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _art(p: str) -> str:
    """``p`` with its indefinite article ("a small left pleural effusion", "an 8.1 cm mass")."""
    first = p.split(" ", 1)[0].lower()
    vowel = first[:1] in "aeiou" or first.startswith(("8", "11", "18"))
    return ("an " if vowel else "a ") + p


def _fill(template: str, phrase: str, **kw: str) -> str:
    return template.format(p=phrase, P=_cap(phrase), a_p=_art(phrase), A_p=_cap(_art(phrase)), **kw)


def _sig(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step 0 -> 1 around 0 over ``width`` (normalised units)."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


def _box(b: tuple[float, float, float, float] | None, mirror: bool = False) -> tuple[float, float, float, float] | None:
    if b is None:
        return None
    x0, y0, x1, y1 = b
    if mirror:
        x0, x1 = 1.0 - x1, 1.0 - x0
    return (round(max(0.0, x0), 4), round(max(0.0, y0), 4), round(min(1.0, x1), 4), round(min(1.0, y1), 4))


def _qa(question: str, answer: str, qtype: str, options: Sequence[str] | None = None) -> dict:
    opts = list(options or [])
    return {"question": question, "answer": answer, "answer_type": "closed" if opts else "open",
            "question_type": qtype, "options": opts}


def _yes_no(question: str, yes: bool, qtype: str = "presence") -> dict:
    return _qa(question, "yes" if yes else "no", qtype, ["yes", "no"])


@dataclass
class _Ctx:
    """Per-study state: the grid, two independent random streams and the demographics."""

    index: int
    size: int
    g: D.Grid
    rng: np.random.Generator  # geometry and drawing
    rt: np.random.Generator  # report wording and QA choices
    sex: str
    age: float

    @property
    def bone(self) -> float:
        """Bone density factor: 1 up to 45 years, falling linearly to 0.7 at 90."""
        return 1.0 - 0.3 * min(max((self.age - 45.0) / 45.0, 0.0), 1.0)


def _finish(ctx: _Ctx, img: np.ndarray, noise: float = 0.014) -> np.ndarray:
    """Exposure (gain, gamma), detector blur and quantum noise; returns uint8."""
    rng = ctx.rng
    img = D.blur(img, 0.45 * ctx.size / 128.0)
    img = np.clip(img, 0.0, 1.0) ** F(rng.uniform(0.9, 1.1)) * F(rng.uniform(0.93, 1.06))
    img = img + F(rng.uniform(-0.015, 0.02))
    img = img + D.smooth_noise(rng, ctx.size, 3) * F(0.012)
    img = img + rng.standard_normal(img.shape).astype(np.float32) * F(rng.uniform(0.6, 1.2) * noise)
    return D.to_uint8(np.clip(img, 0.0, 1.0))


# =============================================================================================
# Chest: findings
# =============================================================================================
@dataclass
class _Finding:
    """One sampled chest finding; ``side`` is the patient's side (``left``/``right``/``bilateral``)."""

    kind: str
    certain: bool
    side: str = ""
    size: str = ""
    zone: str = ""
    prm: dict = field(default_factory=dict)
    boxes: list = field(default_factory=list)
    phrase: str = ""


@dataclass
class _Device:
    kind: str  # ett, cvc, pacemaker, ng
    side: str = ""
    prm: dict = field(default_factory=dict)
    box: tuple | None = None
    phrase: str = ""


def _sample_chest_findings(ctx: _Ctx, view: str) -> tuple[dict[str, _Finding], list[_Device]]:
    rng = ctx.rng
    fs: dict[str, _Finding] = {}
    if rng.random() >= _P_NORMAL_CHEST:
        for k, p in _P_FINDING.items():
            if rng.random() < p:
                fs[k] = _Finding(k, certain=bool(rng.random() >= P_UNCERTAIN))
        if not fs:
            k = list(_P_FINDING)[int(rng.integers(len(_P_FINDING)))]
            fs[k] = _Finding(k, certain=bool(rng.random() >= P_UNCERTAIN))
    for f in fs.values():
        if f.kind == "cardiomegaly":
            if f.certain:
                f.size = _choice(rng, ["mild", "moderate", "marked"], [0.45, 0.35, 0.2])
                lo, hi = {"mild": (0.545, 0.6), "moderate": (0.6, 0.66), "marked": (0.66, 0.72)}[f.size]
            else:
                f.size, (lo, hi) = "mild", (0.51, 0.545)
            f.prm["ctr"] = rng.uniform(lo, hi)
        elif f.kind == "ecm":
            f.prm["mw"] = rng.uniform(0.095, 0.13) if f.certain else rng.uniform(0.078, 0.09)
        elif f.kind == "effusion":
            f.side = _choice(rng, ["left", "right", "bilateral"], [0.38, 0.37, 0.25])
            f.size = _choice(rng, ["small", "moderate", "large"], [0.45, 0.35, 0.2]) if f.certain else "small"
            lo, hi = {"small": (0.08, 0.12), "moderate": (0.16, 0.24), "large": (0.28, 0.38)}[f.size]
            if not f.certain:
                lo, hi = 0.035, 0.055
            for s in (("left", "right") if f.side == "bilateral" else (f.side,)):
                f.prm[s] = (rng.uniform(lo, hi), rng.uniform(0.05, 0.09))  # height, meniscus curvature
        elif f.kind == "ptx":
            f.side = _pick(rng, ["left", "right"])
            f.size = _choice(rng, ["small", "moderate", "large"], [0.45, 0.35, 0.2]) if f.certain else "small"
            lo, hi = {"small": (0.78, 0.84), "moderate": (0.68, 0.76), "large": (0.55, 0.65)}[f.size]
            f.prm["f"] = rng.uniform(lo, hi) if f.certain else rng.uniform(0.87, 0.9)
        elif f.kind in ("opacity", "lesion"):
            f.side = _pick(rng, ["left", "right"])
            f.zone = _choice(rng, ["upper", "middle", "lower"], [0.32, 0.28, 0.4])
            if f.kind == "opacity":
                f.prm["dense"] = bool(rng.random() < 0.45)
                f.prm["pneumonia"] = bool(f.prm["dense"] and rng.random() < 0.6)
                f.prm["retro"] = bool(f.side == "left" and f.zone == "lower" and rng.random() < 0.3)
                big = f.prm["pneumonia"]
                f.prm["s"] = rng.uniform(0.075, 0.1) if big else rng.uniform(0.05, 0.075)
                f.size = "dense" if f.prm["dense"] else _pick(rng, ["patchy", "hazy", "ill-defined", "mild"])
            else:
                f.size = "mass" if rng.random() < 0.45 else "nodule"
                f.prm["r"] = rng.uniform(0.05, 0.075) if f.size == "mass" else rng.uniform(0.027, 0.0345)
                if not f.certain:
                    f.size, f.prm["r"] = "nodule", rng.uniform(0.02, 0.026)
        elif f.kind == "edema":
            f.size = _pick(rng, ["mild", "moderate"]) if f.certain else "mild"
        elif f.kind == "atelectasis":
            f.side = _choice(rng, ["left", "right", "bilateral"], [0.35, 0.35, 0.3])
            for s in (("left", "right") if f.side == "bilateral" else (f.side,)):
                f.prm[s] = (rng.uniform(0.15, 0.22), rng.uniform(-0.25, 0.25), rng.uniform(0.026, 0.034),
                            rng.uniform(0.015, 0.03), rng.uniform(0.15, 0.3))  # length, tilt, width, lift, u
    # A pneumothorax and an effusion on the same side would be a hydropneumothorax: keep them apart.
    if "ptx" in fs and "effusion" in fs:
        eff, ptx = fs["effusion"], fs["ptx"]
        other = "left" if ptx.side == "right" else "right"
        if eff.side in (ptx.side, "bilateral"):
            eff.prm = {other: eff.prm.get(other) or next(iter(eff.prm.values()))}
            eff.side = other
    # A nodule or an opacity goes to the lung opposite a pneumothorax (the collapsed lung would
    # hide it), and out of the base under a same-sided effusion.
    for k in ("opacity", "lesion"):
        f = fs.get(k)
        if f is None:
            continue
        if "ptx" in fs and f.side == fs["ptx"].side:
            f.side = "left" if f.side == "right" else "right"
            f.prm["retro"] = False
        if "effusion" in fs and f.zone == "lower" and fs["effusion"].side in (f.side, "bilateral"):
            f.zone = "middle"
            f.prm["retro"] = False
    devices: list[_Device] = []
    if rng.random() < (0.45 if view == "AP" else 0.12):
        kinds = [k for k, p in (("ett", 0.5 if view == "AP" else 0.1), ("cvc", 0.5), ("pacemaker", 0.35), ("ng", 0.35))
                 if rng.random() < p]
        for k in kinds or [_pick(rng, ["cvc", "pacemaker"])]:
            d = _Device(k)
            if k == "cvc":
                d.side = _pick(rng, ["right", "left"])
                d.prm["route"] = "ij" if d.side == "right" or rng.random() < 0.4 else "subclavian"
            if k == "pacemaker":
                d.side = "left" if rng.random() < 0.85 else "right"
            devices.append(d)
    return fs, devices


# =============================================================================================
# Chest: geometry and frontal drawing
# =============================================================================================
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


def _draw_chest_frontal(ctx: _Ctx, geo: dict, fs: dict[str, _Finding], devs: list[_Device]) -> tuple[np.ndarray, dict]:
    """Draw the frontal (PA/AP) chest image; fills each finding's and device's boxes; returns masks."""
    g, rng, S = ctx.g, ctx.rng, ctx.size
    x, y, px = g.x, g.y, g.px
    cx, hw, apex, mw = geo["cx"], geo["hw"], geo["apex"], geo["mw"]
    dx = x - cx
    bone = ctx.bone
    ap = geo["view"] == "AP"

    # --- body outline: neck, shoulders, chest wall --------------------------------------------
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

    # --- diaphragm, abdomen ----------------------------------------------------------------
    yd = {s: _diaphragm(geo, s, dx) for s in (-1, 1)}
    yd_all = np.where(dx < 0, yd[-1], yd[1])
    below = _sig(y - yd_all, 1.2 * px)
    img += body * below * F(0.12)
    sb = D.ellipse(g, cx + rng.uniform(0.12, 0.19), geo["dome"][1] + rng.uniform(0.04, 0.06),
                   rng.uniform(0.04, 0.06), rng.uniform(0.022, 0.032), soft=2.0)
    img -= sb * below * F(0.13)  # stomach gas bubble under the LEFT hemidiaphragm (image right)

    # --- hemithoraces, mediastinum, heart -------------------------------------------------------
    ex = geo["ex"]
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
    img += med * F(0.1) + heart * F(0.12)

    air = np.maximum(hemi[-1], hemi[1]) * (1.0 - med) * (1.0 - heart)
    air_keep = np.ones_like(air)  # multiplicative loss of aeration (fluid, opacity, collapse)
    extra_dark = g.zeros()  # extra lucency (pneumothorax)
    marks_keep = np.ones_like(air)
    avail = air.copy()  # aerated lung still free for a nodule or an opacity
    ptx_gap = g.zeros()

    # --- lung markings: vessels radiating from the hila --------------------------------------
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
    texture = D.smooth_noise(rng, S, 14)
    marks = vessels * F(0.075) + hila * F(0.07) + texture * F(0.01)

    # --- findings that change the lungs ----------------------------------------------------------
    if "effusion" in fs:
        f = fs["effusion"]
        for side, (h, curv) in f.prm.items():
            s = _SIGN[side]
            u = s * dx
            ulat = hw
            level = geo["cp"][s] - h + curv * np.clip((ulat - u) / ulat, 0.0, 1.0) ** 1.5
            fluid = hemi[s] * _sig(y - level, 2.0 * px)
            k = 1.0 if f.certain else 0.75
            air_keep *= 1.0 - k * fluid
            avail *= 1.0 - fluid
            img += fluid * F(0.09 * k)
            f.boxes.append(D.mask_bbox(fluid * (1 - med)))
    if "ptx" in fs:
        f = fs["ptx"]
        s = _SIGN[f.side]
        e = lung_e[s]
        fr = f.prm["f"]
        ax, ay = cx + s * 0.07, geo["dome"][s]
        ce = (ax + fr * (e[0] - ax), ay + fr * (e[1] - ay), fr * e[2], fr * e[3])
        collapsed = D.ellipse(g, *ce, soft=1.0)
        gap = hemi[s] * (1.0 - collapsed) * (1.0 - med) * _sig(geo["dome"][s] - 0.03 - y, 3 * px)
        k = 1.0 if f.certain else 0.6
        marks_keep *= 1.0 - gap
        avail *= 1.0 - gap
        ptx_gap = gap
        extra_dark += gap * F(0.14 * k)
        air_keep *= 1.0 - collapsed * hemi[s] * F(0.15 * k)  # the collapsed lung is denser
        line = D.ring(g, *ce, width=max(0.006, 1.1 / S)) * hemi[s] * _sig(geo["dome"][s] - 0.03 - y, 3 * px)
        img += line * (1.0 - med) * F(0.25 * k)
        f.boxes.append(D.mask_bbox(gap))
    if "opacity" in fs:
        f = fs["opacity"]
        s = _SIGN[f.side]
        ox, oy = _zone_center(rng, geo, f, avail, 0.03)
        sz = f.prm["s"]
        blob = g.zeros()
        for _ in range(3):
            blob = np.maximum(blob, D.gauss(g, ox + rng.normal(0, 0.025), oy + rng.normal(0, 0.025),
                                            sz * rng.uniform(0.6, 1.1), sz * rng.uniform(0.6, 1.1),
                                            angle=rng.uniform(0, math.pi)))
        blob *= np.clip(0.8 + 0.35 * D.smooth_noise(rng, S, 10), 0.0, 1.2)
        blob = np.clip(blob * 1.25, 0.0, 1.0) * hemi[s] * (1.0 - ptx_gap)
        dens = (rng.uniform(0.9, 1.0) if f.prm["dense"] else rng.uniform(0.62, 0.78)) * (1.0 if f.certain else 0.55)
        air_keep *= 1.0 - dens * blob
        img += blob * heart * F(0.1 * dens)  # retrocardiac density adds to the heart shadow
        if f.prm["pneumonia"]:  # air bronchograms inside lobar consolidation
            bx = [ox + s * rng.uniform(-0.04, 0.0), oy - rng.uniform(0.0, 0.03)]
            pts = [bx, [bx[0] + s * 0.04, bx[1] + rng.uniform(0.01, 0.04)], [bx[0] + s * 0.07, bx[1] + rng.uniform(0.03, 0.07)]]
            br = D.stroke(g, D.polyline_dist(g, pts), 0.006, soft=1.5) * blob
            air_keep = np.clip(air_keep + br * F(0.35), 0.0, 1.0)
        f.boxes.append(D.mask_bbox(blob, 0.35))
    if "lesion" in fs:
        f = fs["lesion"]
        s = _SIGN[f.side]
        lx, ly = _zone_center(rng, geo, f, avail, f.prm["r"] + 0.012)
        r = f.prm["r"]
        if f.size == "mass":
            ang = np.arctan2(y - ly, x - lx)
            rr = r * (1.0 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.06 * np.sin(5 * ang + rng.uniform(0, 6.3)))
            disk = np.clip((rr - np.hypot(x - lx, y - ly)) / (1.3 * px) + 0.5, 0.0, 1.0)
        else:
            disk = D.ellipse(g, lx, ly, r, r * rng.uniform(0.85, 1.0), soft=1.2)
        k = 1.0 if f.certain else 0.6
        air_keep *= 1.0 - F(0.95 * k) * disk
        img += disk * F(0.1 * k)
        f.boxes.append(D.mask_bbox(disk))
    if "edema" in fs:
        f = fs["edema"]
        amp = {"mild": 0.45, "moderate": 0.62}[f.size] * (1.0 if f.certain else 0.6)
        haze = sum(D.gauss(g, hx + s * 0.05, hy + 0.02, rng.uniform(0.09, 0.12), rng.uniform(0.12, 0.16))
                   for s, (hx, hy) in hil.items())
        air_keep *= 1.0 - F(amp) * np.clip(haze, 0.0, 1.0)
        marks = marks * F(1.0 + amp)
        # Kerley B lines: short horizontal lines at the lateral lung bases
        for s in (-1, 1):
            ys = geo["dome"][s] - rng.uniform(0.02, 0.1, 3)
            xs = cx + s * (hw - rng.uniform(0.02, 0.04, 3))
            kl = D.stroke(g, D.seg_dist(g, xs, ys, xs - s * 0.035, ys), 0.004).max(axis=0)
            img += kl * hemi[s] * F(0.05 * amp)
    if "atelectasis" in fs:
        f = fs["atelectasis"]
        for side, (L, tilt, w, _lift, u) in f.prm.items():
            s = _SIGN[side]
            ay_ = geo["dome"][s] - rng.uniform(0.04, 0.08)
            ax_ = cx + s * u
            x0, x1 = ax_ - s * 0.5 * L * math.cos(tilt), ax_ + s * 0.5 * L * math.cos(tilt)
            y0, y1 = ay_ - 0.5 * L * math.sin(tilt), ay_ + 0.5 * L * math.sin(tilt)
            band = D.stroke(g, D.seg_dist(g, x0, y0, x1, y1), w, soft=1.5) * hemi[s]
            air_keep *= 1.0 - band * F(1.0 if f.certain else 0.55)
            img += band * F(0.04 if f.certain else 0.02)
            f.boxes.append(D.mask_bbox(band))
    if "cardiomegaly" in fs:
        fs["cardiomegaly"].boxes.append(D.mask_bbox(heart))
    if "ecm" in fs:
        upper = med * _sig(geo["heart_top"] + 0.02 - y, 2 * px) * _sig(y - (apex - 0.03), 2 * px)
        fs["ecm"].boxes.append(D.mask_bbox(upper))

    airf = air * air_keep
    img -= airf * F(0.25) + air * extra_dark
    img += marks * airf * marks_keep

    # --- trachea and main bronchi (air inside the mediastinum) -----------------------------
    tx = cx + geo["trachea_dx"]
    cy_ = geo["carina_y"]
    trach = D.stroke(g, D.seg_dist(g, tx, -0.05, tx, cy_), 0.03, soft=2.0)
    bron = D.stroke(g, D.seg_dist(g, [tx, tx], [cy_, cy_], [tx - 0.07, tx + 0.08], [cy_ + 0.06, cy_ + 0.08]),
                    0.02, soft=2.0).max(axis=0)
    img -= np.maximum(trach, bron) * np.maximum(med, _sig(apex + 0.02 - y, 2 * px) * body) * F(0.07)

    # --- bones: spine, ribs, clavicles, shoulders ----------------------------------------------
    vw = rng.uniform(0.028, 0.034)
    col = _sig(vw - np.abs(dx), 1.5 * px) * body
    sp = rng.uniform(0.045, 0.052)
    phase = np.mod((y - rng.uniform(0, sp)) / sp, 1.0)
    spine = col * (0.55 + 0.45 * _sig(phase - 0.2, 0.08))
    lev = np.arange(-0.02, 1.02, sp) + rng.uniform(0, sp)
    ped = g.zeros()
    for ly in lev:
        for px_c in (cx - vw * 0.7, cx + vw * 0.7):
            D.paint(ped, g, (px_c - 0.02, ly - 0.03, px_c + 0.02, ly + 0.03),
                    lambda sub: D.gauss(sub, px_c, ly, 0.006, 0.009))
    bones = (spine * F(0.1) + ped * F(0.05)) * (0.55 + 0.45 * (1.0 - heart))

    # Posterior ribs: arcs that rise from the spine, peak just lateral to it and curve down along
    # the chest wall; fainter anterior ribs run from the chest wall down and medially.
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
    bones += ribs * torso * F(0.05)

    cl_y = geo["clav_y"]
    clav = g.zeros()
    for s in (-1, 1):
        tilt = 0.0 if ap else rng.uniform(0.02, 0.04)
        pts = np.array([[cx + s * 0.035, cl_y + 0.02], [cx + s * 0.13, cl_y - 0.005 * 0],
                        [cx + s * 0.24, cl_y - tilt], [cx + s * (hw + 0.07), cl_y - tilt - 0.035]])
        D.paint_capsules(g, [(*pts[i], *pts[i + 1], 0.012) for i in range(3)], cortex=0.5, out=clav)
        # humeral head, neck and scapula at the shoulder
        hx_ = cx + s * (arm_x - 0.01)
        hy_ = sh_y + rng.uniform(0.02, 0.04)
        hh = D.capsule(g, hx_, hy_, hx_ + s * 0.02, hy_ + 0.2, rng.uniform(0.04, 0.05), cortex=0.5)
        hh = np.maximum(hh, D.ellipse(g, hx_ - s * 0.01, hy_, 0.055, 0.055, soft=1.2) * 0.9)
        scap_u = hw - 0.05 if ap else hw + 0.02
        scap = D.ellipse(g, cx + s * scap_u, apex + 0.16, 0.055, 0.14, angle=-s * 0.25, soft=3.0)
        clav = np.maximum(clav, np.maximum(hh, scap * 0.3))
    bones += clav * F(0.13)
    img += bones * F(bone)

    if ctx.sex == "F":  # breast shadows over the lower lateral lung fields
        br = D.ellipse(g, [cx - 0.2, cx + 0.2], [geo["dome"][-1] - 0.01, geo["dome"][1] - 0.01],
                       0.15, 0.1, soft=6.0).max(axis=0)
        img += br * F(rng.uniform(0.03, 0.05))

    # --- support devices: radiopaque tubes, lines and a pacemaker ------------------------------
    metal = g.zeros()
    for d in devs:
        if d.kind == "ett":
            tip = cy_ - rng.uniform(0.04, 0.09)
            d.prm["cm"] = (cy_ - tip) * _FOV_CM
            lay = D.stroke(g, D.seg_dist(g, tx + 0.003, -0.02, tx + 0.002, tip), 0.013, soft=1.2)
        elif d.kind == "ng":
            pts = [[cx + 0.012, -0.02], [cx + 0.018, cy_], [cx + 0.03, geo["dome"][1]],
                   [cx + rng.uniform(0.12, 0.17), geo["dome"][1] + rng.uniform(0.06, 0.09)]]
            lay = D.stroke(g, D.polyline_dist(g, pts), 0.011, soft=1.2)
        elif d.kind == "cvc":
            tip = (cx - 0.035, cy_ + rng.uniform(0.04, 0.08))
            if d.prm["route"] == "ij":
                sx = -1 if d.side == "right" else 1
                pts = [[cx + sx * 0.075, -0.02], [cx + sx * 0.06, cl_y + 0.02], [cx - 0.04 + 0.02 * (sx > 0), cy_ - 0.02], tip]
            else:
                sx = _SIGN[d.side]
                pts = [[cx + sx * (hw + 0.05), cl_y + 0.03], [cx + sx * 0.2, cl_y + 0.045],
                       [cx + sx * 0.06, cl_y + 0.06], [cx - 0.03, cy_ - 0.02], tip]
            lay = D.stroke(g, D.polyline_dist(g, pts), 0.011, soft=1.2)
        else:  # pacemaker: generator over the infraclavicular chest wall, leads to the right heart
            sx = _SIGN[d.side]
            gx, gy = cx + sx * rng.uniform(0.2, 0.26), cl_y + rng.uniform(0.06, 0.1)
            gen = D.superellipse(g, gx, gy, 0.04, 0.028, 4.0, angle=rng.uniform(-0.3, 0.3), soft=1.0)
            ra = (cx - 0.02 + rng.normal(0, 0.01), hcy - rng.uniform(0.02, 0.06))
            rv = (hcx + rng.uniform(0.0, 0.04), hcy + rng.uniform(0.02, 0.05))
            svc = (cx - 0.03, cy_ + 0.03)
            l1 = D.polyline_dist(g, [[gx, gy], [cx + sx * 0.08, cl_y + 0.05], svc, ra])
            l2 = D.polyline_dist(g, [[gx, gy], [cx + sx * 0.08, cl_y + 0.055], svc, rv])
            lay = np.maximum(gen, D.stroke(g, np.minimum(l1, l2), 0.01, soft=1.2))
        d.box = D.mask_bbox(lay, 0.3)
        metal = np.maximum(metal, lay)
    img = img * (1.0 - metal * F(0.9)) + metal * F(0.97)

    masks = {
        "right_lung": (hemi[-1] * (1 - med) * (1 - heart)) > 0.5,  # patient's right = image left
        "left_lung": (hemi[1] * (1 - med) * (1 - heart)) > 0.5,
        "heart": heart > 0.5,
    }
    return _finish(ctx, img), masks


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


# =============================================================================================
# Chest: report, labels and QA
# =============================================================================================
_LOC = {  # (side, zone) -> [(adjectival form, prepositional form)]; the patient's side
    ("right", "upper"): [("right upper lobe", "the right upper lobe"), ("right upper zone", "the right upper zone"),
                         ("right apical", "the right apex")],
    ("left", "upper"): [("left upper lobe", "the left upper lobe"), ("left upper zone", "the left upper zone"),
                        ("left apical", "the left apex")],
    ("right", "middle"): [("right middle lobe", "the right middle lobe"), ("right mid lung", "the right mid lung"),
                          ("right perihilar", "the right perihilar region")],
    ("left", "middle"): [("lingular", "the lingula"), ("left mid lung", "the left mid lung"),
                         ("left perihilar", "the left perihilar region")],
    ("right", "lower"): [("right lower lobe", "the right lower lobe"), ("right basilar", "the right lung base"),
                         ("right lower zone", "the right lower zone")],
    ("left", "lower"): [("left lower lobe", "the left lower lobe"), ("left basilar", "the left lung base"),
                        ("left lower zone", "the left lower zone")],
}
_UNSURE = ["Possible {p}.", "{A_p} cannot be excluded.", "Questionable {p}."]
_UNSURE_U = ["Possible {p}.", "{P} cannot be excluded.", "Questionable {p}."]  # uncountable phrases


def _location(rt: np.random.Generator, f: _Finding) -> tuple[str, str]:
    if f.prm.get("retro"):
        return "retrocardiac", "the retrocardiac region"
    return _pick(rt, _LOC[(f.side, f.zone)])


def _chest_text(ctx: _Ctx, view: str, fs: dict[str, _Finding], devs: list[_Device], labels: dict,
                change=None) -> tuple[str, str]:
    """Findings and impression sentences; sets ``labels`` and each finding's box ``phrase``.

    ``change`` (longitudinal pairs only) rewrites the impression items ``[(priority, sentence, kind)]`` into
    comparison statements before they are joined; without it nothing differs from a single study."""
    rt = ctx.rt
    lungs: list[str] = []
    pleura: list[str] = []
    heart: list[str] = []
    impr: list[tuple[int, str, str]] = []  # (priority, sentence, finding kind)

    def setl(name: str, certain: bool) -> None:
        labels[name] = 1 if certain else -1

    # --- devices ---
    dev_s: list[str] = []
    for d in devs:
        if d.kind == "ett":
            d.phrase = "endotracheal tube"
            cm = f"{d.prm['cm']:.1f}"
            dev_s.append(_pick(rt, [f"Endotracheal tube terminates {cm} cm above the carina.",
                                    f"The endotracheal tube tip is {cm} cm above the carina.",
                                    f"An endotracheal tube is in place with its tip {cm} cm above the carina."]))
        elif d.kind == "ng":
            d.phrase = _pick(rt, ["enteric tube", "nasogastric tube"])
            dev_s.append(_pick(rt, [f"{_cap(d.phrase)} courses below the diaphragm into the stomach.",
                                    f"The {d.phrase} tip is in the stomach.",
                                    f"{_cap(_art(d.phrase))} is seen with its tip in the stomach."]))
        elif d.kind == "cvc":
            if d.prm["route"] == "ij":
                d.phrase = _pick(rt, [f"{d.side} internal jugular central venous catheter", f"{d.side} IJ central line"])
            else:
                d.phrase = _pick(rt, [f"{d.side} subclavian central venous catheter", f"{d.side} subclavian central line"])
            dev_s.append(_pick(rt, [f"{_cap(d.phrase)} terminates in the SVC.",
                                    f"{_cap(_art(d.phrase))} is present with its tip in the lower SVC.",
                                    f"The {d.phrase} ends at the cavoatrial junction."]))
        else:
            d.phrase = _pick(rt, [f"{d.side} chest wall pacemaker", "dual-chamber pacemaker"])
            dev_s.append(_pick(rt, [f"{_cap(_art(d.phrase))} is present with leads in the right atrium and right ventricle.",
                                    f"{_cap(d.phrase)} with leads terminating in the right heart.",
                                    f"Stable position of the {d.phrase} and its leads."]))
    if devs:
        labels["Support Devices"] = 1

    # --- lungs ---
    if "opacity" in fs:
        f = fs["opacity"]
        adj, prep = _location(rt, f)
        if f.prm["dense"]:
            f.phrase = _pick(rt, [f"{adj} consolidation", f"consolidation in {prep}"])
            setl("Consolidation", f.certain)
            if f.certain and f.prm["pneumonia"]:
                s = _pick(rt, ["{P} consistent with pneumonia.", "There is {p}, compatible with pneumonia.",
                               "{P} in keeping with pneumonia."])
                imp = _pick(rt, ["{P} consistent with pneumonia.", "Pneumonia in {prep}."]).format(
                    P=_cap(f.phrase), prep=prep)
            elif f.certain:
                s = _pick(rt, ["There is focal {p}.", "Dense {p} is present.", "{P} is noted."])
                imp = _cap(f.phrase) + "."
            else:
                s = _pick(rt, ["Possible {p}.", "{P} cannot be excluded.", "Questionable {p}."])
                imp = s
        else:
            f.phrase = _pick(rt, [f"{f.size} {adj} opacity", f"{f.size} opacity in {prep}"])
            if f.certain:
                s = _pick(rt, ["There is {a_p}.", "{A_p} is noted.", "{P}."])
                imp = "{P}."
            else:
                s = _pick(rt, _UNSURE)
                imp = s
        setl("Lung Opacity", f.certain)
        if f.prm["pneumonia"]:
            setl("Pneumonia", f.certain)
            if not f.certain:
                s = s[:-1] + ", which may represent pneumonia."
                imp = _pick(rt, ["Possible pneumonia in {prep}.", "Pneumonia in {prep} cannot be excluded."]).format(prep=prep)
        lungs.append(_fill(s, f.phrase))
        impr.append((1, _fill(imp, f.phrase), f.kind))
    if "lesion" in fs:
        f = fs["lesion"]
        adj, prep = _location(rt, f)
        cm = 2 * f.prm["r"] * _FOV_CM
        noun = f.size
        f.phrase = _pick(rt, [f"{cm:.1f} cm {adj} {noun}", f"{cm:.1f} cm {noun} in {prep}",
                              f"{'small' if noun == 'nodule' else 'large'} {noun} in {prep}", f"{adj} {noun}"])
        if f.certain:
            s = _pick(rt, ["There is {a_p}.", "{A_p} is seen.", "{P} is identified."])
            imp = _pick(rt, ["{P}. Recommend chest CT for further evaluation.", "{P}.",
                             "{P}; CT is recommended for further characterization."])
        else:
            s = _pick(rt, _UNSURE + ["Rounded density may represent {a_p}."])
            imp = _pick(rt, ["Possible {p}; consider chest CT.", "Possible {p}."])
        setl("Lung Lesion", f.certain)
        lungs.append(_fill(s, f.phrase))
        impr.append((4, _fill(imp, f.phrase), f.kind))
    if "edema" in fs:
        f = fs["edema"]
        f.phrase = _pick(rt, [f"{f.size} pulmonary edema", f"{f.size} interstitial pulmonary edema"])
        if f.certain:
            s = _pick(rt, ["There is {p}.", "Perihilar haziness and vascular indistinctness consistent with {p}.", "{P}."])
            imp = "{P}."
        else:
            s = _pick(rt, _UNSURE_U + ["Perihilar haziness may represent {p}."])
            imp = "Possible {p}."
        setl("Edema", f.certain)
        lungs.append(_fill(s, f.phrase))
        impr.append((2, _fill(imp, f.phrase), f.kind))
    if "atelectasis" in fs:
        f = fs["atelectasis"]
        if f.side == "bilateral":
            f.phrase = _pick(rt, ["bibasilar atelectasis", "bibasilar plate-like atelectasis", "bilateral basilar atelectasis"])
        else:
            f.phrase = _pick(rt, [f"{f.side} basilar atelectasis", f"plate-like atelectasis at the {f.side} base",
                                  f"{f.side} lower lobe atelectasis"])
        if f.certain:
            s = _pick(rt, ["There is {p}.", "{P}.", "{P} is noted."])
            imp = "{P}."
        else:
            s = _pick(rt, _UNSURE_U + ["Linear density may represent {p}."])
            imp = "Possible {p}."
        setl("Atelectasis", f.certain)
        lungs.append(_fill(s, f.phrase))
        impr.append((5, _fill(imp, f.phrase), f.kind))
    # lung negations
    lung_findings = {"opacity", "lesion", "edema", "atelectasis"} & set(fs)
    if not lung_findings:
        opts = [("The lungs are clear.", ("Lung Opacity", "Consolidation")),
                ("The lungs are clear bilaterally.", ("Lung Opacity", "Consolidation")),
                ("No focal consolidation.", ("Consolidation",)),
                ("No focal airspace opacity.", ("Lung Opacity",)),
                ("No focal consolidation to suggest pneumonia.", ("Consolidation", "Pneumonia"))]
        sent, neg = _pick(rt, opts)
        lungs.append(sent)
        for n in neg:
            labels[n] = 0
    elif "opacity" not in fs:
        sent, neg = _pick(rt, [("The lungs are otherwise clear.", ("Lung Opacity", "Consolidation")),
                               ("No focal consolidation.", ("Consolidation",)), ("", ())])
        if sent:
            lungs.append(sent)
            for n in neg:
                labels[n] = 0
    elif not fs["opacity"].prm["dense"] and rt.random() < 0.3:
        lungs.append("No dense consolidation.")
        labels["Consolidation"] = 0
    if "edema" not in fs and rt.random() < 0.5:
        lungs.append(_pick(rt, ["No pulmonary edema.", "There is no pulmonary edema.", "No evidence of pulmonary edema."]))
        labels["Edema"] = 0
    if "lesion" not in fs and rt.random() < 0.3:
        lungs.append(_pick(rt, ["No suspicious pulmonary nodules.", "No pulmonary nodule or mass."]))
        labels["Lung Lesion"] = 0
    if "opacity" not in fs and labels["Pneumonia"] is None and rt.random() < 0.15:
        lungs.append("No evidence of pneumonia.")
        labels["Pneumonia"] = 0

    # --- pleura ---
    if "effusion" in fs:
        f = fs["effusion"]
        if f.side == "bilateral":
            f.phrase = f"{f.size} bilateral pleural effusions"
            cert = ["There are {p}.", "{P} are present.", "{P}."]
            uns = ["Possible {p}.", "{P} cannot be excluded.", "Blunting of both costophrenic angles may represent {p}."]
        else:
            f.phrase = f"{f.size} {f.side} pleural effusion"
            cert = ["There is {a_p}.", "{A_p} is present.", "{P}.", "{A_p} is noted, blunting the costophrenic angle."]
            uns = _UNSURE[:2] + ["Blunting of the costophrenic angle may represent {a_p}."]
        s = _pick(rt, cert if f.certain else uns)
        setl("Pleural Effusion", f.certain)
        pleura.append(_fill(s, f.phrase))
        impr.append((1, _fill("{P}." if f.certain else "Possible {p}.", f.phrase), f.kind))
    if "ptx" in fs:
        f = fs["ptx"]
        f.phrase = _pick(rt, [f"{f.size} {f.side} pneumothorax", f"{f.size} {f.side} apical pneumothorax",
                              f"{f.side} apicolateral pneumothorax"] if f.certain else
                         [f"small {f.side} apical pneumothorax", f"{f.side} apical pneumothorax"])
        if f.certain:
            s = _pick(rt, ["There is {a_p}.", "{A_p} is present.", "{A_p} is seen with a visible visceral pleural line."])
            imp = _pick(rt, ["{P}.", "{P}. Findings were communicated to the referring clinician."])
        else:
            s = _pick(rt, _UNSURE)
            imp = "Possible {p}."
        setl("Pneumothorax", f.certain)
        pleura.append(_fill(s, f.phrase))
        impr.append((0, _fill(imp, f.phrase), f.kind))
    eff0, ptx0 = "effusion" not in fs and rt.random() < 0.85, "ptx" not in fs and rt.random() < 0.85
    if eff0 and ptx0:
        pleura.append(_pick(rt, ["No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
                                 "No pneumothorax or pleural effusion."]))
    elif eff0:
        pleura.append(_pick(rt, ["No pleural effusion.", "There is no pleural effusion."]))
    elif ptx0:
        pleura.append(_pick(rt, ["No pneumothorax.", "There is no pneumothorax."]))
    if eff0:
        labels["Pleural Effusion"] = 0
    if ptx0:
        labels["Pneumothorax"] = 0

    # --- heart and mediastinum ---
    if "cardiomegaly" in fs:
        f = fs["cardiomegaly"]
        adv = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}[f.size]
        f.phrase = _pick(rt, [f"{f.size} cardiomegaly", f"{adv} enlarged cardiac silhouette", "cardiomegaly"])
        if f.certain:
            s = _pick(rt, ["There is {p}.", "{P}.", "{P} is present."] if "silhouette" not in f.phrase
                      else ["There is {a_p}.", "{A_p} is noted.", "{P}."])
            imp = "{P}."
        else:
            f.phrase = _pick(rt, ["mild cardiomegaly", "cardiomegaly"])
            s = _pick(rt, ["Possible {p}.", "{P} cannot be excluded."] +
                      (["{P} cannot be excluded given AP technique."] if view == "AP" else []))
            imp = "Possible {p}."
        setl("Cardiomegaly", f.certain)
        heart.append(_fill(s, f.phrase))
        impr.append((3, _fill(imp, f.phrase), f.kind))
    if "ecm" in fs:
        f = fs["ecm"]
        f.phrase = _pick(rt, ["mediastinal widening", "widening of the superior mediastinum", "widened mediastinum"])
        if f.certain:
            s = _pick(rt, ["There is {p}.", "{P} is noted."] if f.phrase != "widened mediastinum" else
                      ["There is {a_p}.", "{A_p} is noted."])
            imp = _pick(rt, ["{P}.", "{P}; consider CT for further evaluation."])
        else:
            s = _pick(rt, ["Possible {p}.", "Questionable {p}, possibly related to technique."])
            imp = "Possible {p}."
        setl("Enlarged Cardiomediastinum", f.certain)
        heart.append(_fill(s, f.phrase))
        impr.append((3, _fill(imp, f.phrase), f.kind))
    r = rt.random()
    if "cardiomegaly" not in fs and "ecm" not in fs:
        if r < 0.5:
            heart.append(_pick(rt, ["The cardiomediastinal silhouette is normal.", "Normal cardiomediastinal silhouette.",
                                    "Heart size and mediastinal contours are within normal limits."]))
            labels["Cardiomegaly"] = labels["Enlarged Cardiomediastinum"] = 0
        elif r < 0.85:
            heart.append(_pick(rt, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size."]))
            labels["Cardiomegaly"] = 0
    elif "cardiomegaly" not in fs and r < 0.7:
        heart.append(_pick(rt, ["Heart size is normal.", "The heart is normal in size."]))
        labels["Cardiomegaly"] = 0
    elif "ecm" not in fs and r < 0.5:
        heart.append(_pick(rt, ["The mediastinal contours are normal.", "Mediastinal contours are unremarkable."]))
        labels["Enlarged Cardiomediastinum"] = 0

    bones: list[str] = []
    r = rt.random()
    if r < 0.25:
        bones.append(_pick(rt, ["No displaced rib fracture.", "No acute rib fracture."]))
        labels["Fracture"] = 0
    elif r < 0.55:
        bones.append(_pick(rt, ["No acute osseous abnormality.", "The visualized osseous structures are unremarkable."]))
    if ctx.age > 65 and rt.random() < 0.4:
        bones.append("Degenerative changes of the thoracic spine.")

    findings = " ".join(dev_s + lungs + pleura + heart + bones)
    if change is not None:
        impr = change(impr)
    if impr:
        items = [t[1] for t in sorted(impr, key=lambda t: t[0])]
        if devs and rt.random() < 0.5:
            items.append("Support devices in standard position.")
        if len(items) > 1 and rt.random() < 0.5:
            impression = " ".join(f"{i + 1}. {s}" for i, s in enumerate(items))
        else:
            impression = " ".join(items)
    else:
        impression = _pick(rt, ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                                "No radiographic evidence of acute cardiopulmonary disease."])
        if devs and rt.random() < 0.6:
            impression = _pick(rt, ["Support devices in standard position. ", "Lines and tubes in expected position. "]) + impression
    return findings, impression


def _chest_indication(rt: np.random.Generator, fs: dict[str, _Finding], devs: list[_Device]) -> str:
    pool = ["Shortness of breath.", "Chest pain.", "Cough.", "Preoperative evaluation.", "Follow-up.", "Dyspnea."]
    if rt.random() < 0.7:
        if "opacity" in fs:
            pool = ["Fever, evaluate for pneumonia.", "Cough and fever.", "Productive cough, evaluate for pneumonia."]
        elif "ptx" in fs:
            pool = ["Chest pain, evaluate for pneumothorax.", "Trauma, pain.", "Sudden onset dyspnea."]
        elif {"edema", "cardiomegaly", "effusion"} & set(fs):
            pool = ["Dyspnea, history of heart failure.", "Shortness of breath and leg swelling.", "Worsening dyspnea."]
        elif "lesion" in fs:
            pool = ["Chronic cough, weight loss.", "Smoker, evaluate for lung nodule.", "Hemoptysis."]
        elif devs:
            pool = ["Line placement.", "Intubated patient, tube position.", "Evaluate device position."]
    return _pick(rt, pool)


_PRESENCE_Q = {
    "Pleural Effusion": ["Is there a pleural effusion?", "Is a pleural effusion present?"],
    "Pneumothorax": ["Is there a pneumothorax?", "Is a pneumothorax present?"],
    "Cardiomegaly": ["Is the heart enlarged?", "Is there cardiomegaly?"],
    "Lung Opacity": ["Is there a lung opacity?", "Is there an airspace opacity?"],
    "Lung Lesion": ["Is there a lung nodule or mass?"],
    "Edema": ["Is there pulmonary edema?"],
    "Atelectasis": ["Is there atelectasis?"],
    "Consolidation": ["Is there consolidation?"],
    "Enlarged Cardiomediastinum": ["Is the mediastinum widened?"],
    "Support Devices": ["Are there any support devices?", "Is a tube, line or device present?"],
}
_MC_NAMES = {"Cardiomegaly": "cardiomegaly", "Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax",
             "Lung Opacity": "lung opacity", "Lung Lesion": "lung nodule or mass", "Edema": "pulmonary edema",
             "Atelectasis": "atelectasis", "Support Devices": "support device"}
_KIND_LABEL = {"cardiomegaly": "Cardiomegaly", "ecm": "Enlarged Cardiomediastinum", "effusion": "Pleural Effusion",
               "ptx": "Pneumothorax", "opacity": "Lung Opacity", "lesion": "Lung Lesion", "edema": "Edema",
               "atelectasis": "Atelectasis"}


def _chest_qa(ctx: _Ctx, view: str, fs: dict[str, _Finding], labels: dict) -> list[dict]:
    rt = ctx.rt
    drawn = {_KIND_LABEL[k] for k in fs} | ({"Consolidation"} if "opacity" in fs and fs["opacity"].prm["dense"] else set())
    if {"lesion", "edema", "atelectasis"} & set(fs):
        drawn.add("Lung Opacity")  # a nodule or a band is an opacity too: never ask "no" about it
    if labels["Support Devices"] == 1:
        drawn.add("Support Devices")
    pos = [n for n in _PRESENCE_Q if labels[n] == 1]
    neg = [n for n in _PRESENCE_Q if n not in drawn and labels[n] != -1]
    qa: list[dict] = []
    first = _pick(rt, pos) if pos and (rt.random() < 0.6 or not neg) else _pick(rt, neg)
    asked = {first}
    qa.append(_yes_no(_pick(rt, _PRESENCE_Q[first]), labels[first] == 1))
    later: list[dict] = []
    lat = [f for f in fs.values() if f.certain and f.side and f.kind in ("effusion", "ptx", "opacity", "lesion", "atelectasis")]
    if lat and rt.random() < 0.8:
        f = _pick(rt, lat)
        name = {"effusion": "pleural effusion", "ptx": "pneumothorax", "opacity": "opacity",
                "lesion": f.size, "atelectasis": "atelectasis"}[f.kind]
        opts = ["left", "right", "bilateral"] if f.kind in ("effusion", "atelectasis") else ["left", "right"]
        later.append(_qa(_pick(rt, [f"Which side is the {name} on?", f"On which side is the {name}?"]), f.side,
                         "laterality", opts))
    loc = [f for f in fs.values() if f.certain and f.kind in ("opacity", "lesion")]
    if loc and rt.random() < 0.8:
        f = _pick(rt, loc)
        name = "opacity" if f.kind == "opacity" else f.size
        later.append(_qa(_pick(rt, [f"Where is the {name}?", f"Where is the {name} located?"]),
                         f"{f.side} {f.zone} zone", "location"))
    mc_pos = [n for n in _MC_NAMES if labels[n] == 1]
    mc_neg = [n for n in _MC_NAMES if n not in drawn and labels[n] != -1]
    if mc_pos and len(mc_neg) >= 3 and rt.random() < 0.7:
        ans = _pick(rt, mc_pos)
        opts = [ans] + [mc_neg[i] for i in rt.permutation(len(mc_neg))[:3]]
        opts = [_MC_NAMES[opts[i]] for i in rt.permutation(4)]
        later.append(_qa("Which of the following findings is present: " + ", ".join(opts[:3]) + f" or {opts[3]}?",
                         _MC_NAMES[ans], "multiple_choice", opts))
    if rt.random() < 0.5:
        later.append(_anatomy_q(rt, "chest"))
    if rt.random() < 0.5:
        later.append(_qa(_pick(rt, ["Is this a PA or AP view?", "Was this radiograph taken PA or AP?"]), view, "view",
                         ["PA", "AP"]))
    qa += later
    extra = [n for n in pos + neg if n not in asked]
    order = rt.permutation(len(extra))
    i = 0
    while len(qa) < 3 and i < len(order):
        n = extra[order[i]]
        qa.append(_yes_no(_pick(rt, _PRESENCE_Q[n]), labels[n] == 1))
        i += 1
    return qa[:6]


def _anatomy_q(rt: np.random.Generator, anatomy: str) -> dict:
    q = _pick(rt, ["Which body part is shown?", "What part of the body is imaged?", "Which anatomy is shown in this radiograph?"])
    return _qa(q, anatomy, "anatomy", list(PHANTOM_ANATOMIES))


def _chest_study(ctx: _Ctx, rec: dict, lateral: bool,
                 pair: "_Pair | None" = None) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    rng, rt = ctx.rng, ctx.rt
    view = "AP" if rng.random() < 0.3 else "PA"
    fs, devs = _sample_chest_findings(ctx, view)
    if pair is not None:
        pair.draw_prior(view, fs)
    geo = _chest_geometry(ctx, view, fs)
    frontal, masks = _draw_chest_frontal(ctx, geo, fs, devs)
    images = [(frontal, view)]
    if lateral:
        images.append((_draw_chest_lateral(ctx, geo, fs, devs), "LATERAL"))
    labels = rec["labels"]
    findings, impression = _chest_text(ctx, view, fs, devs, labels, change=None if pair is None else
                                       partial(pair.rewrite, fs=fs))
    if pair is not None:
        pair.resolved_labels(labels)
    path = any(labels[n] in (1, -1) for n in _PATHOLOGY)
    labels["No Finding"] = 0 if path else 1
    for f in fs.values():
        for b in f.boxes:
            if b is not None:
                rec["boxes"].append(_box_rec(f.phrase, _KIND_LABEL[f.kind], b))
    for d in devs:
        if d.box is not None:
            rec["boxes"].append(_box_rec(d.phrase, "Support Devices", d.box))
    if view == "AP":
        technique = _pick(rt, ["Portable AP upright view of the chest.", "Single portable AP view of the chest.",
                               "AP semi-upright portable radiograph of the chest."])
    else:
        technique = "PA and lateral views of the chest." if lateral else _pick(rt, ["PA view of the chest.",
                                                                                   "Single PA view of the chest."])
    rec.update(indication=_chest_indication(rt, fs, devs), technique=technique, findings=findings,
               impression=impression, comparison=_comparison(rt, "chest radiograph"))
    rec["qa"] = _chest_qa(ctx, view, fs, labels)
    if pair is not None:
        rec["comparison"] = _pick(pair.rng, ["Chest radiograph of ___.", "Prior chest radiograph of ___.",
                                             "Comparison is made to the prior study of ___.", "___."])
    return images, masks


# =============================================================================================
# Chest: longitudinal pairs (opt-in: ``generate_phantom(prior_fraction=...)``)
# =============================================================================================
_SIZES = {"cardiomegaly": ("mild", "moderate", "marked"), "effusion": ("small", "moderate", "large"),
          "ptx": ("small", "moderate", "large"), "edema": ("mild", "moderate")}
"""Findings whose size can change between the prior and the current study (smallest first)."""
_RESOLVABLE = ("opacity", "effusion", "ptx", "atelectasis", "edema")
CHANGE_STATUSES: tuple[str, ...] = ("new", "unchanged", "resolved", "worse", "better")
"""What a longitudinal pair's report says of each certain finding (`mxr0.eval.reports.rules.change_report`)."""
_CHANGE_TEXT = {
    "new": ["New {p}.", "Interval development of {p}.", "{P}, new since the prior study.", "Newly seen {p}."],
    "unchanged": ["Unchanged {p}.", "Stable {p}.", "{P}, unchanged from the prior study.",
                  "{P}, not significantly changed."],
    "worse": ["Increased {p}, previously {old}.", "Worsening {p}.", "{P}, increased since the prior study.",
              "Enlarging {p}, previously {old}."],
    "better": ["Decreased {p}, previously {old}.", "Improving {p}.", "{P}, decreased since the prior study.",
               "Improved {p}, previously {old}."],
    "resolved": ["Interval resolution of the {p}.", "The previously seen {p} has resolved.", "{P} has resolved.",
                 "The {p} seen on the prior study is no longer present."],
}


def _resize(f: _Finding, size: str, rng: np.random.Generator) -> None:
    """Give ``f`` the drawing parameters of ``size`` (the ranges of `_sample_chest_findings`)."""
    f.size = size
    if f.kind == "cardiomegaly":
        lo, hi = {"mild": (0.545, 0.6), "moderate": (0.6, 0.66), "marked": (0.66, 0.72)}[size]
        f.prm["ctr"] = rng.uniform(lo, hi)
    elif f.kind == "effusion":
        lo, hi = {"small": (0.08, 0.12), "moderate": (0.16, 0.24), "large": (0.28, 0.38)}[size]
        f.prm = {s: (rng.uniform(lo, hi), c) for s, (_, c) in f.prm.items()}
    elif f.kind == "ptx":
        lo, hi = {"small": (0.78, 0.84), "moderate": (0.68, 0.76), "large": (0.55, 0.65)}[size]
        f.prm["f"] = rng.uniform(lo, hi)


def _conflicts(f: _Finding, fs: dict[str, _Finding]) -> bool:
    """Whether a prior-only finding would break the sampler's rules against the prior's other findings."""
    sides = {"left", "right"} if f.side == "bilateral" else {f.side}
    def on(k: str) -> set:
        g = fs.get(k)
        return set() if g is None else ({"left", "right"} if g.side == "bilateral" else {g.side})
    if f.kind == "effusion":
        return bool(sides & on("ptx"))
    if f.kind == "ptx":
        return bool(sides & (on("effusion") | on("opacity") | on("lesion")))
    if f.kind == "opacity":
        return bool(sides & on("ptx")) or (f.zone == "lower" and bool(sides & on("effusion")))
    return False


@dataclass
class _Pair:
    """A longitudinal pair: the prior study of the same patient (same thorax: its geometry stream is the
    current's) with findings new (absent before), unchanged, worse / better (another size before) or
    resolved (present before only). ``rng`` draws the changes and their wording."""

    ctx: _Ctx
    rng: np.random.Generator
    status: dict = field(default_factory=dict)  # kind -> change status (certain current findings)
    old_size: dict = field(default_factory=dict)  # kind -> the prior's size (worse / better)
    prior: dict = field(default_factory=dict)  # the prior's findings (after drawing: phrases set)
    image: Any = None
    findings: str = ""
    impression: str = ""

    def draw_prior(self, view: str, fs: dict[str, _Finding]) -> None:
        ctx, rng = self.ctx, self.rng
        ctx.rng.random()  # the view draw: the prior's geometry stream stays in step with the current's
        prior, pdevs = _sample_chest_findings(ctx, view)  # fresh copies of the current's findings
        for k, f in list(prior.items()):
            if not f.certain:
                continue  # hedged findings carry no change statement (drawn the same)
            sizes = _SIZES.get(k, ())
            i = sizes.index(f.size) if f.size in sizes else -1
            opts, w = ["new", "unchanged"], [0.3, 0.35]
            if i > 0:
                opts, w = opts + ["worse"], w + [0.175]
            if 0 <= i < len(sizes) - 1:
                opts, w = opts + ["better"], w + [0.175]
            st = _choice(rng, opts, w)
            self.status[k] = st
            if st == "new":
                del prior[k]
            elif st in ("worse", "better"):
                self.old_size[k] = sizes[i - 1 if st == "worse" else i + 1]
                _resize(f, self.old_size[k], rng)
        if rng.random() < 0.45:  # a finding of the prior that has resolved
            scratch = _Ctx(ctx.index, ctx.size, ctx.g, rng, rng, ctx.sex, ctx.age)
            for _ in range(20):
                cand, _devs = _sample_chest_findings(scratch, view)
                ks = [k for k in _RESOLVABLE if k in cand and k not in fs and cand[k].certain
                      and not _conflicts(cand[k], prior)]
                if ks:
                    prior[ks[0]] = cand[ks[0]]
                    self.status[ks[0]] = "resolved"
                    break
        geo = _chest_geometry(ctx, view, prior)
        ctx.rng = np.random.default_rng(int(rng.integers(2**63)))  # same thorax; its own texture, noise and exposure
        self.image, _ = _draw_chest_frontal(ctx, geo, prior, pdevs)
        labels = {n: None for n in CHEXPERT_LABELS}
        self.findings, self.impression = _chest_text(ctx, view, prior, pdevs, labels)
        self.prior = prior

    def rewrite(self, impr: list, fs: dict[str, _Finding]) -> list:
        """The current impression items with comparison statements (the `_chest_text` ``change`` hook)."""
        out = []
        for prio, sent, kind in impr:
            st = self.status.get(kind)
            if st is not None and st != "resolved" and kind in fs and fs[kind].certain:
                sent = _fill(_pick(self.rng, _CHANGE_TEXT[st]), fs[kind].phrase, old=self.old_size.get(kind, ""))
            out.append((prio, sent, kind))
        for kind, st in self.status.items():
            if st == "resolved":
                out.append((6, _fill(_pick(self.rng, _CHANGE_TEXT[st]), self.prior[kind].phrase), kind))
        return out

    def resolved_labels(self, labels: dict) -> None:
        """A resolution sentence negates its finding (as "resolution of" does for the labeller)."""
        for kind, st in self.status.items():
            if st != "resolved":
                continue
            names = [_KIND_LABEL[kind]] + (["Consolidation"] if kind == "opacity" and self.prior[kind].prm["dense"]
                                           else [])
            for n in names:
                if labels[n] is None:
                    labels[n] = 0


def _box_rec(phrase: str, label: str, b: tuple, image_index: int = 0) -> dict:
    x0, y0, x1, y1 = _box(b)
    return {"phrase": phrase, "label": label, "image_index": image_index, "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def _comparison(rt: np.random.Generator, what: str) -> str:
    r = rt.random()
    return "None." if r < 0.45 else (f"Prior {what} of ___." if r < 0.8 else "")


# =============================================================================================
# Extremities and pelvis
# =============================================================================================
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


def _hand(ctx: _Ctx, rec: dict) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """PA hand, fingers up, seen from the dorsum: a right hand has its thumb on the image's left."""
    g, rng, rt = ctx.g, ctx.rng, ctx.rt
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
    bones = B.draw(g)
    tissue = _soft(g, caps_soft, 0.022)
    img = F(0.04) + tissue * F(0.2)
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
            fnd = [_fill(f"There is {{a_p}}.", f"{kind} {phrase}"), "No dislocation.",
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
    return [(img, "PA")], {"bones": mask}


def _knee(ctx: _Ctx, rec: dict) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """AP (and often lateral) knee. On the AP, a right knee has its fibula (lateral) on the image's left."""
    g, rng, rt = ctx.g, ctx.rng, ctx.rt
    side = _pick(rng, ["right", "left"])
    lateral = rng.random() < 0.6
    sc = rng.uniform(1.0, 1.08) if ctx.sex == "M" else rng.uniform(0.9, 0.98)
    oy = rng.normal(0, 0.02)
    old = ctx.age > 55
    narrow = rng.uniform(0.006, 0.012) if old and rng.random() < 0.6 else 0.0
    frac = rng.random() < 0.3
    certain = bool(rng.random() >= P_UNCERTAIN)
    site = _pick(rng, ["lateral tibial plateau", "distal femur", "fibular head"] + (["patella"] if lateral else [])) if frac else ""

    def X(v: float) -> float:
        return 0.5 + (v - 0.5) * sc

    def Y(v: float) -> float:
        return 0.47 + (v - 0.47) * sc + oy

    S, px = ctx.size, g.px
    u = (g.x - 0.5) / sc  # unscaled coordinates of the drawing
    v = (g.y - oy - 0.47) / sc + 0.47
    e = float(1.2 * px / sc)

    # ---- AP view, drawn as a right knee (fibula on the image's left); mirrored for a left knee
    # femur: shaft flaring into the condyles, intercondylar notch; OA lowers the medial condyle
    hwf = 0.058 + 0.097 * _smooth((v - 0.24) / 0.2)
    ybot = 0.49 - 0.055 * (np.abs(u) / 0.155) ** 4 - 0.04 * np.exp(-((u / 0.02) ** 2)) + narrow * _smooth(u / 0.04)
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
    if frac and site != "patella":
        if site == "lateral tibial plateau":  # a split through the lateral plateau
            p0, p1, r, t = (X(0.36), Y(0.565)), (X(0.46), Y(0.565)), 0.035, rng.uniform(0.4, 0.6)
        elif site == "distal femur":  # supracondylar, transverse
            p0, p1, r, t = (X(0.5), Y(0.2)), (X(0.5), Y(0.42)), 0.07, rng.uniform(0.4, 0.6)
        else:
            p0, p1, r, t = (X(0.36), Y(0.6)), (X(0.37), Y(0.7)), 0.03, 0.35
        line, _, box = _fracture(g, rng, *p0, *p1, r * sc, t, certain)
        bones = bones * (1.0 - line * F(0.85 if certain else 0.5))
    hw_leg = (0.25 + 0.03 * np.clip(0.5 - g.y, 0.0, 1.0)) * sc
    leg = _sig(hw_leg - np.abs(g.x - 0.5), 3 * px)
    img = F(0.04) + leg * F(0.22) + bones * F(0.45 * ctx.bone)
    ap = _finish(ctx, img, noise=0.015)
    mask = bones > 0.35
    images = [ap]
    boxes = [(box, 0)] if box is not None else []
    if lateral:  # anterior (patella, tibial tuberosity) to the image's left
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
        if site == "patella":
            line, _, b2 = _fracture(g, rng, X(0.375), Y(0.37), X(0.375), Y(0.49), 0.033 * sc, rng.uniform(0.4, 0.6), certain)
            lbones = lbones * (1.0 - line * F(0.85 if certain else 0.5))
            boxes.append((b2, 1))
        leg = _sig(hw_leg - np.abs(g.x - 0.5), 3 * px)
        img = F(0.04) + leg * F(0.22) + lbones * F(0.45 * ctx.bone)
        images.append(_finish(ctx, img, noise=0.015))
    mirror = side == "left"
    if mirror:
        images = [im[:, ::-1].copy() for im in images]
        mask = mask[:, ::-1].copy()
    labels = rec["labels"]
    if not frac:
        labels["Fracture"], labels["No Finding"] = 0, 1
        fnd = [_pick(rt, ["No acute fracture or dislocation.", "There is no fracture or dislocation.",
                          "No acute fracture is identified."])]
        imp = _pick(rt, ["No acute fracture or dislocation.", "No acute osseous abnormality."])
    else:
        labels["Fracture"], labels["No Finding"] = (1 if certain else -1), 0
        phrase = _pick(rt, [f"fracture of the {site}", f"{site} fracture"])
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
    if narrow:
        fnd.append(_pick(rt, ["Mild medial compartment joint space narrowing.",
                              "Medial compartment joint space narrowing with small marginal osteophytes."]))
        if not frac:
            imp += " Mild medial compartment osteoarthritis."
    else:
        fnd.append("Joint spaces are maintained.")
    fnd.append(_pick(rt, ["Soft tissues are unremarkable.", "No soft tissue abnormality."]))
    rec.update(indication=_pick(rt, ["Twisting injury, knee pain.", "Fall, knee pain.", "Knee pain, evaluate for fracture.",
                                     "Trauma, pain.", "Chronic knee pain."]),
               technique=(f"AP and lateral views of the {side} knee." if lateral else f"AP view of the {side} knee."),
               comparison=_comparison(rt, "radiograph"), findings=" ".join(fnd), impression=imp)
    views = ["AP", "LATERAL"][: len(images)]
    rec["qa"] = _msk_qa(ctx, "knee", side, "AP", site or None, certain,
                        ["lateral tibial plateau", "distal femur", "fibular head", "patella", "medial femoral condyle"])
    return list(zip(images, views)), {"bones": mask}


def _pelvis(ctx: _Ctx, rec: dict) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """AP pelvis, displayed facing the patient: the patient's left hip is on the image's right."""
    g, rng, rt = ctx.g, ctx.rng, ctx.rt
    x, y, px = g.x, g.y, g.px
    fem = ctx.sex == "F"
    wid = (rng.uniform(1.02, 1.08) if fem else rng.uniform(0.94, 1.0))
    cx = 0.5 + rng.normal(0, 0.01)
    oy = rng.normal(0, 0.015)
    dx = x - cx
    S = ctx.size
    # L4/L5 and the sacrum (an inverted, slightly curved triangle with rows of foramina)
    spine = np.maximum.reduce([D.superellipse(g, cx, 0.13 + oy, 0.07, 0.042, 4.0, soft=1.2),
                               D.superellipse(g, cx, 0.015 + oy, 0.068, 0.04, 4.0, soft=1.2),
                               D.capsule(g, cx - 0.125, 0.15 + oy, cx + 0.125, 0.15 + oy, 0.013, cortex=0.0)])
    ts = (y - (0.2 + oy)) / 0.4
    sac = _sig(0.125 * wid * np.clip(1.0 - ts, 0.0, 1.0) ** 0.85 - np.abs(dx), 1.5 * px) * _sig(ts, 0.02) * _sig(1.0 - ts, 0.02)
    lev = 0.27 + oy + np.arange(4) * 0.06
    foram = g.zeros()
    for ly in lev:
        for fx_ in (cx - 0.036, cx + 0.036):
            D.paint(foram, g, (fx_ - 0.03, ly - 0.03, fx_ + 0.03, ly + 0.03), lambda sub: D.ellipse(sub, fx_, ly, 0.011, 0.009))
    bones = _cortical(np.maximum(spine, sac), S) * (1.0 - 0.45 * foram)
    frac = rng.random() < 0.3
    certain = bool(rng.random() >= P_UNCERTAIN)
    fside = _pick(rng, ["left", "right"])
    site = _pick(rng, ["femoral neck", "superior pubic ramus", "iliac wing"]) if frac else ""
    seg = None
    for side in ("right", "left"):
        s = _SIGN[side]
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
        bones += 0.8 * _cortical(hip, S) + _cortical(femur, S) + 0.3 * roof
        if frac and side == fside:
            if site == "femoral neck":
                seg = (hx + s * 0.02, hy + 0.015, nx, ny, 0.034, rng.uniform(0.3, 0.6))
            elif site == "superior pubic ramus":
                seg = (cx + s * 0.05, 0.655 + oy, cx + s * 0.16, 0.655 + oy, 0.02, rng.uniform(0.3, 0.7))
            else:
                seg = (wcx - s * 0.02, 0.2 + oy, wcx + s * 0.05, 0.2 + oy, 0.06, 0.5)
    brim = D.ring(g, cx, 0.52 + oy, 0.19 * wid, 0.15, 0.012) * _sig(y - (0.45 + oy), 0.03)
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
                        [f"{s_} {b}" for s_ in ("left", "right") for b in ("femoral neck", "superior pubic ramus", "iliac wing")])
    return [(img, "AP")], {"bones": mask}


def _msk_qa(ctx: _Ctx, anatomy: str, side: str, view: str, site: str | None, certain: bool,
            bones: list[str]) -> list[dict]:
    """QA for hand / knee / pelvis studies: anatomy, view, fracture presence, location, side, choice."""
    rt = ctx.rt
    qa = []
    if site is None or certain:
        qa.append(_yes_no(_pick(rt, ["Is there a fracture?", "Is a fracture present?", "Is there an acute fracture?"]),
                          site is not None))
    qa.append(_anatomy_q(rt, anatomy))
    view_q = _qa(_pick(rt, ["What is the projection of this radiograph?", "Which view is this?"]), view, "view",
                 ["PA", "AP", "LATERAL"])
    if rt.random() < 0.6:
        qa.append(view_q)
    if site is not None and certain:
        qa.append(_qa(_pick(rt, ["Where is the fracture?", "Which bone is fractured?"]), site, "location"))
        others = [b for b in bones if b != site]
        if len(others) >= 3 and rt.random() < 0.7:
            opts = [site] + [others[i] for i in rt.permutation(len(others))[:3]]
            opts = [opts[i] for i in rt.permutation(4)]
            qa.append(_qa("Which of the following bones is fractured: " + ", ".join(opts[:3]) + f" or {opts[3]}?",
                          site, "multiple_choice", opts))
    if anatomy in ("hand", "knee"):
        qa.append(_qa(f"Is this a left or right {anatomy}?", side, "laterality", ["left", "right"]))
    elif site is not None and certain:
        qa.append(_qa("Which side is the fracture on?", side, "laterality", ["left", "right"]))
    for filler in (view_q, _yes_no("Is there a dislocation?", False)):
        if len(qa) < 3 and filler not in qa:
            qa.append(filler)
    return qa[:6]


# =============================================================================================
# One study
# =============================================================================================
_DRAW = {"hand": _hand, "knee": _knee, "pelvis": _pelvis}


def draw_study(index: int, anatomy: str, split: str = "train", image_size: int = 128, seed: int = 0,
               lateral_fraction: float = 0.3,
               prior_fraction: float = 0.0) -> tuple[dict, list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """Draw study ``index`` in memory: ``(record, [(uint8 image, view), ...], {mask name: bool array})``.

    The record's image and mask paths are the relative paths `generate_phantom` writes them to.
    Randomness comes only from ``SeedSequence([seed, index])``. With ``prior_fraction`` > 0 that share of
    the chest studies (drawn from ``SeedSequence([seed, index, 1])``, so the others are unchanged) become
    longitudinal pairs: the same patient's prior frontal image (role ``prior``, last in ``images``, id
    ``<study_id>-prior``), its report in ``prior_findings`` / ``prior_impression``, and an impression whose
    statements compare with it (`CHANGE_STATUSES`).
    """
    ss = np.random.SeedSequence([int(seed), int(index)])
    s_geo, s_txt, s_demo = ss.spawn(3)
    rd = np.random.default_rng(s_demo)
    sex = "M" if rd.random() < 0.5 else "F"
    age = float(np.round(np.clip(rd.normal(58, 17), 18, 90), 0))
    ctx = _Ctx(index, image_size, D.Grid(image_size), np.random.default_rng(s_geo), np.random.default_rng(s_txt), sex, age)
    sid = f"phantom-{index:06d}"
    rec = empty_record(sid, split=split, source=SOURCE, anatomy=anatomy)
    rec["sex"], rec["age"] = sex, age
    pair = None
    if prior_fraction > 0 and anatomy == "chest":
        rp = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
        if rp.random() < prior_fraction:
            pctx = _Ctx(index, image_size, D.Grid(image_size), np.random.default_rng(s_geo), rp, sex, age)
            pair = _Pair(pctx, rp)
    if anatomy == "chest":
        images, masks = _chest_study(ctx, rec, lateral=bool(rd.random() < lateral_fraction), pair=pair)
    else:
        images, masks = _DRAW[anatomy](ctx, rec)
    rec["images"] = [{"path": f"images/{sid}_{k}.png", "view": v, "role": "current"} for k, (_, v) in enumerate(images)]
    rec["masks"] = [{"name": n, "path": f"masks/{sid}_{n}.png", "image_index": 0} for n in masks]
    if pair is not None:
        view = images[0][1]
        images = images + [(pair.image, view)]
        rec["images"].append({"path": f"images/{sid}_prior.png", "view": view, "role": "prior"})
        rec.update(prior_study_id=f"{sid}-prior", prior_findings=pair.findings, prior_impression=pair.impression)
    return rec, images, masks


def _write_study(job: tuple[int, str, str], out_dir: str, image_size: int, seed: int, lateral_fraction: float,
                 prior_fraction: float = 0.0) -> dict:
    index, anatomy, split = job
    rec, images, masks = draw_study(index, anatomy, split, image_size, seed, lateral_fraction, prior_fraction)
    for im, (arr, _) in zip(rec["images"], images):
        D.save_png(os.path.join(out_dir, im["path"]), arr)
    for m in rec["masks"]:
        D.save_png(os.path.join(out_dir, m["path"]), masks[m["name"]].astype(np.uint8) * np.uint8(255))
    return rec


# =============================================================================================
# The data set
# =============================================================================================
def _largest_remainder(n: int, weights: Sequence[float]) -> list[int]:
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    raw = w * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _normalise_mix(anatomy_mix: Mapping[str, float] | None) -> dict[str, float]:
    mix = dict(DEFAULT_ANATOMY_MIX if anatomy_mix is None else anatomy_mix)
    bad = [a for a in mix if a not in PHANTOM_ANATOMIES]
    if bad:
        raise ValueError(f"anatomy_mix: unsupported anatomies {bad}; the phantom draws {list(PHANTOM_ANATOMIES)}")
    if any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"anatomy_mix: weights must be >= 0 with a positive sum, got {mix}")
    total = sum(mix.values())
    return {a: round(mix[a] / total, 6) for a in PHANTOM_ANATOMIES if mix.get(a, 0) > 0}


def _plan(n: int, seed: int, mix: dict[str, float], fractions: Sequence[float]) -> list[tuple[int, str, str]]:
    """(index, anatomy, split) per study: exact anatomy quotas and per-anatomy stratified splits."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E3779B9]))
    names = list(mix)
    anat = np.repeat(np.array(names, dtype=object), _largest_remainder(n, [mix[a] for a in names]))
    anat = anat[rng.permutation(n)]
    split = np.empty(n, dtype=object)
    for a in names:
        idx = np.flatnonzero(anat == a)
        counts = _largest_remainder(len(idx), fractions)
        split[idx[rng.permutation(len(idx))]] = np.repeat(np.array(["train", "validation", "test"], dtype=object), counts)
    return [(i, str(anat[i]), str(split[i])) for i in range(n)]


def _meta(n_studies: int, image_size: int, seed: int, mix: dict, fractions: Sequence[float], lateral_fraction: float,
          prior_fraction: float = 0.0) -> dict:
    meta = {"version": PHANTOM_VERSION, "n_studies": int(n_studies), "image_size": int(image_size), "seed": int(seed),
            "anatomy_mix": mix, "split_fractions": [float(f) for f in fractions],
            "lateral_fraction": float(lateral_fraction)}
    if prior_fraction > 0:  # only then: phantom.json of a set without pairs is unchanged
        meta["prior_fraction"] = float(prior_fraction)
    return meta


_OWN_NAMES = {"images", "masks", "records.jsonl", "records.roots.json", "phantom.json", ".phantom-incomplete", LOCK_NAME}


def _is_phantom_dir(out: Path) -> bool:
    """True when ``out`` holds nothing but what `generate_phantom` writes (or is empty)."""
    return all(p.name in _OWN_NAMES or p.name.startswith((".records.jsonl.tmp", ".phantom.json.tmp", ".records.roots.json.tmp"))
               for p in out.iterdir())


def generate_phantom(out_dir: str | os.PathLike, n_studies: int = 2000, image_size: int = 128, seed: int = 0,
                     anatomy_mix: Mapping[str, float] | None = None,
                     split_fractions: Sequence[float] = (0.8, 0.1, 0.1), lateral_fraction: float = 0.3,
                     workers: int | None = None, progress: bool = True, overwrite: bool = False,
                     prior_fraction: float = 0.0) -> Path:
    """Draw ``n_studies`` phantom studies into ``out_dir`` and return the path of ``records.jsonl``.

    Writes ``images/<study_id>_<k>.png`` (8-bit grayscale; ``k`` = 0 is the frontal image),
    ``masks/<study_id>_<organ>.png`` (0/255; ``right_lung``/``left_lung``/``heart`` on chest
    frontals, named by the PATIENT's side, so ``left_lung`` lies in the image's right half; ``bones``
    on the others), ``records.jsonl`` (canonical records, paths relative to ``out_dir``) and last
    ``phantom.json`` (the arguments and `PHANTOM_VERSION`). When ``phantom.json`` already matches
    the arguments, ``overwrite`` is false and every image and mask file it names exists and is not
    empty, nothing is drawn and the existing records are reused; an interrupted or damaged folder
    is drawn again. ``phantom.json`` is written only after every file has been verified
    (`IncompleteFolderError` otherwise). One writer at a time: the folder's lock
    (`mxr0.data.records.folder_lock`) makes a concurrent call wait, then reuse the finished folder.

    ``anatomy_mix`` maps anatomies of `PHANTOM_ANATOMIES` to weights (default
    `DEFAULT_ANATOMY_MIX`: 60 % chest); quotas are exact and each anatomy is split train /
    validation / test by ``split_fractions``. ``lateral_fraction`` of the chest studies get a
    second, lateral image. ``workers`` processes draw in parallel (default ``min(4, cpu count)``;
    0 or 1 draws in this process); the output does not depend on it.

    ``prior_fraction`` (default 0: no pairs, the set is exactly as without it) makes that share of the chest
    studies longitudinal pairs (`draw_study`): a prior frontal image ``images/<study_id>_prior.png`` (role
    ``prior``), the prior report, and comparison statements (new / unchanged / worse / better / resolved).
    """
    if not 0.0 <= prior_fraction <= 1.0:
        raise ValueError(f"prior_fraction must lie in [0, 1], got {prior_fraction}")
    if n_studies < 1:
        raise ValueError(f"n_studies must be >= 1, got {n_studies}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions) or sum(split_fractions) <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers (train, validation, test), got {split_fractions}")
    if not 0.0 <= lateral_fraction <= 1.0:
        raise ValueError(f"lateral_fraction must lie in [0, 1], got {lateral_fraction}")
    out = Path(out_dir)
    mix = _normalise_mix(anatomy_mix)
    fr = [f / sum(split_fractions) for f in split_fractions]
    meta = _meta(n_studies, image_size, seed, mix, [round(f, 6) for f in fr], lateral_fraction, prior_fraction)
    if out.exists() and not overwrite and not (out / "phantom.json").exists() and not _is_phantom_dir(out):
        raise FileExistsError(f"{out} holds files that generate_phantom did not write; "
                              "choose another folder or pass overwrite=True")
    with folder_lock(out, what="mxr0 prepare phantom"):
        return _generate_locked(out, meta, n_studies, image_size, seed, mix, fr, lateral_fraction, workers,
                                progress, overwrite, prior_fraction)


def _incomplete(out: Path, rec_path: Path, n_studies: int) -> str | None:
    """Why the finished-looking phantom folder ``out`` cannot be reused (None when it can)."""
    if (out / ".phantom-incomplete").exists():
        return "an earlier run did not finish"
    try:
        records = read_records(rec_path, resolve_paths=False)
    except (RecordError, RootsError, OSError) as e:
        return f"its records cannot be read ({type(e).__name__})"
    if len(records) != n_studies:
        return f"it holds {len(records)} studies, not {n_studies}"
    missing = missing_files(records, out)
    if missing:
        return f"{len(missing)} of its image / mask files are missing or empty (e.g. {missing[0]})"
    return None


def _generate_locked(out: Path, meta: dict, n_studies: int, image_size: int, seed: int, mix: dict, fr: list,
                     lateral_fraction: float, workers: int | None, progress: bool, overwrite: bool,
                     prior_fraction: float = 0.0) -> Path:
    meta_path, rec_path = out / "phantom.json", out / "records.jsonl"
    if not overwrite and meta_path.exists() and rec_path.exists():
        try:
            same = json.loads(meta_path.read_text()) == meta
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            problem = _incomplete(out, rec_path, n_studies)
            if problem is None:
                return rec_path
            log.warning("%s: %s; drawing it again", out, problem)
    if out.exists() and not overwrite and not _is_phantom_dir(out):
        raise FileExistsError(f"{out} holds files that generate_phantom did not write; "
                              "choose another folder or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".phantom-incomplete").write_text("generate_phantom is writing this folder\n")
    meta_path.unlink(missing_ok=True)
    for sub in ("images", "masks"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir()
    jobs = _plan(n_studies, seed, mix, fr)
    work = partial(_write_study, out_dir=str(out), image_size=image_size, seed=seed, lateral_fraction=lateral_fraction,
                   prior_fraction=prior_fraction)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=n_studies, desc="phantom", unit="study", disable=not progress)
    records: list[dict] = []
    try:
        if workers <= 1 or n_studies < 32:
            for job in jobs:
                records.append(work(job))
                bar.update(1)
        else:
            import multiprocessing as mp

            # forkserver, not fork: forking a process that runs threads (a pytest-xdist worker, a server, a notebook
            # with torch's thread pools) can copy a held lock into the child, which then never starts (seen: a
            # test-suite hang); the fork server is a clean single-threaded process that imports this module once
            with mp.get_context("forkserver").Pool(workers) as pool:
                for rec in pool.imap(work, jobs, chunksize=max(1, min(32, n_studies // (workers * 8)))):
                    records.append(rec)
                    bar.update(1)
    finally:
        bar.close()
    write_records(records, rec_path)
    missing = missing_files(records, out)
    if missing:
        raise IncompleteFolderError(
            f"{out}: {len(missing)} image / mask files of the {n_studies} phantom studies are missing or empty "
            f"after drawing (e.g. {missing[0]}); the folder is not marked complete. Another program may have "
            "changed it: run again with --overwrite (overwrite=True)")
    tmp = out / f".phantom.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    (out / ".phantom-incomplete").unlink(missing_ok=True)
    return rec_path


# =============================================================================================
# Contact sheet
# =============================================================================================
_BOX_COLOURS = {
    "Cardiomegaly": (255, 80, 80), "Enlarged Cardiomediastinum": (255, 150, 60), "Pleural Effusion": (60, 160, 255),
    "Pneumothorax": (255, 230, 40), "Lung Opacity": (80, 230, 120), "Consolidation": (80, 230, 120),
    "Lung Lesion": (230, 90, 255), "Atelectasis": (40, 230, 230), "Support Devices": (255, 140, 200),
    "Fracture": (255, 60, 60),
}
_SHORT = {"Enlarged Cardiomediastinum": "EnlCM", "Cardiomegaly": "Cardiomeg", "Lung Opacity": "Opacity",
          "Lung Lesion": "Lesion", "Consolidation": "Consol", "Pleural Effusion": "Effusion",
          "Pneumothorax": "PTX", "Support Devices": "Devices", "Atelectasis": "Atelect", "Pneumonia": "Pneumonia",
          "Edema": "Edema", "Fracture": "Fracture", "No Finding": "No Finding"}


def preview_grid(records_path_or_records: str | os.PathLike | Iterable[dict], out_png: str | os.PathLike, n: int = 16,
                 cols: int = 4, draw_boxes: bool = True, tile: int = 256) -> Path:
    """Write a contact sheet of the first ``n`` studies' first images to ``out_png``.

    Each tile is upscaled to ``tile`` px with the study's boxes on that image drawn as coloured
    outlines and a caption (study id, anatomy, view, sex/age, positive labels; ``?`` marks uncertain
    ones). Takes a records file / folder (paths resolved against it) or a list of records whose
    paths are absolute or relative to the working directory. The sheet is ``cols * tile`` wide and
    ``rows * (tile + 40)`` high.
    """
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(records_path_or_records, (str, os.PathLike)):
        records = read_records(records_path_or_records)
    else:
        records = list(records_path_or_records)
    records = records[:n]
    if not records:
        raise ValueError("preview_grid: no records to show")
    cols = max(1, min(cols, len(records)))
    rows = math.ceil(len(records) / cols)
    cap_h = 40
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap_h)), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    for i, r in enumerate(records):
        x0, y0 = (i % cols) * tile, (i // cols) * (tile + cap_h)
        with Image.open(r["images"][0]["path"]) as im:
            sheet.paste(im.convert("RGB").resize((tile, tile), Image.BILINEAR), (x0, y0))
        if draw_boxes:
            for b in r.get("boxes", []):
                if b.get("image_index", 0) != 0:
                    continue
                col = _BOX_COLOURS.get(b["label"], (255, 255, 255))
                draw.rectangle([x0 + b["x0"] * tile, y0 + b["y0"] * tile, x0 + b["x1"] * tile - 1, y0 + b["y1"] * tile - 1],
                               outline=col, width=2)
        pos = [(_SHORT.get(k, k) + ("?" if v == -1 else "")) for k, v in r["labels"].items()
               if v in (1, -1) and k != "No Finding"]
        if r["labels"].get("No Finding") == 1 and not pos:
            pos = ["No Finding"]
        view = "+".join(im["view"] for im in r["images"])
        line1 = f"{r['study_id']} {r['anatomy']} {view} {r.get('sex', '')}{'' if r.get('age') is None else int(r['age'])}"
        line2 = ", ".join(pos) if pos else "-"
        draw.text((x0 + 4, y0 + tile + 3), line1, fill=(230, 230, 230), font=font)
        while len(line2) > 4 and draw.textlength(line2, font=font) > tile - 8:  # keep it inside the tile
            line2 = line2[:-2].rstrip(", ") + "…"
        draw.text((x0 + 4, y0 + tile + 20), line2, fill=(255, 210, 120), font=font)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
