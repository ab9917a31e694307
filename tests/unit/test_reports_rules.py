"""Rule-based CheXpert-style labeler and finding-level F1 (mxr0.eval.reports.rules)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxr0.data.records import CHEXPERT_LABELS
from mxr0.eval.reports.chexbert import NEGATIVE, POSITIVE, UNCERTAIN, CheXbertStats
from mxr0.eval.reports.rules import finding_f1, label_report, label_reports, majority_baseline_f1


def _nz(text: str) -> dict:
    return {k: v for k, v in label_report(text).items() if v is not None}


# ----------------------------------------------------------------------------------------------
# hand-written sentences
@pytest.mark.parametrize("text, expected", [
    # negation lists
    ("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    ("There is no pneumothorax or pleural effusion.", {"Pleural Effusion": 0, "Pneumothorax": 0}),
    ("No pleural effusion, consolidation, or pneumothorax.",
     {"Pleural Effusion": 0, "Pneumothorax": 0, "Consolidation": 0}),
    ("Cardiomegaly without pulmonary edema.", {"Cardiomegaly": 1, "Edema": 0}),
    ("Negative for fracture.", {"Fracture": 0}),
    ("Free of pneumothorax.", {"Pneumothorax": 0}),
    ("No evidence of pulmonary edema.", {"Edema": 0}),
    ("Pneumothorax has resolved.", {"Pneumothorax": 0}),
    ("No focal consolidation to suggest pneumonia.", {"Consolidation": 0, "Pneumonia": 0}),
    ("There is no focal consolidation but there is a small left effusion.",
     {"Consolidation": 0, "Pleural Effusion": 1}),
    ("No change in the large left pleural effusion.", {"Pleural Effusion": 1}),
    ("No acute fracture or dislocation.", {"Fracture": 0}),
    # hedging
    ("Possible left lower lobe pneumonia.", {"Pneumonia": -1}),
    ("Pneumothorax cannot be excluded.", {"Pneumothorax": -1}),
    ("A small right pleural effusion cannot be excluded.", {"Pleural Effusion": -1}),
    ("Questionable widening of the superior mediastinum, possibly related to technique.",
     {"Enlarged Cardiomediastinum": -1}),
    ("Suspicious for a right upper lobe mass.", {"Lung Lesion": -1}),
    ("Rule out pneumonia.", {"Pneumonia": -1}),
    ("Pneumonia has been ruled out.", {"Pneumonia": 0}),
    ("Perihilar haziness may represent mild pulmonary edema.", {"Edema": -1}),
    ("Linear density may represent bibasilar atelectasis.", {"Atelectasis": -1}),
    ("Right lower lobe opacity which may represent pneumonia.", {"Lung Opacity": 1, "Pneumonia": -1}),
    # laterality / sizes do not change the label
    ("Small left apical pneumothorax.", {"Pneumothorax": 1}),
    ("There are moderate bilateral pleural effusions.", {"Pleural Effusion": 1}),
    ("1.2 cm right upper lobe nodule.", {"Lung Lesion": 1}),
    ("Large mass in the left lower lobe.", {"Lung Lesion": 1}),
    ("Consolidation in the right lower lobe consistent with pneumonia.",
     {"Consolidation": 1, "Lung Opacity": 1, "Pneumonia": 1}),
    ("Moderate left basilar opacity.", {"Lung Opacity": 1}),
    ("Bibasilar opacification.", {"Lung Opacity": 1}),
    # heart / mediastinum
    ("The heart is enlarged.", {"Cardiomegaly": 1}),
    ("Mildly enlarged cardiac silhouette.", {"Cardiomegaly": 1}),
    ("Enlarged heart.", {"Cardiomegaly": 1}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("Normal heart size.", {"Cardiomegaly": 0}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0}),
    ("Heart size and mediastinal contours are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    ("Normal cardiomediastinal silhouette.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0}),
    ("Mediastinal contours are unremarkable.", {"Enlarged Cardiomediastinum": 0}),
    ("Mild pulmonary vascular congestion.", {"Edema": 1}),
    ("The lungs are clear.", {"Lung Opacity": 0, "Consolidation": 0}),
    ("Pericardial effusion.", {}),
    # devices (Support Devices does not block No Finding)
    ("Endotracheal tube terminates 2.9 cm above the carina.", {"Support Devices": 1}),
    ("The nasogastric tube tip is in the stomach.", {"Support Devices": 1}),
    ("An enteric tube is seen with its tip in the stomach.", {"Support Devices": 1}),
    ("Right IJ central line terminates in the SVC.", {"Support Devices": 1}),
    ("Left subclavian central venous catheter ends at the cavoatrial junction.", {"Support Devices": 1}),
    ("Dual-chamber pacemaker with leads terminating in the right heart.", {"Support Devices": 1}),
    ("Sternotomy wires are intact.", {"Support Devices": 1}),
    ("Lines and tubes in expected position.", {"Support Devices": 1}),
    ("A right pneumothorax is seen with a visible visceral pleural line.", {"Pneumothorax": 1}),
])
def test_sentences(text, expected):
    got = _nz(text)
    nf = got.pop("No Finding")
    assert got == expected, text
    path = any(v in (1, -1) for k, v in expected.items() if k != "Support Devices")
    assert nf == (0 if path else 1)


def test_no_finding_rule():
    assert label_report("No acute cardiopulmonary abnormality.")["No Finding"] == 1
    assert label_report("")["No Finding"] == 1
    assert label_report(None)["No Finding"] == 1
    # support devices alone keep No Finding 1; an uncertain pathology makes it 0
    lab = label_report("Endotracheal tube in place. No acute cardiopulmonary process.")
    assert lab["Support Devices"] == 1 and lab["No Finding"] == 1
    assert label_report("Possible small left pleural effusion.")["No Finding"] == 0
    assert label_report("No pneumothorax. Heart size is normal.")["No Finding"] == 1
    assert set(label_report("x")) == set(CHEXPERT_LABELS)


def test_precedence_and_hierarchy():
    # positive > uncertain > negative across mentions
    assert label_report("No effusion. Possible effusion.")["Pleural Effusion"] == -1
    assert label_report("Possible effusion. Small left effusion.")["Pleural Effusion"] == 1
    assert label_report("No right effusion. Small left effusion.")["Pleural Effusion"] == 1
    # consolidation implies lung opacity (with its certainty) unless hierarchy=False
    assert label_report("Possible right lower lobe consolidation.")["Lung Opacity"] == -1
    assert label_report("Left lower lobe consolidation.", hierarchy=False)["Lung Opacity"] is None
    # numbered impressions and decimals split correctly
    lab = label_report("1. Small right pneumothorax. 2. Tube tip 3.5 cm above the carina.")
    assert lab["Pneumothorax"] == 1 and lab["Support Devices"] == 1
    assert label_reports(["No effusion.", "Effusion.", "No effusion."])[2]["Pleural Effusion"] == 0


# ----------------------------------------------------------------------------------------------
# phantom agreement
def test_phantom_agreement(tmp_path):
    from mxr0.data.phantom import generate_phantom

    path = generate_phantom(str(tmp_path / "ph"), n_studies=400, image_size=32, seed=11, progress=False)
    recs = [json.loads(line) for line in open(path)]
    assert len(recs) == 400
    preds = label_reports([f"{r['findings'] or ''} {r['impression'] or ''}" for r in recs])
    agree = {}
    for n in CHEXPERT_LABELS:
        agree[n] = float(np.mean([p[n] == r["labels"][n] for p, r in zip(preds, recs)]))
    overall = float(np.mean(list(agree.values())))
    print("rules vs phantom labels: overall %.4f; " % overall + ", ".join(f"{k} {v:.3f}" for k, v in agree.items()))
    for n, a in agree.items():
        assert a >= 0.95, (n, a)
    # ground-truth labels as references: the labeler's F1 on the true reports is high, and clearly above
    # what a constant generator scores
    f1 = finding_f1(preds, [r["labels"] for r in recs], uncertain="negative")
    base = majority_baseline_f1([r["labels"] for r in recs], uncertain="negative")
    assert f1["rules_f1_14_micro"] >= 0.95 and f1["rules_f1_5_macro"] >= 0.9
    assert f1["rules_f1_14_macro"] > base["rules_f1_14_macro"] + 0.3
    f1p = finding_f1([f"{r['findings']} {r['impression']}" for r in recs], [r["labels"] for r in recs],
                     uncertain="positive")
    assert f1p["uncertain"] == "positive" and f1p["rules_f1_14_micro"] >= 0.95


# ----------------------------------------------------------------------------------------------
# F1 arithmetic
def _to_classes(dicts):
    m = {1: POSITIVE, 0: NEGATIVE, -1: UNCERTAIN, None: 0}
    return np.array([[m[d.get(n)] for n in CHEXPERT_LABELS] for d in dicts])


def test_finding_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    vals = [1, 0, -1, None]
    refs = [{n: vals[rng.integers(4)] for n in CHEXPERT_LABELS} for _ in range(23)]
    preds = [{n: vals[rng.integers(4)] for n in CHEXPERT_LABELS} for _ in range(23)]
    preds[0]["Pleural Other"] = 1  # make sure some label differs
    for r in refs:
        r["Fracture"] = 0  # a label positive nowhere in the references
    for p in preds:
        p["Fracture"] = 0
    top5 = [CHEXPERT_LABELS.index(c) for c in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                                                 "Pleural Effusion")]
    for unc in ("negative", "positive"):
        pos = (1, -1) if unc == "positive" else (1,)
        yt = np.array([[r[n] in pos for n in CHEXPERT_LABELS] for r in refs], dtype=int)
        yp = np.array([[p[n] in pos for n in CHEXPERT_LABELS] for p in preds], dtype=int)
        res = finding_f1(preds, refs, uncertain=unc)
        kw = dict(zero_division=0)
        assert res["rules_f1_14_micro"] == pytest.approx(f1_score(yt, yp, average="micro", **kw))
        assert res["rules_f1_14_macro"] == pytest.approx(f1_score(yt, yp, average="macro", **kw))
        assert res["rules_f1_5_micro"] == pytest.approx(f1_score(yt[:, top5], yp[:, top5], average="micro", **kw))
        assert res["rules_f1_5_macro"] == pytest.approx(f1_score(yt[:, top5], yp[:, top5], average="macro", **kw))
        per = f1_score(yt, yp, average=None, **kw)
        for i, n in enumerate(CHEXPERT_LABELS):
            assert res["per_label"][n]["f1"] == pytest.approx(per[i])
        assert res["per_label"]["Fracture"]["f1"] == 0.0
        # same numbers as the CheXbert F1 statistics
        cb = CheXbertStats(_to_classes(preds), _to_classes(refs), unc).value()
        for k in ("14_micro", "14_macro", "5_micro", "5_macro"):
            assert res[f"rules_f1_{k}"] == pytest.approx(cb[f"chexbert_f1_{k}"])
        assert res["uncertain"] == unc and unc in res["convention"]


def test_finding_f1_texts_and_errors():
    refs = ["Small left pleural effusion.", "No pleural effusion. Cardiomegaly.", "Possible pneumothorax."]
    preds = ["Left pleural effusion.", "Cardiomegaly. Small effusion.", "No pneumothorax."]
    res = finding_f1(preds, refs)
    assert res["per_label"]["Pleural Effusion"] == pytest.approx(
        {"f1": 2 / 3, "precision": 0.5, "recall": 1.0, "support": 1})
    assert res["per_label"]["Cardiomegaly"]["f1"] == 1.0
    assert res["per_label"]["Pneumothorax"]["support"] == 0  # uncertain reference counted negative
    assert finding_f1(preds, refs, uncertain="positive")["per_label"]["Pneumothorax"]["support"] == 1
    # mixed: label dicts as references
    assert finding_f1(preds, label_reports(refs)) == res
    with pytest.raises(ValueError):
        finding_f1(preds, refs[:2])
    with pytest.raises(ValueError):
        finding_f1(preds, refs, uncertain="ignore")


def test_majority_baseline():
    labels = ("Pleural Effusion", "Cardiomegaly")
    refs = [{"Pleural Effusion": 1, "Cardiomegaly": 0}, {"Pleural Effusion": 1, "Cardiomegaly": None},
            {"Pleural Effusion": 1, "Cardiomegaly": 1}, {"Pleural Effusion": 0, "Cardiomegaly": -1}]
    base = majority_baseline_f1(refs, labels=labels)
    # effusion: 3/4 positive -> constant positive: tp 3, fp 1 -> F1 6/7; cardiomegaly: 1/4 -> constant negative -> 0
    assert base["majority"] == {"Pleural Effusion": True, "Cardiomegaly": False}
    assert base["per_label"]["Pleural Effusion"]["f1"] == pytest.approx(6 / 7)
    assert base["per_label"]["Cardiomegaly"]["f1"] == 0.0
    assert base["rules_f1_14_macro"] == pytest.approx(3 / 7)
    assert base["rules_f1_14_micro"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert base["rules_f1_5_macro"] == pytest.approx(3 / 7)
    # uncertain="positive": cardiomegaly 2/4 is a tie -> negative
    assert majority_baseline_f1(refs, labels=labels, uncertain="positive")["majority"]["Cardiomegaly"] is False
