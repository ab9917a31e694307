"""A phantom chest study: findings, frontal (and lateral) images, report, labels, boxes and QA, with an optional prior."""

from __future__ import annotations

from functools import partial

import numpy as np

from mxr0.data.phantom.chest_findings import _KIND_LABEL, _sample_chest_findings
from mxr0.data.phantom.chest_frontal import _draw_chest_frontal
from mxr0.data.phantom.chest_lateral import _draw_chest_lateral
from mxr0.data.phantom.chest_report import _chest_indication, _chest_text
from mxr0.data.phantom.chest_scene import _chest_geometry
from mxr0.data.phantom.common import _box_rec, _comparison, _Ctx, _pick
from mxr0.data.phantom.pairs import _Pair
from mxr0.data.phantom.qa import _chest_qa
from mxr0.data.records import CHEXPERT_LABELS

_PATHOLOGY = tuple(n for n in CHEXPERT_LABELS if n not in ("Support Devices", "No Finding"))
"""Observations that make a study abnormal (No Finding = 0) when positive or uncertain."""


def _chest_study(ctx: _Ctx, rec: dict, lateral: bool,
                 pair: _Pair | None = None) -> tuple[list[tuple[np.ndarray, str]], dict[str, np.ndarray]]:
    """Draw a chest study into ``rec`` (labels, boxes, report, QA): ``([(image, view)], masks)``; with ``pair`` its
    prior is drawn too and the impression compares with it."""
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
