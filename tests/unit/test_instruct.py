"""The instruction task mixture: examples per kind, boxes in the model frame, grounded reports, the mixture
sampler, VQA and grounding scores, and `mxr0 generate --task` on a tiny trained export."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mxr0.data.instruct import (
    MixtureSampler,
    build_examples,
    grounded_report_text,
    parse_grounded_report,
    vqa_prompt,
)
from mxr0.data.records import read_records
from mxr0.eval.grounding import average_precision, box_iou, grounding_scores, prior_box, region_iou
from mxr0.eval.vqa import MajorityBaseline, normalise_answer, token_f1, vqa_scores

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def records(phantom_small):
    return read_records(phantom_small, splits=["train"])


def test_examples_of_each_kind(records):
    exs, empty = build_examples(records, ["report", "vqa", "grounding", "localisation", "grounded_report"])
    kinds = Counter(ex.kind for ex in exs)
    n_frontal = sum(any(im["view"] in ("PA", "AP") for im in r["images"]) and bool(r["findings"] or r["impression"])
                    for r in records)
    assert kinds["report"] == kinds["grounded_report"] == n_frontal  # a frontal (PA / AP) view + report text
    assert kinds["vqa"] == sum(len(r["qa"]) for r in records)  # every anatomy has questions
    n_phrases = sum(len({(b["phrase"]) for b in r["boxes"] if b["image_index"] == 0}) for r in records)
    assert kinds["grounding"] == n_phrases > 0
    assert 0 < kinds["localisation"] <= n_phrases
    assert empty.get("grounding", 0) == sum(not any(b["image_index"] == 0 for b in r["boxes"]) for r in records)
    g = next(ex for ex in exs if ex.kind == "grounding")
    r = records[g.record]
    assert g.instruction == f"Locate this finding: {g.meta['phrase']}."
    assert g.boxes == [[b["x0"], b["y0"], b["x1"], b["y1"]] for b in r["boxes"] if b["phrase"] == g.meta["phrase"]]
    with pytest.raises(ValueError, match="unknown task kind"):
        build_examples(records, ["caption"])


def test_vqa_prompt_lists_options_only_when_not_yes_no():
    assert vqa_prompt({"question": "Is there a fracture?", "answer_type": "closed", "options": ["yes", "no"]}) == \
        "Is there a fracture?"
    assert vqa_prompt({"question": "Which side?", "answer_type": "closed", "options": ["left", "right"]}) == \
        "Which side? Options: left, right."
    assert vqa_prompt({"question": "Where?", "answer_type": "open", "options": []}) == "Where?"


@pytest.mark.parametrize("fmt", ["plain", "tokens"])
def test_grounded_report_round_trip(fmt):
    answer = ("Findings: A small left pleural effusion is seen. The heart is normal. A nodule in the right upper lung.\n"
              "Impression: Small left pleural effusion.")
    phrases = [("small left pleural effusion", np.array([[0.6, 0.55, 0.9, 0.85]])),
               ("nodule in the right upper lung", np.array([[0.2, 0.2, 0.3, 0.3], [0.25, 0.3, 0.35, 0.4]]))]
    text = grounded_report_text(answer, phrases, fmt)
    plain, grounded, bad = parse_grounded_report(text, fmt)
    assert bad == 0
    assert plain == answer
    assert [s for s, _ in grounded] == ["A small left pleural effusion is seen.", "A nodule in the right upper lung.",
                                        "Small left pleural effusion."]
    tol = 0.0051 if fmt == "plain" else 0.0101
    np.testing.assert_allclose(grounded[1][1], phrases[1][1], atol=tol)
    np.testing.assert_allclose(grounded[2][1], phrases[0][1], atol=tol)


def test_mixture_sampler_follows_the_weights_and_is_reproducible():
    kinds = ["report"] * 100 + ["vqa"] * 400 + ["grounding"] * 50
    s = MixtureSampler(kinds, {"report": 1.0, "vqa": 1.0, "grounding": 2.0}, seed=3)
    a = list(s)
    c = Counter(kinds[i] for i in a)
    assert len(a) == 550 and c == {"report": 138, "vqa": 137, "grounding": 275}  # 1 : 1 : 2 of the epoch
    assert len(set(i for i in a if kinds[i] == "grounding")) == 50  # the small kind is cycled, all seen
    assert a == list(MixtureSampler(kinds, {"report": 1.0, "vqa": 1.0, "grounding": 2.0}, seed=3))
    s.set_epoch(1)
    assert list(s) != a
    assert Counter(kinds[i] for i in MixtureSampler(kinds, {"report": 1.0, "vqa": 0.0}, seed=0)) == {"report": 550}
    with pytest.raises(ValueError, match="no examples"):
        MixtureSampler(kinds, {"localisation": 1.0}, seed=0)


def test_vqa_scores_and_majority_baseline():
    assert normalise_answer(" The Left lung. ") == "left lung"
    assert token_f1("left lower lung", "left lung") == pytest.approx((2 / 3, 1.0, 0.8))
    preds = ["Yes.", "no", "left", "right middle zone", "upper zone"]
    refs = ["yes", "yes", "Left", "right middle zone", "right upper zone"]
    ats = ["closed", "closed", "closed", "open", "open"]
    qts = ["presence", "presence", "laterality", "location", "location"]
    s = vqa_scores(preds, refs, ats, qts)
    assert s["closed_accuracy"] == pytest.approx(2 / 3)
    assert s["closed_accuracy/presence"] == 0.5 and s["closed_accuracy/laterality"] == 1.0
    assert s["open_exact_match"] == 0.5
    assert s["open_token_f1"] == pytest.approx((1.0 + 0.8) / 2)
    assert s["n_closed"] == 3 and s["n_open"] == 2
    base = MajorityBaseline(["no", "no", "yes", "left", "right", "right"], ["closed"] * 6,
                            ["presence", "presence", "presence", "side", "side", "side"])
    assert base.predict("presence") == "no" and base.predict("side") == "right" and base.predict("other") == "no"


def test_box_scores():
    a = np.array([[0.0, 0.0, 0.5, 0.5]])
    assert box_iou(a, [[0.25, 0.0, 0.75, 0.5]])[0, 0] == pytest.approx(1 / 3)
    assert region_iou(a, a) == 1.0 and region_iou(np.zeros((0, 4)), a) == 0.0
    two = [[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7]]
    assert region_iou(two, two) == pytest.approx(1.0)
    assert region_iou([two[0]], two) == pytest.approx(0.5, abs=0.01)
    assert average_precision(two, two) == 1.0
    assert average_precision([[0.6, 0.6, 0.9, 0.9], two[0]], two) == pytest.approx(0.25)  # a miss ranked first
    assert average_precision([two[1]], two) == 0.5
    s = grounding_scores([a, np.zeros((0, 4)), np.array(two)], [a, a, np.array(two)], labels=["x", "x", "y"])
    assert s["acc50"] == pytest.approx(2 / 3) and s["no_box"] == pytest.approx(1 / 3) and s["n_multi"] == 1
    assert s["acc50/x"] == 0.5 and s["acc50/y"] == 1.0
    np.testing.assert_allclose(prior_box([a, np.array(two)]), [0.5 / 3, 0.5 / 3, 1.4 / 3, 1.4 / 3])


@pytest.mark.parametrize("fmt", ["plain", "tokens"])
def test_reference_answers_score_perfectly(phantom_small, fmt):
    """Generating the references themselves scores 1 on every kind: targets, parsing, frames and scores agree."""
    from mxr0.eval.instruct import score_kind
    from mxr0.config.tasks import ReportModelConfig
    from mxr0.data.report_dataset import ReportDataset

    from mxr0.data.transforms import ImageTransform

    recs = read_records(phantom_small, splits=["validation"])
    cfg = ReportModelConfig(box_format=fmt)
    ds = ReportDataset(recs, None, ImageTransform(size=96), cfg, 4, train=False,
                       kinds=["vqa", "grounding", "localisation", "grounded_report"])
    for kind in ("vqa", "grounding", "localisation", "grounded_report"):
        idx = [i for i, k in enumerate(ds.kinds) if k == kind]
        assert idx, kind
        s = score_kind(ds, idx, [ds.answer(i) for i in idx], kind, train_ds=ds)
        if kind == "vqa":
            assert s["vqa_closed_accuracy"] == 1.0 and s["vqa_open_exact_match"] == 1.0
            assert s["vqa_majority_closed_accuracy"] < 0.9
        elif kind == "grounded_report":
            assert s["grounded_report_matched"] == 1.0 and s["grounded_report_box_iou"] > 0.9
            assert s["grounded_report_rules_f1_14_micro"] == 1.0
        else:
            assert s[f"{kind}_acc50"] == 1.0 and s[f"{kind}_miou"] > (0.9 if fmt == "plain" else 0.8)  # bins only grow
            assert s[f"{kind}_malformed"] == 0
            assert s[f"{kind}_prior_acc50"] < 0.5


def test_boxes_are_written_in_the_model_frame(tmp_path):
    """A pad transform on a wide image: the target text holds model-frame coordinates, mapped back exactly."""
    from PIL import Image

    from mxr0.data.boxes_text import parse_boxes, to_original
    from mxr0.data.transforms import ImageTransform
    from mxr0.config.tasks import ReportModelConfig
    from mxr0.data.report_dataset import ReportDataset

    Image.fromarray(np.zeros((100, 200), dtype=np.uint8)).save(tmp_path / "wide.png")
    rec = {"study_id": "s", "images": [{"path": str(tmp_path / "wide.png"), "view": "PA", "role": "current"}],
           "boxes": [{"phrase": "left effusion", "label": "Pleural Effusion", "image_index": 0,
                      "x0": 0.5, "y0": 0.5, "x1": 1.0, "y1": 1.0}], "qa": [], "findings": "", "impression": ""}
    ds = ReportDataset([rec], None, ImageTransform(size=100, mode="pad"), ReportModelConfig(), 4, train=False,
                       kinds=["grounding"])
    assert ds.answer(0) == "[0.50, 0.50, 1.00, 0.75]"  # the 200x100 image sits in rows 25..75 of the square
    back = to_original(parse_boxes(ds.answer(0)).boxes, ds.geometry(0))
    np.testing.assert_allclose(back, [[0.5, 0.5, 1.0, 1.0]], atol=0.011)


def test_instruct_run_generate_overlay_and_resume(phantom_small, tmp_path, capsys):
    """A tiny VQA + grounding + grounded-report run (token boxes), then `mxr0 generate --task` for a split (scores,
    overlays, resume) and for one image with a phrase."""
    from mxr0.cli import main
    from mxr0.config import load_recipe
    from mxr0.train.loop import train
    from test_report import tiny_report

    run = train(load_recipe(REPO / "recipes/tiny/mxr0_mixture.yaml", tiny_report(
        phantom_small, tmp_path / "run", "model.tasks={vqa: 1.0, grounding: 1.0, grounded_report: 0.5}",
        "model.box_format=tokens", "model.max_new_tokens_short=16", "model.eval_generate=3")))
    m = run["metrics"]
    assert {"vqa_closed_accuracy", "grounding_acc50", "grounding_prior_acc50", "grounded_report_box_iou"} <= set(m)
    assert run["main_metric"] == "vqa_closed_accuracy"
    export = Path(run["export_dir"])
    settings = json.loads((export / "mxr0_report.json").read_text())
    assert settings["box_format"] == "tokens" and settings["tasks"]["grounding"] == 1.0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    assert len(tok.tokenize("<box><x12><y30><x45><y62></box>")) == 6  # box tokens are single tokens

    out = tmp_path / "g.jsonl"
    args = ["generate", "--task", "grounding", "--model", str(export), "--data", str(phantom_small), "--split",
            "validation", "--limit", "6", "--out", str(out), "--overlay", str(tmp_path / "ov"), "--batch-size", "4"]
    assert main(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows and all({"id", "prediction", "reference", "pred_boxes", "ref_boxes"} <= set(r) for r in rows)
    metrics = json.loads((tmp_path / "g.jsonl.metrics.json").read_text())
    assert metrics["grounding_n"] == len(rows)
    assert len(list((tmp_path / "ov").glob("*.png"))) == len(rows)
    out.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n" + '{"id": "broken')  # interrupted
    assert main(args) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [r["id"] for r in rows]

    img = read_records(phantom_small, splits=["validation"])[0]["images"][0]["path"]
    capsys.readouterr()
    assert main(["generate", "--task", "grounding", "--model", str(export), "--image", img, "--prompt",
                 "left pleural effusion", "--overlay", str(tmp_path / "one.png")]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() and "overlay:" in printed and (tmp_path / "one.png").exists()
    assert main(["generate", "--task", "vqa", "--model", str(export), "--data", str(phantom_small), "--split",
                 "validation", "--limit", "3", "--out", str(tmp_path / "v.jsonl")]) == 0
    assert "vqa_closed_accuracy" in json.loads((tmp_path / "v.jsonl.metrics.json").read_text())
