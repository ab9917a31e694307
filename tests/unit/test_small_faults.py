"""Issue #16 item 8: `generate` resume keeps a complete last line without its newline; the Hub token never
goes over plain http except to loopback; the RadGraph archive is extracted member-checked on every Python."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest


# --- generate: resume ------------------------------------------------------------------------
@pytest.fixture
def fake_generation(monkeypatch):
    """generate_split with the model, the dataset and generation replaced by stand-ins (no weights)."""
    import mxr0.generate as gen
    import mxr0.data.report_dataset as report_dataset

    class DS:
        def __init__(self, records, *a, **k):
            self.records = list(records)

        def __len__(self):
            return len(self.records)

        def __getitem__(self, i):
            return self.records[i]

    calls: list[list[str]] = []

    def fake_batch(model, tokenizer, items, *a, **k):
        calls.append([it["study_id"] for it in items])
        return [f"new {it['study_id']}" for it in items]

    monkeypatch.setattr(gen, "load_vlm", lambda *a, **k: (None, None, None, {"n_image_tokens": 1}))
    monkeypatch.setattr(gen, "_config_from", lambda settings: SimpleNamespace(max_new_tokens=4))
    monkeypatch.setattr(gen, "generate_batch", fake_batch)
    monkeypatch.setattr(report_dataset, "ReportDataset", DS)
    monkeypatch.setattr(gen, "ReportDataset", DS, raising=False)
    return gen, calls


RECORDS = [{"study_id": s} for s in ("a", "b", "c")]


def _rows(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.split("\n") if line]


def test_resume_keeps_a_complete_last_line_without_newline(tmp_path, fake_generation):
    gen, calls = fake_generation
    out = tmp_path / "preds.jsonl"
    out.write_text('{"study_id": "a", "report": "old a"}\n{"study_id": "b", "report": "old b"}')  # no final newline
    gen.generate_split("m", RECORDS, out, progress=False)
    assert calls == [["c"]]  # b was done: kept, not generated again and not lost
    assert _rows(out) == [{"study_id": "a", "report": "old a"}, {"study_id": "b", "report": "old b"},
                          {"study_id": "c", "report": "new c"}]


def test_resume_drops_and_regenerates_an_interrupted_last_line(tmp_path, fake_generation, caplog):
    gen, calls = fake_generation
    out = tmp_path / "preds.jsonl"
    out.write_text('{"study_id": "a", "report": "old a"}\n{"study_id": "b", "rep')
    gen.generate_split("m", RECORDS, out, progress=False)
    assert calls == [["b", "c"]]
    assert [r["study_id"] for r in _rows(out)] == ["a", "b", "c"]
    assert "incomplete last line" in caplog.text


def test_resume_lines_of_task_outputs(tmp_path):
    from mxr0.generate import _resume_lines

    p = tmp_path / "t.jsonl"
    p.write_text('{"id": "s/vqa/0", "prediction": "yes"}')
    assert [json.loads(x)["id"] for x in _resume_lines(p) if x] == ["s/vqa/0"]
    assert p.read_text().endswith("}\n")  # the next append starts on its own line
    p.write_bytes(b'{"id": "s/vqa/0"}\n{"id": "s/vqa/1", "prediction": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2: not UTF-8; cannot resume"):
        _resume_lines(p)


# --- Hub endpoint ----------------------------------------------------------------------------
@pytest.mark.parametrize("url", ["https://hub.example.org", "http://127.0.0.1:8080", "http://127.9.8.7/",
                                 "http://[::1]:9000", "http://localhost:1234", "http://LocalHost"])
def test_endpoint_allowed(url):
    from mxr0.hub import check_endpoint

    assert check_endpoint(url) == url


@pytest.mark.parametrize("url", ["http://hub.example.org", "http://10.0.0.1:8080", "http://0.0.0.0",
                                 "http://127.0.0.1.example.org", "http://localhost.example.org", "ftp://x",
                                 "hub.example.org", "https://x:99999"])
def test_endpoint_refused(url):
    from mxr0.hub import HubError, check_endpoint

    with pytest.raises(HubError, match="--endpoint"):
        check_endpoint(url)


@pytest.fixture
def export_run(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    (tmp_path / "run" / "export").mkdir(parents=True)
    (tmp_path / "run" / "export" / "config.json").write_text("{}")
    return tmp_path / "run"


def test_push_refuses_plain_http_before_any_request(export_run, monkeypatch, capsys):
    import huggingface_hub

    from mxr0.cli import main
    from mxr0.hub import HubError, push_run

    def no_client(*a, **k):
        raise AssertionError("a Hub client was created for an unencrypted endpoint")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_client)
    with pytest.raises(HubError, match=r"--endpoint 'http://hub\.example\.org'.*unencrypted.*https://hub\.example\.org"):
        push_run(export_run, "my-org/m", endpoint="http://hub.example.org")
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example.org:8080")
    with pytest.raises(HubError, match="HF_ENDPOINT 'http://hub.example.org:8080'.*unencrypted"):
        push_run(export_run, "my-org/m")
    assert main(["push", str(export_run), "--repo-id", "my-org/m", "--endpoint", "http://hub.example.org"]) == 1
    assert "unencrypted" in capsys.readouterr().err


def test_push_over_http_to_the_loopback_fake_hub_still_works(export_run, monkeypatch):
    from huggingface_hub.utils import _detect_agent

    import mxr0.hub as hub_mod
    from _fake_hub import FakeHub
    from mxr0.hub import push_run

    # the card (another test file's subject) needs a full training run; a fixed one is enough here
    monkeypatch.setattr(hub_mod, "render_model_card", lambda *a, **k: "---\nlicense: apache-2.0\n---\n# m\n")
    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}}, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeHub() as hub:
        assert hub.url.startswith("http://127.0.0.1:")
        url = push_run(export_run, "my-org/m", endpoint=hub.url)
        assert url.startswith(hub.url) and "config.json" in hub.files("my-org/m")


# --- RadGraph archive ------------------------------------------------------------------------
def _tar(path: Path, members: list[tuple[str, str, str | bytes]]) -> Path:
    """members: (kind, name, data or link target); kind file / dir / sym / lnk / chr."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, data in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                raw = data.encode() if isinstance(data, str) else data
                ti.size = len(raw)
                tar.addfile(ti, io.BytesIO(raw))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE,
                       "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "lnk"):
                ti.linkname = data
            if kind == "dir":
                ti.mode = 0o755
            tar.addfile(ti)
    return path


MODEL = [("file", "config.json", "{}"), ("file", "weights.th", "w"), ("dir", "vocabulary", ""),
         ("file", "vocabulary/tokens.txt", "a")]
MALICIOUS = {
    "dotdot": [("file", "../evil.txt", "pwned")],
    "absolute": [("file", "{tmp}/evil-abs.txt", "pwned")],
    "symlink out, then write through it": [("sym", "out", "../../.."), ("file", "out/evil.txt", "pwned")],
    "absolute symlink": [("sym", "etc", "/etc")],
    "symlink chain": [("sym", "d", "."), ("sym", "d/e", ".."), ("file", "e/evil.txt", "pwned")],
    "hard link out": [("lnk", "h", "../../evil.txt")],
    "device": [("chr", "dev", "")],
}


@pytest.fixture(params=[True, False], ids=["filter-data", "no-tar-filter"])
def tar_python(request, monkeypatch, tmp_path):
    """Run with the tar ``filter=`` argument (this Python) and as a Python without it."""
    from mxr0.eval.reports import radgraph

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    seen: list[dict] = []
    real = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kw):
        seen.append(kw)
        if not request.param and "filter" in kw:
            raise TypeError("extractall() got an unexpected keyword argument 'filter'")
        return real(self, path, members, numeric_owner=numeric_owner, **kw)

    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    monkeypatch.setattr(radgraph, "_TAR_DATA_FILTER", request.param, raising=False)
    if not request.param:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return radgraph, request.param, seen


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_radgraph_archive_refuses_unsafe_members(case, tar_python, tmp_path):
    radgraph, _, _ = tar_python
    members = [(k, n.format(tmp=tmp_path), d) for k, n, d in MALICIOUS[case]]
    archive = _tar(tmp_path / "radgraph-xl.tar.gz", MODEL + members)
    with pytest.raises(ValueError, match=r"radgraph-xl\.tar\.gz: refusing to extract member"):
        radgraph._extract(archive)
    assert not list(tmp_path.rglob("evil*"))  # nothing written outside (nor inside)
    assert not list((tmp_path / "xdg").rglob("*.tmp*"))  # the half-extracted folder is removed


def test_radgraph_archive_extracts_a_safe_archive(tar_python, tmp_path):
    radgraph, has_filter, seen = tar_python
    archive = _tar(tmp_path / "radgraph-xl.tar.gz", [("dir", "model", "")]
                   + [(k, f"model/{n}", d) for k, n, d in MODEL] + [("sym", "model/vocabulary/link.txt", "tokens.txt")])
    dest = radgraph._extract(archive)
    assert (dest / "config.json").read_text() == "{}" and (dest / "vocabulary" / "link.txt").read_text() == "a"
    assert [("filter" in kw) for kw in seen] == [has_filter]
    if has_filter:
        assert seen[0]["filter"] == "data"
