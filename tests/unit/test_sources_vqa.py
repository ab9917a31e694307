"""VQA source converters: SLAKE, VQA-RAD, ReXVQA, Medical-Diff-VQA → canonical records.

Fixtures are written in each source's exact layout (file names, JSON keys, CSV columns and order,
folder structure); question texts imitate the real ones. SLAKE is also checked on the real question
files in ``../shared/data/vqa/slake`` when present (there are no images there).
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.records import read_records, validate_records
from mxr0.data.sources import SOURCES, SourceError, get_converter
from mxr0.data.sources import medical_diff_vqa, rexvqa, slake, vqa_rad

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_png(path: Path, w: int = 16, h: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), 100, np.uint8)).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")
    with f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_registry_has_the_vqa_sources():
    for name in ("slake", "vqa-rad", "rexvqa", "medical-diff-vqa"):
        assert name in SOURCES and callable(get_converter(name))


# ---------------------------------------------------------------------------------------------
# SLAKE
# ---------------------------------------------------------------------------------------------
def _slake_q(img_id, question, answer, lang="en", kind="OPEN", content="Organ", location="Lung", modality="X-Ray",
             qid=0):
    return {"img_id": img_id, "img_name": f"xmlab{img_id}/source.jpg", "question": question, "answer": answer,
            "q_lang": lang, "location": location, "modality": modality, "answer_type": kind, "base_type": "vqa",
            "content_type": content, "triple": ["vhead", "_", "_"], "qid": qid}


def make_slake(root: Path) -> Path:
    train = [
        _slake_q(120, "What modality is used to take this image?", "X-Ray", content="Modality", qid=151),
        _slake_q(120, "Is the lung healthy?", "No", kind="CLOSED", content="Abnormality", qid=152),
        _slake_q(120, "这张图片的成像方式是什么?", "X-Ray", lang="zh", content="Modality", qid=153),
        _slake_q(120, "Which is bigger in this image, left lung or right lung?", "Left", kind="CLOSED",
                 content="Size", qid=154),
        _slake_q(1, "Which organ is abnormal?", "Liver", location="Abdomen", modality="CT", qid=0),
        _slake_q(1, "Does the picture contain liver?", "", kind="CLOSED", location="Abdomen", modality="CT", qid=1),
    ]
    validate = [_slake_q(7, "Is this a study of the chest?", "Yes", kind="CLOSED", location="Chest_heart", qid=9)]
    test = [_slake_q(300, "Where is the brain non-enhancing tumor?", "Lower Left", location="Brain_Tissue",
                     modality="MRI", content="Position", qid=20)]
    for name, items in (("train", train), ("validate", validate), ("test", test)):
        (root / f"{name}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.json").write_text(json.dumps(items, ensure_ascii=False))
    for img_id in (120, 1, 300):  # 7 has no image
        write_png(root / "imgs" / f"xmlab{img_id}" / "source.jpg")
    return root


def test_slake_groups_english_questions_by_image(tmp_path):
    root = make_slake(tmp_path / "slake")
    records, skips = slake.build_records(root, tmp_path / "out")
    validate_records(records)
    by_id = {r["study_id"]: r for r in records}
    assert set(by_id) == {"slake-120", "slake-1", "slake-300"}  # slake-7: image missing
    assert skips.counts == {"image file missing": 1, "empty question or answer": 1}
    r = by_id["slake-120"]
    assert r["split"] == "train" and r["anatomy"] == "chest" and r["source"] == "slake"
    assert [q["question"] for q in r["qa"]] == ["What modality is used to take this image?", "Is the lung healthy?",
                                                "Which is bigger in this image, left lung or right lung?"]
    assert r["qa"][0] == {"question": "What modality is used to take this image?", "answer": "X-Ray",
                          "answer_type": "open", "question_type": "modality", "options": []}
    assert r["qa"][1]["answer"] == "no" and r["qa"][1]["options"] == ["yes", "no"]
    assert r["qa"][1]["answer_type"] == "closed" and r["qa"][1]["question_type"] == "abnormality"
    assert r["qa"][2]["answer"] == "Left" and r["qa"][2]["options"] == [] and r["qa"][2]["answer_type"] == "closed"
    assert by_id["slake-1"]["anatomy"] == "abdomen" and by_id["slake-300"]["anatomy"] == "other"
    assert by_id["slake-300"]["split"] == "test"
    assert (tmp_path / "out" / r["images"][0]["path"]).resolve() == (root / "imgs/xmlab120/source.jpg").resolve()


def test_slake_xray_only_and_no_image_check(tmp_path):
    root = make_slake(tmp_path / "slake")
    path = slake.convert(root, tmp_path / "out", xray_only=True, check_images=False, show_progress=False)
    records = read_records(path)
    assert sorted(r["study_id"] for r in records) == ["slake-120", "slake-7"]
    assert {r["study_id"]: r["split"] for r in records}["slake-7"] == "validation"
    assert {r["study_id"]: r["anatomy"] for r in records}["slake-7"] == "chest"


def test_slake_errors_name_file_row_field(tmp_path):
    root = make_slake(tmp_path / "slake")
    items = json.loads((root / "train.json").read_text())
    del items[3]["answer_type"]
    (root / "train.json").write_text(json.dumps(items))
    with pytest.raises(SourceError, match=r"train\.json, row 3, field 'answer_type'"):
        slake.build_records(root, tmp_path / "out")
    items[3]["answer_type"] = "MAYBE"
    (root / "train.json").write_text(json.dumps(items))
    with pytest.raises(SourceError, match=r"row 3, field 'answer_type'.*OPEN or CLOSED"):
        slake.build_records(root, tmp_path / "out")
    make_slake(root)
    test = json.loads((root / "test.json").read_text()) + [_slake_q(120, "Is there a nodule?", "No", kind="CLOSED")]
    (root / "test.json").write_text(json.dumps(test))
    with pytest.raises(SourceError, match=r"test\.json, row 1, field 'img_id'.*splits by image"):
        slake.build_records(root, tmp_path / "out")
    (root / "validate.json").write_text("[{")
    with pytest.raises(SourceError, match=r"validate\.json: not valid JSON"):
        slake.build_records(root, tmp_path / "out")


@pytest.fixture
def slake_real() -> Path:
    d = SHARED / "vqa" / "slake"
    if not d.is_dir():
        pytest.skip(f"no SLAKE questions at {d}")
    return d


def test_slake_real_full_files(slake_real, tmp_path):
    records, skips = slake.build_records(slake_real, tmp_path, check_images=False)
    validate_records(records)
    count = {s: (sum(r["split"] == s for r in records), sum(len(r["qa"]) for r in records if r["split"] == s))
             for s in ("train", "validation", "test")}
    assert count == {"train": (450, 4918), "validation": (96, 1053), "test": (96, 1061)}
    assert skips.counts == {"empty question or answer": 1}  # train.json qid 1622 has answer ""
    closed = [q for r in records for q in r["qa"] if q["answer_type"] == "closed"]
    assert all(q["answer"] in q["options"] for q in closed if q["options"])
    assert sum(q["options"] == ["yes", "no"] for q in closed) > 0.8 * len(closed)
    assert {r["anatomy"] for r in records} == {"chest", "abdomen", "pelvis", "other"}


def test_slake_real_xray_subsets_match_the_xray_filter(slake_real, tmp_path):
    sub = tmp_path / "xray"
    sub.mkdir()
    for split in ("train", "validate", "test"):
        (sub / f"{split}_en_xray.json").symlink_to(slake_real / f"{split}_en_xray.json")
    subset, _ = slake.build_records(sub, tmp_path, check_images=False)
    count = {s: (sum(r["split"] == s for r in subset), sum(len(r["qa"]) for r in subset if r["split"] == s))
             for s in ("train", "validation", "test")}
    assert count == {"train": (122, 1423), "validation": (27, 338), "test": (30, 361)}  # as in the data README
    filtered, _ = slake.build_records(slake_real, tmp_path, check_images=False, xray_only=True)
    assert {(r["study_id"], r["split"], q["question"], q["answer"]) for r in subset for q in r["qa"]} == \
        {(r["study_id"], r["split"], q["question"], q["answer"]) for r in filtered for q in r["qa"]}


# ---------------------------------------------------------------------------------------------
# VQA-RAD
# ---------------------------------------------------------------------------------------------
def _rad_q(qid, image, question, answer, kind="CLOSED", qtype="PRES", organ="CHEST", phrase="freeform"):
    return {"qid": qid, "image_name": image, "image_case_url": f"https://medpix.nlm.nih.gov/case?id={qid}",
            "image_organ": organ, "answer": answer, "answer_type": kind, "question_type": qtype,
            "question": question, "question_rephrase": "NULL", "phrase_type": phrase, "evaluation": "not evaluated",
            "question_relation": "NULL", "qid_linked_id": "NULL", "question_frame": "NULL"}


def make_vqa_rad(root: Path) -> Path:
    items = [
        _rad_q("0", "synpic54610.jpg", "Are regions of the brain infarcted?", "Yes", organ="HEAD"),
        _rad_q("1", "synpic29265.jpg", "Is there evidence of an aortic aneurysm?", "yes", kind="CLOSED "),
        _rad_q("2", "synpic29265.jpg", "Where is the lesion?", "Right upper lobe", kind="OPEN", qtype="POS"),
        _rad_q("3", "synpic29265.jpg", "How many ribs are fractured?", 2, kind="OPEN", qtype="COUNT",
               phrase="test_freeform"),
        _rad_q("4", "synpic29265.jpg", "Is an aortic aneurysm present?", "Yes", phrase="test_para"),
        _rad_q("5", "synpic100.jpg", "Is the heart enlarged?", "No", qtype="SIZE, PRES", phrase="para"),
        _rad_q("6", "synpic500.jpg", "Is there free air?", "No", organ="ABD"),
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(items))
    for name in ("synpic54610.jpg", "synpic29265.jpg", "synpic500.jpg"):  # synpic100 missing
        write_png(root / "VQA_RAD Image Folder" / name)
    return root


def test_vqa_rad_chest_split_convention_and_answers(tmp_path):
    root = make_vqa_rad(tmp_path / "rad")
    records, skips = vqa_rad.build_records(root, tmp_path / "out")
    validate_records(records)
    by_id = {r["study_id"]: r for r in records}
    assert set(by_id) == {"vqa-rad-train-synpic29265", "vqa-rad-test-synpic29265"}
    assert skips.counts == {"organ not kept (HEAD)": 1, "organ not kept (ABD)": 1, "image file missing": 1}
    train, test = by_id["vqa-rad-train-synpic29265"], by_id["vqa-rad-test-synpic29265"]
    assert train["split"] == "train" and test["split"] == "test"
    assert train["qa"][0] == {"question": "Is there evidence of an aortic aneurysm?", "answer": "yes",
                              "answer_type": "closed", "question_type": "pres", "options": ["yes", "no"]}
    assert train["qa"][1]["answer_type"] == "open" and train["qa"][1]["options"] == []
    assert test["qa"][0]["answer"] == "2" and test["qa"][0]["question_type"] == "count"
    assert test["qa"][1]["answer"] == "yes"
    assert train["images"][0]["path"] == test["images"][0]["path"]


def test_vqa_rad_all_organs_and_errors(tmp_path):
    root = make_vqa_rad(tmp_path / "rad")
    path = vqa_rad.convert(root, tmp_path / "out", organs=None, check_images=False, show_progress=False)
    records = {r["study_id"]: r for r in read_records(path)}
    assert records["vqa-rad-train-synpic54610"]["anatomy"] == "other"
    assert records["vqa-rad-train-synpic500"]["anatomy"] == "abdomen"
    assert records["vqa-rad-train-synpic100"]["qa"][0]["question_type"] == "size, pres"
    items = json.loads((root / "VQA_RAD Dataset Public.json").read_text())
    items[2]["phrase_type"] = "holdout"
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(items))
    with pytest.raises(SourceError, match=r"Public\.json, row 2, field 'phrase_type'"):
        vqa_rad.build_records(root, tmp_path / "out")
    del items[2]["question"]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(items))
    with pytest.raises(SourceError, match=r"row 2, field 'question'.*qid 2"):
        vqa_rad.build_records(root, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# ReXVQA
# ---------------------------------------------------------------------------------------------
def _rex_image(patient: str, n: int) -> str:
    return (f"../deid_png/{patient}/GRDNACC{n}/studies/1.2.826.0.1.{n}/series/1.2.826.0.2.{n}/instances/"
            f"1.2.826.0.3.{n}.png")


def _rex_q(study, question, options, correct, task="presence assessment", images=(), views=(), age="072Y", sex="F"):
    return {"question": question, "options": options, "correct_answer": correct,
            "correct_answer_explanation": "The report describes it.", "task_name": task, "category": "Lung",
            "class": "detail", "subcategory": "opacity", "study_id": study, "StudyInstanceUid": f"1.2.{study}",
            "PatientID": "GRDNP1", "PatientAge": age, "PatientSex": sex, "StudyDate": "20190101",
            "Indication": "Cough.", "Comparison": "None.", "Findings": "Left basilar opacity.",
            "Impression": "Possible  pneumonia.", "ImagePath": list(images), "ImageModality": ["DX"] * len(images),
            "ImageViewPosition": list(views)}


def make_rexvqa(root: Path) -> Path:
    a1, a2, b1 = _rex_image("GRDNP1", 1), _rex_image("GRDNP1", 2), _rex_image("GRDNP2", 3)
    opts = ["A. Pleural effusion", "B. Left lower lobe opacity", "C. Pneumothorax", "D. Cardiomegaly"]
    train = {
        "q1": _rex_q("S1", "What is the most likely finding?", opts, "B", images=[a2, a1], views=["LL", "PA"]),
        "q2": _rex_q("S1", "Is there a pneumothorax?", ["A. Yes", "B. No", "C. Cannot be determined", "D. Small"],
                     "B", task="negation detection", images=[a2, a1], views=["LL", "PA"]),
    }
    test = {"q3": _rex_q("S2", "Where is the opacity?", ["A. Left", "B. Right", "C. Both", "D. Neither"], "A",
                         task="location analysis", images=[b1], views=["AP"], age="200", sex="M")}
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "train_vqa_data.json").write_text(json.dumps(train))
    (root / "metadata" / "test_vqa_data.json").write_text(json.dumps(test))
    for rel in (a1, a2):  # b1 missing
        write_png(root / rel.removeprefix("../"))
    return root


def test_rexvqa_studies_options_sections(tmp_path):
    root = make_rexvqa(tmp_path / "rex")
    records, skips = rexvqa.build_records(root, tmp_path / "out")
    validate_records(records)
    assert [r["study_id"] for r in records] == ["rexvqa-S1"]
    assert skips.counts == {"image file missing": 1, "study without any image file": 1,
                            "age out of range (kept as unknown)": 1}
    r = records[0]
    assert r["qa"][0] == {"question": "What is the most likely finding?", "answer": "Left lower lobe opacity",
                          "answer_type": "closed", "question_type": "presence assessment",
                          "options": ["Pleural effusion", "Left lower lobe opacity", "Pneumothorax", "Cardiomegaly"]}
    assert r["qa"][1]["answer"] == "No" and r["qa"][1]["question_type"] == "negation detection"
    assert [im["view"] for im in r["images"]] == ["PA", "LL"]  # frontal first
    assert all(im["role"] == "current" for im in r["images"])
    assert (tmp_path / "out" / r["images"][0]["path"]).resolve() == \
        (root / _rex_image("GRDNP1", 1).removeprefix("../")).resolve()
    assert r["indication"] == "Cough." and r["impression"] == "Possible pneumonia." and r["comparison"] == "None."
    assert r["sex"] == "F" and r["age"] == 72.0 and r["split"] == "train"


def test_rexvqa_no_image_check_and_errors(tmp_path):
    root = make_rexvqa(tmp_path / "rex")
    path = rexvqa.convert(root, tmp_path / "out", check_images=False, show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert recs["rexvqa-S2"]["split"] == "test" and recs["rexvqa-S2"]["age"] is None
    assert recs["rexvqa-S2"]["images"][0]["view"] == "AP"
    data = json.loads((root / "metadata" / "test_vqa_data.json").read_text())
    data["q3"]["correct_answer"] = "E"
    (root / "metadata" / "test_vqa_data.json").write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"test_vqa_data\.json, field 'correct_answer'.*question q3"):
        rexvqa.build_records(root, tmp_path / "out")
    data["q3"]["correct_answer"] = "A"
    data["q3"]["study_id"] = "S1"
    (root / "metadata" / "test_vqa_data.json").write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"question q3: study S1 is also in the train split"):
        rexvqa.build_records(root, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Medical-Diff-VQA
# ---------------------------------------------------------------------------------------------
PAIR_HEADER = ["study_id", "subject_id", "ref_id", "question_type", "question", "answer", "split"]
MIMIC_ALL_HEADER = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                    "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices", "dicom_id",
                    "view", "split", "study_date", "study_order"]


def make_diff_vqa(root: Path, mimic_all: bool = True) -> Path:
    write_csv(root / "mimic_pair_questions.csv", PAIR_HEADER, [
        [55088298, 18936629, 54989200, "abnormality", "what abnormalities are seen in the soft tissues?",
         "atelectasis", "train"],
        [55088298, 18936629, 54989200, "presence", "is there edema?", "no", "train"],
        [55088298, 18936629, 54989200, "difference", "what has changed compared to the reference image?",
         "the main image has an additional finding of pneumothorax than the reference image.", "train"],
        [51480826, 18936629, 50632107, "location", "where is the pneumothorax?", "left apical area", "test"],
        [51480826, 18936629, 50632107, "difference", "what has changed compared to the reference image?",
         "nothing has changed.", "test"],
    ])
    studies = [("55088298", "d-main-1", "postero-anterior"), ("54989200", "d-ref-1", "antero-posterior"),
               ("51480826", "d-main-2", "postero-anterior"), ("50632107", "d-ref-2", "postero-anterior")]
    if mimic_all:
        write_csv(root / "mimic_all.csv", MIMIC_ALL_HEADER,
                  [["18936629", st] + [""] * 14 + [d, v, "train", 21800506, k + 1]
                   for k, (st, d, v) in enumerate(studies)])
    else:
        write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
                  [[d, "18936629", st, "PA" if v.startswith("postero") else "AP"] for st, d, v in studies]
                  + [["a-lateral", "18936629", "55088298", "LATERAL"]], gz=True)
    for st, d, _ in studies[:3]:  # the second pair's reference image is missing
        write_png(root / "files" / "p18" / "p18936629" / f"s{st}" / f"{d}.jpg")
    return root


def test_medical_diff_vqa_pairs_with_prior_image(tmp_path):
    root = make_diff_vqa(tmp_path / "mdv")
    records, skips = medical_diff_vqa.build_records(root, tmp_path / "out")
    validate_records(records)
    by_id = {r["study_id"]: r for r in records}
    assert set(by_id) == {"mdvqa-s55088298-s54989200", "mdvqa-s51480826-s50632107"}
    a = by_id["mdvqa-s55088298-s54989200"]
    assert [(im["role"], im["view"]) for im in a["images"]] == [("current", "PA"), ("prior", "AP")]
    assert a["images"][1]["path"].endswith("s54989200/d-ref-1.jpg")
    assert [q["question_type"] for q in a["qa"]] == ["abnormality", "presence", "difference"]
    assert a["qa"][1] == {"question": "is there edema?", "answer": "no", "answer_type": "closed",
                          "question_type": "presence", "options": ["yes", "no"]}
    assert a["qa"][0]["answer_type"] == "open" and a["split"] == "train"
    b = by_id["mdvqa-s51480826-s50632107"]
    assert b["split"] == "test" and [q["question_type"] for q in b["qa"]] == ["location"]
    assert [im["role"] for im in b["images"]] == ["current"]
    assert skips.counts == {"reference image missing: difference question dropped": 1}


def test_medical_diff_vqa_metadata_fallback_and_errors(tmp_path):
    root = make_diff_vqa(tmp_path / "mdv", mimic_all=False)
    path = medical_diff_vqa.convert(root, tmp_path / "out", check_images=False, show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    b = recs["mdvqa-s51480826-s50632107"]
    assert [q["question_type"] for q in b["qa"]] == ["location", "difference"]
    assert b["images"][1]["role"] == "prior" and b["images"][0]["path"].endswith("d-main-2.jpg")
    rows = list(csv.reader(open(root / "mimic_pair_questions.csv")))
    rows[3][6] = "dev"
    write_csv(root / "mimic_pair_questions.csv", rows[0], rows[1:])
    with pytest.raises(SourceError, match=r"mimic_pair_questions\.csv, row 4, field 'split'"):
        medical_diff_vqa.build_records(root, tmp_path / "out")
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="mimic_all.csv"):
        medical_diff_vqa.build_records(root, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_prepare_vqa_sources(tmp_path, capsys):
    from mxr0.cli import main

    slake_root = make_slake(tmp_path / "slake")
    assert main(["prepare", "slake", "--root", str(slake_root), "--out", str(tmp_path / "s"),
                 "--no-check-images", "--xray-only"]) == 0
    assert len(read_records(tmp_path / "s")) == 2
    rad = make_vqa_rad(tmp_path / "rad")
    assert main(["prepare", "vqa-rad", "--root", str(rad), "--out", str(tmp_path / "r"), "--all-organs"]) == 0
    assert len(read_records(tmp_path / "r")) == 4
    rex = make_rexvqa(tmp_path / "rex")
    assert main(["prepare", "rexvqa", "--root", str(rex), "--out", str(tmp_path / "x"), "--format", "parquet"]) == 0
    assert len(read_records(tmp_path / "x" / "records.parquet")) == 1
    mdv = make_diff_vqa(tmp_path / "mdv")
    assert main(["prepare", "medical-diff-vqa", "--root", str(tmp_path), "--images", str(mdv),
                 "--out", str(tmp_path / "m")]) == 1
    assert "mimic_pair_questions.csv" in capsys.readouterr().err
    assert main(["prepare", "medical-diff-vqa", "--root", str(mdv), "--out", str(tmp_path / "m")]) == 0
