"""Issue 17, items 3 and 5: any anatomy (dicom-folder, folder-csv, MURA) and more real sources (NIH's 14
findings, TBX11K, the COVID sets with notes). Fixtures in each source's exact format; the real samples
under ../shared/data are converted too when present (skipped otherwise)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.records import ANATOMIES, read_records
from mxr0.data.sources import SourceError, convert
from mxr0.data.sources import covid_notes, dicom_folder, folder_csv, mura, nih_boxes

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NIH14 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
         "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")


def _png(path: Path, shape=(16, 16), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape).astype(np.uint8)).save(path)
    return path


def _csv(path: Path, header: list[str], rows: list[list], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _dicom(path: Path, study_uid: str, body_part: str | None, view: str = "PA") -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    fm = FileMetaDataset()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.Modality, ds.ViewPosition = study_uid, "DX", view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN7654321"
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60).astype(np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# any anatomy
# ---------------------------------------------------------------------------------------------
def test_dicom_folder_takes_the_anatomy_from_body_part_examined_or_a_column(tmp_path):
    root = tmp_path / "export"
    uids = [f"1.2.826.0.1.3680043.8.498.{k}" for k in range(5)]
    for uid, part in zip(uids, ["CHEST", "LSPINE", "KNEE", "SPLEEN", None]):
        _dicom(root / f"{uid[-1]}.dcm", uid, part)
    table = _csv(tmp_path / "studies.csv", ["StudyInstanceUID", "report"], [[u, "Normal."] for u in uids])
    records, skips = dicom_folder.build_records(root, table, tmp_path / "out", salt="s")
    by_uid = {r["study_id"]: r["anatomy"] for r in records}
    assert [by_uid[dicom_folder.hashed_study_id(u, "s")] for u in uids] == ["chest", "spine", "knee", "other", "chest"]
    assert skips.notes == {"anatomy SPLEEN → other": 1,
                           "anatomy missing (no column value, no BodyPartExamined) → chest": 1}
    # a CSV column wins over the header
    table2 = _csv(tmp_path / "s2.csv", ["StudyInstanceUID", "Body Part"], [[u, "Hand"] for u in uids])
    records, _ = dicom_folder.build_records(root, table2, tmp_path / "out2", salt="s", anatomy_column="Body Part")
    assert {r["anatomy"] for r in records} == {"hand"}
    with pytest.raises(SourceError, match=r"s2\.csv: anatomy column 'part' not found"):
        dicom_folder.build_records(root, table2, tmp_path / "out3", salt="s", anatomy_column="part")


def test_folder_csv_any_format_any_anatomy(tmp_path):
    root = tmp_path / "collection"
    _png(root / "Smith_John" / "a.png", (12, 10))
    Image.fromarray(np.full((12, 10), 128, np.uint8)).save(root / "Smith_John" / "b.jpg")
    _png(root / "x" / "c.png", seed=1)
    _dicom(root / "x" / "d.dcm", "1.2.3", "ELBOW", view="LL")
    _png(root / "x" / "e.png", seed=2)
    table = _csv(tmp_path / "table.csv", ["study", "file", "anatomy", "view", "split", "Fracture", "sex", "age"], [
        ["k1", "Smith_John/a.png", "Wrist", "PA", "train", "1", "F", "71"],
        ["k1", "Smith_John/b.jpg", "Wrist", "lateral", "train", "1", "F", "71"],
        ["k2", "x/c.png", "paw", "", "test", "0", "M", "30"],
        ["k3", "x/d.dcm", "", "", "val", "", "", ""],
        ["k4", "x/e.png", "", "AP", "train", "", "", ""],
    ])
    path = convert("folder-csv", root, tmp_path / "out", table=table, salt="s", show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    from mxr0.data.sources.dicom_folder import hashed_study_id

    sid = {k: hashed_study_id(k, "s").replace("dcm-", "img-") for k in ("k1", "k2", "k3", "k4")}
    a, b, c, d = (recs[sid[k]] for k in ("k1", "k2", "k3", "k4"))
    assert a["source"] == "folder-csv" and a["anatomy"] == "wrist" and [im["view"] for im in a["images"]] == ["PA", "LATERAL"]
    assert a["labels"]["Fracture"] == 1 and a["sex"] == "F" and a["age"] == 71 and a["split"] == "train"
    assert b["anatomy"] == "other"  # an unknown value, counted
    assert c["anatomy"] == "elbow" and c["images"][0]["view"] == "LL"  # from BodyPartExamined / ViewPosition
    assert d["anatomy"] == "other"  # nothing known: folder-csv's default
    text = path.read_text() + " ".join(str(p) for p in (tmp_path / "out").rglob("*"))
    for phi in ("Smith", "Doe", "MRN7654321"):
        assert phi not in text
    assert all(Path(im["path"]).suffix == ".png" for r in recs.values() for im in r["images"])
    _, skips = folder_csv.build_records(root, table, tmp_path / "out2", salt="s")
    assert skips.notes["anatomy PAW → other"] == 1
    assert sum(v for k, v in skips.notes.items() if k.startswith("anatomy missing")) == 1  # k4 (k3: its header)


def _mura_fixture(root: Path) -> Path:
    base = root / "MURA-v1.1"
    studies = [("train", "XR_WRIST", "patient00001", "study1_positive", 2),
               ("train", "XR_FINGER", "patient00002", "study1_negative", 1),
               ("train", "XR_FINGER", "patient00002", "study2_positive", 1),
               ("valid", "XR_HUMERUS", "patient11185", "study1_positive", 2),
               ("valid", "XR_FOREARM", "patient11186", "study1_negative", 1),
               ("valid", "XR_KNEECAP", "patient11187", "study1_negative", 1)]
    rows = {"train": [], "valid": []}
    paths = {"train": [], "valid": []}
    for k, (split, part, patient, study, n) in enumerate(studies):
        rel = f"MURA-v1.1/{split}/{part}/{patient}/{study}/"
        rows[split].append([rel, "1" if study.endswith("positive") else "0"])
        for i in range(n):
            _png(root / rel / f"image{i + 1}.png", seed=k * 10 + i)
            paths[split].append([rel + f"image{i + 1}.png"])
    for split in ("train", "valid"):
        with open(base / f"{split}_labeled_studies.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows[split])
        with open(base / f"{split}_image_paths.csv", "w", newline="") as f:
            csv.writer(f).writerows(paths[split])
    return base


def test_mura_layout_body_parts_and_study_labels(tmp_path):
    _mura_fixture(tmp_path / "mura")
    path = convert("mura", tmp_path / "mura", tmp_path / "out", show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert len(recs) == 6
    w = recs["mura-train-wrist-patient00001-study1"]
    assert w["anatomy"] == "wrist" and len(w["images"]) == 2 and w["source_labels"] == {"mura:abnormal": 1}
    assert w["split"] in ("train", "validation")
    assert recs["mura-train-finger-patient00002-study1"]["anatomy"] == "hand"
    assert recs["mura-train-finger-patient00002-study1"]["source_labels"]["mura:abnormal"] == 0
    assert recs["mura-train-finger-patient00002-study1"]["split"] == recs["mura-train-finger-patient00002-study2"]["split"]
    h = recs["mura-valid-humerus-patient11185-study1"]
    assert h["anatomy"] == "humerus" and h["split"] == "test" and h["source_labels"]["mura:abnormal"] == 1
    assert recs["mura-valid-forearm-patient11186-study1"]["anatomy"] == "forearm"
    assert recs["mura-valid-kneecap-patient11187-study1"]["anatomy"] == "other"  # an unknown part, counted
    assert {r["anatomy"] for r in recs.values()} <= set(ANATOMIES)
    _, skips = mura.build_records(tmp_path / "mura", tmp_path / "o2")
    assert skips.notes == {"anatomy XR_KNEECAP → other": 1}
    # a label table that contradicts the folder names the file and row
    (tmp_path / "mura" / "MURA-v1.1" / "valid_labeled_studies.csv").write_text(
        "MURA-v1.1/valid/XR_HUMERUS/patient11185/study1_positive/,0\n")
    with pytest.raises(SourceError, match=r"valid_labeled_studies\.csv, row 1, field 'label'"):
        mura.build_records(tmp_path / "mura", tmp_path / "o3")


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14: all 14 findings
# ---------------------------------------------------------------------------------------------
def _nih_fixture(root: Path, wide: bool) -> Path:
    (root).mkdir(parents=True)
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                             "00000001_000.png,Nodule,100,100,50,50\n")
    if wide:
        header = ["Image Index", "Patient ID", *NIH14, "No Finding"]
        _csv(root / "labels.csv", header, [
            ["00000001_000.png", "1", *[int(f in ("Nodule", "Emphysema")) for f in NIH14], 0],
            ["00000002_000.png", "2", *[0] * 14, 1],
            ["00000003_000.png", "3", *[int(f in ("Hernia", "Fibrosis")) for f in NIH14], 0]])
    else:
        _csv(root / "Data_Entry_2017_v2020.csv", ["Image Index", "Finding Labels", "Follow-up #", "Patient ID",
                                                  "Patient Age", "Patient Gender", "View Position"], [
            ["00000001_000.png", "Nodule|Emphysema", "0", "1", "60", "M", "PA"],
            ["00000002_000.png", "No Finding", "0", "2", "30", "F", "PA"],
            ["00000003_000.png", "Hernia|Fibrosis", "0", "3", "70", "F", "AP"]])
    for k in (1, 2, 3):
        _png(root / "images" / f"0000000{k}_000.png", (32, 32), seed=k)
    return root


@pytest.mark.parametrize("wide", [False, True])
def test_nih_keeps_all_14_findings(tmp_path, wide):
    root = _nih_fixture(tmp_path / "nih", wide)
    path = convert("nih-boxes", root, tmp_path / "out", all_images=True, show_progress=False,
                   **({"data_entry": root / "labels.csv"} if wide else {}))
    recs = {r["study_id"]: r for r in read_records(path)}
    a, b, c = recs["nih-00000001_000"], recs["nih-00000002_000"], recs["nih-00000003_000"]
    for r in (a, b, c):
        assert set(r["source_labels"]) == {f"nih:{f}" for f in NIH14}
    assert {k for k, v in a["source_labels"].items() if v} == {"nih:Nodule", "nih:Emphysema"}
    assert a["labels"]["Lung Lesion"] == 1 and len(a["boxes"]) == 1
    assert not any(b["source_labels"].values()) and b["labels"]["No Finding"] == 1
    assert {k for k, v in c["source_labels"].items() if v} == {"nih:Hernia", "nih:Fibrosis"}  # dropped before
    assert not any(v == 1 for v in c["labels"].values())


def test_nih_wide_table_bad_cell_names_file_row_field(tmp_path):
    root = _nih_fixture(tmp_path / "nih", wide=True)
    lines = (root / "labels.csv").read_text().splitlines()
    lines[2] = lines[2].replace("00000002_000.png,2,0", "00000002_000.png,2,yes")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"labels\.csv, row 3, field 'Atelectasis'"):
        nih_boxes.build_records(root, tmp_path / "out", data_entry=root / "labels.csv", all_images=True)


@pytest.mark.skipif(not (SHARED / "nih_cxr14").is_dir(), reason="../shared/data/nih_cxr14 not present")
def test_nih_shared_data(tmp_path):
    nih = SHARED / "nih_cxr14"
    path = convert("nih-boxes", nih, tmp_path / "out", data_entry=nih / "labels_subset_from_gnsandeep_CS598Project.csv",
                   all_images=True, show_progress=False)
    recs = read_records(path)
    labelled = [r for r in recs if len(r["source_labels"]) == 14]
    assert len(labelled) == 57  # the labelled subset whose images are here
    positives = {k for r in labelled for k, v in r["source_labels"].items() if v == 1}
    assert {"nih:Emphysema", "nih:Fibrosis", "nih:Hernia"} <= positives
    assert sum(len(r["boxes"]) for r in recs) >= 10


# ---------------------------------------------------------------------------------------------
# TBX11K
# ---------------------------------------------------------------------------------------------
def test_tbx11k_coco_fixture(tmp_path):
    root = tmp_path / "TBX11K"
    _png(root / "imgs" / "tb" / "tb0001.png", (100, 200))
    _png(root / "imgs" / "health" / "h0001.png", (100, 100))
    _png(root / "imgs" / "sick" / "s0001.png", (100, 100))
    coco = {"categories": [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "ObsoletePulmonaryTuberculosis"}],
            "images": [{"id": 1, "file_name": "tb/tb0001.png", "width": 200, "height": 100},
                       {"id": 2, "file_name": "health/h0001.png", "width": 100, "height": 100},
                       {"id": 3, "file_name": "sick/s0001.png", "width": 100, "height": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 10, 40, 30]},
                            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [150, 50, 400, 30]}]}  # 2nd: outside
    (root / "annotations" / "json").mkdir(parents=True)
    (root / "annotations" / "json" / "TBX11K_val.json").write_text(json.dumps(coco))
    path = convert("tbx11k", root, tmp_path / "out", show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    tb = recs["tbx11k-tb0001"]
    assert tb["split"] == "validation" and len(tb["boxes"]) == 1
    bx = tb["boxes"][0]
    assert (bx["label"], bx["phrase"]) == ("ActiveTuberculosis", "active tuberculosis")
    assert (bx["x0"], bx["y0"], bx["x1"], bx["y1"]) == pytest.approx((0.1, 0.1, 0.3, 0.4))
    assert tb["source_labels"] == {"tbx11k:tuberculosis": 1, "tbx11k:sick_non_tb": 0, "tbx11k:ActiveTuberculosis": 1}
    assert recs["tbx11k-h0001"]["source_labels"]["tbx11k:tuberculosis"] == 0
    assert recs["tbx11k-h0001"]["labels"]["No Finding"] == 1
    assert recs["tbx11k-s0001"]["source_labels"] == {"tbx11k:tuberculosis": 0, "tbx11k:sick_non_tb": 1}
    coco["annotations"][0]["category_id"] = 9
    (root / "annotations" / "json" / "TBX11K_val.json").write_text(json.dumps(coco))
    with pytest.raises(SourceError, match=r"TBX11K_val\.json, row 0, field 'annotations\[0\]\.category_id'"):
        convert("tbx11k", root, tmp_path / "out2", show_progress=False)


@pytest.mark.skipif(not (SHARED / "tbx11k").is_dir(), reason="../shared/data/tbx11k not present")
def test_tbx11k_shared_data(tmp_path):
    recs = {r["study_id"]: r for r in read_records(convert("tbx11k", SHARED / "tbx11k", tmp_path / "out",
                                                           show_progress=False))}
    assert set(recs) == {"tbx11k-tb0005", "tbx11k-tb0007", "tbx11k-h0001"}
    assert len(recs["tbx11k-tb0007"]["boxes"]) == 2 and recs["tbx11k-h0001"]["boxes"] == []
    assert all(0 <= b["x0"] < b["x1"] <= 1 for r in recs.values() for b in r["boxes"])


# ---------------------------------------------------------------------------------------------
# COVID-19 sets with clinical notes
# ---------------------------------------------------------------------------------------------
_COVID_HEADER = ["patientid", "offset", "sex", "age", "finding", "survival", "temperature", "pO2 saturation", "view",
                 "modality", "artifacts/distortion", "notes"]


def test_covid_notes_fixture_latin1_notes_as_indication(tmp_path):
    root = tmp_path / "covid"
    fig = root / "figure1"
    _csv(fig / "metadata.csv", _COVID_HEADER, [
        ["COVID-00001", "13", "M", "33", "COVID-19", "", "", "58", "AP erect", "X-ray", "",
         "Fever 38° and cough. O2 saturation 58%."],
        ["COVID-00003a", "", "F", "50+", "Pneumonia", "", "", "", "PA", "X-ray", "", "N/A"],
        ["COVID-00003b", "", "F", "", "No finding", "", "", "", "", "X-ray", "", ""],
        ["COVID-00009", "", "", "", "", "", "", "", "AP", "X-ray", "", "absent image"],
    ], encoding="latin-1")
    for name in ("COVID-00001.png", "COVID-00003a.jpg", "COVID-00003b.png"):
        _png(fig / "images" / name)
    am = root / "actualmed"
    header = _COVID_HEADER[:10] + ["imagename"] + _COVID_HEADER[10:]
    _csv(am / "metadata.csv", header, [
        ["ANON1", "", "", "", "COVID-19", "", "", "", "PA", "X-ray", "CR.1.2.840.1.2020.png", "",
         "Positive, date taken (YYYYMMDD): 20200313"]])
    _png(am / "images" / "CR.1.2.840.1.2020.png")
    path = convert("covid-notes", root, tmp_path / "out", show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert len(recs) == 4
    a = recs["covid-figure1-COVID-00001"]
    assert a["indication"] == "Fever 38° and cough. O2 saturation 58%."  # latin-1 read right
    assert a["images"][0]["view"] == "AP" and a["sex"] == "M" and a["age"] == 33
    assert a["source_labels"] == {"covid:COVID-19": 1, "covid:Pneumonia": 0, "covid:No finding": 0}
    b, c = recs["covid-figure1-COVID-00003a"], recs["covid-figure1-COVID-00003b"]
    assert b["indication"] == "" and b["age"] is None and b["labels"]["Pneumonia"] == 1
    assert c["labels"]["No Finding"] == 1 and b["split"] == c["split"]  # one patient, one split
    (d,) = [r for sid, r in recs.items() if sid.startswith("covid-actualmed-")]
    assert d["indication"] == "Positive"
    assert "20200313" not in json.dumps(d)  # the acquisition date is not kept
    with pytest.raises(SourceError, match=r"metadata\.csv, row 2, field 'finding'"):
        _csv(am / "metadata.csv", header, [["ANON1", "", "", "", "Flu", "", "", "", "PA", "X-ray",
                                            "CR.1.2.840.1.2020.png", "", ""]])
        covid_notes.build_records(am, tmp_path / "o2")


@pytest.mark.skipif(not (SHARED / "covid_notes").is_dir(), reason="../shared/data/covid_notes not present")
def test_covid_notes_shared_data(tmp_path):
    recs = read_records(convert("covid-notes", SHARED / "covid_notes", tmp_path / "out", show_progress=False))
    sets = {r["study_id"].split("-")[1] for r in recs}
    assert sets == {"figure1", "actualmed"} and len(recs) >= 100
    fig = [r for r in recs if r["study_id"].startswith("covid-figure1-")]
    assert len(fig) == 55 and sum(bool(r["indication"]) for r in fig) >= 40
    assert any("°" in r["indication"] or "%" in r["indication"] for r in fig)
    assert not any(__import__("re").search(r"\b2020\d{4}\b", r["indication"]) for r in recs)


def test_cli_prepare_registers_the_new_sources(tmp_path, capsys):
    from mxr0.cli import main
    from mxr0.data.sources import SOURCES

    assert {"jsrt", "siim-acr", "chexmask", "tbx11k", "covid-notes", "mura", "folder-csv"} <= set(SOURCES)
    _mura_fixture(tmp_path / "mura")
    assert main(["prepare", "mura", "--root", str(tmp_path / "mura"), "--out", str(tmp_path / "out"),
                 "--cache-size", "8", "--workers", "1"]) == 0
    assert len(read_records(tmp_path / "out" / "cache-8")) == 6
