"""RadGraph F1: reward levels on hand-built entity graphs, pre-processing, and our inference of a tiny
random model in the official archive layout against outputs recorded from the radgraph package.

The EXPECTED_* annotations were produced by radgraph 0.1.18 (``RadGraph(model_type=...,
model_cache_dir=...)``, run under transformers 4.57 because 0.1.18 fails on transformers 5) on the
archives that ``save_tiny_radgraph`` builds below (numpy-seeded weights). Each entity is
(start word, end word, label index into RADGRAPH_NER_LABELS[, relations as "<first letter of the
relation><target entity id> ..."]).
"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch

from mxr0.eval.reports import MissingWeightsError, RadGraph, RadGraphStats, evaluate_reports, rewards
from mxr0.eval.reports.radgraph import preprocess_report
from mxr0.eval.reports.testing import RADGRAPH_NER_LABELS, RADGRAPH_RELATION_LABELS, save_tiny_radgraph

TEXTS = [
    "No evidence of acute cardiopulmonary process. Moderate hiatal hernia.",
    "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "Left lower lobe opacity, likely atelectasis (or pneumonia); right-sided effusion 5.5 cm.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis. No pneumothorax.",
    "Endotracheal tube terminates 3 cm above the carina. Nasogastric tube in the stomach. Interval removal of the "
    "right internal jugular central venous catheter. Moderate pulmonary edema, increased from prior. Bilateral "
    "pleural effusions.",
    "",
    "x",
    "LUNGS ARE CLEAR. NO EFFUSION.",
]
EXPECTED_XL = [
    [(0, 0, 3), (0, 1, 3), (0, 2, 3), (0, 3, 3), (1, 3, 3), (1, 4, 3), (2, 4, 3), (3, 6, 3), (4, 4, 3),
     (4, 6, 3), (6, 7, 2), (6, 9, 1), (7, 9, 3), (7, 10, 3), (8, 10, 1)],
    [(3, 5, 4), (3, 6, 4, "s2"), (4, 6, 4), (9, 12, 2), (11, 12, 2), (12, 14, 1)],
    [(0, 1, 3), (0, 2, 3, "m5"), (0, 3, 4), (1, 3, 4), (1, 4, 4), (2, 2, 2, "m5"), (3, 4, 4), (3, 5, 3, "m5"),
     (3, 6, 4), (5, 6, 4), (5, 8, 4), (6, 6, 4), (6, 7, 4), (6, 8, 4), (7, 8, 4), (9, 10, 4), (12, 14, 4),
     (13, 14, 4), (13, 16, 4), (15, 16, 4)],
    [(0, 2, 3), (0, 3, 3), (1, 3, 3), (1, 4, 3, "m4"), (3, 5, 4), (3, 6, 3), (5, 6, 3), (6, 6, 2), (6, 7, 2),
     (7, 9, 3), (8, 10, 4), (8, 11, 4), (9, 11, 3), (9, 12, 4), (10, 13, 3), (11, 13, 3), (12, 13, 3),
     (13, 13, 2)],
    [(0, 2, 4), (0, 3, 4), (1, 3, 4), (1, 4, 4), (4, 6, 4), (12, 15, 4), (15, 18, 4)],
    [],
    [],
    [(0, 0, 2), (0, 1, 2), (1, 3, 3), (3, 3, 2), (3, 4, 2), (4, 6, 3)],
]
EXPECTED_V1 = [
    [(2, 3, 4), (3, 6, 3), (4, 7, 3)],
    [(1, 3, 4), (2, 5, 3), (4, 5, 4), (4, 6, 4)],
    [(6, 9, 3), (7, 10, 2), (10, 13, 2), (11, 14, 2), (12, 15, 2), (13, 16, 3)],
    [(0, 0, 1, "s1 s19 s28 l29 s31 l32 s33"), (0, 1, 1), (0, 2, 1), (1, 1, 1), (1, 2, 1), (1, 3, 1), (2, 2, 1),
     (2, 3, 1), (2, 4, 1), (3, 3, 1), (3, 4, 1), (3, 5, 1), (4, 4, 1), (4, 5, 1), (4, 6, 1), (5, 5, 1),
     (5, 6, 1), (5, 7, 1), (6, 6, 1, "s1 s19 s28 l29 s31 l32 s33"), (6, 7, 1), (6, 8, 1), (8, 8, 1), (8, 9, 1),
     (8, 10, 1), (9, 9, 1), (9, 10, 1), (9, 11, 1), (11, 11, 1, "s1 s19 s28 l29 s31 l32 s33"),
     (11, 12, 1, "s1 s19 s28 s29 s31 s32 s33"), (11, 13, 1), (12, 12, 1, "s1 s19 s28 l29 s31 l32 s33"),
     (12, 13, 1, "s1 s19 s28 s29 s31 s32 s33"), (13, 13, 1, "s1 s19 s28 l29 s31 l32 s33")],
    [(34, 37, 3)],
    [],
    [],
    [(1, 1, 1, "l1")],
]
# F1RadGraph(reward_level="all") of radgraph 0.1.18 on (hyps, refs) = (TEXTS rotated by one with the third
# upper-cased, TEXTS): mean (simple, partial, complete); 0.1.18 compares entity tokens case-sensitively.
F1_REF_XL = (0.13125, 0.13125, 0.15)
F1_REF_V1 = (0.125, 0.125, 0.125)


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    base = tmp_path_factory.mktemp("radgraph")
    return {"radgraph-xl": save_tiny_radgraph(base / "xl", dataset="radgraph-xl", seed=0),
            "radgraph": save_tiny_radgraph(base / "v1", dataset="radgraph", seed=1)}


def _compact(ann):
    out = []
    for e in ann["entities"].values():
        rel = " ".join(r[0][0] + r[1] for r in e["relations"])
        lab = RADGRAPH_NER_LABELS.index(e["label"])
        out.append((e["start_ix"], e["end_ix"], lab, rel) if rel else (e["start_ix"], e["end_ix"], lab))
    return out


# ---------------------------------------------------------------------------------------------
def _ann(*entities):
    """entities: (tokens, label, [(relation, target index 1-based), ...])"""
    return {"entities": {str(i + 1): {"tokens": t, "label": lab, "relations": [[r, str(j)] for r, j in rels]}
                         for i, (t, lab, rels) in enumerate(entities)}}


OBS, ANAT, ABS = "Observation::definitely present", "Anatomy::definitely present", "Observation::definitely absent"


def test_reward_levels_on_hand_built_graphs():
    ref = _ann(("effusion", OBS, [("located_at", 2)]), ("pleural", ANAT, []), ("pneumothorax", ABS, []))
    # identical graph
    assert rewards(ref, ref) == (1.0, 1.0, 1.0)
    # same entities, relation dropped: simple 1; partial loses the "has relation" flag of effusion
    hyp = _ann(("effusion", OBS, []), ("pleural", ANAT, []), ("pneumothorax", ABS, []))
    s, p, c = rewards(hyp, ref)
    assert s == 1.0
    assert p == pytest.approx(2 / 3)  # {(eff,OBS),(pleural),(ptx)} vs {(eff,OBS,True),(pleural),(ptx)}
    # complete: hyp {(eff,OBS),(pleural,ANAT),(ptx,ABS)}, ref {(eff,OBS,located_at,pleural),(pleural,ANAT),(ptx,ABS)}
    assert c == pytest.approx(2 / 3)
    # a wrong label and an extra entity
    hyp = _ann(("effusion", ABS, [("located_at", 2)]), ("pleural", ANAT, []), ("edema", OBS, []))
    s, p, c = rewards(hyp, ref)
    assert s == pytest.approx(1 / 3)  # only (pleural, ANAT) matches: P = R = 1/3
    assert p == pytest.approx(1 / 3)
    assert c == pytest.approx(1 / 3)
    # relation to a different target: complete differs, partial does not
    ref2 = _ann(("effusion", OBS, [("located_at", 2)]), ("pleural", ANAT, []), ("left", ANAT, []))
    hyp2 = _ann(("effusion", OBS, [("located_at", 3)]), ("pleural", ANAT, []), ("left", ANAT, []))
    s, p, c = rewards(hyp2, ref2)
    assert (s, p) == (1.0, 1.0) and c == pytest.approx(2 / 3)


def test_case_insensitive_entities_and_empty_graphs():
    ref = _ann(("Effusion", OBS, [("located_at", 2)]), ("Pleural", ANAT, []))
    hyp = _ann(("effusion", OBS, [("located_at", 2)]), ("pleural", ANAT, []))
    assert rewards(hyp, ref) == (1.0, 1.0, 1.0)
    s, p, c = rewards(hyp, ref, case_insensitive=False)  # radgraph 0.1.18: relation tuples only lower-cased
    assert s == 0.0 and p == 0.0 and c == pytest.approx(0.5)
    empty = {"entities": {}}
    assert rewards(empty, ref) == (0.0, 0.0, 0.0) and rewards(ref, empty) == (0.0, 0.0, 0.0)
    assert rewards(empty, empty) == (0.0, 0.0, 0.0)  # not 1: the reference scores empty graphs 0


def test_empty_report_strings_score_zero_and_count_in_the_mean():
    g = _ann(("effusion", OBS, []))
    st = RadGraphStats(["", "effusion", "effusion"], ["effusion", "", "effusion"], [g, g, g], [g, g, g])
    assert st.per_pair.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert st.value() == {"radgraph_f1_rg_e": pytest.approx(1 / 3), "radgraph_f1_rg_er": pytest.approx(1 / 3),
                          "radgraph_f1_complete": pytest.approx(1 / 3)}


def test_preprocessing_matches_the_radgraph_package():
    # outputs of radgraph.utils.preprocess_reports (0.1.18)
    t1 = "Left lower lobe opacity, likely atelectasis (or pneumonia); right-sided effusion 5.5 cm."
    t2 = 'ET tube 3cm above carina/SVC: stable. 50%. "quoted" x-ray\\n(2/3).'
    t3 = "No pneumothorax).  Hyperinflation%, stable%)."
    assert preprocess_report(t1, "radgraph") == ["Left", "lower", "lobe", "opacity", ",", "likely", "atelectasis",
                                                 "(", "or", "pneumonia", ")", ";", "right-sided", "effusion", "5",
                                                 ".", "5", "cm", "."]
    assert preprocess_report(t2, "radgraph") == ["ET", "tube", "3cm", "above", "carina", "/", "SVC", ":", "stable",
                                                 ".", "50%", ".", '"quoted"', "x-ray\\n", "(", "2", "/", "3", ")",
                                                 "."]
    assert preprocess_report(t1, "radgraph-xl") == ["Left", "lower", "lobe", "opacity", ",", "likely",
                                                    "atelectasis", "(", "or", "pneumonia", ");", "right", "-",
                                                    "sided", "effusion", "5", ".", "5", "cm", "."]
    assert preprocess_report(t2, "radgraph-xl") == ["ET", "tube", "3cm", "above", "carina", "/", "SVC", ":",
                                                    "stable", ".", "50", "%", ".", '"', "quoted", '"', "x", "-",
                                                    "ray", "(", "2", "/", "3", ")", "."]
    assert preprocess_report(t3, "modern-radgraph-xl") == ["No", "pneumothorax", ")", ".", "Hyperinflation", "%",
                                                           ",", "stable", "%", ")", "."]


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,expected", [("radgraph-xl", EXPECTED_XL), ("radgraph", EXPECTED_V1)])
def test_inference_matches_the_radgraph_package(archives, kind, expected):
    rg = RadGraph.load(archives[kind])
    assert rg.model_type == kind
    for bs in (1, 5):  # batching (and the folding of the long report into 16-token segments) changes nothing
        anns = rg.annotate(TEXTS, batch_size=bs)
        assert [_compact(a) for a in anns] == [list(e) for e in expected]
    assert anns[5]["text"] == "None"  # the package's stand-in for an empty report


@pytest.mark.parametrize("kind,expected", [("radgraph-xl", F1_REF_XL), ("radgraph", F1_REF_V1)])
def test_f1_matches_radgraph_0_1_18_when_case_sensitive(archives, kind, expected):
    rg = RadGraph.load(archives[kind])
    refs = list(TEXTS)
    hyps = TEXTS[1:] + TEXTS[:1]
    hyps[2] = TEXTS[2].upper()
    hyps[3] = TEXTS[3]
    anns = rg.annotate(hyps + refs)
    st = RadGraphStats(hyps, refs, anns[:8], anns[8:], case_insensitive=False)
    assert tuple(st.value().values()) == pytest.approx(expected, abs=1e-12)
    st_ci = RadGraphStats(hyps, refs, anns[:8], anns[8:])
    assert st_ci.per_pair[2].sum() > st.per_pair[2].sum()  # the upper-cased copy now matches its reference


def test_archive_and_hub_named_transformer(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # where the archive is extracted
    md = save_tiny_radgraph(tmp_path / "m", dataset="radgraph-xl", transformer_name="example-org/tiny-bert-hub-id")
    with tarfile.open(tmp_path / "radgraph-xl.tar.gz", "w:gz") as tar:
        for p in md.iterdir():
            tar.add(p, arcname=p.name)
    rg_dir = RadGraph.load(md)  # config names a Hub id: the transformer/ folder beside the weights is used
    rg_tar = RadGraph.load(tmp_path / "radgraph-xl.tar.gz")
    a, b = rg_dir.annotate(TEXTS[:4]), rg_tar.annotate(TEXTS[:4])
    assert a == b and sum(len(x["entities"]) for x in a) > 0
    assert list((tmp_path / "xdg" / "mxr0" / "radgraph").iterdir())


def test_missing_model_and_missing_transformer_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MXR0_RADGRAPH_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(MissingWeightsError) as e:
        RadGraph.load(tmp_path / "nowhere")
    for needle in ("radgraph-xl.tar.gz", "StanfordAIMI/RRG_scorers", "--radgraph-model", "MXR0_RADGRAPH_MODEL",
                   "--skip-missing"):
        assert needle in str(e.value)
    md = save_tiny_radgraph(tmp_path / "m", dataset="radgraph", transformer_name="example-org/not-cached")
    for p in (md / "transformer").iterdir():
        p.unlink()
    (md / "transformer").rmdir()
    with pytest.raises(MissingWeightsError, match="example-org/not-cached"):
        RadGraph.load(md)


@pytest.mark.real_data
def test_evaluate_reports_radgraph_end_to_end(archives, shared_data):
    rows = [json.loads(line) for line in open(shared_data / "iu_xray" / "iu_studies.jsonl")][:60]
    refs = {str(r["uid"]): r.get("impression") or "" for r in rows}
    rng = np.random.default_rng(0)
    keys = list(refs)
    preds = {k: refs[keys[rng.integers(len(keys))]] if i % 3 else refs[k] for i, k in enumerate(keys)}
    res = evaluate_reports(preds, refs, metrics="radgraph", bootstrap=50, radgraph_model=archives["radgraph-xl"])
    rg = RadGraph.load(archives["radgraph-xl"])
    p, r = list(preds.values()), list(refs.values())
    anns = rg.annotate(p + r)
    direct = RadGraphStats(p, r, anns[:len(p)], anns[len(p):]).value()
    for k, v in direct.items():
        assert res["metrics"][k]["value"] == pytest.approx(v)
        assert res["metrics"][k]["ci_low"] <= res["metrics"][k]["median"] <= res["metrics"][k]["ci_high"]
    assert "RG_E" in res["conventions"]["radgraph"] and RADGRAPH_RELATION_LABELS[0] == "modify"
