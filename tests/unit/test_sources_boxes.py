"""Box source converters: MS-CXR, NIH ChestX-ray14 boxes, VinDr-CXR, RSNA pneumonia → canonical records.

Fixtures are written in each source's exact layout (headers, including NIH's comma-split
``Bbox [x,y,w,h]`` header, column order, folder structure, DICOM headers). The real tables in
``../shared/data/boxes`` and ``../shared/data/nih_cxr14`` are converted too when present (they
have no images, or only a few).
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.records import read_records, validate_records
from mxr0.data.sources import SOURCES, SourceError, get_converter, normalise_box
from mxr0.data.sources import ms_cxr, nih_boxes, rsna_pneumonia, vindr_cxr

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write_png(path: Path, w: int = 16, h: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w), 100, np.uint8)).save(path)
    return path


def write_dicom(path: Path, rows: int, columns: int) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", rows, columns
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_lines(path: Path, lines: list[str], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buf.getvalue())
    return path


def by_id(records: list[dict]) -> dict[str, dict]:
    return {r["study_id"]: r for r in records}


def box(b: dict) -> tuple[float, float, float, float]:
    return tuple(round(b[k], 6) for k in ("x0", "y0", "x1", "y1"))


def test_registry_has_the_box_sources():
    for name in ("ms-cxr", "nih-boxes", "vindr-cxr", "rsna-pneumonia"):
        assert name in SOURCES and callable(get_converter(name))


def test_normalise_box_frame_clamp_and_errors():
    assert normalise_box(256, 128, 768, 640, 1024, 1024) == (0.25, 0.125, 0.75, 0.625)
    assert normalise_box(-3, 0, 1030, 512, 1024, 1024)[::2] == (0.0, 1.0)  # within 1 %: clamped
    with pytest.raises(ValueError, match="outside"):
        normalise_box(0, 0, 1100, 10, 1024, 1024)
    with pytest.raises(ValueError, match="empty"):
        normalise_box(10, 10, 10, 20, 1024, 1024)


# ---------------------------------------------------------------------------------------------
# MS-CXR
# ---------------------------------------------------------------------------------------------
MSCXR_HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"]


def make_ms_cxr(root: Path, with_split: bool = True) -> Path:
    p1 = "files/p10/p10233088/s54276838/d1.jpg"
    p2 = "files/p11/p11000011/s56699142/d2.jpg"
    rows = [
        ["d1", "Pleural Effusion", "small left pleural effusion", p1, 256, 512, 512, 256, 1024, 2048, "train"],
        ["d1", "Atelectasis", "bibasilar atelectasis", p1, 100, 1500, 200, 300, 1024, 2048, "train"],
        ["d1", "Atelectasis", "bibasilar atelectasis", p1, 700, 1500, 200, 300, 1024, 2048, "train"],
        ["d1", "Atelectasis", "bibasilar atelectasis", p1, 900, 1900, 300, 300, 1024, 2048, "train"],  # outside
        ["d2", "Pneumothorax", "right apical pneumothorax", p2, 10, 20, 300, 200, 2544, 3056, "val"],
        ["d3", "Edema", "mild pulmonary edema", "files/p12/p12000012/s50000003/d3.jpg", 1, 1, 50, 50, 512, 512,
         "test"],
    ]
    header = MSCXR_HEADER + (["split"] if with_split else [])
    name = "MS_CXR_Local_Alignment_v1.1.0.csv" if with_split else "MS_CXR_Local_Alignment_v1.0.0.csv"
    write_csv(root / name, header, [r if with_split else r[:-1] for r in rows])
    write_png(root / p1)
    write_png(root / p2)
    return root


def test_ms_cxr_boxes_in_the_original_frame(tmp_path):
    root = make_ms_cxr(tmp_path / "ms")
    records, skips = ms_cxr.build_records(root, tmp_path / "out")
    validate_records(records)
    recs = by_id(records)
    assert set(recs) == {"mscxr-d1", "mscxr-d2"}
    assert skips.counts == {"box outside the image or empty": 1, "image file missing": 1}
    d1 = recs["mscxr-d1"]
    assert d1["split"] == "train" and d1["images"][0]["view"] == ""
    assert [(b["phrase"], b["label"]) for b in d1["boxes"]] == [
        ("small left pleural effusion", "Pleural Effusion"), ("bibasilar atelectasis", "Atelectasis"),
        ("bibasilar atelectasis", "Atelectasis")]
    assert box(d1["boxes"][0]) == (0.25, 0.25, 0.75, 0.375)  # x 256+512 of 1024, y 512+256 of 2048
    assert d1["labels"]["Pleural Effusion"] == 1 and d1["labels"]["Atelectasis"] == 1
    assert d1["labels"]["Cardiomegaly"] is None
    assert recs["mscxr-d2"]["split"] == "validation"
    assert box(recs["mscxr-d2"]["boxes"][0]) == (round(10 / 2544, 6), round(20 / 3056, 6), round(310 / 2544, 6),
                                                 round(220 / 3056, 6))


def test_ms_cxr_v1_without_split_uses_mimic_split_and_views(tmp_path):
    root = make_ms_cxr(tmp_path / "ms", with_split=False)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"],
              [["d1", "54276838", "10233088", "validate"]])
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", ["dicom_id", "subject_id", "study_id", "ViewPosition"],
              [["d1", "10233088", "54276838", "PA"], ["d2", "11000011", "56699142", "AP"]])
    path = ms_cxr.convert(root, tmp_path / "out", check_images=False, show_progress=False)
    recs = by_id(read_records(path))
    assert recs["mscxr-d1"]["split"] == "validation" and recs["mscxr-d1"]["images"][0]["view"] == "PA"
    assert recs["mscxr-d2"]["split"] == "test" and recs["mscxr-d3"]["split"] == "test"  # default_split


def test_ms_cxr_errors_name_file_row_field(tmp_path):
    root = make_ms_cxr(tmp_path / "ms")
    rows = list(csv.reader(open(root / "MS_CXR_Local_Alignment_v1.1.0.csv")))
    rows[3][9] = "2000"
    write_csv(root / "MS_CXR_Local_Alignment_v1.1.0.csv", rows[0], rows[1:])
    with pytest.raises(SourceError, match=r"v1\.1\.0\.csv, row 4, field 'image_width'.*earlier row"):
        ms_cxr.build_records(root, tmp_path / "out")
    rows[3][9], rows[2][4] = "2048", "left"
    write_csv(root / "MS_CXR_Local_Alignment_v1.1.0.csv", rows[0], rows[1:])
    with pytest.raises(SourceError, match=r"row 3, field 'x': 'left' is not a number"):
        ms_cxr.build_records(root, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# ---------------------------------------------------------------------------------------------
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def make_nih(root: Path, original_entry: bool = False) -> Path:
    write_lines(root / "BBox_List_2017.csv", [
        BBOX_HEADER,
        "00013118_008.png,Atelectasis,256,128,512,256",
        "00013118_008.png,Infiltrate,10.5,20.25,100,50",
        "00014716_007.png,Effusion,686.101694915254,131.543498411017,185.491525423729,313.491525423729",
        "00000001_001.png,Cardiomegaly|Emphysema,343.4,446.2,120.6,53.5",
        "00000002_000.png,Nodule,1000,1000,100,100",
        "",
    ])
    if original_entry:  # Data_Entry_2017.csv: ages as 058Y and a trailing empty column
        write_lines(root / "Data_Entry_2017.csv", [
            ENTRY_HEADER + ",",
            "00013118_008.png,Atelectasis|Infiltration|Mass,8,13118,058Y,M,AP,2500,2048,0.168,0.168,",
            "00014716_007.png,Effusion|Pleural_Thickening|Hernia,7,14716,041Y,F,PA,2992,2991,0.143,0.143,",
        ])
    else:
        write_lines(root / "Data_Entry_2017_v2020.csv.gz", [
            ENTRY_HEADER,
            "00013118_008.png,Atelectasis|Infiltration|Mass,8,13118,58,M,AP,2500,2048,0.168,0.168",
            "00014716_007.png,Effusion|Pleural_Thickening|Hernia,7,14716,41,F,PA,2992,2991,0.143,0.143",
            "00000003_000.png,No Finding,0,3,30,F,PA,2048,2500,0.171,0.171",
        ], gz=True)
    write_lines(root / "train_val_list.txt", ["00000003_000.png", "00014716_007.png"])
    write_lines(root / "test_list.txt", ["00013118_008.png"])
    write_png(root / "images_001" / "images" / "00013118_008.png", 512, 512)
    write_png(root / "images_002" / "images" / "00014716_007.png", 1024, 1024)
    return root


def test_nih_boxes_1024_frame_labels_and_split(tmp_path):
    root = make_nih(tmp_path / "nih")
    records, skips = nih_boxes.build_records(root, tmp_path / "out")
    validate_records(records)
    recs = by_id(records)
    assert set(recs) == {"nih-00013118_008", "nih-00014716_007"}
    assert skips.counts == {"box row naming several findings": 1, "box outside the image or empty": 1}
    a = recs["nih-00013118_008"]
    assert a["split"] == "test" and a["images"][0]["view"] == "AP" and a["sex"] == "M" and a["age"] == 58
    assert [(b["label"], b["phrase"]) for b in a["boxes"]] == [("Atelectasis", "atelectasis"),
                                                              ("Infiltrate", "infiltrate")]
    assert box(a["boxes"][0]) == (0.25, 0.125, 0.75, 0.375)  # the 1024 frame, not OriginalImage 2500 x 2048
    pos = {k for k, v in a["labels"].items() if v == 1}
    assert pos == {"Atelectasis", "Lung Opacity", "Lung Lesion"} and a["labels"]["Edema"] is None
    b = recs["nih-00014716_007"]
    assert b["split"] == "train" and b["boxes"][0]["label"] == "Pleural Effusion"
    assert {k for k, v in b["labels"].items() if v == 1} == {"Pleural Effusion", "Pleural Other"}
    assert b["images"][0]["path"].endswith("images_002/images/00014716_007.png")


def test_nih_all_images_original_entry_and_errors(tmp_path):
    root = make_nih(tmp_path / "nih")
    path = nih_boxes.convert(root, tmp_path / "out", all_images=True, check_images=False, show_progress=False)
    recs = by_id(read_records(path))
    assert recs["nih-00000003_000"]["labels"]["No Finding"] == 1 and recs["nih-00000003_000"]["boxes"] == []
    assert recs["nih-00000003_000"]["split"] == "train"
    old = make_nih(tmp_path / "old", original_entry=True)
    records, _ = nih_boxes.build_records(old, tmp_path / "out2")
    assert by_id(records)["nih-00014716_007"]["age"] == 41
    lines = (root / "BBox_List_2017.csv").read_text().splitlines()
    lines[2] = "00013118_008.png,Fracture,10,20,100,50"
    write_lines(root / "BBox_List_2017.csv", lines)
    with pytest.raises(SourceError, match=r"BBox_List_2017\.csv, row 3, field 'Finding Label'"):
        nih_boxes.build_records(root, tmp_path / "out")
    lines[2] = "00013118_008.png,Mass,ten,20,100,50"
    write_lines(root / "BBox_List_2017.csv", lines)
    with pytest.raises(SourceError, match=r"row 3, field 'Bbox x'"):
        nih_boxes.build_records(root, tmp_path / "out")


@pytest.fixture
def boxes_real() -> Path:
    d = SHARED / "boxes"
    if not d.is_dir():
        pytest.skip(f"no real box tables at {d}")
    return d


def test_nih_real_tables(boxes_real, tmp_path):
    records, skips = nih_boxes.build_records(boxes_real, tmp_path, check_images=False)
    validate_records(records)
    assert len(records) == 880 and sum(len(r["boxes"]) for r in records) == 984 and not skips.counts
    labels = {b["label"] for r in records for b in r["boxes"]}
    assert labels == {"Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumonia", "Pneumothorax", "Infiltrate",
                      "Mass", "Nodule"}
    assert all(r["images"][0]["view"] in ("PA", "AP") and r["sex"] in ("M", "F") for r in records)
    for r in records:  # every box finding is among the image's labels
        for b in r["boxes"]:
            finding = next(k for k, v in nih_boxes.BOX_LABELS.items() if v[0] == b["label"])
            assert r["labels"][nih_boxes.IMAGE_LABELS[finding]] == 1


def test_nih_real_staged_images_match_their_512px_boxes(tmp_path):
    d = SHARED / "nih_cxr14"
    if not (d / "bbox_for_staged_images.csv").is_file() or not (SHARED / "boxes").is_dir():
        pytest.skip(f"no staged NIH images at {d}")
    records, skips = nih_boxes.build_records(d, tmp_path, data_entry=SHARED / "boxes" / "Data_Entry_2017_v2020.csv.gz")
    validate_records(records)
    assert skips.counts["box row naming several findings"] == 1  # BBox_List_2017_full.csv's extra 'A|B' row
    recs = by_id(records)
    staged = list(csv.DictReader(open(d / "bbox_for_staged_images.csv")))
    assert len(records) == len(staged) == 12
    for row in staged:
        r = recs[f"nih-{Path(row['file']).stem}"]
        assert (tmp_path / r["images"][0]["path"]).is_file()
        assert Image.open(tmp_path / r["images"][0]["path"]).size == (512, 512)
        x, y, w, h = (float(row[k]) for k in ("x_staged", "y_staged", "w_staged", "h_staged"))
        assert np.allclose(box(r["boxes"][0]), (x / 512, y / 512, (x + w) / 512, (y + h) / 512), atol=2e-4)


# ---------------------------------------------------------------------------------------------
# VinDr-CXR
# ---------------------------------------------------------------------------------------------
VINDR_KAGGLE = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]


def make_vindr(root: Path) -> Path:
    write_csv(root / "train.csv", VINDR_KAGGLE, [
        ["img_dcm", "Cardiomegaly", 3, "R10", 1000, 2000, 2000, 2500],
        ["img_dcm", "Cardiomegaly", 3, "R8", 1010, 2010, 2010, 2490],
        ["img_dcm", "Nodule/Mass", 8, "R8", 100, 100, 200, 200],
        ["img_dcm", "No finding", 14, "R9", "", "", "", ""],
        ["img_png", "Pleural effusion", 10, "R1", 0, 600, 300, 900],
        ["img_png", "Aortic enlargement", 0, "R2", 100, 100, 200, 200],
        ["img_png", "Aortic enlargement", 0, "R3", 600, 600, 700, 700],
        ["img_normal", "No finding", 14, "R1", "", "", "", ""],
        ["img_normal", "No finding", 14, "R2", "", "", "", ""],
        ["img_resized", "Atelectasis", 1, "R4", 100, 100, 900, 900],
        ["img_nosize", "Pneumothorax", 12, "R4", 10, 10, 20, 20],
    ])
    write_dicom(root / "train" / "img_dcm.dicom", rows=3000, columns=2500)
    write_png(root / "train" / "img_png.png", 1000, 1000)
    write_png(root / "train" / "img_normal.png", 8, 8)
    write_png(root / "train" / "img_resized.png", 512, 512)
    return root


def test_vindr_sizes_from_dicom_and_png_and_reader_fusion(tmp_path):
    root = make_vindr(tmp_path / "vindr")
    records, skips = vindr_cxr.build_records(root, tmp_path / "out", check_images=False)
    validate_records(records)
    recs = by_id(records)
    assert set(recs) == {"vindr-img_dcm", "vindr-img_png", "vindr-img_normal"}
    assert skips.counts == {"boxes beyond a PNG/JPG image (resized copy? give sizes=)": 1,
                            "image size unknown (no image file, not in sizes)": 1}
    d = recs["vindr-img_dcm"]
    cardio = [b for b in d["boxes"] if b["label"] == "Cardiomegaly"]
    assert len(cardio) == 1 and cardio[0]["phrase"] == "cardiomegaly"  # two readers fused into their mean
    assert box(cardio[0]) == (round(1005 / 2500, 6), round(2005 / 3000, 6), round(2005 / 2500, 6),
                              round(2495 / 3000, 6))
    nodule = [b for b in d["boxes"] if b["label"] == "Nodule/Mass"]
    assert nodule[0]["phrase"] == "nodule or mass" and box(nodule[0]) == (0.04, round(100 / 3000, 6), 0.08,
                                                                          round(200 / 3000, 6))
    assert {k for k, v in d["labels"].items() if v == 1} == {"Cardiomegaly", "Lung Lesion"}
    assert d["labels"]["No Finding"] is None and d["split"] == "train"
    p = recs["vindr-img_png"]
    assert box(next(b for b in p["boxes"] if b["label"] == "Pleural Effusion")) == (0.0, 0.6, 0.3, 0.9)
    assert len([b for b in p["boxes"] if b["label"] == "Aortic enlargement"]) == 2  # no overlap: both kept
    assert recs["vindr-img_normal"]["labels"]["No Finding"] == 1 and recs["vindr-img_normal"]["boxes"] == []
    all_boxes, _ = vindr_cxr.build_records(root, tmp_path / "out", readers="all", check_images=False)
    assert len(by_id(all_boxes)["vindr-img_dcm"]["boxes"]) == 3


def test_vindr_size_table_physionet_layout_and_missing_images(tmp_path):
    root = tmp_path / "physionet"
    header = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    write_csv(root / "annotations" / "annotations_train.csv", header, [["t1", "R5", "Lung Opacity", 10, 10, 110, 60]])
    write_csv(root / "annotations" / "annotations_test.csv", header, [["s1", "R11", "Edema", 0, 0, 500, 500],
                                                                      ["s2", "R11", "No finding", "", "", "", ""]])
    write_csv(tmp_path / "train_meta.csv", ["image_id", "dim0", "dim1"], [["t1", 200, 1000], ["s1", 1000, 500]])
    records, skips = vindr_cxr.build_records(root, tmp_path / "out", sizes=tmp_path / "train_meta.csv",
                                             check_images=False)
    recs = by_id(records)
    assert recs["vindr-t1"]["split"] == "train" and recs["vindr-s1"]["split"] == "test"
    assert box(recs["vindr-t1"]["boxes"][0]) == (0.01, 0.05, 0.11, 0.3)  # dim1 = width 1000, dim0 = height 200
    assert box(recs["vindr-s1"]["boxes"][0]) == (0.0, 0.0, 1.0, 0.5)
    assert recs["vindr-s1"]["labels"]["Edema"] == 1
    records, skips = vindr_cxr.build_records(root, tmp_path / "out", sizes=tmp_path / "train_meta.csv")
    assert records == [] and skips.counts == {"image file missing": 3}
    write_csv(root / "annotations" / "annotations_train.csv", header, [["t1", "R5", "Lung Opacity", 10, "", 110, 60]])
    with pytest.raises(SourceError, match=r"annotations_train\.csv, row 2, field 'y_min'"):
        vindr_cxr.build_records(root, tmp_path / "out", check_images=False)


def test_vindr_real_table(boxes_real, tmp_path):
    table = boxes_real / "vinbigdata-train.csv.gz"
    maxima: dict[str, list[float]] = {}
    with gzip.open(table, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if row["x_max"]:
                m = maxima.setdefault(row["image_id"], [0.0, 0.0])
                m[0], m[1] = max(m[0], float(row["x_max"])), max(m[1], float(row["y_max"]))
    # the real DICOM sizes are not here: a stand-in size table just larger than every box
    write_csv(tmp_path / "sizes.csv", ["image_id", "width", "height"],
              [[k, w + 1, h + 1] for k, (w, h) in maxima.items()])
    records, skips = vindr_cxr.build_records(boxes_real, tmp_path, table=table, sizes=tmp_path / "sizes.csv",
                                             readers="all", check_images=False)
    validate_records(records)
    assert len(records) == 15000 and not skips.counts
    assert sum(len(r["boxes"]) for r in records) == 36096  # as in the data README
    assert sum(r["labels"]["No Finding"] == 1 for r in records) == 15000 - len(maxima)
    assert len({b["label"] for r in records for b in r["boxes"]}) == 14


# ---------------------------------------------------------------------------------------------
# RSNA pneumonia
# ---------------------------------------------------------------------------------------------
HEADER_DUMP = ["", "BodyPartExamined", "ConversionType", "Filename", "InstanceNumber", "Modality", "PatientAge",
               "PatientID", "PatientOrientation", "PatientSex", "PixelSpacing", "SamplesPerPixel", "SeriesNumber",
               "ViewPosition"]


def make_rsna(root: Path) -> Path:
    ids = ["0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00436515-870c-4b36-a041-de91049b9ab4",
           "00322d4d-1c29-4943-afc9-b6754be640eb"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows([["patientId", "x", "y", "width", "height", "Target"], [ids[0], "", "", "", "", 0],
                 [ids[1], "256.0", "128.0", "512.0", "256.0", 1], [ids[1], "562.0", "152.0", "256.0", "453.0", 1],
                 [ids[2], "", "", "", "", 0]])
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "kaggle_stage_2_train_labels.csv.zip", "w") as z:
        z.writestr("stage_2_train_labels.csv", buf.getvalue())
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"],
              [[ids[0], "No Lung Opacity / Not Normal"], [ids[1], "Lung Opacity"], [ids[1], "Lung Opacity"],
               [ids[2], "Normal"]])
    write_csv(root / "stage_2_train_images_dicom_headers.csv", HEADER_DUMP,
              [[k, "CHEST", "WSD", f"{pid}.dcm", 1.0, "CR", age, pid, "", sex, 0.168, 1.0, 1.0, view]
               for k, (pid, age, sex, view) in enumerate([(ids[0], 51, "F", "PA"), (ids[1], 148, "M", "AP"),
                                                          (ids[2], 19, "M", "PA")])])
    for pid in ids[:2]:
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", 1024, 1024)
    return root


def test_rsna_boxes_labels_and_headers(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    records, skips = rsna_pneumonia.build_records(root, tmp_path / "out")
    validate_records(records)
    recs = by_id(records)
    assert len(records) == 2 and skips.counts == {"image file missing": 1, "age out of range (kept as unknown)": 1}
    a = recs["rsna-00436515-870c-4b36-a041-de91049b9ab4"]
    assert [box(b) for b in a["boxes"]] == [(0.25, 0.125, 0.75, 0.375),
                                           (round(562 / 1024, 6), round(152 / 1024, 6), round(818 / 1024, 6),
                                            round(605 / 1024, 6))]
    assert {(b["phrase"], b["label"]) for b in a["boxes"]} == {("pneumonia", "Pneumonia")}
    assert a["labels"]["Pneumonia"] == a["labels"]["Lung Opacity"] == 1 and a["labels"]["No Finding"] is None
    assert a["images"][0]["view"] == "AP" and a["sex"] == "M" and a["age"] is None and a["split"] == "train"
    n = recs["rsna-0004cfab-14fd-4e49-80ba-63a80b6bddd6"]
    assert n["boxes"] == [] and n["labels"]["Pneumonia"] == 0 and n["labels"]["No Finding"] == 0
    assert n["age"] == 51 and n["sex"] == "F"


def test_rsna_sizes_without_images_and_errors(tmp_path):
    root = make_rsna(tmp_path / "rsna")
    for p in (root / "stage_2_train_images").iterdir():
        p.unlink()
    path = rsna_pneumonia.convert(root, tmp_path / "out", check_images=False, show_progress=False)
    recs = by_id(read_records(path))
    assert len(recs) == 3 and recs["rsna-00322d4d-1c29-4943-afc9-b6754be640eb"]["labels"]["No Finding"] == 1
    assert len(recs["rsna-00436515-870c-4b36-a041-de91049b9ab4"]["boxes"]) == 2  # the documented 1024²
    records, skips = rsna_pneumonia.build_records(root, tmp_path / "out", image_size=None, check_images=False)
    assert len(records) == 2 and skips.counts["image size unknown (no Rows/Columns, no DICOM, image_size=None)"] == 1
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
              [["p1", "1", "2", "3", "4", "2"]])
    (root / "kaggle_stage_2_train_labels.csv.zip").unlink()
    with pytest.raises(SourceError, match=r"stage_2_train_labels\.csv, row 2, field 'Target'"):
        rsna_pneumonia.build_records(root, tmp_path / "out")


def test_rsna_real_tables(boxes_real, tmp_path):
    records, skips = rsna_pneumonia.build_records(boxes_real, tmp_path, check_images=False)
    validate_records(records)
    assert len(records) == 26684 and sum(len(r["boxes"]) for r in records) == 9555
    assert sum(r["labels"]["Pneumonia"] == 1 for r in records) == 6012
    assert {r["images"][0]["view"] for r in records} == {"AP", "PA"}
    assert skips.counts == {"age out of range (kept as unknown)": 5}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_prepare_box_sources(tmp_path):
    from mxr0.cli import main

    nih = make_nih(tmp_path / "nih")
    assert main(["prepare", "nih-boxes", "--root", str(nih), "--out", str(tmp_path / "n")]) == 0
    assert len(read_records(tmp_path / "n")) == 2
    vindr = make_vindr(tmp_path / "vindr")
    assert main(["prepare", "vindr-cxr", "--root", str(vindr), "--out", str(tmp_path / "v"), "--readers", "all",
                 "--no-check-images"]) == 0
    assert len(read_records(tmp_path / "v")) == 3
    rsna = make_rsna(tmp_path / "rsna")
    assert main(["prepare", "rsna-pneumonia", "--root", str(rsna), "--out", str(tmp_path / "r")]) == 0
    assert len(read_records(tmp_path / "r")) == 2
    ms = make_ms_cxr(tmp_path / "ms")
    assert main(["prepare", "ms-cxr", "--root", str(ms), "--out", str(tmp_path / "m"), "--no-check-images"]) == 0
    assert len(read_records(tmp_path / "m")) == 3
