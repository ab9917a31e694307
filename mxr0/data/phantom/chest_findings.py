"""Chest findings and support devices of a phantom study: what is sampled, with which sizes, sides and zones."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mxr0.data.phantom.common import P_UNCERTAIN, _choice, _Ctx, _pick

_P_NORMAL_CHEST = 0.3
_P_FINDING = {  # probability of each finding given an abnormal chest study
    "cardiomegaly": 0.34, "ecm": 0.17, "effusion": 0.36, "ptx": 0.27,
    "opacity": 0.36, "lesion": 0.32, "edema": 0.22, "atelectasis": 0.27,
}
_KIND_LABEL = {"cardiomegaly": "Cardiomegaly", "ecm": "Enlarged Cardiomediastinum", "effusion": "Pleural Effusion",
               "ptx": "Pneumothorax", "opacity": "Lung Opacity", "lesion": "Lung Lesion", "edema": "Edema",
               "atelectasis": "Atelectasis"}
"""The CheXpert observation of each finding kind."""

# Drawing parameter ranges of each size (certain findings): cardiothoracic ratio, effusion height,
# pneumothorax lung fraction (the collapsed lung's share of the hemithorax).
_CTR_RANGE = {"mild": (0.545, 0.6), "moderate": (0.6, 0.66), "marked": (0.66, 0.72)}
_EFFUSION_RANGE = {"small": (0.08, 0.12), "moderate": (0.16, 0.24), "large": (0.28, 0.38)}
_PTX_RANGE = {"small": (0.78, 0.84), "moderate": (0.68, 0.76), "large": (0.55, 0.65)}


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


def _sides(side: str) -> tuple[str, ...]:
    return ("left", "right") if side == "bilateral" else (side,)


def _cardiomegaly(rng: np.random.Generator, f: _Finding) -> None:
    if f.certain:
        f.size = _choice(rng, ["mild", "moderate", "marked"], [0.45, 0.35, 0.2])
        lo, hi = _CTR_RANGE[f.size]
    else:
        f.size, (lo, hi) = "mild", (0.51, 0.545)
    f.prm["ctr"] = rng.uniform(lo, hi)


def _ecm(rng: np.random.Generator, f: _Finding) -> None:
    f.prm["mw"] = rng.uniform(0.095, 0.13) if f.certain else rng.uniform(0.078, 0.09)


def _effusion(rng: np.random.Generator, f: _Finding) -> None:
    f.side = _choice(rng, ["left", "right", "bilateral"], [0.38, 0.37, 0.25])
    f.size = _choice(rng, ["small", "moderate", "large"], [0.45, 0.35, 0.2]) if f.certain else "small"
    lo, hi = _EFFUSION_RANGE[f.size]
    if not f.certain:
        lo, hi = 0.035, 0.055
    for s in _sides(f.side):
        f.prm[s] = (rng.uniform(lo, hi), rng.uniform(0.05, 0.09))  # height, meniscus curvature


def _ptx(rng: np.random.Generator, f: _Finding) -> None:
    f.side = _pick(rng, ["left", "right"])
    f.size = _choice(rng, ["small", "moderate", "large"], [0.45, 0.35, 0.2]) if f.certain else "small"
    lo, hi = _PTX_RANGE[f.size]
    f.prm["f"] = rng.uniform(lo, hi) if f.certain else rng.uniform(0.87, 0.9)


def _side_zone(rng: np.random.Generator, f: _Finding) -> None:
    f.side = _pick(rng, ["left", "right"])
    f.zone = _choice(rng, ["upper", "middle", "lower"], [0.32, 0.28, 0.4])


def _opacity(rng: np.random.Generator, f: _Finding) -> None:
    _side_zone(rng, f)
    f.prm["dense"] = bool(rng.random() < 0.45)
    f.prm["pneumonia"] = bool(f.prm["dense"] and rng.random() < 0.6)
    f.prm["retro"] = bool(f.side == "left" and f.zone == "lower" and rng.random() < 0.3)
    big = f.prm["pneumonia"]
    f.prm["s"] = rng.uniform(0.075, 0.1) if big else rng.uniform(0.05, 0.075)
    f.size = "dense" if f.prm["dense"] else _pick(rng, ["patchy", "hazy", "ill-defined", "mild"])


def _lesion(rng: np.random.Generator, f: _Finding) -> None:
    _side_zone(rng, f)
    f.size = "mass" if rng.random() < 0.45 else "nodule"
    f.prm["r"] = rng.uniform(0.05, 0.075) if f.size == "mass" else rng.uniform(0.027, 0.0345)
    if not f.certain:
        f.size, f.prm["r"] = "nodule", rng.uniform(0.02, 0.026)


def _edema(rng: np.random.Generator, f: _Finding) -> None:
    f.size = _pick(rng, ["mild", "moderate"]) if f.certain else "mild"


def _atelectasis(rng: np.random.Generator, f: _Finding) -> None:
    f.side = _choice(rng, ["left", "right", "bilateral"], [0.35, 0.35, 0.3])
    for s in _sides(f.side):
        f.prm[s] = (rng.uniform(0.15, 0.22), rng.uniform(-0.25, 0.25), rng.uniform(0.026, 0.034),
                    rng.uniform(0.015, 0.03), rng.uniform(0.15, 0.3))  # length, tilt, width, lift, u


_PARAMS = {"cardiomegaly": _cardiomegaly, "ecm": _ecm, "effusion": _effusion, "ptx": _ptx, "opacity": _opacity,
           "lesion": _lesion, "edema": _edema, "atelectasis": _atelectasis}
"""Each finding kind's sampler of size, side, zone and drawing parameters."""


def _keep_apart(fs: dict[str, _Finding]) -> None:
    """Move findings that would hide each other or make another entity onto compatible sides and zones."""
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


def _sample_devices(rng: np.random.Generator, view: str) -> list[_Device]:
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
    return devices


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
        _PARAMS[f.kind](rng, f)
    _keep_apart(fs)
    return fs, _sample_devices(rng, view)
