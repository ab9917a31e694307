"""Input pairing, the Python API, the command line and the offline ``evaluate`` modules."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mxr0.eval.reports import (MissingWeightsError, evaluate_reports, markdown_report, metric_path, pair_reports,
                               parse_metrics, read_reports)
from mxr0.eval.reports.cli import add_arguments, main
from mxr0.eval.reports.testing import SAMPLE_REPORTS, save_tiny_chexbert, save_tiny_radgraph

REFS = {f"s{i}": t for i, t in enumerate(SAMPLE_REPORTS)}
PREDS = {f"s{i}": SAMPLE_REPORTS[(i + 3) % len(SAMPLE_REPORTS)] if i % 2 else t for i, t in enumerate(SAMPLE_REPORTS)}


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    for var in ("MXR0_CHEXBERT_WEIGHTS", "MXR0_CHEXBERT_TOKENIZER", "MXR0_RADGRAPH_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    base = tmp_path_factory.mktemp("w")
    return {"chexbert": save_tiny_chexbert(base / "chexbert"), "radgraph": save_tiny_radgraph(base / "rg")}


# ---------------------------------------------------------------------------------------------
def test_read_reports_formats_and_keys(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"study_id": 1, "report": "x"}, {"study_id": "2", "findings": None},
                                  {"id": "3", "text": "z"}])
    assert read_reports(tmp_path / "a.jsonl") == {"1": "x", "2": "", "3": "z"}
    (tmp_path / "b.json").write_text(json.dumps([{"study_id": "1", "report": "x"}]))
    assert read_reports(tmp_path / "b.json") == {"1": "x"}
    (tmp_path / "c.json").write_text(json.dumps({"1": "x", "2": {"findings": "y"}}))
    assert read_reports(tmp_path / "c.json") == {"1": "x", "2": "y"}


def test_read_reports_errors_name_the_line_and_key(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"study_id": 1, "report": "x"}, {"study_id": 1, "report": "y"}])
    with pytest.raises(ValueError, match=r"a\.jsonl:2: study id '1' appears twice"):
        read_reports(tmp_path / "a.jsonl")
    _jsonl(tmp_path / "b.jsonl", [{"study_id": 1, "report": "x"}, {"study_id": 2, "impression": "y"}])
    with pytest.raises(ValueError, match=r"b\.jsonl:2: no report text.*report, findings, text.*impression"):
        read_reports(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"study_id": 1, "report": "x"}\n{"study_id": 2, "report": \n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: not valid JSON"):
        read_reports(tmp_path / "c.jsonl")
    _jsonl(tmp_path / "d.jsonl", [{"report": "x"}, {"report": "y"}])
    with pytest.raises(ValueError, match="no study id"):
        read_reports(tmp_path / "d.jsonl")


def test_pairing_by_study_id_names_missing_ids():
    ids, h, r = pair_reports({"b": "B'", "a": "A'"}, {"a": "A", "b": "B"})
    assert ids == ["a", "b"] and h == ["A'", "B'"] and r == ["A", "B"]
    with pytest.raises(ValueError, match=r"1 reference studies have no prediction: c.*1 predicted studies have no "
                                         r"reference: z"):
        pair_reports({"a": "", "b": "", "z": ""}, {"a": "", "b": "", "c": ""})
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        pair_reports(["x", "y"], ["x"])


def test_parse_metrics():
    assert parse_metrics("nlg") == ["bleu", "rouge_l", "rouge_l_f1", "cider_d"]
    assert parse_metrics("chexbert, bleu,bleu") == ["chexbert", "bleu"]
    with pytest.raises(ValueError, match="unknown metric 'meteor'"):
        parse_metrics("meteor")


# ---------------------------------------------------------------------------------------------
def test_cli_writes_json_and_markdown(tmp_path, weights):
    ref = _jsonl(tmp_path / "ref.jsonl", [{"study_id": k, "report": v} for k, v in REFS.items()])
    pred = _jsonl(tmp_path / "pred.jsonl", [{"study_id": k, "report": v} for k, v in PREDS.items()])
    other = _jsonl(tmp_path / "other.jsonl", [{"study_id": k, "report": v} for k, v in REFS.items()])
    rc = main(["--pred", str(pred), "--ref", str(ref), "--out-json", str(tmp_path / "o.json"), "--out-md",
               str(tmp_path / "o.md"), "--bootstrap", "40", "--seed", "3", "--compare", str(other), "--trials", "200",
               "--chexbert-weights", str(weights["chexbert"]), "--radgraph-model", str(weights["radgraph"]),
               "--uncertain", "negative", "--batch-size", "4", "--device", "cpu"])
    assert rc == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert out["n_studies"] == len(REFS) and out["bootstrap"]["n_resamples"] == 40 and out["bootstrap"]["seed"] == 3
    names = set(out["metrics"])
    assert {"bleu_4", "rouge_l", "rouge_l_f1", "cider_d", "chexbert_f1_14_micro", "chexbert_f1_5_macro",
            "radgraph_f1_rg_e", "radgraph_f1_complete"} <= names
    assert all({"value", "median", "ci_low", "ci_high"} <= set(v) for v in out["metrics"].values())
    assert out["settings"]["uncertain"] == "negative" and "negative" in out["conventions"]["chexbert"]
    assert "meteor" in out["not_computed"] and "Java" in out["conventions"]["meteor"]
    comp = out["comparison"]["results"]
    assert comp["bleu_4"]["b"] == pytest.approx(1.0) and comp["bleu_4"]["delta"] > 0  # B = the references
    md = (tmp_path / "o.md").read_text()
    assert "| BLEU-4 |" in md and "Paired test" in md and "Conventions:" in md
    assert out["settings"]["precision"] == "fp32" and set(out["labeller_runs"]) == {"chexbert", "radgraph"}
    # --precision bf16: the labellers run in bf16 (fp32 relabelling of small margins), the labels stay fp32's
    rc = main(["--pred", str(pred), "--ref", str(ref), "--out-json", str(tmp_path / "b.json"), "--bootstrap", "0",
               "--chexbert-weights", str(weights["chexbert"]), "--radgraph-model", str(weights["radgraph"]),
               "--uncertain", "negative", "--batch-size", "4", "--device", "cpu", "--precision", "bf16"])
    assert rc == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["labeller_runs"]["chexbert"]["precision"] == "bf16"
    for k in ("chexbert_f1_14_micro", "chexbert_f1_5_macro", "radgraph_f1_rg_e"):
        assert b["metrics"][k]["value"] == pytest.approx(out["metrics"][k]["value"])


def test_cli_exit_codes_and_skip_missing(tmp_path, no_weights, capsys):
    ref = _jsonl(tmp_path / "ref.jsonl", [{"study_id": k, "report": v} for k, v in REFS.items()])
    pred = _jsonl(tmp_path / "pred.jsonl", [{"study_id": k, "report": v} for k, v in list(PREDS.items())[:-1]])
    assert main(["--pred", str(pred), "--ref", str(ref), "--metrics", "nlg"]) == 2
    assert "have no prediction: s9" in capsys.readouterr().err
    pred = _jsonl(tmp_path / "pred2.jsonl", [{"study_id": k, "report": v} for k, v in PREDS.items()])
    assert main(["--pred", str(pred), "--ref", str(ref), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert "chexbert.pth" in err and "--skip-missing" in err
    rc = main(["--pred", str(pred), "--ref", str(ref), "--bootstrap", "0", "--skip-missing",
               "--out-json", str(tmp_path / "o.json")])
    assert rc == 0
    out = json.loads((tmp_path / "o.json").read_text())
    assert set(out["skipped"]) == {"chexbert", "radgraph"} and "bleu_4" in out["metrics"]
    assert "chexbert_f1_14_micro" not in out["metrics"]
    assert "skipped chexbert" in capsys.readouterr().err


def test_api_raises_missing_weights_without_skip(no_weights):
    with pytest.raises(MissingWeightsError):
        evaluate_reports(PREDS, REFS, metrics="radgraph", bootstrap=0)


def test_add_arguments_plugs_into_a_subcommand():
    p = argparse.ArgumentParser(prog="mxr0")
    sub = p.add_subparsers(dest="cmd")
    add_arguments(sub.add_parser("reports"))
    a = p.parse_args(["reports", "--pred", "p", "--ref", "r", "--bootstrap", "100", "--uncertain", "negative"])
    assert (a.pred, a.ref, a.bootstrap, a.uncertain, a.metrics) == ("p", "r", 100, "negative", "all")


def test_markdown_without_bootstrap():
    res = evaluate_reports(list(PREDS.values()), list(REFS.values()), metrics="bleu", bootstrap=0)
    md = markdown_report(res)
    assert "median" not in md and "| BLEU-1 |" in md


# ---------------------------------------------------------------------------------------------
def test_evaluate_modules_load_offline_and_agree_with_the_api(weights, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    preds, refs = list(PREDS.values()), list(REFS.values())
    api = evaluate_reports(preds, refs, metrics="nlg,chexbert,radgraph", bootstrap=0,
                           chexbert_weights=weights["chexbert"], radgraph_model=weights["radgraph"])["metrics"]
    nlg = evaluate.load(metric_path("report_nlg")).compute(predictions=preds, references=refs)
    for k in ("bleu_1", "bleu_4", "rouge_l", "rouge_l_f1", "cider_d"):
        assert nlg[k] == pytest.approx(api[k]["value"])
    cx = evaluate.load(metric_path("chexbert_f1")).compute(predictions=preds, references=refs,
                                                           weights=str(weights["chexbert"]))
    for k in ("chexbert_f1_14_micro", "chexbert_f1_14_macro", "chexbert_f1_5_micro", "chexbert_f1_5_macro"):
        assert cx[k] == pytest.approx(api[k]["value"])
    rg = evaluate.load(metric_path("radgraph_f1")).compute(predictions=preds, references=refs,
                                                           model=str(weights["radgraph"]))
    for k in ("radgraph_f1_rg_e", "radgraph_f1_rg_er", "radgraph_f1_complete"):
        assert rg[k] == pytest.approx(api[k]["value"])
