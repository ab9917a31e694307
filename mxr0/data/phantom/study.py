"""One phantom study drawn in memory (`draw_study`): its seeds, demographics, anatomy drawer and optional prior."""

from __future__ import annotations

import numpy as np

import mxr0.data.phantom.draw as D
from mxr0.data.phantom.chest import _chest_study
from mxr0.data.phantom.common import SOURCE, _Ctx
from mxr0.data.phantom.hand import _hand
from mxr0.data.phantom.knee import _knee
from mxr0.data.phantom.pairs import _Pair
from mxr0.data.phantom.pelvis import _pelvis
from mxr0.data.records import empty_record

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
