"""Issue 17, item 0: the record grows once — source-specific labels, prior-study fields, more anatomies."""

import json

import pytest

from mxr0.data.records import (
    ANATOMIES,
    PRIOR_FIELDS,
    RecordError,
    anatomy_of,
    empty_record,
    features,
    from_dataset_row,
    prior_report,
    read_records,
    source_label_key,
    to_dataset,
    validate_record,
    write_records,
)


def _rec(sid="s2", **kw):
    r = empty_record(sid, "train", "test", "chest")
    r["images"] = [{"path": f"images/{sid}.png", "view": "PA", "role": "current"},
                   {"path": "images/s1.png", "view": "PA", "role": "prior"}]
    r["findings"] = "New small left pleural effusion."
    r["source_labels"] = {"nih:Emphysema": 1, "jsrt:nodule": 0, "mura:abnormal": None, "covid:COVID-19": -1}
    r["prior_study_id"] = "s1"
    r["prior_findings"] = "No pleural effusion."
    r["prior_impression"] = "Normal chest."
    r.update(kw)
    return r


def test_empty_record_has_the_new_fields_empty():
    r = empty_record("x")
    assert r["source_labels"] == {} and all(r[k] == "" for k in PRIOR_FIELDS)
    assert validate_record(r) == []


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_source_labels_and_prior_round_trip(tmp_path, suffix):
    recs = [_rec("s2"), empty_record("s1", "train", "test", "chest")]
    write_records(recs, tmp_path / f"records{suffix}")
    back = {r["study_id"]: r for r in read_records(tmp_path)}
    a = back["s2"]
    assert a["source_labels"] == {"nih:Emphysema": 1, "jsrt:nodule": 0, "mura:abnormal": None, "covid:COVID-19": -1}
    assert (a["prior_study_id"], a["prior_findings"], a["prior_impression"]) == ("s1", "No pleural effusion.",
                                                                                 "Normal chest.")
    assert [im["role"] for im in a["images"]] == ["current", "prior"]
    assert back["s1"]["source_labels"] == {} and back["s1"]["prior_study_id"] == ""


def test_dataset_rows_convert_back():
    ds = to_dataset([_rec("s2")])
    assert ds.features == features()
    row = from_dataset_row(ds[0])
    assert row["source_labels"]["nih:Emphysema"] == 1 and row["prior_study_id"] == "s1"
    assert validate_record(row) == []


def test_records_written_before_the_change_still_read(tmp_path):
    old = empty_record("old", "train", "test", "chest")
    for k in ("source_labels", *PRIOR_FIELDS):
        del old[k]
    (tmp_path / "records.jsonl").write_text(json.dumps(old) + "\n")
    (back,) = read_records(tmp_path)
    assert back["source_labels"] == {} and back["prior_findings"] == ""


def test_bad_new_fields_name_the_line_row_and_field(tmp_path):
    rows = [
        _rec("a", source_labels={"Emphysema": 1}),                       # no prefix
        _rec("b", source_labels={"NIH:Emphysema": 1}),                   # upper-case prefix
        _rec("c", source_labels={"nih:Hernia": 2}),                      # bad value
        _rec("d", source_labels=["nih:Hernia"]),                         # not an object
        _rec("e", prior_study_id="e"),                                    # itself
        _rec("f", prior_study_id="", images=[{"path": "f.png"}]),         # prior report without a prior
        _rec("g", prior_impression=3),                                    # not a string
        _rec("h", anatomy="leg"),                                         # not in ANATOMIES
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError) as e:
        read_records(path)
    msg = str(e.value)
    assert str(path) in msg and "8 of 8 study records are invalid" in msg
    for fragment in ["line 1, row 0: source_labels.Emphysema: expected '<prefix>:<name>'",
                     "line 2, row 1: source_labels.NIH:Emphysema: the prefix may hold lower-case",
                     "line 3, row 2: source_labels.nih:Hernia=2: expected 1, 0, -1 or null",
                     "line 4, row 3: source_labels: expected an object",
                     "line 5, row 4: prior_study_id: 'e' is the study itself",
                     "line 6, row 5: prior_findings: a prior report needs its prior_study_id or a prior image",
                     "line 7, row 6: prior_impression: expected a string",
                     "line 8, row 7: anatomy='leg'"]:
        assert fragment in msg, fragment


def test_a_prior_image_without_its_study_id_is_allowed():
    # a VQA pair may show a reference image without knowing its study; the prior report then needs the image
    r = _rec("x", prior_study_id="")
    assert validate_record(r) == []


def test_prior_report_text():
    assert prior_report(_rec()) == "Findings: No pleural effusion. Impression: Normal chest."
    assert prior_report(_rec(prior_findings="")) == "Impression: Normal chest."
    assert prior_report(empty_record("x")) == ""


def test_source_label_key():
    assert source_label_key("nih", "Pleural_Thickening") == "nih:Pleural_Thickening"
    with pytest.raises(ValueError, match="prefix"):
        source_label_key("NIH", "x")


@pytest.mark.parametrize("value, expected", [
    ("CHEST", ("chest", True)), ("Chest", ("chest", True)), ("THORAX", ("chest", True)),
    ("LSPINE", ("spine", True)), ("C-SPINE", ("spine", True)), ("XR_FINGER", ("hand", True)),
    ("XR_FOREARM", ("forearm", True)), ("XR_HUMERUS", ("humerus", True)), ("knee", ("knee", True)),
    ("TIB FIB", ("lower_leg", True)), ("TIBIA_FIBULA", ("lower_leg", True)), ("HEAD", ("skull", True)),
    ("OTHER", ("other", True)), ("", ("other", False)), ("BREAST", ("other", False)), (None, ("other", False)),
])
def test_anatomy_of(value, expected):
    assert anatomy_of(value) == expected
    assert expected[0] in ANATOMIES
