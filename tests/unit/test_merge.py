"""`mxr0 prepare merge` (issue 17, item 2): MS-CXR phrases and boxes joined onto their MIMIC-CXR study's report,
patient-level split leakage across the sources, and the prior / current laterality check. Fixtures in each
source's exact format (MIMIC-CXR-JPG tables and folders; MS-CXR's Local Alignment CSV)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.records import read_records

META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
        "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning"]
MSCXR = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height", "split"]


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _path(subject: str, study: str, dicom: str) -> str:
    return f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"


def make_sources(tmp: Path) -> tuple[Path, Path]:
    """MIMIC-CXR-JPG: p10233088 (train) s50000001 (PA d0, earlier) and s54276838 (PA d1, LATERAL d1lat);
    p11000011 (test) s56699142 (PA d2a, AP d2). MS-CXR v1.1.0: d1 (train, agrees), d2 (train: conflicts with
    MIMIC's test), d9 (a study MIMIC's records lack)."""
    mimic = tmp / "mimic-cxr-jpg"
    imgs = [("d0", "10233088", "50000001", "PA", "train", "21500101"), ("d1", "10233088", "54276838", "PA", "train",
            "21500301"), ("d1lat", "10233088", "54276838", "LATERAL", "train", "21500301"),
            ("d2a", "11000011", "56699142", "PA", "test", "21600101"), ("d2", "11000011", "56699142", "AP", "test",
            "21600101")]
    _csv(mimic / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
         [[d, st, su, sp] for d, su, st, _, sp, _ in imgs])
    _csv(mimic / "mimic-cxr-2.0.0-metadata.csv", META,
         [[d, su, st, "CHEST", v, 20, 20, date, "120000", "CHEST", "", ""] for d, su, st, v, _, date in imgs])
    for d, su, st, *_ in imgs:
        p = mimic / _path(su, st, d)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 20), 90, np.uint8)).save(p)
        rep = mimic / "mimic-cxr-reports" / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}.txt"
        rep.parent.mkdir(parents=True, exist_ok=True)
        rep.write_text(f"FINDINGS: Small left pleural effusion in study {st}.\n\nIMPRESSION: Effusion.\n")
    ms = tmp / "ms-cxr"
    rows = [
        ["d1", "Pleural Effusion", "small left pleural effusion", _path("10233088", "54276838", "d1"), 10, 10, 5, 5,
         20, 20, "train"],
        ["d2", "Pneumothorax", "right apical pneumothorax", _path("11000011", "56699142", "d2"), 2, 2, 6, 4, 20, 20,
         "train"],
        ["d9", "Edema", "mild pulmonary edema", _path("12000012", "59999999", "d9"), 1, 1, 8, 8, 20, 20, "val"],
    ]
    _csv(ms / "MS_CXR_Local_Alignment_v1.1.0.csv", MSCXR, rows)
    p9 = mimic / _path("12000012", "59999999", "d9")
    p9.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(p9)
    return mimic, ms


@pytest.fixture
def prepared(tmp_path):
    from mxr0.cli import main

    mimic, ms = make_sources(tmp_path)
    assert main(["prepare", "mimic-cxr", "--root", str(mimic), "--out", str(tmp_path / "m"), "--labeler", "none"]) == 0
    assert main(["prepare", "ms-cxr", "--root", str(ms), "--images", str(mimic), "--out", str(tmp_path / "x")]) == 0
    return tmp_path


def test_merge_joins_ms_cxr_boxes_onto_the_mimic_report(prepared, capsys):
    from mxr0.cli import main
    from mxr0.data.instruct import build_examples

    out = prepared / "merged"
    assert main(["prepare", "merge", "--root", str(prepared / "m"), "--ms-cxr", str(prepared / "x"),
                 "--out", str(out)]) == 0
    recs = {r["study_id"]: r for r in read_records(out)}
    assert set(recs) == {"s50000001", "s54276838", "s56699142", "mscxr-d9"}  # joined MS-CXR images are consumed
    a = recs["s54276838"]
    assert a["findings"].startswith("Small left pleural effusion") and a["split"] == "train"
    assert [(b["phrase"], b["image_index"]) for b in a["boxes"]] == [("small left pleural effusion", 0)]
    assert Path(a["images"][a["boxes"][0]["image_index"]]["path"]).name == "d1.jpg"
    assert a["prior_study_id"] == "s50000001" and a["images"][-1]["role"] == "prior"  # MIMIC priors are kept
    b = recs["s56699142"]
    assert Path(b["images"][0]["path"]).name == "d2.jpg"  # the boxed frontal is moved first ...
    assert b["boxes"][0]["image_index"] == 0 and b["split"] == "test"  # ... and MIMIC's split wins
    assert recs["mscxr-d9"]["split"] == "validation"  # no MIMIC study: kept with its own split
    report = json.loads((out / "merge_report.json").read_text())
    assert report["joined_images"] == 2 and report["joined_boxes"] == 2 and report["studies_with_boxes"] == 2
    assert report["split_conflicts"] == [{"subject": "p11000011", "image": "d2", "ms_cxr_split": "train",
                                          "mimic_split": "test"}]
    assert report["n_split_conflicts"] == 1 and report["ms_cxr_without_mimic_study"] == ["mscxr-d9"]
    assert report["label_disagreements"] == {"Pleural Effusion": 1, "Pneumothorax": 1}  # labeler was "none"
    assert report["leaks"] == {}
    # grounded-report examples now have real targets: the report's sentences and the MS-CXR boxes
    examples, _ = build_examples(list(recs.values()), ["grounded_report"])
    by_study = {list(recs)[ex.record]: ex for ex in examples}
    assert by_study["s54276838"].answer.startswith("Findings: Small left pleural effusion")
    assert by_study["s54276838"].meta["phrases"][0][0] == "small left pleural effusion"
    assert by_study["s56699142"].meta["phrases"][0][0] == "right apical pneumothorax"


def test_merge_names_leaking_subjects_and_bad_paths(prepared):
    from mxr0.data.merge import merge_records
    from mxr0.data.sources import SourceError

    mimic = read_records(prepared / "m")
    ms = read_records(prepared / "x")
    leaky = copy.deepcopy(mimic)
    next(r for r in leaky if r["study_id"] == "s50000001")["split"] = "test"  # the same patient in two splits
    _, report = merge_records(leaky, copy.deepcopy(ms), check_laterality=False)
    assert report["leaks"] == {"p10233088": ["test", "train"]}
    bad = copy.deepcopy(ms)
    bad[1]["images"][0]["path"] = "/data/elsewhere/d2.jpg"
    with pytest.raises(SourceError, match=r"ms.jsonl, row 1, field 'images\[0\].path'.*not a MIMIC-CXR path"):
        merge_records(copy.deepcopy(mimic), bad, ms_source="ms.jsonl")


def test_cli_merge_needs_the_ms_cxr_records(prepared, capsys):
    from mxr0.cli import main

    assert main(["prepare", "merge", "--root", str(prepared / "m"), "--out", str(prepared / "o")]) == 2
    assert "--ms-cxr" in capsys.readouterr().err


def test_laterality_check_names_a_mirrored_prior(tmp_path):
    from mxr0.data.merge import laterality_flips
    from mxr0.data.phantom import generate_phantom

    recs = [r for r in read_records(generate_phantom(tmp_path / "p", n_studies=30, image_size=64, seed=2, workers=0,
                                                     progress=False, prior_fraction=1.0)) if r["prior_study_id"]]
    clean = laterality_flips(recs)
    assert clean["laterality_checked"] == len(recs) and clean["n_flipped"] == 0
    flipped = copy.deepcopy(recs)
    for r in flipped:
        prior = r["images"][-1]
        a = np.ascontiguousarray(np.asarray(Image.open(prior["path"]))[:, ::-1])
        prior["path"] = str(tmp_path / f"{r['study_id']}_mirrored.png")
        Image.fromarray(a).save(prior["path"])
    rep = laterality_flips(flipped)
    assert rep["n_flipped"] >= 0.6 * len(recs)  # a near-symmetric pair cannot tell; most can
    named = [f for f in rep["flipped"] if f["role"] == "prior"]
    assert len(named) >= 0.8 * rep["n_flipped"] and all(f["image"].endswith("_mirrored.png") for f in named)
    assert all(f["mirrored"] > f["same"] for f in rep["flipped"])
