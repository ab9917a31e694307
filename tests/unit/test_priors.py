"""Prior studies (issue 17, item 1): phantom longitudinal pairs (opt-in), the MAIRA-2-order prompt, MIMIC-CXR
prior linking by StudyDate / StudyTime, and a study with a prior round-tripping through records, prompt,
training and `mxr0 generate`."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.chat import study_messages
from mxr0.data.instruct import study_images
from mxr0.data.records import read_records, validate_records

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    from mxr0.data.phantom import generate_phantom

    out = tmp_path_factory.mktemp("pairs")
    return generate_phantom(out, n_studies=60, image_size=64, seed=0, workers=0, progress=False, prior_fraction=1.0)


# ---------------------------------------------------------------------------------------------
# phantom pairs
# ---------------------------------------------------------------------------------------------
def test_pairs_are_opt_in_and_leave_other_studies_as_they_were(tmp_path):
    from mxr0.data.phantom import draw_study, generate_phantom

    plain = generate_phantom(tmp_path / "plain", n_studies=40, image_size=32, seed=1, workers=0, progress=False)
    mixed = generate_phantom(tmp_path / "mixed", n_studies=40, image_size=32, seed=1, workers=0, progress=False,
                             prior_fraction=0.5)
    assert "prior_fraction" not in json.loads((plain.parent / "phantom.json").read_text())
    assert json.loads((mixed.parent / "phantom.json").read_text())["prior_fraction"] == 0.5
    a = read_records(plain, resolve_paths=False)
    b = read_records(mixed, resolve_paths=False)
    n_pairs = 0
    for ra, rb in zip(a, b):
        if rb["prior_study_id"]:
            n_pairs += 1
            continue
        assert ra == rb  # not a pair: the very same record ...
        for im in ra["images"]:  # ... and the very same image bytes
            assert (plain.parent / im["path"]).read_bytes() == (mixed.parent / im["path"]).read_bytes()
    assert 0 < n_pairs < sum(r["anatomy"] == "chest" for r in a)
    assert all(not r["prior_study_id"] and not r["prior_findings"] for r in a)
    # draw_study's default is the single-study draw
    rec0, ims0, _ = draw_study(3, "chest", image_size=32, seed=1)
    rec1, ims1, _ = draw_study(3, "chest", image_size=32, seed=1, prior_fraction=0.0)
    assert rec0 == rec1 and all(np.array_equal(x[0], y[0]) for x, y in zip(ims0, ims1))
    with pytest.raises(ValueError, match="prior_fraction"):
        generate_phantom(tmp_path / "bad", n_studies=4, prior_fraction=1.5)


def test_prepare_phantom_pairs_of_one_anatomy(tmp_path, capsys):
    from mxr0.cli import main

    out = tmp_path / "pairs"
    assert main(["prepare", "phantom", "--out", str(out), "--n", "12", "--size", "32", "--seed", "4",
                 "--prior-fraction", "1", "--anatomies", "chest"]) == 0
    recs = read_records(out / "records.jsonl", resolve_paths=False)
    assert len(recs) == 12 and all(r["anatomy"] == "chest" and r["prior_study_id"] for r in recs)
    capsys.readouterr()
    assert main(["prepare", "phantom", "--out", str(tmp_path / "x"), "--anatomies", "chest,skull"]) == 2
    assert "'chest,skull': the phantom draws chest, hand, knee, pelvis" in capsys.readouterr().err


def test_pair_records_images_and_reports(pairs):
    recs = read_records(pairs)
    validate_records(recs)
    chest = [r for r in recs if r["anatomy"] == "chest"]
    assert chest and all(r["prior_study_id"] == f"{r['study_id']}-prior" for r in chest)
    assert all(not r["prior_study_id"] for r in recs if r["anatomy"] != "chest")
    texts = []
    for r in chest:
        roles = [im["role"] for im in r["images"]]
        assert roles[-1] == "prior" and roles.count("prior") == 1 and roles[0] == "current"
        prior, cur = r["images"][-1], r["images"][0]
        assert prior["view"] == cur["view"] and Path(prior["path"]).is_file()
        a, b = np.asarray(Image.open(cur["path"]), float), np.asarray(Image.open(prior["path"]), float)
        assert a.shape == b.shape and not np.array_equal(a, b)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.6  # the same thorax
        assert r["prior_impression"] and r["comparison"]
        assert all(b["image_index"] == 0 for b in r["boxes"]) and all(m["image_index"] == 0 for m in r["masks"])
        texts.append(r["impression"])
    joined = " ".join(texts)
    for phrase in ("New ", "Interval development of", "Unchanged ", "Stable ", "Interval resolution of",
                   "has resolved", "previously"):
        assert phrase in joined, phrase


# ---------------------------------------------------------------------------------------------
# prompt
# ---------------------------------------------------------------------------------------------
def _text(messages) -> str:
    return "".join("<image>" if p["type"] == "image" else p["text"] for p in messages[-1]["content"])


def test_prompt_without_prior_is_unchanged():
    rec = {"indication": "Cough.", "technique": "PA and lateral."}
    msgs = study_messages(rec, ["frontal", "lateral"], "Write the report.", ["indication", "technique"])
    assert _text(msgs) == ("Frontal view: <image>\nLateral view: <image>\nWrite the report.\n"
                           "Indication: Cough.\nTechnique: PA and lateral.")
    # prior sections without a prior image in the prompt are not shown
    rec2 = {**rec, "prior_findings": "Small effusion.", "prior_study_id": "s1"}
    assert _text(study_messages(rec2, ["frontal", "lateral"], "Write the report.", ["indication", "technique"])) \
        == _text(msgs)


def test_prompt_with_prior_follows_maira2_order(pairs):
    rec = next(r for r in read_records(pairs) if r["prior_study_id"])
    rec = {**rec, "indication": "Dyspnea.", "comparison": "___."}
    rec["images"] = rec["images"] + [{"path": "lat.png", "view": "LATERAL", "role": "current"}]
    imgs = study_images(rec, ["prior", "lateral", "frontal"])  # whatever the recipe's order: the prior comes last
    assert [v for v, _ in imgs] == ["lateral", "frontal", "prior frontal"]
    assert [v for v, _ in study_images(rec, ["frontal", "lateral", "prior"])] == ["frontal", "lateral", "prior frontal"]
    assert imgs[-1][1].endswith("_prior.png")
    text = _text(study_messages(rec, ["frontal", "lateral", "prior frontal"], "Write the report.",
                                ["indication", "technique", "comparison"]))
    pos = [text.index(s) for s in ("Frontal view:", "Lateral view:", "Prior frontal view:", "Prior report: Findings: ",
                                   "Impression: ", "Indication: Dyspnea.", "Technique:", "Comparison: ___.")]
    assert pos == sorted(pos)
    # a plain prior_report text (the serve path) is still shown
    assert "Prior report: Old." in _text(study_messages({"prior_report": "Old."}, ["frontal", "prior frontal"], "W.", []))


def test_prior_sections_of_a_report_text():
    from mxr0.generate import prior_sections

    assert prior_sections("Findings: Small effusion. Impression: Effusion.") == {
        "prior_findings": "Small effusion.", "prior_impression": "Effusion."}
    assert prior_sections("IMPRESSION: No acute process.") == {"prior_findings": "", "prior_impression": "No acute process."}
    assert prior_sections("Small effusion.") == {"prior_findings": "Small effusion.", "prior_impression": ""}


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR prior linking
# ---------------------------------------------------------------------------------------------
META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
        "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def make_mimic_longitudinal(root: Path) -> Path:
    """Subject 10000032: s1 (2180-05-06 21:30), s2 (2180-06-26 16:50, lateral + frontal), s3 (2180-06-26 16:50,
    the same time: s4's prior is ambiguous), s4 (2180-07-01 07:05:12 written 70512.0); s5 undated; subject
    11000011: s6 alone."""
    imgs = [  # dicom, subject, study, view, date, time
        ("a1", "10000032", "1", "PA", "21800506", "213014.531"),
        ("b1", "10000032", "2", "LATERAL", "21800626", "165500"),
        ("b2", "10000032", "2", "AP", "21800626", "165000"),
        ("c1", "10000032", "3", "PA", "21800626", "165000"),
        ("d1", "10000032", "4", "PA", "21800701", "70512.0"),
        ("e1", "10000032", "5", "PA", "", ""),
        ("f1", "11000011", "6", "PA", "21900101", "120000"),
    ]
    _csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
         [[d, st, su, "train"] for d, su, st, *_ in imgs])
    _csv(root / "mimic-cxr-2.0.0-metadata.csv", META,
         [[d, su, st, "CHEST", v, 10, 10, date, time, "CHEST", "", ""] for d, su, st, v, date, time in imgs])
    for d, su, st, *_ in imgs:
        p = root / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}" / f"{d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(p)
        rep = root / "mimic-cxr-reports" / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}.txt"
        rep.parent.mkdir(parents=True, exist_ok=True)
        rep.write_text(f"FINDINGS: Findings of study {st}.\n\nIMPRESSION: Impression of study {st}.\n")
    return root


def test_mimic_links_each_study_to_the_previous_one(tmp_path):
    from mxr0.data.sources import convert
    from mxr0.data.sources.mimic_cxr import build_records

    root = make_mimic_longitudinal(tmp_path / "mimic")
    recs = {r["study_id"]: r for r in read_records(convert("mimic-cxr", root, tmp_path / "out", labeler=None,
                                                             show_progress=False))}
    assert recs["s1"]["prior_study_id"] == "" and recs["s6"]["prior_study_id"] == ""  # first study of each subject
    s2, s3, s4 = recs["s2"], recs["s3"], recs["s4"]
    # s2's images disagree (16:55, 16:50): it takes 16:50, like s3; both follow s1
    assert s2["prior_study_id"] == "s1" and s3["prior_study_id"] == "s1"
    assert s2["prior_findings"] == "Findings of study 1." and s2["prior_impression"] == "Impression of study 1."
    assert [(Path(im["path"]).name, im["role"]) for im in s2["images"]] == [
        ("b2.jpg", "current"), ("b1.jpg", "current"), ("a1.jpg", "prior")]
    assert s4["prior_study_id"] == "" and not any(im["role"] == "prior" for im in s4["images"])  # s2 / s3 tie
    assert recs["s5"]["prior_study_id"] == ""  # undated
    _, skips = build_records(root, tmp_path / "o2", labeler=None)
    assert skips.counts["prior ambiguous: two studies at the same StudyDate / StudyTime (not linked)"] == 1
    assert skips.counts["study without StudyDate / StudyTime (not linked to a prior)"] == 1
    none, _ = build_records(root, tmp_path / "o3", labeler=None, priors=False)
    assert all(not r["prior_study_id"] for r in none)


def test_mimic_bad_study_date_names_file_row_and_field(tmp_path):
    from mxr0.data.sources import SourceError, convert

    root = make_mimic_longitudinal(tmp_path / "mimic")
    meta = root / "mimic-cxr-2.0.0-metadata.csv"
    rows = list(csv.reader(open(meta)))
    rows[3][7] = "June 26"
    _csv(meta, rows[0], rows[1:])
    with pytest.raises(SourceError, match=r"mimic-cxr-2.0.0-metadata.csv, row 4, field 'StudyDate'"):
        convert("mimic-cxr", root, tmp_path / "out", labeler=None, show_progress=False)


# ---------------------------------------------------------------------------------------------
# round trip: records → prompt → training → generate
# ---------------------------------------------------------------------------------------------
def test_study_with_prior_round_trips_through_training_and_generate(pairs, tmp_path, capsys):
    import torch

    from mxr0.cli import main
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    torch.set_num_threads(1)
    common = [
        "data.source=records", f"data.path={pairs.parent}", "model.vision=", "model.image_size=56",
        "model.vision_config={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, mlp_ratio: 2, "
        "patch_size: 14, num_register_tokens: 0}",
        "model.llm_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, "
        "num_key_value_heads: 2}",
        "model.tokenizer_vocab_size=400", "model.cache_features=false", "model.augment=false",
        "model.eval_generate=0", "model.max_new_tokens=8", "model.max_length=1024", "model.views=[frontal, prior]",
        "train.batch_size=4", "train.max_steps=3", "train.eval_every=0", "train.save_every=0", "train.progress=false",
        "train.trackers=[jsonl]", f"train.output_dir={tmp_path / 'run'}",
    ]
    run = train(load_recipe(REPO / "recipes/tiny/mxr0_report.yaml", common))
    export = Path(run["export_dir"])
    assert json.loads((export / "mxr0_report.json").read_text())["views"] == ["frontal", "prior"]
    # the training prompt of a pair: two images, the prior report
    from mxr0.generate import _config_from, load_vlm
    from mxr0.data.report_dataset import ReportDataset

    model, tok, transform, settings = load_vlm(export)
    recs = [r for r in read_records(pairs, splits=["test"]) if r["anatomy"] == "chest"][:2]
    rds = ReportDataset(recs, tok, transform, _config_from(settings), int(settings["n_image_tokens"]), train=False,
                        with_answer=False, kinds=["report"])
    item = rds[0]
    assert item["pixel_values"].shape[0] == 2
    prompt = tok.decode(item["input_ids"])
    assert "Prior frontal view:" in prompt and "Prior report:" in prompt
    assert prompt.count("<image>") == 2 * int(settings["n_image_tokens"])
    # one study on the command line, with its prior
    cur = [im["path"] for im in recs[0]["images"] if im["role"] == "current"][0]
    pri = [im["path"] for im in recs[0]["images"] if im["role"] == "prior"][0]
    assert main(["generate", "--model", str(export), "--image", cur, "--prior-image", pri, "--prior-report",
                 f"Findings: {recs[0]['prior_findings']} Impression: {recs[0]['prior_impression']}",
                 "--max-new-tokens", "4"]) == 0
    # the split path uses the records' priors
    out = tmp_path / "preds.jsonl"
    assert main(["generate", "--model", str(export), "--data", str(pairs.parent), "--split", "test", "--limit", "3",
                 "--out", str(out), "--max-new-tokens", "4"]) == 0
    assert len(out.read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------------
# learning: a model trained with priors against one trained the same way without them
# ---------------------------------------------------------------------------------------------
PRIOR_STEPS = 800
"""VLM steps per run (`recipes/tiny/mxr0_report_prior.yaml`, which says what shorter runs measured)."""


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MXR0_PRIOR_LEARNING"),
                    reason="opt-in (MXR0_PRIOR_LEARNING=1): 0 CI minutes; a full run costs ~110 CPU minutes. "
                           "Measured (5 seeds x 2 arms, one thread per run): change F1 micro with priors 0.197 mean "
                           "(range 0.068), without 0.107 (range 0.034): margin 0.090 > spread 0.068")
def test_priors_help_the_change_statements(tmp_path):
    """Separate runs with and without the prior (image + report), same data, steps and seeds; change F1 of the
    generated impressions on the 1,000 held-out pairs. Passes when the mean margin exceeds the spread over 5 seeds.

    5,000 chest pairs (4,000 for training: 800 steps of 32 are 6.4 epochs, so neither arm memorises its set), the
    finding classifier's encoder (400 steps, frozen, features cached), the LM of `recipes/tiny/mxr0_report_prior.yaml`
    from scratch (its commands reproduce one seed by hand).

    Measured 2026-12-06 (one thread per run, two runs side by side on the 2-core VM), change F1 micro per seed 0-4:
    with priors 0.227 0.215 0.159 0.201 0.182 (mean 0.197), without 0.101 0.122 0.088 0.099 0.123 (mean 0.107).
    Status accuracy where both name the finding: 0.433 against 0.311 (mean); "resolved" F1 0.29 against 0.06; finding
    F1-14 micro 0.441 against 0.419 (the prior arm does not win by naming more findings). Cost per seed: with priors
    ~900 s of training + 40 s of generation, without ~300 + 12 s; ~110 CPU minutes in all."""
    import torch

    from mxr0.config import load_recipe
    from mxr0.data.phantom import generate_phantom
    from mxr0.eval.reports.rules import change_f1
    from mxr0.generate import generate_split
    from mxr0.data.instruct import report_answer
    from mxr0.train.loop import train

    torch.set_num_threads(os.cpu_count() or 1)  # the test runs alone (opt-in): every core
    steps = int(os.environ.get("MXR0_PRIOR_STEPS", str(PRIOR_STEPS)))
    common = ["data.source=records", "train.eval_every=0", "train.save_every=0", "train.progress=false",
              "train.trackers=[jsonl]"]
    data = generate_phantom(tmp_path / "data", n_studies=5000, image_size=128, seed=4, progress=False,
                            prior_fraction=1.0, anatomy_mix={"chest": 1.0})
    enc = train(load_recipe(REPO / "recipes/tiny/classify.yaml", [
        *common, f"data.path={data.parent}", f"train.output_dir={tmp_path / 'enc'}", "model.image_size=112",
        "model.encoder_config={hidden_size: 64, num_hidden_layers: 3, num_attention_heads: 4, "
        "intermediate_size: 128, patch_size: 14, num_register_tokens: 2}",
        "train.max_steps=400", "train.lr=2e-3", "train.warmup_steps=20"]))["export_dir"]
    held = [r for r in read_records(data.parent, splits=["validation", "test"]) if r["anatomy"] == "chest"]
    refs = [report_answer(r, ["impression"]) for r in held]
    scores: dict[str, list[float]] = {"prior": [], "none": []}
    for seed in range(5):
        for arm, views in (("prior", "[frontal, prior]"), ("none", "[frontal]")):
            run = train(load_recipe(REPO / "recipes/tiny/mxr0_report_prior.yaml", [
                *common, f"data.path={data.parent}", f"train.output_dir={tmp_path / f'{arm}-{seed}'}",
                f"model.vision={enc}", f"train.max_steps={steps}", f"model.views={views}", f"train.seed={seed}"]))
            preds = generate_split(run["export_dir"], held, tmp_path / f"{arm}-{seed}.jsonl", batch_size=32,
                                   progress=False)
            texts = {json.loads(x)["study_id"]: json.loads(x)["report"] for x in preds.read_text().splitlines()}
            scores[arm].append(change_f1([texts[r["study_id"]] for r in held], refs)["change_f1_micro"])
    margin = float(np.mean(scores["prior"]) - np.mean(scores["none"]))
    spread = max(max(v) - min(v) for v in scores.values())
    print(scores, margin, spread)
    assert margin > spread, (scores, margin, spread)
