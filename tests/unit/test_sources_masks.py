"""Issue 17, item 4: converters that write masks (JSRT, SIIM-ACR, CheXmask); masks follow their image
into the cache; the frozen segmentation suite runs on JSRT. Fixtures are written in each source's exact
format; the real samples under ../shared/data are used when present."""

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.cache import build_cache
from mxr0.data.records import read_records
from mxr0.data.sources import SourceError, convert
from mxr0.data.sources.rle import decode_siim, encode_absolute, encode_relative

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
JSRT = SHARED / "jsrt"
SIIM_TABLE = SHARED / "boxes" / "siim-pneumothorax-train-rle.csv.gz"
SIIM_DICOM = SHARED / "dicom" / "siim_cr_chest.dcm"


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _mask_array(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L")) > 127


def _cache_follows(records_file: Path, tmp_path: Path, size: int = 16) -> list[dict]:
    """Cache the records; every mask is cached beside its image, at the image's cached size."""
    out = build_cache(records_file, tmp_path / "cache", size=size, workers=1, progress=False)
    cached = read_records(out)
    orig = {r["study_id"]: r for r in read_records(records_file)}
    assert len(cached) == len(orig)
    for r in cached:
        assert [m["name"] for m in r["masks"]] == [m["name"] for m in orig[r["study_id"]]["masks"]]
        for m in r["masks"]:
            assert Path(m["path"]).is_relative_to(tmp_path / "cache")
            im = Image.open(r["images"][m["image_index"]]["path"])
            mk = Image.open(m["path"])
            assert mk.size == im.size and min(im.size) == size
            assert set(np.unique(np.asarray(mk))) <= {0, 255}
    return cached


# ---------------------------------------------------------------------------------------------
# JSRT
# ---------------------------------------------------------------------------------------------
def _jsrt_fixture(root: Path) -> None:
    rng = np.random.default_rng(0)
    for stem in ("JPCLN001", "JPCNN002", "JPCNN003"):
        _png(root / "images" / f"{stem}.png", rng.integers(0, 255, (32, 32)))
        m = np.zeros((32, 32), np.uint8)
        m[4:28, 18:30] = 255  # the patient's left lung: the image's right
        _png(root / "masks" / "left_lung" / f"{stem}.png", m)
        _png(root / "masks" / "right_lung" / f"{stem}.png", m[:, ::-1])
        # SCR's own spelling and format: "heart" as a GIF at half the resolution
        (root / "masks" / "heart").mkdir(parents=True, exist_ok=True)
        h = np.zeros((16, 16), np.uint8)
        h[8:14, 5:11] = 255
        Image.fromarray(h).save(root / "masks" / "heart" / f"{stem}.gif")
    (root / "masks" / "left lung").mkdir()  # another spelling of the organ, empty: the masks are found anyway
    (root / "index.csv").write_text("file,nodule\nJPCLN001.png,1\nJPCNN002.png,0\n")


def test_jsrt_fixture_masks_nodule_flag_and_cache(tmp_path):
    root = tmp_path / "jsrt"
    _jsrt_fixture(root)
    path = convert("jsrt", root, tmp_path / "out", show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert set(recs) == {"jsrt-JPCLN001", "jsrt-JPCNN002", "jsrt-JPCNN003"}
    a = recs["jsrt-JPCLN001"]
    assert a["source_labels"] == {"jsrt:nodule": 1} and a["labels"]["Lung Lesion"] == 1
    assert recs["jsrt-JPCNN003"]["source_labels"] == {"jsrt:nodule": 0}  # from the name: no index row
    assert sorted(m["name"] for m in a["masks"]) == ["heart", "left_lung", "right_lung"]
    assert a["images"][0]["view"] == "PA" and a["anatomy"] == "chest"
    by = {m["name"]: m["path"] for m in a["masks"]}
    assert _mask_array(by["left_lung"])[:, 16:].sum() > _mask_array(by["left_lung"])[:, :16].sum()  # image right
    heart = Image.open(by["heart"])  # the GIF, resized to its image with nearest neighbour, as a PNG
    assert heart.size == (32, 32) and by["heart"].endswith(".png") and set(np.unique(np.asarray(heart))) == {0, 255}
    _cache_follows(path, tmp_path)


def test_jsrt_nodule_flag_contradicting_the_name_is_an_error(tmp_path):
    root = tmp_path / "jsrt"
    _jsrt_fixture(root)
    (root / "index.csv").write_text("file,nodule\nJPCLN001.png,0\n")
    with pytest.raises(SourceError, match=r"index.csv, row 2, field 'nodule': JPCLN001: nodule=0 contradicts"):
        convert("jsrt", root, tmp_path / "out", show_progress=False)


@pytest.mark.skipif(not JSRT.is_dir(), reason="../shared/data/jsrt not present")
def test_jsrt_shared_data(tmp_path):
    path = convert("jsrt", JSRT, tmp_path / "out", show_progress=False)
    recs = read_records(path)
    assert len(recs) == 198
    assert all(sorted(m["name"] for m in r["masks"]) == ["heart", "left_clavicle", "left_lung", "right_clavicle",
                                                          "right_lung"] for r in recs)
    nod = {r["study_id"][5:10]: r["source_labels"]["jsrt:nodule"] for r in recs}
    assert nod == {"JPCLN": 1, "JPCNN": 0} or {k for k in nod} == {"JPCLN", "JPCNN"}
    assert sum(r["source_labels"]["jsrt:nodule"] for r in recs) == sum(r["study_id"].startswith("jsrt-JPCLN")
                                                                       for r in recs)
    assert {r["split"] for r in recs} == {"train", "validation", "test"}
    r = recs[0]
    by = {m["name"]: m["path"] for m in r["masks"]}
    left = np.nonzero(_mask_array(by["left_lung"]))[1].mean()
    right = np.nonzero(_mask_array(by["right_lung"]))[1].mean()
    assert left > right  # the patient's left lung lies on the image's right
    assert Image.open(by["heart"]).size == Image.open(r["images"][0]["path"]).size
    _cache_follows(path, tmp_path, size=32)


@pytest.mark.skipif(not JSRT.is_dir(), reason="../shared/data/jsrt not present")
def test_frozen_segmentation_runs_on_jsrt(tmp_path):
    """The XR-0 suite's frozen segmentation accepts the JSRT records (a tiny random encoder, few steps)."""
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from mxr0.data.transforms import ImageTransform
    from mxr0.eval.vision.suite import VisionEvalConfig, evaluate_encoders

    torch.set_num_threads(1)
    path = convert("jsrt", JSRT, tmp_path / "out", show_progress=False)
    cache = build_cache(path, tmp_path / "cache", size=32, workers=1, progress=False)
    torch.manual_seed(0)
    enc = tmp_path / "enc"
    Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=8, image_size=32,
        num_register_tokens=0)).save_pretrained(enc)
    (enc / "preprocessor_config.json").write_text(json.dumps(
        ImageTransform(size=32, mean=(0.5,) * 3, std=(0.25,) * 3).to_processor_config()))
    cfg = VisionEvalConfig(tasks=["segmentation"], seg_steps=3, seg_heads=["linear"], n_bootstrap=0,
                           seg_masks=["right_lung", "left_lung", "heart", "left_clavicle", "right_clavicle"],
                           cache_dir=str(tmp_path / "feats"))
    res = evaluate_encoders({"tiny": str(enc)}, cache, cfg, echo=lambda *a, **k: None)
    seg = res["encoders"]["tiny"]["segmentation"]
    assert "error" not in seg, seg
    assert seg["n_train"] > 100 and seg["n_test"] > 5
    assert set(seg["heads"]["linear"]["dice"]) == {"right_lung", "left_lung", "heart", "left_clavicle",
                                                    "right_clavicle"}
    assert seg["prior_dice"]["right_lung"] > 0.5  # organ-position prior: the masks are real lungs


# ---------------------------------------------------------------------------------------------
# SIIM-ACR
# ---------------------------------------------------------------------------------------------
def _dicom(path: Path, arr: np.ndarray, view: str = "PA") -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    fm = FileMetaDataset()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    fm.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    fm.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID, ds.SOPInstanceUID = fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", view, "CHEST"
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN123"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_siim_rle_conventions_by_hand():
    # column-major: runs go down the columns
    m, mode = decode_siim("5 2", 4, 3)  # relative: offset 5 → column 1, rows 1-2
    assert mode == "relative" and m.sum() == 2 and m[1, 1] and m[2, 1]
    m2, mode2 = decode_siim("6 2 9 1", 4, 3)  # absolute 1-based: pixels 5,6 and 8 (column-major)
    assert mode2 == "absolute" and m2[1, 1] and m2[2, 1] and m2[0, 2] and m2.sum() == 3
    assert decode_siim(" -1", 4, 3)[0].sum() == 0
    with pytest.raises(ValueError):
        decode_siim("20 5", 4, 3)


def _siim_fixture(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    a = np.zeros((24, 20), bool)
    a[2:12, 14:17] = True  # an apical / lateral crescent on the image's right
    b = np.zeros((24, 20), bool)
    b[15:18, 2:5] = True
    ids = {"1.2.276.0.7230010.3.1.4.1": a | b, "1.2.276.0.7230010.3.1.4.2": None, "1.2.276.0.7230010.3.1.4.3": a}
    for k, image_id in enumerate(ids):
        _dicom(root / "dicom-images-train" / f"1.2.{k}" / f"1.3.{k}" / f"{image_id}.dcm",
               rng.integers(0, 4000, (24, 20)), "PA" if k else "AP")
    lines = ["ImageId, EncodedPixels",
             f"1.2.276.0.7230010.3.1.4.1, {encode_relative(a)}",
             f"1.2.276.0.7230010.3.1.4.1, {encode_relative(b)}",  # a second region of the same image
             "1.2.276.0.7230010.3.1.4.2, -1",
             f"1.2.276.0.7230010.3.1.4.3,{encode_absolute(a, 'F')}",  # stage-2 style row
             "1.2.276.0.7230010.3.1.4.9, -1"]  # an image that is not there
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return root, ids


def test_siim_fixture_masks_labels_and_cache(tmp_path):
    root, ids = _siim_fixture(tmp_path / "siim")
    path = convert("siim-acr", root, tmp_path / "out", show_progress=False)
    recs = read_records(path)
    assert len(recs) == 3  # the missing image is skipped
    text = path.read_text()
    for phi in ("Doe", "MRN123", "1.2.276.0.7230010.3.1.4.1"):
        assert phi not in text
    got = {}
    from mxr0.data.sources.siim_acr import _sid

    for image_id, expected in ids.items():
        r = next(x for x in recs if x["study_id"] == _sid(image_id))
        got[image_id] = r
        assert r["labels"]["Pneumothorax"] == int(expected is not None)
        assert r["source_labels"] == {"siim:pneumothorax": int(expected is not None)}
        if expected is None:
            assert r["masks"] == []
        else:
            (m,) = r["masks"]
            assert m["name"] == "pneumothorax"
            assert (_mask_array(m["path"]) == expected).all()
            assert Image.open(r["images"][0]["path"]).size == (20, 24)
    assert got["1.2.276.0.7230010.3.1.4.1"]["images"][0]["view"] == "AP"
    _cache_follows(path, tmp_path, size=12)


@pytest.mark.skipif(not SIIM_TABLE.is_file(), reason="../shared/data/boxes SIIM table not present")
def test_siim_real_table_decodes_to_plausible_pneumothoraces():
    """The real stage-1 table is relative and column-major: decoded so, the masks lie where pneumothoraces
    lie on erect films (upper half, lateral), not where the transposed reading would put them."""
    rows = []
    with gzip.open(SIIM_TABLE, "rt") as f:
        reader = csv.reader(f)
        assert [h.strip() for h in next(reader)] == ["ImageId", "EncodedPixels"]
        for image_id, rle in reader:
            if rle.strip() != "-1":
                rows.append(rle)
            if len(rows) == 150:
                break
    cy, cx = [], []
    for rle in rows:
        m, mode = decode_siim(rle, 1024, 1024)
        assert mode == "relative"
        ys, xs = np.nonzero(m)
        cy.append(ys.mean())
        cx.append(xs.mean())
    cy, cx = np.array(cy), np.array(cx)
    assert (cy < 512).mean() > 0.7  # mostly apical
    assert (cy > 768).mean() < 0.1
    assert (cx < 400).mean() > 0.15 and (cx > 624).mean() > 0.15  # both sides, lateral


@pytest.mark.skipif(not (SIIM_TABLE.is_file() and SIIM_DICOM.is_file()), reason="shared SIIM data not present")
def test_siim_real_table_with_the_real_dicom(tmp_path):
    import pydicom

    uid = str(pydicom.dcmread(SIIM_DICOM, stop_before_pixels=True).SOPInstanceUID)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / f"{uid}.dcm").symlink_to(SIIM_DICOM)
    path = convert("siim-acr", tmp_path / "imgs", tmp_path / "out", table=SIIM_TABLE, show_progress=False)
    (r,) = read_records(path)  # the one image present; the other ~12,000 rows are counted as missing
    assert r["labels"]["Pneumothorax"] == 0 and r["masks"] == [] and r["images"][0]["view"] == "PA"
    assert Image.open(r["images"][0]["path"]).size == (1024, 1024)


# ---------------------------------------------------------------------------------------------
# CheXmask
# ---------------------------------------------------------------------------------------------
def test_chexmask_fixture_ids_rle_quality_and_cache(tmp_path):
    root = tmp_path / "chexmask"
    imgs = tmp_path / "nih"
    rng = np.random.default_rng(2)
    h, w = 40, 40
    left = np.zeros((h, w), bool)
    left[5:35, 24:36] = True
    right = left[:, ::-1].copy()
    heart = np.zeros((h, w), bool)
    heart[20:32, 14:26] = True
    # the NIH images: one at the mask frame (40²), one downsized (20²), one absent
    _png(imgs / "images_001" / "images" / "00000001_000.png", rng.integers(0, 255, (40, 40)))
    _png(imgs / "images_002" / "images" / "00000002_000.png", rng.integers(0, 255, (20, 20)))
    _png(imgs / "images_002" / "images" / "00000004_000.png", rng.integers(0, 255, (40, 40)))
    root.mkdir()
    header = ["Image Index", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung", "Heart",
              "Height", "Width"]
    rows = [["00000001_000.png", "0.91", "0.95", "1,2,3,4", encode_absolute(left), encode_absolute(right),
             encode_absolute(heart), h, w],
            ["00000002_000.png", "0.88", "0.9", "", encode_absolute(left), encode_absolute(right),
             encode_absolute(heart), h, w],
            ["00000003_000.png", "0.80", "0.9", "", encode_absolute(left), "", "", h, w],
            ["00000004_000.png", "0.41", "0.6", "", encode_absolute(left), encode_absolute(right),
             encode_absolute(heart), h, w]]
    with open(root / "ChestX-Ray8.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    path = convert("chexmask", root, tmp_path / "out", images=imgs, show_progress=False)
    recs = {r["study_id"]: r for r in read_records(path)}
    assert set(recs) == {"chexmask-chestx-ray14-00000001_000", "chexmask-chestx-ray14-00000002_000"}  # 3 absent, 4 RCA
    a = recs["chexmask-chestx-ray14-00000001_000"]
    by = {m["name"]: m["path"] for m in a["masks"]}
    assert set(by) == {"left_lung", "right_lung", "heart"}
    assert (_mask_array(by["left_lung"]) == left).all() and (_mask_array(by["heart"]) == heart).all()
    small = {m["name"]: m["path"] for m in recs["chexmask-chestx-ray14-00000002_000"]["masks"]}
    assert Image.open(small["heart"]).size == (20, 20)  # resized to the downsized image
    _cache_follows(path, tmp_path, size=10)
    # a broken RLE names the file, row and field
    rows[0][5] = "1 5000"
    with open(root / "ChestX-Ray8.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with pytest.raises(SourceError, match=r"ChestX-Ray8.csv, row 2, field 'Right Lung'"):
        convert("chexmask", root, tmp_path / "out2", images=imgs, show_progress=False)
