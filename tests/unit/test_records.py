import json

import pytest

from mxr0.data.records import (
    CHEXPERT_LABELS,
    RecordError,
    empty_record,
    features,
    read_records,
    to_dataset,
    validate_record,
    write_records,
)


def _rec(sid="s1", **kw):
    r = empty_record(sid, split="train", source="test", anatomy="chest")
    r["images"] = [{"path": f"images/{sid}.png", "view": "PA", "role": "current"}]
    r["findings"] = "Small left pleural effusion."
    r["labels"]["Pleural Effusion"] = 1
    r["labels"]["Pneumothorax"] = 0
    r["labels"]["Edema"] = -1
    r["boxes"] = [{"phrase": "small left pleural effusion", "label": "Pleural Effusion", "image_index": 0,
                   "x0": 0.6, "y0": 0.6, "x1": 0.9, "y1": 0.85}]
    r["qa"] = [{"question": "Is there a pleural effusion?", "answer": "yes", "answer_type": "closed",
                "question_type": "presence", "options": ["yes", "no"]}]
    r["sex"], r["age"] = "F", 61.0
    r.update(kw)
    return r


def test_chexbert_label_order():
    assert CHEXPERT_LABELS[0] == "Enlarged Cardiomediastinum" and CHEXPERT_LABELS[-1] == "No Finding"
    assert len(CHEXPERT_LABELS) == 14


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_and_relative_paths(tmp_path, suffix):
    recs = [_rec("s1"), _rec("s2", split="test")]
    path = write_records(recs, tmp_path / f"records{suffix}")
    back = read_records(tmp_path)  # the folder works too
    assert [r["study_id"] for r in back] == ["s1", "s2"]
    assert back[0]["images"][0]["path"] == str(tmp_path / "images/s1.png")
    assert back[0]["labels"]["Pleural Effusion"] == 1 and back[0]["labels"]["Edema"] == -1
    assert back[0]["labels"]["Cardiomegaly"] is None
    assert back[0]["boxes"][0]["x0"] == pytest.approx(0.6)
    assert [r["study_id"] for r in read_records(path, splits=["test"])] == ["s2"]


def test_dataset_features_accept_records():
    ds = to_dataset([_rec("a"), _rec("b")])
    assert ds.features == features()
    assert ds[0]["qa"][0]["options"] == ["yes", "no"]


def test_every_bad_row_is_reported_with_index_and_field(tmp_path):
    rows = [
        _rec("ok"),
        _rec("b1", split="training"),
        _rec("b2", labels={"Cardiomegaly": 2}),
        {**_rec("b3"), "boxes": [{"phrase": "x", "x0": 0.5, "y0": 0.1, "x1": 0.4, "y1": 0.2}]},
        _rec("ok"),  # duplicate id
        {**_rec("b5"), "age": 200, "colour": "red"},
    ]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError) as e:
        read_records(path)
    msg = str(e.value)
    assert "5 of 6 study records are invalid" in msg
    for fragment in ["row 1: split='training'", "row 2: labels.Cardiomegaly=2", "row 3: boxes[0]",
                     "row 4: study_id: 'ok' also used by line 1, row 0", "row 5: age=200", "row 5: colour: unknown field"]:
        assert fragment in msg, fragment


def test_broken_json_line_is_reported(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(_rec("a")) + "\n{not json\n")
    with pytest.raises(RecordError, match="line 2, row 1: record: not valid JSON"):
        read_records(path)


def test_qa_answer_must_be_an_option():
    r = _rec()
    r["qa"][0]["answer"] = "maybe"
    assert any("not among its options" in e for e in validate_record(r))


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="mxr0 prepare"):
        read_records(tmp_path)
