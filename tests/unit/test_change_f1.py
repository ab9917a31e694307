"""Change statements (new / unchanged / resolved / worse / better) read by the rule-based labeller, the
per-finding change F1, and their agreement with the phantom's longitudinal pairs."""

from __future__ import annotations

import pytest

from mxr0.eval.reports.rules import CHANGE_LABELS, CHANGE_STATUSES, change_f1, change_report, label_report


def said(text: str) -> dict:
    return {k: v for k, v in change_report(text).items() if v is not None}


@pytest.mark.parametrize("text, expected", [
    ("New small left pleural effusion.", {"Pleural Effusion": "new"}),
    ("Interval development of right basilar atelectasis.", {"Atelectasis": "new"}),
    ("Cardiomegaly, new since the prior study.", {"Cardiomegaly": "new"}),
    ("Stable moderate cardiomegaly.", {"Cardiomegaly": "unchanged"}),
    ("Moderate left pneumothorax, not significantly changed.", {"Pneumothorax": "unchanged"}),
    ("Heart size remains enlarged.", {"Cardiomegaly": "unchanged"}),
    ("No change in the small right pleural effusion.", {"Pleural Effusion": "unchanged"}),
    ("Interval resolution of the right basal opacity.", {"Lung Opacity": "resolved"}),
    ("The previously seen left pleural effusion has resolved.", {"Pleural Effusion": "resolved"}),
    ("The pneumothorax seen on the prior study is no longer present.", {"Pneumothorax": "resolved"}),
    ("Increased large right pleural effusion, previously moderate.", {"Pleural Effusion": "worse"}),
    ("Moderate interstitial pulmonary edema, increased since the prior study.", {"Edema": "worse"}),
    ("Worsening left lower lobe atelectasis.", {"Atelectasis": "worse"}),
    ("Decreased mild pulmonary edema, previously moderate.", {"Edema": "better"}),
    ("Improving right upper lobe consolidation.", {"Consolidation": "better", "Lung Opacity": "better"}),
    ("New left effusion and stable cardiomegaly.", {"Pleural Effusion": "new", "Cardiomegaly": "unchanged"}),
    ("Stable cardiomegaly and new left effusion.", {"Pleural Effusion": "new", "Cardiomegaly": "unchanged"}),
    ("No new consolidation.", {}),  # a negated mention states no change
    ("There is a small left pleural effusion. Heart size is normal.", {}),  # no comparison
    ("", {}),
])
def test_change_statements(text, expected):
    assert said(text) == expected


def test_change_reading_leaves_the_finding_labels_alone():
    # the CheXpert-style labels of a comparison report are those of the current study
    lab = label_report("Interval resolution of the right basal opacity. New small left pleural effusion.")
    assert lab["Lung Opacity"] == 0 and lab["Pleural Effusion"] == 1


def test_change_f1_definition():
    refs = ["New small left pleural effusion. Stable cardiomegaly.",
            "Interval resolution of the right basal opacity.",
            "Increased moderate right pleural effusion, previously small."]
    assert change_f1(refs, refs)["change_f1_micro"] == 1.0
    preds = ["New small left pleural effusion. Increased cardiomegaly.",  # 1 TP (new), cardiomegaly wrong status
             "The right basal opacity is unchanged.",                     # resolved missed, unchanged false
             "Moderate right pleural effusion."]                          # no statement: worse missed
    m = change_f1(preds, refs)
    ps = m["per_status"]
    assert ps["new"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "support": 1}
    assert ps["unchanged"]["support"] == 1 and ps["unchanged"]["f1"] == 0.0      # cardiomegaly: said worse
    assert ps["resolved"]["recall"] == 0.0 and ps["worse"]["precision"] == 0.0
    # TP 1; FP: worse (cardiomegaly), unchanged (opacity) = 2; FN: unchanged, resolved, worse = 3
    assert m["change_f1_micro"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 3))
    assert m["change_f1_macro"] == pytest.approx((1.0 + 0 + 0 + 0) / 4)  # "better" has no reference support
    assert m["n_statements"] == 4 and m["n"] == 3 and "change F1" in m["convention"]
    # dicts are accepted; a bad status is an error naming it
    d = {n: None for n in CHANGE_LABELS}
    assert change_f1([d], [{**d, "Edema": "new"}])["change_f1_micro"] == 0.0
    with pytest.raises(ValueError, match="status 'gone' of Edema"):
        change_f1([{**d, "Edema": "gone"}], [d])
    with pytest.raises(ValueError, match="same length"):
        change_f1(refs, refs[:1])


def test_phantom_pairs_report_what_was_drawn(monkeypatch):
    """The labeller reads exactly the phantom's drawn changes from its pair reports (400 pairs, every status)."""
    import mxr0.data.phantom as P
    from mxr0.data.phantom.chest_findings import _KIND_LABEL
    from mxr0.data.phantom.pairs import _Pair

    assert P.CHANGE_STATUSES == CHANGE_STATUSES
    got: dict = {}
    orig = _Pair.rewrite

    def rewrite(self, impr, fs):
        out = orig(self, impr, fs)
        got.update(status=dict(self.status), prior=self.prior, fs=fs)
        return out

    monkeypatch.setattr(_Pair, "rewrite", rewrite)
    seen = set()
    for i in range(400):
        got.clear()
        rec, _, _ = P.draw_study(i, "chest", image_size=32, seed=5, prior_fraction=1.0)
        truth = {}
        for kind, st in got["status"].items():
            f = (got["prior"] if st == "resolved" else got["fs"])[kind]
            if st != "resolved" and not f.certain:
                continue
            truth[_KIND_LABEL[kind]] = st
            if kind == "opacity" and f.prm["dense"]:
                truth["Consolidation"] = st
            seen.add(st)
        assert said(rec["impression"]) == truth, (i, rec["impression"])
    assert seen == set(CHANGE_STATUSES)


def test_change_metric_in_eval_reports_with_intervals_and_paired_test(tmp_path, capsys):
    import json

    from mxr0.eval.reports import evaluate_reports, parse_metrics
    from mxr0.eval.reports.cli import main

    assert "change" not in parse_metrics("all") and parse_metrics("change") == ["change"]
    refs = {f"s{i}": t for i, t in enumerate(["New small left pleural effusion. Stable cardiomegaly.",
                                                "Interval resolution of the right basal opacity.",
                                                "Increased moderate right pleural effusion, previously small."] * 4)}
    good = dict(refs)
    bad = {k: "Stable cardiomegaly." for k in refs}
    res = evaluate_reports(bad, refs, metrics="change", bootstrap=200, compare=good, trials=500)
    direct = change_f1(list(bad.values()), list(refs.values()))
    row = res["metrics"]["change_f1_micro"]
    assert row["value"] == pytest.approx(direct["change_f1_micro"]) and row["ci_low"] <= row["value"] <= row["ci_high"]
    assert res["metrics"]["change_f1_macro"]["value"] == pytest.approx(direct["change_f1_macro"])
    assert res["per_label"]["change"] == direct["per_status"] and "change F1" in res["conventions"]["change"]
    cmp = res["comparison"]["results"]["change_f1_micro"]
    assert cmp["b"] == 1.0 and cmp["delta"] > 0 and cmp["p_value"] < 0.05
    # the command line
    for name, d in (("p.json", bad), ("r.json", refs)):
        (tmp_path / name).write_text(json.dumps(d))
    assert main(["--pred", str(tmp_path / "p.json"), "--ref", str(tmp_path / "r.json"), "--metrics", "change",
                 "--bootstrap", "50"]) == 0
    assert "change F1 micro (rule-based, per finding)" in capsys.readouterr().out
