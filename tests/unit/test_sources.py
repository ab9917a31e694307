"""Source converters: MIMIC-CXR-JPG, IU X-ray, CheXpert, a DICOM folder → canonical records.

Fixtures are written in each source's exact file layout (column names and order, folder structure,
XML elements); the report texts are made up in the real reports' style. IU X-ray is also checked on
the real report files in ``../shared/data/iu_xray`` when present.
"""

from __future__ import annotations

import csv
import gzip
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.records import CHEXPERT_LABELS, read_records
from mxr0.data.sources import SOURCES, SourceError, convert, get_converter, normalise_view
from mxr0.data.sources.sections import split_sections

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
MIMIC_LABEL_COLUMNS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
                       "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
                       "Pneumonia", "Pneumothorax", "Support Devices"]
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices"]


def write_csv(path: Path, header: list[str], rows: list[list], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")
    with f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jpg(path: Path, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(path, format="JPEG")


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
MIMIC_STANDARD = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with shortness of breath  // eval for
 pneumonia
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  ___
 
 FINDINGS: 
 
 The lungs are clear without focal consolidation.  No pleural effusion or
 pneumothorax is seen.  The cardiac and mediastinal silhouettes are
 unremarkable.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""

MIMIC_OLD_STYLE = """                                 FINAL REPORT
 PA AND LATERAL CHEST RADIOGRAPH ___
 
 HISTORY: Cough. COMPARISON: ___. FINDINGS: Heart size is normal. Small left
 pleural effusion.  IMPRESSION: Small left effusion.
"""

MIMIC_IMPRESSION_ONLY = """                                 FINAL REPORT
 CLINICAL HISTORY:  Line placement.
 
 IMPRESSION:  Right internal jugular line ends in the
 mid SVC.  No pneumothorax.
 
 NOTIFICATION:  The findings were discussed with Dr. ___ at 10:15 on ___.
"""

MIMIC_NO_HEADERS = """                                 FINAL REPORT
 Single portable view of the chest.  Endotracheal tube
 in standard position.
"""

MIMIC_UNLABELLED_BODY = """                                 FINAL REPORT
 WET READ: ___ ___ ___ 4:15 PM
   No pneumonia.
 ______________________________________________________________________________
 REASON FOR EXAMINATION:  Fever.
 
 COMPARISON:  Radiograph from ___.
 
 Frontal and lateral views show clear lungs.  Heart size
 normal.
 
 CONCLUSION:  No pneumonia.
"""

MIMIC_FINDINGS_AND_IMPRESSION = """FINAL REPORT
INDICATION: Chest pain.
FINDINGS AND IMPRESSION: Normal heart and lungs.
RECOMMENDATION(S):  Follow-up in ___ weeks.
"""


def test_sections_standard_mimic_report():
    s = split_sections(MIMIC_STANDARD)
    assert s == {
        "indication": "___F with shortness of breath // eval for pneumonia",
        "technique": "Chest PA and lateral",
        "comparison": "___",
        "findings": "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax is "
                    "seen. The cardiac and mediastinal silhouettes are unremarkable.",
        "impression": "No acute cardiopulmonary process.",
    }


def test_sections_inline_headers_and_history():
    s = split_sections(MIMIC_OLD_STYLE)
    assert s["indication"] == "Cough."
    assert s["comparison"] == "___."
    assert s["findings"] == "Heart size is normal. Small left pleural effusion."
    assert s["impression"] == "Small left effusion."
    assert s["technique"] == ""


def test_sections_impression_without_findings_and_trailing_notification():
    s = split_sections(MIMIC_IMPRESSION_ONLY)
    assert s["findings"] == ""
    assert s["indication"] == "Line placement."
    assert s["impression"] == "Right internal jugular line ends in the mid SVC. No pneumothorax."


def test_sections_without_headers_keep_the_text_as_findings():
    s = split_sections(MIMIC_NO_HEADERS)
    assert s["findings"] == "Single portable view of the chest. Endotracheal tube in standard position."
    assert s["impression"] == s["indication"] == ""


def test_sections_unlabelled_body_wet_read_and_conclusion():
    s = split_sections(MIMIC_UNLABELLED_BODY)
    assert s["indication"] == "Fever."
    assert s["comparison"] == "Radiograph from ___."
    assert s["findings"] == "Frontal and lateral views show clear lungs. Heart size normal."
    assert s["impression"] == "No pneumonia."
    assert "4:15" not in " ".join(s.values())


def test_sections_findings_and_impression_and_recommendation():
    s = split_sections(MIMIC_FINDINGS_AND_IMPRESSION)
    assert s["findings"] == "Normal heart and lungs."
    assert s["impression"] == ""
    assert "Follow-up" not in " ".join(s.values())


def test_sections_keep_structured_subheaders_inside_findings():
    s = split_sections("FINDINGS:\n LINES/TUBES: ET tube 4 cm above the carina.\n LUNGS: Clear.\n"
                       " HEART: Normal size.\n\nIMPRESSION: Tube in place.\n\nADDENDUM: ___ called.")
    assert s["findings"] == "LINES/TUBES: ET tube 4 cm above the carina. LUNGS: Clear. HEART: Normal size."
    assert s["impression"] == "Tube in place."


def test_sections_mixed_case_headers_and_crlf():
    s = split_sections("Indication: cough\r\nFindings: clear\r\nlungs.\r\nImpression: normal.")
    assert (s["indication"], s["findings"], s["impression"]) == ("cough", "clear lungs.", "normal.")


@pytest.mark.parametrize("raw, view", [("PA", "PA"), ("AP", "AP"), ("LATERAL", "LATERAL"), ("LL", "LL"),
                                       ("RL", "RL"), ("postero-anterior", "PA"), ("XTABLE LATERAL", "LATERAL"),
                                       ("LAO", "OBLIQUE"), ("AP AXIAL", ""), ("SWIMMERS", ""), ("", ""), (None, "")])
def test_normalise_view(raw, view):
    assert normalise_view(raw) == view


def test_registry():
    assert {"iu-xray", "mimic-cxr", "chexpert", "dicom-folder"} <= set(SOURCES)  # VQA / box sources: test_sources_*
    for name in SOURCES:
        assert callable(get_converter(name))
    with pytest.raises(ValueError, match="unknown source"):
        get_converter("nope")


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG
# ---------------------------------------------------------------------------------------------
MIMIC_META_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                     "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                     "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]


def make_mimic(root: Path, gz: bool = False) -> Path:
    """Three studies of two subjects; one lateral image file missing; one study without a report."""
    images = [  # dicom_id, subject, study, split, ViewPosition, ViewCodeSequence
        ("d1-lat", "10000032", "50414267", "train", "LATERAL", "lateral"),
        ("d1-pa", "10000032", "50414267", "train", "PA", "postero-anterior"),
        ("d2-ap", "10000032", "53189527", "validate", "AP", "antero-posterior"),
        ("d2-missing", "10000032", "53189527", "validate", "LL", "left lateral"),
        ("d3-blank", "11000011", "56699142", "test", "", "postero-anterior"),
        ("d3-axial", "11000011", "56699142", "test", "AP AXIAL", "antero-posterior"),
    ]
    write_csv(root / ("mimic-cxr-2.0.0-split.csv" + (".gz" if gz else "")),
              ["dicom_id", "study_id", "subject_id", "split"],
              [[d, st, su, sp] for d, su, st, sp, _, _ in images], gz)
    write_csv(root / ("mimic-cxr-2.0.0-metadata.csv" + (".gz" if gz else "")), MIMIC_META_HEADER,
              [[d, su, st, "CHEST (PA AND LAT)", vp, 3056, 2544, 21800506, 213014.531, "CHEST (PA AND LAT)", vc,
                "Erect"] for d, su, st, _, vp, vc in images], gz)
    chexpert = {"50414267": {"No Finding": "1.0"},
                "53189527": {"Pleural Effusion": "1.0", "Edema": "-1.0", "Pneumothorax": "0.0",
                             "Support Devices": "1.0"}}
    negbio = {"50414267": {"No Finding": "1.0"}, "53189527": {"Pleural Effusion": "0.0"}}
    for name, table in (("chexpert", chexpert), ("negbio", negbio)):
        write_csv(root / (f"mimic-cxr-2.0.0-{name}.csv" + (".gz" if gz else "")),
                  ["subject_id", "study_id"] + MIMIC_LABEL_COLUMNS,
                  [["10000032", st] + [vals.get(c, "") for c in MIMIC_LABEL_COLUMNS] for st, vals in table.items()],
                  gz)
    for d, su, st, _, _, _ in images:
        if d != "d2-missing":
            write_jpg(root / "files" / f"p{su[:2]}" / f"p{su}" / f"s{st}" / f"{d}.jpg")
    reports = root / "mimic-cxr-reports" / "files" / "p10" / "p10000032"
    reports.mkdir(parents=True)
    (reports / "s50414267.txt").write_text(MIMIC_STANDARD)
    (reports / "s53189527.txt").write_text(MIMIC_IMPRESSION_ONLY)
    return root


def test_mimic_cxr_converts_studies_splits_views_labels_reports(tmp_path):
    root = make_mimic(tmp_path / "mimic-cxr-jpg" / "2.0.0")
    out = tmp_path / "out"
    path = convert("mimic-cxr", root, out, show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert set(recs) == {"s50414267", "s53189527", "s56699142"}
    a, b, c = recs["s50414267"], recs["s53189527"], recs["s56699142"]
    assert (a["split"], b["split"], c["split"]) == ("train", "validation", "test")
    assert [im["view"] for im in a["images"]] == ["PA", "LATERAL"]  # frontal first
    assert [Path(im["path"]).name for im in a["images"]] == ["d1-pa.jpg", "d1-lat.jpg"]
    assert all(Path(im["path"]).is_file() and im["role"] == "current" for r in recs.values() for im in r["images"])
    assert [im["view"] for im in b["images"]] == ["AP"]  # the LL image file is missing: skipped
    assert sorted(im["view"] for im in c["images"]) == ["", "PA"]  # blank → ViewCode fallback; AP AXIAL → ""
    assert a["impression"] == "No acute cardiopulmonary process." and a["technique"] == "Chest PA and lateral"
    assert b["findings"] == "" and b["impression"].startswith("Right internal jugular line")
    assert c["findings"] == c["impression"] == ""  # no report file
    assert a["labels"]["No Finding"] == 1 and a["labels"]["Cardiomegaly"] is None
    assert b["labels"]["Pleural Effusion"] == 1 and b["labels"]["Edema"] == -1 and b["labels"]["Pneumothorax"] == 0
    assert b["labels"]["Support Devices"] == 1 and b["labels"]["Enlarged Cardiomediastinum"] is None
    assert all(v is None for v in c["labels"].values())
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(not Path(im["path"]).is_absolute() for r in raw for im in r["images"])


def test_mimic_cxr_negbio_gz_tables_and_no_labels(tmp_path):
    root = make_mimic(tmp_path / "m", gz=True)
    recs = {r["study_id"]: r for r in read_records(convert("mimic-cxr", root, tmp_path / "o1", labeler="negbio",
                                                           show_progress=False))}
    assert recs["s53189527"]["labels"]["Pleural Effusion"] == 0
    recs = read_records(convert("mimic-cxr", root, tmp_path / "o2", labeler=None, fmt="parquet",
                                show_progress=False))
    assert all(v is None for r in recs for v in r["labels"].values())


def test_mimic_cxr_bad_rows_name_file_row_and_field(tmp_path):
    root = make_mimic(tmp_path / "m")
    split = root / "mimic-cxr-2.0.0-split.csv"
    split.write_text(split.read_text().replace("validate", "valid"))
    with pytest.raises(SourceError, match=r"mimic-cxr-2.0.0-split.csv, row 4, field 'split'"):
        convert("mimic-cxr", root, tmp_path / "o", show_progress=False)
    root = make_mimic(tmp_path / "m2")
    labels = root / "mimic-cxr-2.0.0-chexpert.csv"
    labels.write_text(labels.read_text().replace("-1.0", "maybe"))
    with pytest.raises(SourceError, match=r"chexpert.csv, row 3, field 'Edema'"):
        convert("mimic-cxr", root, tmp_path / "o", show_progress=False)


# ---------------------------------------------------------------------------------------------
# IU X-ray
# ---------------------------------------------------------------------------------------------
def iu_xml(uid: int, image_ids: list[str], sections: dict[str, str], mesh: list[str]) -> str:
    texts = "\n".join(f'            <AbstractText Label="{k}">{v}</AbstractText>' for k, v in sections.items())
    images = "\n".join(f'   <parentImage id="{i}">\n      <figureId>F1</figureId>\n      <caption>Xray Chest PA and '
                       f'Lateral</caption>\n   </parentImage>' for i in image_ids)
    majors = "\n".join(f"      <major>{m}</major>" for m in mesh)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{uid}"/>
   <pmcId id="{uid}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{uid}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
{texts}
         </Abstract>
      </Article>
   </MedlineCitation>
   <MeSH>
{majors}
      <minor>Lung/hypoinflation</minor>
   </MeSH>
{images}
</eCitation>
"""


def make_iu(root: Path) -> Path:
    reports = root / "ecgen-radiology"
    reports.mkdir(parents=True)
    (reports / "1.xml").write_text(iu_xml(1, ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
                                          {"COMPARISON": "None.", "INDICATION": "Positive TB test",
                                           "FINDINGS": "The heart is normal.\n   Lungs are clear.",
                                           "IMPRESSION": "Normal chest x-XXXX."}, ["normal"]))
    (reports / "2.xml").write_text(iu_xml(2, ["CXR2_IM-0652-1001", "CXR2_IM-0652-2001"],
                                          {"COMPARISON": "", "INDICATION": "Preop.", "FINDINGS": "",
                                           "IMPRESSION": "No acute findings."}, ["Cardiomegaly/borderline"]))
    (reports / "3.xml").write_text(iu_xml(3, ["CXR3_IM-1384-1001"], {"IMPRESSION": "Clear."}, ["normal"]))
    (reports / "4.xml").write_text(iu_xml(4, ["CXR4_IM-2050-1001", "CXR4_IM-2050-2001"],
                                          {"FINDINGS": "Clear lungs."}, ["normal"]))
    ann = {"train": [{"id": "CXR1_1_IM-0001", "report": "the heart is normal.", "image_path":
                      ["CXR1_1_IM-0001/0.png", "CXR1_1_IM-0001/1.png"], "split": "train"}],
           "val": [{"id": "CXR4_IM-2050", "report": "clear lungs.", "image_path": [], "split": "val"}],
           "test": [{"id": "CXR2_IM-0652", "report": "", "image_path": [], "split": "test"}]}
    (root / "r2gen_annotation.json").write_text(json.dumps(ann))
    write_csv(root / "kaggle_iu_projections.csv", ["uid", "filename", "projection"],
              [[1, "1_IM-0001-4001.dcm.png", "Frontal"], [1, "1_IM-0001-3001.dcm.png", "Lateral"],
               [2, "2_IM-0652-1001.dcm.png", "Frontal"], [2, "2_IM-0652-2001.dcm.png", "Lateral"],
               [4, "4_IM-2050-1001.dcm.png", "Frontal"], [4, "4_IM-2050-2001.dcm.png", "Lateral"]])
    write_jpg(root / "images" / "CXR1_1_IM-0001-3001.png")  # OpenI names (content need not be PNG here)
    write_jpg(root / "images" / "CXR1_1_IM-0001-4001.png")
    write_jpg(root / "images" / "kaggle" / "2_IM-0652-2001.dcm.png")  # Kaggle name; CXR2's frontal missing
    return root


def test_iu_xray_fixture_with_images(tmp_path):
    root = make_iu(tmp_path / "iu")
    recs = {r["study_id"]: r for r in read_records(convert("iu-xray", root, tmp_path / "o", show_progress=False))}
    assert set(recs) == {"CXR1", "CXR2"}  # CXR3: not in the R2Gen split; CXR4: no image file
    a, b = recs["CXR1"], recs["CXR2"]
    assert (a["split"], b["split"]) == ("train", "test")
    assert [(Path(im["path"]).name, im["view"]) for im in a["images"]] == [
        ("CXR1_1_IM-0001-4001.png", ""), ("CXR1_1_IM-0001-3001.png", "LATERAL")]
    assert [im["view"] for im in b["images"]] == ["LATERAL"]
    assert a["findings"] == "The heart is normal. Lungs are clear." and a["indication"] == "Positive TB test"
    assert a["comparison"] == "None." and b["findings"] == "" and b["impression"] == "No acute findings."
    assert all(v is None for r in recs.values() for v in r["labels"].values())


def test_iu_xray_report_only_and_unsplit_train(tmp_path):
    root = make_iu(tmp_path / "iu")
    from mxr0.data.sources.iu_xray import build_records

    with pytest.raises(ValueError, match="report_only"):
        build_records(root / "ecgen-radiology", tmp_path / "o", split_file=root / "r2gen_annotation.json")
    recs = {r["study_id"]: r for r in read_records(convert("iu-xray", root, tmp_path / "o", report_only=True,
                                                           unsplit="train", frontal_view="PA",
                                                           show_progress=False))}
    assert set(recs) == {"CXR1", "CXR2", "CXR3", "CXR4"}
    assert recs["CXR3"]["split"] == "train" and recs["CXR4"]["split"] == "validation"
    assert all(r["images"] == [] for r in recs.values())


def test_iu_xray_malformed_xml_names_the_file(tmp_path):
    root = make_iu(tmp_path / "iu")
    (root / "ecgen-radiology" / "5.xml").write_text("<eCitation><uId id='CXR5'/>")
    with pytest.raises(SourceError, match=r"5\.xml: not valid XML"):
        convert("iu-xray", root, tmp_path / "o", show_progress=False)


@pytest.fixture
def iu_real(shared_data: Path) -> Path:
    d = shared_data / "iu_xray"
    if not (d / "NLMCXR_reports.tgz").is_file():
        pytest.skip(f"no IU X-ray reports at {d}")
    return d


def test_iu_xray_real_reports_match_reference_sections_and_r2gen_split(iu_real, tmp_path):
    from mxr0.data.sources.iu_xray import iter_reports, r2gen_id

    with tarfile.open(iu_real / "NLMCXR_reports.tgz") as tar:
        tar.extractall(tmp_path, filter="data")
    reports = {r.uid: r for r in iter_reports(tmp_path / "ecgen-radiology")}
    assert len(reports) == 3955
    assert sum(len(r.image_ids) for r in reports.values()) == 7470

    ref = {f"CXR{json.loads(line)['uid']}": json.loads(line)
           for line in (iu_real / "iu_studies.jsonl").read_text().splitlines()}
    assert set(ref) == set(reports)
    fields = ("indication", "comparison", "findings", "impression")
    agree = sum(all(reports[u].sections[f] == ref[u][f] for f in fields) for u in ref)
    assert agree / len(ref) >= 0.99, agree  # 3953 of 3955: two references keep double spaces
    agree = sum(all(reports[u].sections[f] == " ".join(ref[u][f].split()) for f in fields) for u in ref)
    assert agree == len(ref)
    ids = sum({r2gen_id(i) for i in reports[u].image_ids} >= {ref[u]["r2gen_id"]} for u in ref if ref[u]["r2gen_id"])
    assert ids == sum(1 for u in ref if ref[u]["r2gen_id"])

    with open(iu_real / "kaggle_iu_reports.csv", newline="") as f:
        kaggle = {f"CXR{row['uid']}": row for row in csv.DictReader(f)}
    agree = sum(all(reports[u].sections[f] == " ".join(kaggle[u][f].split()) for f in fields) for u in kaggle)
    assert agree / len(kaggle) >= 0.99, agree

    out = convert("iu-xray", iu_real, tmp_path / "out", report_only=True, show_progress=False)
    recs = read_records(out)
    counts = {s: sum(r["split"] == s for r in recs) for s in ("train", "validation", "test")}
    assert counts == {"train": 2069, "validation": 296, "test": 590}


def test_iu_xray_real_projections_and_header_views(iu_real):
    from mxr0.data.sources.iu_xray import iter_reports, load_projections, view_of

    views = load_projections(iu_real / "kaggle_iu_projections.csv", iu_real / "nlmcxr_dicom_metadata.csv.gz")
    got = {i: view_of(views, r.uid, i) for r in iter_reports(iu_real / "NLMCXR_reports.tgz") for i in r.image_ids}
    assert len(got) == 7470
    assert got["CXR1_1_IM-0001-3001"] == "LATERAL" and got["CXR2_IM-0652-1001"] == ""
    assert got["CXR1_1_IM-0001-4001"] == "PA"
    assert len(views) >= 7400  # the Kaggle table lists (almost) every image
    assert sum(v in ("LATERAL", "LL", "RL") for v in got.values()) > 3500
    counts = {v: list(got.values()).count(v) for v in set(got.values())}
    assert counts["PA"] > 2000 and counts["AP"] > 300 and counts["LL"] > 600
    assert set(counts) <= {"PA", "AP", "LATERAL", "LL", "RL", ""}


# ---------------------------------------------------------------------------------------------
# CheXpert
# ---------------------------------------------------------------------------------------------
def chexpert_row(path: str, sex: str, age, fl: str, appa: str, **labels) -> list:
    return [path, sex, age, fl, appa] + [labels.get(c.replace(" ", "_"), "") for c in CHEXPERT_COLUMNS[5:]]


def make_chexpert(parent: Path) -> Path:
    root = parent / "CheXpert-v1.0-small"
    train = [
        chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal",
                     "AP", No_Finding="1.0", Support_Devices="1.0"),
        chexpert_row("CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg", "Male", 87, "Frontal", "PA",
                     Cardiomegaly="-1.0", Pleural_Effusion="0.0"),
        chexpert_row("CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg", "Male", 87, "Lateral", "",
                     Cardiomegaly="-1.0", Pleural_Effusion="0.0"),
        chexpert_row("CheXpert-v1.0-small/train/patient00002/study1/view1_lateral.jpg", "Unknown", 86, "Lateral", "",
                     Edema="1.0"),
    ]
    valid = [chexpert_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal",
                          "AP", Cardiomegaly="1.0", Lung_Opacity="0.0")]
    write_csv(root / "train.csv", CHEXPERT_COLUMNS, train)
    write_csv(root / "valid.csv", CHEXPERT_COLUMNS, valid)
    for row in train + valid:
        write_jpg(parent / row[0])
    return root


def test_chexpert_groups_studies_with_sex_age_views_labels(tmp_path):
    root = make_chexpert(tmp_path)
    recs = {r["study_id"]: r for r in read_records(convert("chexpert", root, tmp_path / "out", show_progress=False))}
    assert set(recs) == {"train/patient00001/study1", "train/patient00002/study2", "train/patient00002/study1",
                         "valid/patient64541/study1"}
    a, b = recs["train/patient00001/study1"], recs["train/patient00002/study2"]
    c, v = recs["train/patient00002/study1"], recs["valid/patient64541/study1"]
    assert (a["sex"], a["age"], [im["view"] for im in a["images"]]) == ("F", 68.0, ["AP"])
    assert (b["sex"], [im["view"] for im in b["images"]]) == ("M", ["PA", "LATERAL"])
    assert c["sex"] == "" and c["labels"]["Edema"] == 1
    assert a["labels"]["No Finding"] == 1 and a["labels"]["Support Devices"] == 1 and a["labels"]["Edema"] is None
    assert b["labels"]["Cardiomegaly"] == -1 and b["labels"]["Pleural Effusion"] == 0
    assert v["split"] == "validation" and v["labels"]["Lung Opacity"] == 0
    assert {r["split"] for r in recs.values()} == {"train", "validation"}
    assert all(Path(im["path"]).is_file() for r in recs.values() for im in r["images"])


def test_chexpert_bad_cells_and_missing_images(tmp_path):
    root = make_chexpert(tmp_path)
    (tmp_path / "CheXpert-v1.0-small/train/patient00002/study1/view1_lateral.jpg").unlink()
    recs = read_records(convert("chexpert", root, tmp_path / "o", show_progress=False))
    assert len(recs) == 3  # the study whose only image is missing is skipped
    text = (root / "valid.csv").read_text()
    (root / "valid.csv").write_text(text.replace(",73,", ",seventy,"))
    with pytest.raises(SourceError, match=r"valid.csv, row 2, field 'Age'"):
        convert("chexpert", root, tmp_path / "o", show_progress=False)
    (root / "valid.csv").write_text(text.replace("Male", "Man"))
    with pytest.raises(SourceError, match=r"valid.csv, row 2, field 'Sex'"):
        convert("chexpert", root, tmp_path / "o", show_progress=False)


# ---------------------------------------------------------------------------------------------
# DICOM folder
# ---------------------------------------------------------------------------------------------
PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN7654321", "PatientBirthDate": "19461231",
       "StudyDate": "20230415", "AccessionNumber": "ACC998877", "InstitutionName": "St Example Hospital",
       "ReferringPhysicianName": "House^Greg"}


def make_dicom(path: Path, study_uid: str, view: str, value: int = 1000, **tags) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60 + value % 7).astype(np.uint16)
    fm = FileMetaDataset()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.Modality, ds.ViewPosition = "DX", view
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for k, v in {**PHI, **tags}.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_export(root: Path) -> tuple[Path, Path]:
    uid1, uid2 = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
    make_dicom(root / "MRN7654321_Doe" / "a.dcm", uid1, "LL")
    make_dicom(root / "MRN7654321_Doe" / "b.dcm", uid1, "PA")
    make_dicom(root / "other" / "c.dcm", uid2, "AP", PatientName="Roe^Rick", PatientID="MRN1112223")
    (root / "other" / "broken.dcm").write_bytes(b"DICM" * 10)
    table = write_csv(root.parent / "studies.csv",
                      ["StudyInstanceUID", "split", "report", "Cardiomegaly", "pleural effusion"],
                      [[uid1, "train", "INDICATION: cough.\nFINDINGS: Heart is enlarged.\nIMPRESSION: Cardiomegaly.",
                        "1", "0"],
                       [uid2, "val", "Lungs are clear.", "", "-1.0"]])
    return table, root


def test_dicom_folder_by_study_uid_writes_pngs_and_no_phi(tmp_path):
    table, root = make_export(tmp_path / "export")
    out = tmp_path / "out"
    path = convert("dicom-folder", root, out, table=table, show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert len(recs) == 2 and all(sid.startswith("dcm-") and len(sid) == 20 for sid in recs)
    a, b = sorted(recs.values(), key=lambda r: len(r["images"]), reverse=True)
    assert [im["view"] for im in a["images"]] == ["PA", "LL"]
    assert (a["split"], b["split"]) == ("train", "validation")
    assert a["findings"] == "Heart is enlarged." and a["impression"] == "Cardiomegaly." and a["indication"] == "cough."
    assert b["findings"] == "Lungs are clear."
    assert a["labels"]["Cardiomegaly"] == 1 and a["labels"]["Pleural Effusion"] == 0
    assert b["labels"]["Pleural Effusion"] == -1 and b["labels"]["Cardiomegaly"] is None
    for r in recs.values():
        for im in r["images"]:
            assert Path(im["path"]).suffix == ".png" and Path(im["path"]).is_relative_to(out / "images")
            img = np.asarray(Image.open(im["path"]))
            assert img.shape == (8, 8) and img.max() > img.min()
    text = path.read_text()
    files = " ".join(str(p.relative_to(out)) for p in out.rglob("*"))
    for value in [*PHI.values(), "Doe", "Jane", "Roe^Rick", "MRN1112223", "2023", "1946",
                  "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222", "MRN7654321_Doe"]:
        assert value not in text, value
        assert value not in files, value


def test_dicom_folder_study_ids_are_salted_by_default(tmp_path, monkeypatch, caplog):
    """Issue #16: hashed study ids of patient-derived keys get a random salt, kept beside the data
    (mode 0600) so reruns keep the ids, overridable by --salt / $MXR0_STUDY_ID_SALT, never logged."""
    import logging
    import os
    import stat

    from mxr0.cli import main
    from mxr0.data.sources.dicom_folder import SALT_FILE, hashed_study_id

    monkeypatch.delenv("MXR0_STUDY_ID_SALT", raising=False)
    table, root = make_export(tmp_path / "export")
    uids = ["1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"]
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        path = convert("dicom-folder", root, out, table=table, show_progress=False)
    ids = {r["study_id"] for r in read_records(path)}
    assert ids.isdisjoint({hashed_study_id(u) for u in uids})  # not the unsalted hash anyone can recompute
    salt = (out / SALT_FILE).read_text().strip()
    assert len(salt) >= 32 and stat.S_IMODE(os.stat(out / SALT_FILE).st_mode) == 0o600
    assert ids == {hashed_study_id(u, salt) for u in uids}
    assert salt not in caplog.text and salt not in path.read_text()
    assert ids == {r["study_id"] for r in read_records(convert("dicom-folder", root, out, table=table,
                                                                       show_progress=False))}  # same folder, same ids
    other = {r["study_id"] for r in read_records(convert("dicom-folder", root, tmp_path / "o2", table=table,
                                                                 show_progress=False))}
    assert other.isdisjoint(ids)  # another folder, another salt
    monkeypatch.setenv("MXR0_STUDY_ID_SALT", "env-secret")
    got = {r["study_id"] for r in read_records(convert("dicom-folder", root, tmp_path / "o3", table=table,
                                                               show_progress=False))}
    assert got == {hashed_study_id(u, "env-secret") for u in uids} and not (tmp_path / "o3" / SALT_FILE).exists()
    monkeypatch.delenv("MXR0_STUDY_ID_SALT")
    assert main(["prepare", "dicom-folder", "--root", str(root), "--table", str(table), "--out",
                 str(tmp_path / "o4"), "--salt", "cli-secret"]) == 0
    assert {r["study_id"] for r in read_records(tmp_path / "o4")} == {hashed_study_id(u, "cli-secret") for u in uids}


def test_dicom_folder_by_path_column_with_given_keys_and_sections(tmp_path):
    root = tmp_path / "export"
    make_dicom(root / "x1.dcm", "1.2.3", "PA")
    make_dicom(root / "x2.dcm", "1.2.3", "LATERAL")
    make_dicom(root / "x3.dcm", "1.2.4", "")
    table = write_csv(tmp_path / "index.csv", ["study_id", "path", "Findings", "Impression", "sex", "age"],
                      [["S-001", "x1.dcm", "Clear lungs.", "Normal.", "F", "93"],
                       ["S-001", "x2.dcm", "", "", "F", "93"],
                       ["S-002", "x3.dcm", "", "Effusion.", "Male", ""],
                       ["S-003", "missing.dcm", "", "", "", ""]])
    path = convert("dicom-folder", root, tmp_path / "out", table=table, study_id="key", show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert set(recs) == {"S-001", "S-002"}  # S-003: its only file is missing
    s1, s2 = recs["S-001"], recs["S-002"]
    assert [im["view"] for im in s1["images"]] == ["PA", "LATERAL"] and s2["images"][0]["view"] == ""
    assert (s1["findings"], s1["impression"], s1["sex"], s1["age"]) == ("Clear lungs.", "Normal.", "F", 90.0)
    assert (s2["sex"], s2["age"], s2["impression"]) == ("M", None, "Effusion.")
    assert {r["split"] for r in recs.values()} <= {"train", "validation", "test"}
    again = {r["study_id"]: r["split"] for r in read_records(
        convert("dicom-folder", root, tmp_path / "out2", table=table, study_id="key", show_progress=False))}
    assert again == {k: r["split"] for k, r in recs.items()}  # the hash split is deterministic


def test_dicom_folder_bad_table(tmp_path):
    table, root = make_export(tmp_path / "export")
    with pytest.raises(SourceError, match="study key column 'Accession' not found"):
        convert("dicom-folder", root, tmp_path / "o", table=table, key="Accession", show_progress=False)
    table.write_text(table.read_text().replace(",1,0", ",yes,0"))
    with pytest.raises(SourceError, match=r"studies.csv, row 2, field 'Cardiomegaly'"):
        convert("dicom-folder", root, tmp_path / "o", table=table, show_progress=False)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_prepare_sources(tmp_path, capsys):
    from mxr0.cli import main

    root = make_chexpert(tmp_path)
    assert main(["prepare", "chexpert", "--root", str(root), "--out", str(tmp_path / "c")]) == 0
    assert len(read_records(tmp_path / "c")) == 4
    table, export = make_export(tmp_path / "export")
    assert main(["prepare", "dicom-folder", "--root", str(export), "--table", str(table), "--out",
                 str(tmp_path / "d"), "--format", "parquet"]) == 0
    assert len(read_records(tmp_path / "d" / "records.parquet")) == 2
    assert main(["prepare", "dicom-folder", "--root", str(export), "--out", str(tmp_path / "d")]) == 2
    assert main(["prepare", "chexpert", "--out", str(tmp_path / "x")]) == 2
    assert main(["prepare", "nope", "--root", "x"]) == 2
    assert main(["prepare", "iu-xray", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "unknown source 'nope'" in err and "--table" in err
    assert all(name in err for name in ("iu-xray", "mimic-cxr", "chexpert", "dicom-folder"))


def test_label_columns_cover_all_observations():
    assert sorted(MIMIC_LABEL_COLUMNS) == sorted(CHEXPERT_LABELS) == sorted(CHEXPERT_COLUMNS[5:])
