"""Question / answer pairs of phantom studies: presence, laterality, location, multiple choice, anatomy and view."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mxr0.data.phantom.chest_findings import _KIND_LABEL, _Finding
from mxr0.data.phantom.common import PHANTOM_ANATOMIES, _Ctx, _pick


def _qa(question: str, answer: str, qtype: str, options: Sequence[str] | None = None) -> dict:
    opts = list(options or [])
    return {"question": question, "answer": answer, "answer_type": "closed" if opts else "open",
            "question_type": qtype, "options": opts}


def _yes_no(question: str, yes: bool, qtype: str = "presence") -> dict:
    return _qa(question, "yes" if yes else "no", qtype, ["yes", "no"])


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

