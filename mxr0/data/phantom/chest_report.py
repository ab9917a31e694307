"""A phantom chest report: indication, device, lung, pleura, heart and bone sentences, and the impression."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mxr0.data.phantom.chest_findings import _Device, _Finding
from mxr0.data.phantom.chest_report_lungs import _UNSURE, _Item, _lungs_text, _setl
from mxr0.data.phantom.common import _art, _cap, _Ctx, _fill, _pick


def _devices_text(rt: np.random.Generator, devs: list[_Device], labels: dict) -> list[str]:
    """One sentence per support device (its tip position); sets each device's box phrase."""
    out: list[str] = []
    for d in devs:
        if d.kind == "ett":
            d.phrase = "endotracheal tube"
            cm = f"{d.prm['cm']:.1f}"
            out.append(_pick(rt, [f"Endotracheal tube terminates {cm} cm above the carina.",
                                  f"The endotracheal tube tip is {cm} cm above the carina.",
                                  f"An endotracheal tube is in place with its tip {cm} cm above the carina."]))
        elif d.kind == "ng":
            d.phrase = _pick(rt, ["enteric tube", "nasogastric tube"])
            out.append(_pick(rt, [f"{_cap(d.phrase)} courses below the diaphragm into the stomach.",
                                  f"The {d.phrase} tip is in the stomach.",
                                  f"{_cap(_art(d.phrase))} is seen with its tip in the stomach."]))
        elif d.kind == "cvc":
            if d.prm["route"] == "ij":
                d.phrase = _pick(rt, [f"{d.side} internal jugular central venous catheter", f"{d.side} IJ central line"])
            else:
                d.phrase = _pick(rt, [f"{d.side} subclavian central venous catheter", f"{d.side} subclavian central line"])
            out.append(_pick(rt, [f"{_cap(d.phrase)} terminates in the SVC.",
                                  f"{_cap(_art(d.phrase))} is present with its tip in the lower SVC.",
                                  f"The {d.phrase} ends at the cavoatrial junction."]))
        else:
            d.phrase = _pick(rt, [f"{d.side} chest wall pacemaker", "dual-chamber pacemaker"])
            out.append(_pick(rt, [f"{_cap(_art(d.phrase))} is present with leads in the right atrium and right ventricle.",
                                  f"{_cap(d.phrase)} with leads terminating in the right heart.",
                                  f"Stable position of the {d.phrase} and its leads."]))
    if devs:
        labels["Support Devices"] = 1
    return out


def _pleura_text(rt: np.random.Generator, fs: dict[str, _Finding], labels: dict, impr: list[_Item]) -> list[str]:
    """Effusion and pneumothorax sentences, then their negations; appends their impression items to ``impr``."""
    pleura: list[str] = []
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
        _setl(labels, "Pleural Effusion", f.certain)
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
        _setl(labels, "Pneumothorax", f.certain)
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
    return pleura


def _heart_findings(rt: np.random.Generator, view: str, fs: dict[str, _Finding], labels: dict,
                    impr: list[_Item]) -> list[str]:
    """Cardiomegaly and mediastinal widening sentences; appends their impression items to ``impr``."""
    heart: list[str] = []
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
        _setl(labels, "Cardiomegaly", f.certain)
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
        _setl(labels, "Enlarged Cardiomediastinum", f.certain)
        heart.append(_fill(s, f.phrase))
        impr.append((3, _fill(imp, f.phrase), f.kind))
    return heart


def _heart_negations(rt: np.random.Generator, fs: dict[str, _Finding], labels: dict) -> list[str]:
    """What the heart and mediastinum do not show: each sentence sets the labels it negates to 0."""
    r = rt.random()
    if "cardiomegaly" not in fs and "ecm" not in fs:
        if r < 0.5:
            labels["Cardiomegaly"] = labels["Enlarged Cardiomediastinum"] = 0
            return [_pick(rt, ["The cardiomediastinal silhouette is normal.", "Normal cardiomediastinal silhouette.",
                               "Heart size and mediastinal contours are within normal limits."])]
        if r < 0.85:
            labels["Cardiomegaly"] = 0
            return [_pick(rt, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size."])]
    elif "cardiomegaly" not in fs and r < 0.7:
        labels["Cardiomegaly"] = 0
        return [_pick(rt, ["Heart size is normal.", "The heart is normal in size."])]
    elif "ecm" not in fs and r < 0.5:
        labels["Enlarged Cardiomediastinum"] = 0
        return [_pick(rt, ["The mediastinal contours are normal.", "Mediastinal contours are unremarkable."])]
    return []


def _bones_text(ctx: _Ctx, labels: dict) -> list[str]:
    rt = ctx.rt
    bones: list[str] = []
    r = rt.random()
    if r < 0.25:
        bones.append(_pick(rt, ["No displaced rib fracture.", "No acute rib fracture."]))
        labels["Fracture"] = 0
    elif r < 0.55:
        bones.append(_pick(rt, ["No acute osseous abnormality.", "The visualized osseous structures are unremarkable."]))
    if ctx.age > 65 and rt.random() < 0.4:
        bones.append("Degenerative changes of the thoracic spine.")
    return bones


def _impression(rt: np.random.Generator, impr: list[_Item], devs: list[_Device]) -> str:
    """The impression: the items by priority (sometimes numbered), or a normal statement."""
    if impr:
        items = [t[1] for t in sorted(impr, key=lambda t: t[0])]
        if devs and rt.random() < 0.5:
            items.append("Support devices in standard position.")
        if len(items) > 1 and rt.random() < 0.5:
            return " ".join(f"{i + 1}. {s}" for i, s in enumerate(items))
        return " ".join(items)
    impression = _pick(rt, ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                            "No radiographic evidence of acute cardiopulmonary disease."])
    if devs and rt.random() < 0.6:
        impression = _pick(rt, ["Support devices in standard position. ", "Lines and tubes in expected position. "]) + impression
    return impression


def _chest_text(ctx: _Ctx, view: str, fs: dict[str, _Finding], devs: list[_Device], labels: dict,
                change: Callable[[list[_Item]], list[_Item]] | None = None) -> tuple[str, str]:
    """Findings and impression sentences; sets ``labels`` and each finding's box ``phrase``.

    ``change`` (longitudinal pairs only) rewrites the impression items ``[(priority, sentence, kind)]`` into
    comparison statements before they are joined; without it nothing differs from a single study."""
    rt = ctx.rt
    impr: list[_Item] = []
    dev_s = _devices_text(rt, devs, labels)
    lungs = _lungs_text(rt, fs, labels, impr)
    pleura = _pleura_text(rt, fs, labels, impr)
    heart = _heart_findings(rt, view, fs, labels, impr)
    heart += _heart_negations(rt, fs, labels)
    bones = _bones_text(ctx, labels)
    findings = " ".join(dev_s + lungs + pleura + heart + bones)
    if change is not None:
        impr = change(impr)
    return findings, _impression(rt, impr, devs)


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
