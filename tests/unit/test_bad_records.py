"""A corpus of bad records (issue #16 items 4, 8, 9): each is refused at validation with
`RecordError`, and the message names the file, the line / row and the field — never the bytes of
a file the path points to."""

import copy
import json
import os
from pathlib import Path

import pytest

from mxr0.data.records import (
    MAX_REPORTED_ROWS,
    RecordError,
    declare_roots,
    empty_record,
    read_records,
    roots_file,
    write_records,
)


def _good(sid="good"):
    r = empty_record(sid, split="train", source="test", anatomy="chest")
    r["images"] = [{"path": f"images/{sid}.png", "view": "PA", "role": "current"}]
    r["boxes"] = [{"phrase": "effusion", "label": "Pleural Effusion", "image_index": 0,
                   "x0": 0.1, "y0": 0.1, "x1": 0.5, "y1": 0.5}]
    r["masks"] = [{"name": "heart", "path": f"masks/{sid}_heart.png", "image_index": 0}]
    r["qa"] = [{"question": "Effusion?", "answer": "yes", "answer_type": "closed", "question_type": "presence",
                "options": ["yes", "no"]}]
    return r


def _set(path, value):
    """A case: the bad record is the good one with ``path`` (``a.0.b``) set to ``value``."""
    def make(folder):
        r = _good("bad")
        *head, last = path.split(".")
        obj = r
        for k in head:
            obj = obj[int(k)] if k.isdigit() else obj[k]
        obj[int(last) if last.isdigit() else last] = value
        return r
    return make


def _drop(key):
    def make(folder):
        r = _good("bad")
        del r[key]
        return r
    return make


def _with(fn):
    """A case whose record needs something made on disk first (``fn(folder) -> record``)."""
    return fn


def _fifo(folder):
    os.mkfifo(folder / "pipe.png")
    return _set("images.0.path", "pipe.png")(folder)


def _dir(folder):
    (folder / "adir.png").mkdir()
    return _set("images.0.path", "adir.png")(folder)


def _symlink_out(folder):
    (folder / "link.png").symlink_to("/etc/hostname")
    return _set("images.0.path", "link.png")(folder)


def _symlinked_dir_escape(folder):
    (folder / "etcdir").symlink_to("/etc")
    return _set("images.0.path", "etcdir/passwd")(folder)


def _device(folder):
    (folder / "null.png").symlink_to("/dev/null")  # outside the roots, and a device
    return _set("images.0.path", "null.png")(folder)


RAW = object()  # marks cases that write a raw line instead of a JSON record

# (case id, record maker or raw line, the field the message must name)
CASES = [
    ("split-value", _set("split", "training"), "split"),
    ("split-int", _set("split", 1), "split"),
    ("anatomy-value", _set("anatomy", "lungs"), "anatomy"),
    ("study-id-missing", _drop("study_id"), "study_id"),
    ("study-id-empty", _set("study_id", ""), "study_id"),
    ("study-id-int", _set("study_id", 7), "study_id"),
    ("study-id-nul", _set("study_id", "a\x00b"), "study_id"),
    ("study-id-duplicate", _set("study_id", "good"), "study_id"),
    ("images-missing", _drop("images"), "images"),
    ("images-string", _set("images", "images/a.png"), "images"),
    ("image-not-object", _set("images.0", "images/a.png"), "images[0]"),
    ("image-path-int", _set("images.0.path", 12), "images[0].path"),
    ("image-path-empty", _set("images.0.path", ""), "images[0].path"),
    ("image-path-nul", _set("images.0.path", "images/a\x00.png"), "images[0].path"),
    ("image-path-dotdot", _set("images.0.path", "../../../../../../etc/passwd"), "images[0].path"),
    ("image-path-dotdot-inner", _set("images.0.path", "images/../../outside.png"), "images[0].path"),
    ("image-path-absolute", _set("images.0.path", "/etc/passwd"), "images[0].path"),
    ("image-path-folder", _with(_dir), "images[0].path"),
    ("image-path-fifo", _with(_fifo), "images[0].path"),
    ("image-path-symlink-out", _with(_symlink_out), "images[0].path"),
    ("image-path-symlinked-dir", _with(_symlinked_dir_escape), "images[0].path"),
    ("image-path-device", _with(_device), "images[0].path"),
    ("image-view", _set("images.0.view", "FRONTAL"), "images[0].view"),
    ("image-role", _set("images.0.role", "old"), "images[0].role"),
    ("findings-int", _set("findings", 3), "findings"),
    ("impression-list", _set("impression", ["a"]), "impression"),
    ("source-int", _set("source", 1), "source"),
    ("labels-list", _set("labels", [1, 0]), "labels"),
    ("labels-unknown", _set("labels", {"Lung Cancer": 1}), "labels.Lung Cancer"),
    ("label-two", _set("labels.Cardiomegaly", 2), "labels.Cardiomegaly"),
    ("label-bool", _set("labels.Cardiomegaly", True), "labels.Cardiomegaly"),
    ("label-string", _set("labels.Edema", "1"), "labels.Edema"),
    ("boxes-string", _set("boxes", "0.1,0.1,0.5,0.5"), "boxes"),
    ("box-not-object", _set("boxes.0", [0.1, 0.1, 0.5, 0.5]), "boxes[0]"),
    ("box-coord-string", _set("boxes.0.x0", "0.1"), "boxes[0]"),
    ("box-inverted", _set("boxes.0.x1", 0.05), "boxes[0]"),
    ("box-out-of-frame", _set("boxes.0.y1", 1.5), "boxes[0]"),
    ("box-image-index", _set("boxes.0.image_index", 3), "boxes[0].image_index"),
    ("box-image-index-bool", _set("boxes.0.image_index", True), "boxes[0].image_index"),
    ("box-phrase-int", _set("boxes.0.phrase", 5), "boxes[0].phrase"),
    ("masks-object", _set("masks", {"name": "heart"}), "masks"),
    ("mask-name-missing", _set("masks.0.name", ""), "masks[0].name"),
    ("mask-path-int", _set("masks.0.path", 5), "masks[0].path"),
    ("mask-path-dotdot", _set("masks.0.path", "../../secret.png"), "masks[0].path"),
    ("mask-path-nul", _set("masks.0.path", "m\x00.png"), "masks[0].path"),
    ("mask-image-index", _set("masks.0.image_index", 2), "masks[0].image_index"),
    ("qa-string", _set("qa", "Is there an effusion? yes"), "qa"),
    ("qa-not-object", _set("qa.0", ["q", "a"]), "qa[0]"),
    ("qa-answer-missing", _set("qa.0.answer", None), "qa[0].answer"),
    ("qa-question-int", _set("qa.0.question", 4), "qa[0].question"),
    ("qa-options-string", _set("qa.0.options", "yes"), "qa[0].options"),
    ("qa-options-ints", _set("qa.0.options", [1, 0]), "qa[0].options"),
    ("qa-answer-not-option", _set("qa.0.answer", "maybe"), "qa[0].answer"),
    ("qa-answer-type", _set("qa.0.answer_type", "yes/no"), "qa[0].answer_type"),
    ("qa-question-type-int", _set("qa.0.question_type", 1), "qa[0].question_type"),
    ("sex-value", _set("sex", "X"), "sex"),
    ("age-negative", _set("age", -1), "age"),
    ("age-string", _set("age", "61"), "age"),
    ("age-too-old", _set("age", 200), "age"),
    ("unknown-field", _set("colour", "red"), "colour"),
    ("record-is-list", lambda folder: [1, 2, 3], "record"),
    ("record-is-string", lambda folder: "images/a.png", "record"),
    ("not-json", (RAW, b'{"study_id": "x", '), "record"),
    ("nan-age", (RAW, b'{"study_id": "bad", "split": "train", "anatomy": "chest", "images": [], "age": NaN}'), "age"),
    ("not-utf8", (RAW, b'{"study_id": "caf\xe9", "split": "train", "anatomy": "chest", "images": []}'), "record"),
]


def _write(folder: Path, case) -> Path:
    """records.jsonl with a good row (line 1, row 0) and the bad one (line 2, row 1)."""
    (folder / "images").mkdir(exist_ok=True)
    path = folder / "records.jsonl"
    good = json.dumps(_good()).encode()
    if isinstance(case, tuple) and case[0] is RAW:
        bad = case[1]
    else:
        bad = json.dumps(case(folder), ensure_ascii=False).encode("utf-8")
    path.write_bytes(good + b"\n" + bad + b"\n")
    return path


def _check(folder: Path, case, field: str) -> RecordError:
    path = _write(folder, case)
    with pytest.raises(RecordError) as e:
        read_records(path)
    msg = str(e.value)
    assert str(path) in msg, msg  # the file
    assert "line 2, row 1: " in msg, msg  # the line and row
    assert f"line 2, row 1: {field}" in msg, msg  # the field, right after its row
    assert "1 of 2 study records are invalid" in msg, msg
    assert "root:" not in msg and "\\xe9" not in msg and "é" not in msg  # no file bytes echoed
    return e.value


@pytest.mark.parametrize("name,case,field", CASES, ids=[c[0] for c in CASES])
def test_bad_record_is_refused_naming_file_row_and_field(tmp_path, name, case, field):
    _check(tmp_path, case, field)


def test_bad_record_corpus_count(tmp_path, capsys):
    named = 0
    for i, (name, case, field) in enumerate(CASES):
        folder = tmp_path / str(i)
        folder.mkdir()
        try:
            _check(folder, case, field)
            named += 1
        except AssertionError:
            pass
    with capsys.disabled():
        print(f"\nbad-record corpus: {len(CASES)} cases, {named} named errors")
    assert len(CASES) >= 40
    assert named == len(CASES)


def test_every_bad_row_is_listed_not_only_the_first_fifty_problems(tmp_path):
    """41 bad rows, several problems each (the old cap of 50 problems listed 32 of them)."""
    makers = [c[1] for c in CASES if callable(c[1]) and c[0] not in ("study-id-duplicate",)][:41]
    rows = [_good()]
    for i, make in enumerate(makers):
        r = make(tmp_path)
        if isinstance(r, dict):
            r = copy.deepcopy(r)
            r["colour"] = "red"  # a second problem per row
            if isinstance(r.get("study_id"), str) and r["study_id"] == "bad":
                r["study_id"] = f"bad{i}"
        rows.append(r)
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError) as e:
        read_records(path)
    msg = str(e.value)
    assert f"{len(makers)} of {len(rows)} study records are invalid" in msg
    for row in range(1, len(rows)):
        assert f"line {row + 1}, row {row}: " in msg, row
    assert e.value.n_bad_rows == len(makers)


def test_the_number_of_listed_rows_is_capped_but_counted(tmp_path):
    rows = [_good()] + [{**_good(f"b{i}"), "split": "nope"} for i in range(MAX_REPORTED_ROWS + 5)]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(RecordError, match="and 5 more bad rows") as e:
        read_records(path)
    assert e.value.n_bad_rows == MAX_REPORTED_ROWS + 5


def test_declared_roots_allow_paths_outside_the_records_folder(tmp_path):
    """Converters declare the dataset folders their paths point into (records.roots.json)."""
    data = tmp_path / "data" / "mimic-cxr-jpg"
    (data / "files").mkdir(parents=True)
    (data / "files" / "a.jpg").write_bytes(b"x")
    out = tmp_path / "cache" / "ms-cxr"
    rec = _good("s1")
    rec["images"][0]["path"] = "../../data/mimic-cxr-jpg/files/a.jpg"
    with pytest.raises(RecordError, match=r"images\[0\]\.path: .* resolves outside the declared image roots"):
        write_records([rec], out / "records.jsonl")  # not declared
    path = write_records([rec], out / "records.jsonl", roots=[data])
    assert json.loads(roots_file(path).read_text())["roots"] == ["../../data/mimic-cxr-jpg"]
    assert read_records(path)[0]["images"][0]["path"].endswith("mimic-cxr-jpg/files/a.jpg")
    # ... but not beyond them
    rec["images"][0]["path"] = "../../data/other/b.jpg"
    with pytest.raises(RecordError, match="resolves outside"):
        write_records([rec], out / "records.jsonl", roots=[data])


def test_folder_without_declared_roots_migrates_to_its_own_folder(tmp_path, caplog):
    """A records file prepared before roots existed: its own folder is the root, a message says how
    to declare others, and declaring them makes the file readable."""
    import logging

    other = tmp_path / "images-elsewhere"
    other.mkdir()
    folder = tmp_path / "old"
    folder.mkdir()
    inside, outside = _good("in"), _good("out")
    outside["images"][0]["path"] = "../images-elsewhere/x.png"
    path = folder / "records.jsonl"
    path.write_text(json.dumps(inside) + "\n")
    with caplog.at_level(logging.INFO, logger="mxr0.data.records"):
        assert len(read_records(path)) == 1
    assert "declares no image roots" in caplog.text and "declare_roots" in caplog.text
    path.write_text(json.dumps(inside) + "\n" + json.dumps(outside) + "\n")
    with pytest.raises(RecordError, match=r"line 2, row 1: images\[0\]\.path: .*records\.roots\.json"):
        read_records(path)
    declare_roots(path, [other])
    assert len(read_records(path)) == 2


def test_extra_paths_keep_their_own_roots(tmp_path):
    """Each records file of `data.extra_paths` is read with its own sidecar."""
    from mxr0.config import DataConfig
    from mxr0.data.loading import load_split

    shared = tmp_path / "shared-images"
    shared.mkdir()
    a, b = tmp_path / "a", tmp_path / "b"
    ra, rb = _good("a1"), _good("b1")
    rb["images"][0]["path"] = "../shared-images/b1.png"
    write_records([ra], a / "records.jsonl")
    write_records([rb], b / "records.jsonl", roots=[shared])
    recs = load_split(DataConfig(source="records", path=str(a), extra_paths=[str(b)]), "train")
    assert [r["study_id"] for r in recs] == ["a1", "b1"]
    roots_file(b / "records.jsonl").unlink()  # b's roots do not come from a's
    with pytest.raises(RecordError, match=str(b / "records.jsonl")):
        load_split(DataConfig(source="records", path=str(a), extra_paths=[str(b)]), "train")
