"""The lung sentences of a phantom chest report: opacity, nodule or mass, edema, atelectasis and the lung negations."""

from __future__ import annotations

import numpy as np

from mxr0.data.phantom.chest_findings import _Finding
from mxr0.data.phantom.common import _FOV_CM, _cap, _fill, _pick

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

_Item = tuple[int, str, str]
"""An impression item: (priority, sentence, finding kind)."""


def _setl(labels: dict, name: str, certain: bool) -> None:
    labels[name] = 1 if certain else -1


def _location(rt: np.random.Generator, f: _Finding) -> tuple[str, str]:
    if f.prm.get("retro"):
        return "retrocardiac", "the retrocardiac region"
    return _pick(rt, _LOC[(f.side, f.zone)])


def _opacity_text(rt: np.random.Generator, f: _Finding, labels: dict) -> tuple[str, _Item]:
    """A consolidation (pneumonia when lobar) or a fainter opacity: the findings sentence and the impression item."""
    adj, prep = _location(rt, f)
    if f.prm["dense"]:
        f.phrase = _pick(rt, [f"{adj} consolidation", f"consolidation in {prep}"])
        _setl(labels, "Consolidation", f.certain)
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
    _setl(labels, "Lung Opacity", f.certain)
    if f.prm["pneumonia"]:
        _setl(labels, "Pneumonia", f.certain)
        if not f.certain:
            s = s[:-1] + ", which may represent pneumonia."
            imp = _pick(rt, ["Possible pneumonia in {prep}.", "Pneumonia in {prep} cannot be excluded."]).format(prep=prep)
    return _fill(s, f.phrase), (1, _fill(imp, f.phrase), f.kind)


def _lesion_text(rt: np.random.Generator, f: _Finding, labels: dict) -> tuple[str, _Item]:
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
    _setl(labels, "Lung Lesion", f.certain)
    return _fill(s, f.phrase), (4, _fill(imp, f.phrase), f.kind)


def _edema_text(rt: np.random.Generator, f: _Finding, labels: dict) -> tuple[str, _Item]:
    f.phrase = _pick(rt, [f"{f.size} pulmonary edema", f"{f.size} interstitial pulmonary edema"])
    if f.certain:
        s = _pick(rt, ["There is {p}.", "Perihilar haziness and vascular indistinctness consistent with {p}.", "{P}."])
        imp = "{P}."
    else:
        s = _pick(rt, _UNSURE_U + ["Perihilar haziness may represent {p}."])
        imp = "Possible {p}."
    _setl(labels, "Edema", f.certain)
    return _fill(s, f.phrase), (2, _fill(imp, f.phrase), f.kind)


def _atelectasis_text(rt: np.random.Generator, f: _Finding, labels: dict) -> tuple[str, _Item]:
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
    _setl(labels, "Atelectasis", f.certain)
    return _fill(s, f.phrase), (5, _fill(imp, f.phrase), f.kind)


def _lung_negations(rt: np.random.Generator, fs: dict[str, _Finding], labels: dict) -> list[str]:
    """What the lungs do not show: each sentence sets the labels it negates to 0."""
    out: list[str] = []
    lung_findings = {"opacity", "lesion", "edema", "atelectasis"} & set(fs)
    if not lung_findings:
        opts = [("The lungs are clear.", ("Lung Opacity", "Consolidation")),
                ("The lungs are clear bilaterally.", ("Lung Opacity", "Consolidation")),
                ("No focal consolidation.", ("Consolidation",)),
                ("No focal airspace opacity.", ("Lung Opacity",)),
                ("No focal consolidation to suggest pneumonia.", ("Consolidation", "Pneumonia"))]
        sent, neg = _pick(rt, opts)
        out.append(sent)
        for n in neg:
            labels[n] = 0
    elif "opacity" not in fs:
        sent, neg = _pick(rt, [("The lungs are otherwise clear.", ("Lung Opacity", "Consolidation")),
                               ("No focal consolidation.", ("Consolidation",)), ("", ())])
        if sent:
            out.append(sent)
            for n in neg:
                labels[n] = 0
    elif not fs["opacity"].prm["dense"] and rt.random() < 0.3:
        out.append("No dense consolidation.")
        labels["Consolidation"] = 0
    if "edema" not in fs and rt.random() < 0.5:
        out.append(_pick(rt, ["No pulmonary edema.", "There is no pulmonary edema.", "No evidence of pulmonary edema."]))
        labels["Edema"] = 0
    if "lesion" not in fs and rt.random() < 0.3:
        out.append(_pick(rt, ["No suspicious pulmonary nodules.", "No pulmonary nodule or mass."]))
        labels["Lung Lesion"] = 0
    if "opacity" not in fs and labels["Pneumonia"] is None and rt.random() < 0.15:
        out.append("No evidence of pneumonia.")
        labels["Pneumonia"] = 0
    return out


_LUNG_TEXT = {"opacity": _opacity_text, "lesion": _lesion_text, "edema": _edema_text, "atelectasis": _atelectasis_text}
"""Each lung finding's sentence builder, in report order."""


def _lungs_text(rt: np.random.Generator, fs: dict[str, _Finding], labels: dict, impr: list[_Item]) -> list[str]:
    """The lung sentences; appends the lung findings' impression items to ``impr``."""
    out: list[str] = []
    for kind, text in _LUNG_TEXT.items():
        if kind in fs:
            sentence, item = text(rt, fs[kind], labels)
            out.append(sentence)
            impr.append(item)
    return out + _lung_negations(rt, fs, labels)
