"""Report-evaluation input (issue #16 item 7): file formats, partial pairing, long reports, empty
reports against pycocoevalcap, encodings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mxr0.eval.reports import evaluate_reports, read_reports
from mxr0.eval.reports.cli import main
from mxr0.eval.reports.io import MAX_REPORT_CHARS, pair_inputs
from mxr0.eval.reports.nlg import nlg_stats
from mxr0.eval.reports.ptb import tokenize_corpus
from mxr0.eval.reports.testing import SAMPLE_REPORTS

NLG = ["--metrics", "nlg", "--bootstrap", "0"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- formats ---------------------------------------------------------------------------------
def test_one_line_jsonl_is_one_study_not_a_map(tmp_path, capsys):
    # what `mxr0 generate --limit 1` writes; it used to be read as {"study_id": "a", "report": "..."}
    pred = _jsonl(tmp_path / "pred.jsonl", [{"study_id": "a", "report": "no effusion"}])
    ref = _jsonl(tmp_path / "ref.jsonl", [{"study_id": "b", "report": "small effusion"}])
    assert read_reports(pred) == {"a": "no effusion"}
    assert main(["--pred", str(pred), "--ref", str(ref), *NLG]) == 2
    err = capsys.readouterr().err
    assert "1 reference studies have no prediction: b" in err and "1 predicted studies have no reference: a" in err
    assert str(pred) in err and str(ref) in err and "--allow-partial" in err
    # a pretty-printed or one-line JSON document in a .jsonl file is still read as lines
    (tmp_path / "map.jsonl").write_text('{"a": "no effusion", "b": "x"}\n')
    with pytest.raises(ValueError, match=r"map\.jsonl:1: no study id"):
        read_reports(tmp_path / "map.jsonl")
    (tmp_path / "list.txt").write_text('[{"study_id": "a", "report": "x"}]\n')
    with pytest.raises(ValueError, match=r"list\.txt:1: expected a JSON object.*named \.json"):
        read_reports(tmp_path / "list.txt")
    (tmp_path / "pretty.jsonl").write_text('{\n  "a": "x"\n}\n')
    with pytest.raises(ValueError, match=r"pretty\.jsonl:1: not valid JSON.*named \.json"):
        read_reports(tmp_path / "pretty.jsonl")


def test_json_map_only_from_a_json_file_that_is_a_map(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"a": "x", "b": None}, indent=2))
    assert read_reports(tmp_path / "m.json") == {"a": "x", "b": ""}
    (tmp_path / "one.json").write_text(json.dumps({"study_id": "a", "report": "x"}))
    with pytest.raises(ValueError, match=r"one\.json: this is one report object.*not a \{study_id: text\} map"):
        read_reports(tmp_path / "one.json")
    (tmp_path / "bad.json").write_text('[\n{"study_id": "a", "report": "x"},\n{"study_id": "b" "report": "y"}\n]')
    with pytest.raises(ValueError, match=r"bad\.json:3: not valid JSON"):
        read_reports(tmp_path / "bad.json")


def test_duplicate_ids_stay_named_errors(tmp_path):
    _jsonl(tmp_path / "d.jsonl", [{"study_id": "a", "report": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(ValueError, match=r"d\.jsonl:2: study id 'a' appears twice"):
        read_reports(tmp_path / "d.jsonl")
    (tmp_path / "d.json").write_text(json.dumps([{"study_id": "a", "report": "x"}, {"study_id": "a", "report": "y"}]))
    with pytest.raises(ValueError, match=r"d\.json item 1: study id 'a' appears twice"):
        read_reports(tmp_path / "d.json")


# --- partial pairing -------------------------------------------------------------------------
def test_allow_partial_scores_the_intersection_and_says_so(tmp_path, capsys):
    refs = {f"s{i}": t for i, t in enumerate(SAMPLE_REPORTS[:6])}
    ref = _jsonl(tmp_path / "ref.jsonl", [{"study_id": k, "report": v} for k, v in refs.items()])
    pred = _jsonl(tmp_path / "pred.jsonl", [{"study_id": k, "report": v} for k, v in list(refs.items())[:4]]
                  + [{"study_id": "extra", "report": "x"}])
    assert main(["--pred", str(pred), "--ref", str(ref), *NLG]) == 2
    capsys.readouterr()
    out = tmp_path / "o.json"
    assert main(["--pred", str(pred), "--ref", str(ref), *NLG, "--allow-partial", "--out-json", str(out),
                 "--out-md", str(tmp_path / "o.md")]) == 0
    cap = capsys.readouterr()
    assert "dropped 2 references without prediction: s4, s5" in cap.err
    assert "dropped 1 predictions without reference: extra" in cap.err
    res = json.loads(out.read_text())
    assert res["n_studies"] == 4 and res["settings"]["allow_partial"] is True
    p = res["pairing"]
    assert p["n_dropped"] == 3 and p["dropped"] == {"references_without_prediction": 2,
                                                    "predictions_without_reference": 1}
    assert p["dropped_ids"]["references_without_prediction"] == ["s4", "s5"]
    assert res["metrics"]["bleu_4"]["value"] == pytest.approx(1.0)  # the 4 kept pairs are identical
    assert "**Partial:** 3 studies" in (tmp_path / "o.md").read_text()
    # a compared system restricts the intersection too, and the paired test uses the same studies
    r = evaluate_reports({"a": "x y", "b": "z", "c": "w"}, {"a": "x y", "b": "z", "c": "w"}, metrics="bleu",
                         bootstrap=0, compare={"a": "x y", "c": "q"}, trials=10, allow_partial=True, log=lambda m: None)
    assert r["n_studies"] == 2 and r["pairing"]["dropped"]["references_without_compared_prediction"] == 1
    with pytest.raises(ValueError, match="no study id is in both"):
        pair_inputs({"a": "x"}, {"b": "y"}, allow_partial=True)


# --- long reports ----------------------------------------------------------------------------
def test_long_reports_are_truncated_with_a_warning_and_a_count(tmp_path, capsys):
    assert MAX_REPORT_CHARS == 20_000
    long = ("the heart is enlarged . " * 2000)[:25_000]
    ref = _jsonl(tmp_path / "ref.jsonl", [{"study_id": "a", "report": "the heart is enlarged ."},
                                          {"study_id": "b", "report": long}])
    pred = _jsonl(tmp_path / "pred.jsonl", [{"study_id": "a", "report": long}, {"study_id": "b", "report": "ok"}])
    out = tmp_path / "o.json"
    assert main(["--pred", str(pred), "--ref", str(ref), *NLG, "--out-json", str(out)]) == 0
    assert "truncated 1 predictions longer than 20000 characters to their first 20000: a" in capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["pairing"]["truncated"] == {"references": 1, "predictions": 1}
    assert res["pairing"]["truncated_ids"] == {"references": ["b"], "predictions": ["a"]}
    cut = evaluate_reports({"a": long[:20_000], "b": "ok"}, {"a": "the heart is enlarged .", "b": long[:20_000]},
                           metrics="nlg", bootstrap=0, max_report_chars=0)
    assert cut["pairing"]["truncated"] == {"references": 0, "predictions": 0}
    assert {k: v["value"] for k, v in res["metrics"].items()} == {k: v["value"] for k, v in cut["metrics"].items()}
    with pytest.warns(UserWarning, match="truncated 1 references longer than 10 characters"):
        evaluate_reports({"a": "x"}, {"a": "y" * 11}, metrics="bleu", bootstrap=0, max_report_chars=10)


# --- empty reports ---------------------------------------------------------------------------
EMPTY_CASES = {
    "empty vs empty, alone": ([""], [""]),
    "empty vs empty among others": (["", "the heart is normal"], ["", "the heart is normal in size"]),
    "empty prediction": (["", "the heart is normal"], ["no effusion .", "the heart is normal in size"]),
    "empty reference": (["no effusion", "the heart is normal"], ["", "the heart is normal in size"]),
    "punctuation only vs whitespace": ([" . ", "the heart is normal"], ["  ", "the heart is normal in size"]),
}


@pytest.mark.parametrize("case", list(EMPTY_CASES))
def test_empty_conventions_match_pycocoevalcap(case, capsys):
    Rouge = pytest.importorskip("pycocoevalcap.rouge.rouge").Rouge
    Bleu = pytest.importorskip("pycocoevalcap.bleu.bleu").Bleu
    Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
    hyps, refs = EMPTY_CASES[case]
    th, tr = tokenize_corpus(hyps), tokenize_corpus(refs)
    res = {str(i): [h] for i, h in enumerate(th)}
    gts = {str(i): [r] for i, r in enumerate(tr)}
    ours = nlg_stats(hyps, refs, ["bleu", "rouge_l", "cider_d"])
    rouge, rouge_pp = Rouge().compute_score(gts, res)
    np.testing.assert_allclose(ours["rouge_l"].per_pair, rouge_pp, rtol=1e-12)
    assert ours["rouge_l"].value()["rouge_l"] == pytest.approx(rouge, rel=1e-12)
    bleu, _ = Bleu(4).compute_score(gts, res)
    assert list(ours["bleu"].value().values()) == pytest.approx(bleu, rel=1e-9, abs=1e-12)
    if any(tr):
        cider, cider_pp = Cider().compute_score(gts, res)
        np.testing.assert_allclose(ours["cider_d"].per_pair, cider_pp, rtol=1e-9, atol=1e-12)
    else:  # pycocoevalcap's Cider fails on a corpus without any reference n-gram; ours scores 0
        with pytest.raises(ValueError):
            Cider().compute_score(gts, res)
        assert ours["cider_d"].value()["cider_d"] == 0.0
    if case.startswith("empty vs empty"):
        assert ours["rouge_l"].per_pair[0] == 1.0  # pycocoevalcap: "".split(" ") == [""] on both sides
    capsys.readouterr()  # pycocoevalcap's Bleu prints its ratio


# --- encodings -------------------------------------------------------------------------------
def test_non_utf8_files_name_the_file_and_line(tmp_path, capsys):
    good = json.dumps({"study_id": "a", "report": "x"}).encode()
    (tmp_path / "p.jsonl").write_bytes(good + b"\n" + b'{"study_id": "b", "report": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: not UTF-8 \(byte 0xe9 at column 33\).*iconv"):
        read_reports(tmp_path / "p.jsonl")
    (tmp_path / "m.json").write_bytes(b'{\n"a": "x",\n"b": "\xff"\n}')
    with pytest.raises(ValueError, match=r"m\.json:3: not UTF-8"):
        read_reports(tmp_path / "m.json")
    ref = _jsonl(tmp_path / "r.jsonl", [{"study_id": "a", "report": "x"}, {"study_id": "b", "report": "y"}])
    assert main(["--pred", str(tmp_path / "p.jsonl"), "--ref", str(ref), *NLG]) == 2
    assert "p.jsonl:2: not UTF-8" in capsys.readouterr().err
    # a UTF-8 BOM is fine, and so is a raw U+2028 inside a report (not a line break in JSON Lines)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + good + b"\n")
    assert read_reports(tmp_path / "bom.jsonl") == {"a": "x"}
    (tmp_path / "ls.jsonl").write_text(json.dumps({"study_id": "a", "report": "x\u2028y"}, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
    assert read_reports(tmp_path / "ls.jsonl") == {"a": "x\u2028y"}
