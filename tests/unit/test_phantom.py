"""The phantom data set (`mxr0.data.phantom`): determinism, valid records, report/label/box/QA
consistency, the orientation rule (patient's left = image right), visible and learnable findings,
the contact sheet and the reuse of an existing set. Small sets at 64 px keep it fast."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mxr0.data.phantom import (
    DEFAULT_ANATOMY_MIX,
    PHANTOM_ANATOMIES,
    PHANTOM_CHEST_LABELS,
    PHANTOM_LABELS,
    PHANTOM_VERSION,
    draw_study,
    generate_phantom,
    preview_grid,
)
from mxr0.data.records import CHEXPERT_LABELS, read_records, validate_record

# What the reports may say about each observation (lowercase regexes), and the cue words.
KEYWORDS = {
    "Enlarged Cardiomediastinum": r"mediastin",
    "Cardiomegaly": r"cardiomegaly|cardiac silhouette|heart size|heart is|cardiomediastinal silhouette",
    "Lung Opacity": r"opacit|consolidation|lungs are (otherwise )?clear",
    "Lung Lesion": r"nodule|\bmass\b",
    "Edema": r"edema",
    "Consolidation": r"consolidation|lungs are (otherwise )?clear",
    "Pneumonia": r"pneumonia",
    "Atelectasis": r"atelectasis",
    "Pneumothorax": r"pneumothorax",
    "Pleural Effusion": r"effusion",
    "Fracture": r"fracture",
    "Support Devices": r"tube|catheter|central line|pacemaker|device",
}
NEGATION = r"\bno\b|\bwithout\b|\bnormal\b|\bclear\b|unremarkable|within normal limits"
UNCERTAIN = r"possible|possibly|cannot be excluded|may represent|questionable"
PATHOLOGY = [n for n in CHEXPERT_LABELS if n not in ("Support Devices", "No Finding")]
LATERAL_LABELS = {"Pleural Effusion", "Pneumothorax", "Lung Opacity", "Consolidation", "Lung Lesion", "Atelectasis",
                  "Fracture"}
QA_LABEL = {"pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax", "opacity": "Lung Opacity",
            "nodule": "Lung Lesion", "mass": "Lung Lesion", "atelectasis": "Atelectasis"}
MC_LABEL = {"cardiomegaly": "Cardiomegaly", "pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
            "lung opacity": "Lung Opacity", "lung nodule or mass": "Lung Lesion", "pulmonary edema": "Edema",
            "atelectasis": "Atelectasis", "support device": "Support Devices"}
PRESENCE_LABEL = {"pleural effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax", "heart enlarged": "Cardiomegaly",
                  "cardiomegaly": "Cardiomegaly", "opacity": "Lung Opacity", "nodule or mass": "Lung Lesion",
                  "edema": "Edema", "atelectasis": "Atelectasis", "consolidation": "Consolidation",
                  "mediastinum widened": "Enlarged Cardiomediastinum", "device": "Support Devices",
                  "fracture": "Fracture"}


def _sentences(rec: dict) -> list[str]:
    text = (rec["findings"] + " " + rec["impression"]).lower()
    return [s for s in re.split(r"(?<=[.;])\s+", text) if s.strip()]


def _mentions(rec: dict, label: str) -> tuple[int, int, int]:
    """(positive, hedged, negated) mentions of ``label`` among the report's sentences."""
    pos = hedged = neg = 0
    for s in _sentences(rec):
        if not re.search(KEYWORDS[label], s):
            continue
        if re.search(UNCERTAIN, s):
            hedged += 1
        elif re.search(NEGATION, s):
            neg += 1
        else:
            pos += 1
    return pos, hedged, neg


def _frac_right(b: dict) -> float:
    """Share of the box's width lying in the image's right half."""
    return max(0.0, b["x1"] - max(b["x0"], 0.5)) / (b["x1"] - b["x0"])


@pytest.fixture(scope="module")
def small_set(phantom_small: Path) -> list[dict]:
    return read_records(phantom_small)


@pytest.fixture(scope="module")
def chest_set(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("phantom_chest")
    path = generate_phantom(out, n_studies=400, image_size=64, seed=1, anatomy_mix={"chest": 1.0},
                            lateral_fraction=0.0, workers=2, progress=False)
    return read_records(path)


def _gray(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
def test_label_constants():
    assert list(PHANTOM_LABELS) == [n for n in CHEXPERT_LABELS if n in PHANTOM_LABELS]  # CheXbert order
    assert "Pleural Other" not in PHANTOM_LABELS and "Fracture" not in PHANTOM_CHEST_LABELS
    assert set(PHANTOM_CHEST_LABELS) <= set(PHANTOM_LABELS)
    assert set(DEFAULT_ANATOMY_MIX) == set(PHANTOM_ANATOMIES) and abs(DEFAULT_ANATOMY_MIX["chest"] - 0.6) < 1e-9


def test_deterministic_and_independent_of_workers(tmp_path):
    kw = dict(n_studies=40, image_size=64, progress=False)
    a = generate_phantom(tmp_path / "a", seed=0, workers=0, **kw)
    b = generate_phantom(tmp_path / "b", seed=0, workers=2, **kw)
    c = generate_phantom(tmp_path / "c", seed=1, workers=0, **kw)
    assert a.read_bytes() == b.read_bytes()
    files_a = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.png"))
    assert files_a == sorted(p.relative_to(b.parent) for p in b.parent.rglob("*.png"))
    for rel in files_a:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes(), rel
    assert a.read_bytes() != c.read_bytes()
    img0 = sorted(a.parent.glob("images/*_0.png"))[0].name
    assert (a.parent / "images" / img0).read_bytes() != (c.parent / "images" / img0).read_bytes()
    # one study drawn alone equals the same study in the set
    rec, images, _ = draw_study(3, read_records(a)[3]["anatomy"], read_records(a)[3]["split"], 64, 0, 0.3)
    assert np.array_equal(images[0][0], _gray(str(a.parent / rec["images"][0]["path"])).astype(np.uint8))


def test_records_valid_and_complete(phantom_small: Path, small_set: list[dict]):
    raw = [json.loads(line) for line in phantom_small.read_text().splitlines()]
    assert all(validate_record(r) == [] for r in raw)
    assert all(not os.path.isabs(im["path"]) for r in raw for im in r["images"] + r["masks"])
    n = len(small_set)
    assert n == 240 and len({r["study_id"] for r in small_set}) == n
    anat = Counter(r["anatomy"] for r in small_set)
    assert set(anat) == set(PHANTOM_ANATOMIES)
    assert anat["chest"] == round(0.6 * n)
    for a in PHANTOM_ANATOMIES:
        splits = Counter(r["split"] for r in small_set if r["anatomy"] == a)
        assert abs(splits["train"] - 0.8 * anat[a]) <= 1 and abs(splits["test"] - 0.1 * anat[a]) <= 1
    for r in small_set:
        assert r["source"] == "phantom" and r["sex"] in ("M", "F") and 18 <= r["age"] <= 90
        assert r["findings"] and r["impression"] and r["indication"]
        assert 3 <= len(r["qa"]) <= 6
        for im in r["images"]:
            with Image.open(im["path"]) as pil:
                assert pil.size == (64, 64) and pil.mode == "L"
        for m in r["masks"]:
            vals = np.unique(_gray(m["path"]))
            assert set(vals.tolist()) <= {0.0, 255.0} and m["image_index"] == 0
        if r["anatomy"] == "chest":
            assert r["images"][0]["view"] in ("PA", "AP")
            assert all(im["view"] == "LATERAL" for im in r["images"][1:])
            assert {m["name"] for m in r["masks"]} == {"right_lung", "left_lung", "heart"}
        else:
            assert {m["name"] for m in r["masks"]} == {"bones"}
    assert any(len(r["images"]) == 2 for r in small_set if r["anatomy"] == "chest")


def test_orientation_of_chest_masks(small_set: list[dict]):
    """Patient's left is on the image's right: the left lung and most of the heart lie there."""
    for r in [r for r in small_set if r["anatomy"] == "chest"][:30]:
        masks = {m["name"]: _gray(m["path"]) > 0 for m in r["masks"]}
        cols = np.arange(64) + 0.5
        centre = {k: (v.sum(axis=0) * cols).sum() / v.sum() / 64 for k, v in masks.items()}
        assert centre["right_lung"] < 0.5 < centre["left_lung"]
        assert centre["heart"] > 0.5


def test_report_agrees_with_labels(small_set: list[dict], chest_set: list[dict]):
    for r in small_set + chest_set:
        labels = r["labels"]
        for name, kw in KEYWORDS.items():
            pos, hedged, neg = _mentions(r, name)
            v = labels[name]
            where = f"{r['study_id']} {name}={v}: {r['findings']} | {r['impression']}"
            if v == 1:
                assert pos >= 1, where
            elif v == -1:
                assert hedged >= 1 and pos == 0, where
            elif v == 0:
                assert neg >= 1 and pos == 0, where
            else:
                assert pos == 0 and hedged == 0, where
        path = any(labels[n] in (1, -1) for n in PATHOLOGY)
        assert labels["No Finding"] == (0 if path else 1)
        assert labels["Pleural Other"] is None
        if r["anatomy"] != "chest":
            assert all(labels[n] is None for n in CHEXPERT_LABELS if n not in ("Fracture", "No Finding"))
            assert labels["Fracture"] in (1, -1, 0)
        elif not path:
            assert re.search(r"no acute cardiopulmonary|no radiographic evidence", r["impression"].lower())


def test_boxes_agree_with_text_and_orientation(small_set: list[dict], chest_set: list[dict]):
    checked = 0
    for r in small_set + chest_set:
        text = (r["findings"] + " " + r["impression"]).lower()
        for b in r["boxes"]:
            assert b["phrase"].lower() in text, (r["study_id"], b["phrase"])
            assert r["labels"][b["label"]] in (1, -1), (r["study_id"], b)
            assert b["image_index"] < len(r["images"])
            words = set(re.findall(r"[a-z]+", b["phrase"].lower()))
            if b["label"] in LATERAL_LABELS and not {"bilateral", "bibasilar"} & words:
                if "left" in words:
                    assert _frac_right(b) > 0.5, (r["study_id"], b)
                    checked += 1
                elif "right" in words:
                    assert _frac_right(b) < 0.5, (r["study_id"], b)
                    checked += 1
        # every positive localised chest finding has a box
        if r["anatomy"] == "chest":
            for name in ("Enlarged Cardiomediastinum", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Opacity",
                         "Lung Lesion", "Atelectasis", "Support Devices"):
                if r["labels"][name] == 1:
                    assert any(b["label"] == name for b in r["boxes"]), (r["study_id"], name)
    assert checked > 50


def test_qa_agrees_with_labels(small_set: list[dict], chest_set: list[dict]):
    kinds = Counter()
    for r in small_set + chest_set:
        labels = r["labels"]
        for q in r["qa"]:
            kinds[q["question_type"]] += 1
            if q["options"]:
                assert q["answer"] in q["options"] and q["answer_type"] == "closed"
            qt, ql, ans = q["question_type"], q["question"].lower(), q["answer"]
            if qt == "presence" and "dislocation" not in ql:
                name = next(lab for k, lab in PRESENCE_LABEL.items() if all(w in ql for w in k.split()))
                assert (ans == "yes") == (labels[name] == 1), (r["study_id"], q, labels[name])
                assert labels[name] != -1
            elif qt == "anatomy":
                assert ans == r["anatomy"]
            elif qt == "view":
                assert ans == r["images"][0]["view"]
            elif qt == "multiple_choice" and r["anatomy"] == "chest":
                assert labels[MC_LABEL[ans]] == 1
                assert all(labels[MC_LABEL[o]] != 1 for o in q["options"] if o != ans)
            elif qt == "laterality" and r["anatomy"] == "chest":
                name = next(lab for k, lab in QA_LABEL.items() if k in ql)
                assert labels[name] == 1
                boxes = [b for b in r["boxes"] if b["label"] == name]
                if ans == "left":
                    assert any(_frac_right(b) > 0.5 for b in boxes), (r["study_id"], q)
                elif ans == "right":
                    assert any(_frac_right(b) < 0.5 for b in boxes), (r["study_id"], q)
            elif qt == "location" and r["anatomy"] == "chest":
                side, zone, _ = ans.split()
                assert side in ("left", "right") and zone in ("upper", "middle", "lower")
            elif qt == "location":
                assert labels["Fracture"] == 1 and ans in (r["findings"] + r["impression"]).lower()
    assert {"presence", "laterality", "location", "multiple_choice", "anatomy", "view"} <= set(kinds)


def test_every_chest_label_has_positives_and_negatives(chest_set: list[dict]):
    for name in PHANTOM_CHEST_LABELS:
        vals = Counter(r["labels"][name] for r in chest_set)
        assert vals[1] >= 8 and vals[1] < len(chest_set) - 8, (name, vals)
    assert any(r["labels"][n] == -1 for r in chest_set for n in PHANTOM_CHEST_LABELS)
    assert Counter(r["images"][0]["view"] for r in chest_set)["AP"] > 40
    # varied wording: many distinct reports and several phrasings of one finding
    assert len({r["findings"] for r in chest_set}) > 0.9 * len(chest_set)
    eff = {re.sub(r"small|moderate|large|left|right|bilateral", "_", s)
           for r in chest_set for s in _sentences(r) if "effusion" in s and not s.startswith("no ")}
    assert len(eff) >= 5


def test_findings_are_visible(chest_set: list[dict]):
    """Non-learned checks that each drawn finding changes the pixels where its box says."""
    imgs = {r["study_id"]: _gray(r["images"][0]["path"]) for r in chest_set}

    def box_mean(img: np.ndarray, b: dict, fn=np.mean) -> float:
        x0, y0 = int(b["x0"] * 64), int(b["y0"] * 64)
        x1, y1 = max(int(np.ceil(b["x1"] * 64)), x0 + 1), max(int(np.ceil(b["y1"] * 64)), y0 + 1)
        return float(fn(img[y0:y1, x0:x1]))

    def contrast(label: str, fn=np.mean) -> float:
        pos = [r for r in chest_set if r["labels"][label] == 1]
        neg = [r for r in chest_set if r["labels"][label] != 1 and r["labels"][label] != -1][:80]
        diffs = []
        for r in pos:
            b = next(b for b in r["boxes"] if b["label"] == label)
            diffs.append(box_mean(imgs[r["study_id"]], b, fn) - np.mean([box_mean(imgs[n["study_id"]], b, fn) for n in neg]))
        return float(np.mean(diffs))

    assert contrast("Pleural Effusion") > 12  # fluid is brighter than aerated lung
    assert contrast("Lung Opacity") > 8
    assert contrast("Lung Lesion", np.max) > 15  # a bright spot
    assert contrast("Support Devices", np.max) > 20  # radiopaque lines
    assert contrast("Atelectasis") > 10
    assert contrast("Enlarged Cardiomediastinum") > 10
    # the lucent pleural space without lung markings: the darkest tenth of the box is darker
    assert contrast("Pneumothorax", lambda a: np.percentile(a, 10)) < -6

    def heart_area(r: dict) -> float:
        return float((_gray(next(m["path"] for m in r["masks"] if m["name"] == "heart")) > 0).sum())

    big = np.mean([heart_area(r) for r in chest_set if r["labels"]["Cardiomegaly"] == 1])
    normal = np.mean([heart_area(r) for r in chest_set if r["labels"]["Cardiomegaly"] in (0, None)])
    assert big > 1.4 * normal


def test_learnable_by_a_linear_model(chest_set: list[dict]):
    """Logistic regression on 16x16 thumbnails separates held-out studies well above chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    X = np.stack([np.asarray(Image.open(r["images"][0]["path"]).resize((16, 16), Image.BILINEAR), dtype=np.float32).ravel()
                  for r in chest_set]) / 255.0
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-6)
    tr, te = slice(0, 300), slice(300, None)
    for name in ("Cardiomegaly", "Pleural Effusion"):
        y = np.array([r["labels"][name] in (1, -1) for r in chest_set], dtype=int)
        clf = LogisticRegression(C=0.05, max_iter=2000).fit(X[tr], y[tr])
        auc = roc_auc_score(y[te], clf.predict_proba(X[te])[:, 1])
        assert auc > 0.75, (name, auc)


def test_preview_grid(phantom_small: Path, tmp_path):
    out = preview_grid(phantom_small, tmp_path / "grid.png", n=6, cols=3)
    with Image.open(out) as im:
        assert im.size == (3 * 256, 2 * (256 + 40)) and im.mode == "RGB"
        arr = np.asarray(im)
    assert arr.std() > 20
    recs = read_records(phantom_small)[:2]
    out2 = preview_grid(recs, tmp_path / "grid2.png", n=16, cols=4, tile=128, draw_boxes=False)
    with Image.open(out2) as im:
        assert im.size == (2 * 128, 128 + 40)


def test_reuse_and_regeneration(tmp_path):
    kw = dict(n_studies=12, image_size=48, seed=3, workers=0, progress=False)
    path = generate_phantom(tmp_path / "p", **kw)
    meta = json.loads((tmp_path / "p" / "phantom.json").read_text())
    assert meta["version"] == PHANTOM_VERSION and meta["n_studies"] == 12 and meta["seed"] == 3
    img = sorted((tmp_path / "p" / "images").iterdir())[0]
    stamps = (path.stat().st_mtime_ns, img.stat().st_mtime_ns)
    assert generate_phantom(tmp_path / "p", **kw) == path
    assert (path.stat().st_mtime_ns, img.stat().st_mtime_ns) == stamps
    # different arguments: drawn again (and stale images removed)
    generate_phantom(tmp_path / "p", **{**kw, "n_studies": 8})
    assert json.loads((tmp_path / "p" / "phantom.json").read_text())["n_studies"] == 8
    assert len(read_records(path)) == 8 and len(list((tmp_path / "p" / "masks").iterdir())) < 30
    assert path.stat().st_mtime_ns != stamps[0]
    # an interrupted run (no phantom.json) is drawn again; overwrite=True forces it
    (tmp_path / "p" / "phantom.json").unlink()
    generate_phantom(tmp_path / "p", **{**kw, "n_studies": 8})
    assert (tmp_path / "p" / "phantom.json").exists() and not (tmp_path / "p" / ".phantom-incomplete").exists()
    # a folder that holds other data is never overwritten silently
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_phantom(tmp_path / "other", **kw)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="anatomy_mix"):
        generate_phantom(tmp_path / "x", n_studies=4, anatomy_mix={"chest": 1, "brain": 1}, progress=False)
    with pytest.raises(ValueError, match="split_fractions"):
        generate_phantom(tmp_path / "x", n_studies=4, split_fractions=(1.0, 0.0), progress=False)
