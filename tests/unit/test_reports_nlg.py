"""BLEU / CIDEr-D / ROUGE-L against pycocoevalcap and rouge_score (test-only dependencies), including
corpus values recomputed on bootstrap resamples."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mxr0.eval.reports import nlg, ptb

coco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
coco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
coco_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")

SYNTHETIC = [  # (prediction, reference)
    ("No acute cardiopulmonary abnormality.", "No acute cardiopulmonary abnormality."),
    ("The heart is normal in size. No pleural effusion.", "Heart size is normal. No effusion or pneumothorax."),
    ("", "Small left pleural effusion."),
    ("Mild cardiomegaly (stable), no edema.", ""),
    ("...", "Clear lungs."),
    ("Right lower lobe opacity, likely atelectasis; pneumonia not excluded.",
     "Right lower lobe consolidation concerning for pneumonia."),
    ("ET tube 5 cm above the carina. NG tube in the stomach.", "Endotracheal tube 3.5 cm above the carina."),
    ("Lungs are clear. Lungs are clear. Lungs are clear.", "The lungs are clear bilaterally."),
    ("Stable T12 compression deformity; s/p CABG.", "Stable mild T12 compression deformity. Status post CABG."),
    ("", ""),
]


def _coco(hyp_tok, ref_tok):
    gts = {i: [r] for i, r in enumerate(ref_tok)}
    res = {i: [h] for i, h in enumerate(hyp_tok)}
    bleu, _ = coco_bleu.Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_pp = coco_cider.Cider().compute_score(gts, res)
    rouge, rouge_pp = coco_rouge.Rouge().compute_score(gts, res)
    return bleu, cider, cider_pp, rouge, rouge_pp


def _ours(hyps, refs):
    st = nlg.nlg_stats(hyps, refs, ("bleu", "rouge_l", "cider_d"))
    vals = {}
    for s in st.values():
        vals.update(s.value())
    return st, vals


def _check_parity(hyps, refs):
    th, tr = ptb.tokenize_corpus(hyps), ptb.tokenize_corpus(refs)
    bleu, cider, cider_pp, rouge, rouge_pp = _coco(th, tr)
    st, v = _ours(hyps, refs)
    assert [v[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(bleu, rel=1e-12, abs=1e-15)
    assert v["cider_d"] == pytest.approx(cider, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(st["cider_d"].per_pair, cider_pp, rtol=1e-12, atol=1e-15)
    assert v["rouge_l"] == pytest.approx(rouge, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(st["rouge_l"].per_pair, rouge_pp, rtol=1e-12, atol=1e-15)


def test_lcs_matches_dynamic_programming():
    rng = random.Random(0)

    def dp(a, b):
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
        return t[-1][-1]

    for _ in range(400):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 70))]
        assert nlg.lcs_length(a, b) == dp(a, b)


def test_parity_with_pycocoevalcap_on_synthetic_pairs():
    hyps, refs = zip(*SYNTHETIC)
    _check_parity(list(hyps), list(refs))


def test_empty_pair_conventions_of_pycocoevalcap():
    # pycocoevalcap's ROUGE-L splits on " ": two empty texts are one identical empty token each
    st, v = _ours(["", "a b"], ["", "c d"])
    assert st["rouge_l"].per_pair.tolist() == [1.0, 0.0]


@pytest.mark.real_data
def test_parity_with_pycocoevalcap_on_iu_xray_pairs(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "iu_xray" / "iu_studies.jsonl")]
    reports = [f"{r.get('findings') or ''} {r.get('impression') or ''}".strip() for r in rows]
    rng = random.Random(1)
    refs = reports[:1500]
    hyps = [rng.choice(reports) if rng.random() < 0.7 else r for r in refs]
    _check_parity(hyps, refs)


@pytest.mark.real_data
@pytest.mark.parametrize("stem", [False, True])
def test_parity_with_rouge_score(stem, shared_data):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    r2gen = json.loads((shared_data / "iu_xray" / "r2gen_annotation.json").read_text())["test"]
    refs = [x["report"] for x in r2gen] + [r for _, r in SYNTHETIC]
    rng = random.Random(2)
    hyps = [rng.choice(refs) for _ in r2gen] + [h for h, _ in SYNTHETIC]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)
    theirs = np.array([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)])
    st = nlg.RougeScoreLStats(hyps, refs, use_stemmer=stem)
    np.testing.assert_allclose(st.per_pair, theirs, rtol=1e-12, atol=1e-15)
    assert st.value()["rouge_l_f1"] == pytest.approx(theirs.mean(), rel=1e-12)


def test_resampled_corpus_values_equal_pycocoevalcap_on_the_resampled_list():
    """A bootstrap resample must give what pycocoevalcap reports on the resampled list itself:
    BLEU's brevity penalty on resampled totals, CIDEr-D's document frequencies and N recomputed."""
    hyps, refs = map(list, zip(*SYNTHETIC))
    th, tr = ptb.tokenize_corpus(hyps), ptb.tokenize_corpus(refs)
    st, _ = _ours(hyps, refs)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, len(hyps), len(hyps))
        w = np.bincount(idx, minlength=len(hyps)).astype(float)[None]
        bleu, cider, _, rouge, _ = _coco([th[i] for i in idx], [tr[i] for i in idx])
        assert st["bleu"].resample_values(w)[0] == pytest.approx(bleu, rel=1e-12, abs=1e-15)
        assert st["cider_d"].resample_values(w)[0, 0] == pytest.approx(cider, rel=1e-12, abs=1e-15)
        assert st["rouge_l"].resample_values(w)[0, 0] == pytest.approx(rouge, rel=1e-12)


def test_meteor_is_documented_as_absent():
    assert "Java" in nlg.METEOR_NOTE and "not computed" in nlg.METEOR_NOTE
    assert nlg.NLG_CONVENTIONS["meteor"] == nlg.METEOR_NOTE
