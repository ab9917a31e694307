"""The phantom's constants, per-study state (`_Ctx`) and the small helpers every drawer and text builder shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.records import CHEXPERT_LABELS

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
_SIGN = {"right": -1, "left": 1}  # patient's side -> image direction (patient's left = image right)


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


def _box_rec(phrase: str, label: str, b: tuple, image_index: int = 0) -> dict:
    x0, y0, x1, y1 = _box(b)
    return {"phrase": phrase, "label": label, "image_index": image_index, "x0": x0, "y0": y0, "x1": x1, "y1": y1}


def _comparison(rt: np.random.Generator, what: str) -> str:
    r = rt.random()
    return "None." if r < 0.45 else (f"Prior {what} of ___." if r < 0.8 else "")


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
