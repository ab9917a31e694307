"""CheXbert: label conventions, F1 arithmetic against sklearn as f1chexbert computes it, loading the
official checkpoint layout, batched = one-report-per-pass inference, missing-weights errors."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mxr0.eval.reports import CheXbert, MissingWeightsError, evaluate_reports
from mxr0.eval.reports.chexbert import (CONDITIONS, TOP5, TOP5_INDEX, CheXbertStats, binarize, classes_to_chexpert,
                                        encode_report)
from mxr0.eval.reports.testing import SAMPLE_REPORTS, save_tiny_chexbert


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread start-up costs more than the work on a shared 2-core VM
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_chexbert(tmp_path_factory.mktemp("chexbert"))


def test_label_order_and_chexpert_five():
    assert CONDITIONS[0] == "Enlarged Cardiomediastinum" and CONDITIONS[-1] == "No Finding" and len(CONDITIONS) == 14
    assert [CONDITIONS[i] for i in TOP5_INDEX] == sorted(TOP5, key=CONDITIONS.index)
    assert set(TOP5) == {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}


def test_class_mapping_follows_chexbert_label_py():
    # head classes: 0 blank, 1 positive, 2 negative, 3 uncertain -> CheXpert: NaN, 1, 0, -1
    out = classes_to_chexpert(np.array([[0, 1, 2, 3]]))
    assert np.isnan(out[0, 0]) and out[0, 1:].tolist() == [1.0, 0.0, -1.0]
    c = np.array([0, 1, 2, 3])
    assert binarize(c, "positive").tolist() == [False, True, False, True]  # f1chexbert "rrg"
    assert binarize(c, "negative").tolist() == [False, True, False, False]  # LLaVA-Rad / MAIRA-2
    with pytest.raises(ValueError):
        binarize(c, "ignore")


@pytest.mark.parametrize("uncertain", ["positive", "negative"])
def test_f1_arithmetic_matches_sklearn_as_f1chexbert_computes_it(uncertain):
    from sklearn.metrics import classification_report

    rng = np.random.default_rng(0)
    for trial in range(4):
        h, r = rng.integers(0, 4, (60, 14)), rng.integers(0, 4, (60, 14))
        h[:, 13], r[:, 13] = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
        h[:, 2] = r[:, 2] = 0  # an observation positive nowhere: F1 0 by zero_division, still in the macro mean
        h[:, 4] = 2            # never predicted positive
        if trial == 3:
            r[:, 6] = 1        # always positive in the references
        yt, yp = binarize(r, uncertain).astype(int), binarize(h, uncertain).astype(int)
        idx = list(TOP5_INDEX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cr = classification_report(yt.tolist(), yp.tolist(), target_names=list(CONDITIONS), output_dict=True)
            cr5 = classification_report(yt[:, idx].tolist(), yp[:, idx].tolist(), output_dict=True)
        got = CheXbertStats(h, r, uncertain).value()
        assert got["chexbert_f1_14_micro"] == pytest.approx(cr["micro avg"]["f1-score"], abs=1e-12)
        assert got["chexbert_f1_14_macro"] == pytest.approx(cr["macro avg"]["f1-score"], abs=1e-12)
        assert got["chexbert_f1_5_micro"] == pytest.approx(cr5["micro avg"]["f1-score"], abs=1e-12)
        assert got["chexbert_f1_5_macro"] == pytest.approx(cr5["macro avg"]["f1-score"], abs=1e-12)
        per = CheXbertStats(h, r, uncertain).per_label()
        for c in CONDITIONS:
            assert per[c]["f1"] == pytest.approx(cr[c]["f1-score"], abs=1e-12)
            assert per[c]["support"] == cr[c]["support"]


def test_encoding_like_f1chexbert(tiny):
    cx = CheXbert.load(tiny)
    tok = cx.tokenizer
    assert encode_report("", tok) == [tok.cls_token_id, tok.sep_token_id]
    assert encode_report("  \n ", tok) == [tok.cls_token_id, tok.sep_token_id]
    a = encode_report("  No  effusion.\nClear   lungs. ", tok)
    assert a == encode_report("No effusion. Clear lungs.", tok)
    long = encode_report("effusion " * 700, tok)
    assert len(long) == 512 and long[-1] == tok.sep_token_id and long[0] == tok.cls_token_id


def _iu_texts(n: int) -> list[str]:
    root = Path(os.environ.get("MXR0_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    f = root / "iu_xray" / "iu_studies.jsonl"
    if not f.is_file():  # the check still runs on the sample reports without ../shared/data
        return []
    return [json.loads(line).get("findings") or "" for line in f.open()][:n]


def test_official_checkpoint_layout_loads_and_batched_equals_one_by_one(tiny):
    raw = torch.load(tiny / "chexbert.pth", map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw["model_state_dict"])  # DataParallel layout
    cx = CheXbert.load(tiny / "chexbert.pth")  # the file, the vocab found beside it
    texts = _iu_texts(150) + list(SAMPLE_REPORTS) * 3 + ["", "word " * 600]
    batched = cx.label(texts, batch_size=16)
    single = cx.label(texts, batch_size=1, sort_by_length=False, dedupe=False)
    np.testing.assert_array_equal(batched, single)
    assert batched.shape == (len(texts), 14) and batched.dtype == np.int8
    assert len(np.unique(batched[:, 0])) > 1  # the tiny model does not label everything alike
    assert set(np.unique(batched[:, 13])) <= {0, 1}


def test_checkpoint_must_match_the_labeler(tiny, tmp_path):
    raw = torch.load(tiny / "chexbert.pth", map_location="cpu", weights_only=True)
    del raw["model_state_dict"]["module.linear_heads.5.bias"]
    (tmp_path / "vocab.txt").write_text((tiny / "vocab.txt").read_text())
    (tmp_path / "config.json").write_text((tiny / "config.json").read_text())
    torch.save(raw, tmp_path / "chexbert.pth")
    with pytest.raises(ValueError, match="linear_heads.5.bias"):
        CheXbert.load(tmp_path)


def test_missing_weights_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("MXR0_CHEXBERT_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(MissingWeightsError) as e:
        CheXbert.load(tmp_path / "nowhere")
    msg = str(e.value)
    for needle in ("chexbert.pth", "StanfordAIMI/RRG_scorers", "--chexbert-weights", "MXR0_CHEXBERT_WEIGHTS",
                   "--skip-missing", str(tmp_path / "nowhere")):
        assert needle in msg
    assert e.value.metric == "chexbert"


def test_environment_variable_points_to_the_weights(tiny, monkeypatch):
    monkeypatch.setenv("MXR0_CHEXBERT_WEIGHTS", str(tiny))
    assert CheXbert.load().model is not None


def test_evaluate_reports_uncertain_convention_changes_the_numbers(tiny):
    refs = list(SAMPLE_REPORTS) * 3
    hyps = list(reversed(SAMPLE_REPORTS)) * 3
    pos = evaluate_reports(hyps, refs, metrics="chexbert", bootstrap=0, chexbert_weights=tiny, uncertain="positive")
    neg = evaluate_reports(hyps, refs, metrics="chexbert", bootstrap=0, chexbert_weights=tiny, uncertain="negative")
    cx = CheXbert.load(tiny)
    cls = cx.label(refs + hyps)
    n = len(refs)
    for res, unc in ((pos, "positive"), (neg, "negative")):
        direct = CheXbertStats(cls[n:], cls[:n], unc).value()
        for k, v in direct.items():
            assert res["metrics"][k]["value"] == pytest.approx(v)
        assert f"uncertain counted as {unc}" in res["conventions"]["chexbert"]
    if (cls == 3).any():
        assert pos["metrics"] != neg["metrics"]


def test_length_batches_bound_padding_and_cover_every_report():
    from mxr0.eval.reports.batching import length_batches

    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, 60, 300), rng.integers(100, 512, 20)])
    batches = length_batches(lengths, 32, max_padding=0.1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert max(len(b) for b in batches) == 32
    for b in batches:
        real = lengths[b].sum()
        assert lengths[b].max() * len(b) <= 1.1 * real or len(b) == 1
    fixed = length_batches(lengths, 7, sort=False)
    assert [len(b) for b in fixed[:-1]] == [7] * (len(fixed) - 1) and fixed[0].tolist() == list(range(7))
