"""Loading back what ``mxr0 push`` uploaded: a fresh process downloads it from the local fake Hub with the real
huggingface_hub client and loads it with plain transformers, or generates with ``mxr0 generate --model REPO``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _fake_hub import FakeHub
from test_hub import TOKEN, _train, online  # noqa: F401  (online: a fixture)
from test_report import TINY as TINY_REPORT
from test_report import tiny_report

REPO = Path(__file__).resolve().parents[2]
DEAD_PROXY = "http://127.0.0.1:9"  # any request that is not for 127.0.0.1 fails at once instead of leaving the box


def _fresh_env(hub_url: str, hf_home: Path) -> dict[str, str]:
    """The environment of a fresh process that may talk to the fake Hub, and to nothing else."""
    # the client's user-agent telemetry reads {HF_HOME}/.agent_harnesses.json, else fetches it: seed it
    hf_home.mkdir(parents=True, exist_ok=True)
    (hf_home / ".agent_harnesses.json").write_text(json.dumps({"standardEnvVars": [], "harnesses": {}}))
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_")) or k.lower().endswith("_proxy"))}
    env.update(HF_ENDPOINT=hub_url, HF_TOKEN=TOKEN, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0",
               TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HTTP_PROXY=DEAD_PROXY, HTTPS_PROXY=DEAD_PROXY, ALL_PROXY=DEAD_PROXY, NO_PROXY="127.0.0.1,localhost",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return env


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"
    return r


def _only_known_routes(hub: FakeHub) -> None:
    assert not hub.unexpected, hub.unexpected
    assert "/api/agent-harnesses" not in [r["path"] for r in hub.requests]
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)


@pytest.fixture(scope="module")
def classify_run(phantom_small, tmp_path_factory) -> Path:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("roundtrip") / "classify-run"
        _train(phantom_small.parent, out, **{"train.max_steps": 2})
    finally:
        torch.set_num_threads(old)
    return out


@pytest.fixture(scope="module")
def report_run(phantom_small, tmp_path_factory) -> Path:
    import torch

    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("roundtrip") / "report-run"
        train(load_recipe(TINY_REPORT, tiny_report(phantom_small, out, "train.max_steps=2", "model.eval_generate=0")))
    finally:
        torch.set_num_threads(old)
    return out


LOAD_CLASSIFIER = r"""
import json, sys
import torch
from huggingface_hub import snapshot_download
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

repo_id, image, expected = sys.argv[1:4]
torch.set_num_threads(1)
folder = snapshot_download(repo_id)
model = AutoModelForImageClassification.from_pretrained(folder).eval()
processor = AutoImageProcessor.from_pretrained(folder)
with torch.no_grad():
    logits = model(**processor(images=Image.open(image), return_tensors="pt")).logits
want = torch.tensor(json.load(open(expected))["logits"])
torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-6)
print(json.dumps({"folder": folder, "labels": model.config.id2label}))
"""


def _logits(folder: Path, image: Path) -> list:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    processor = AutoImageProcessor.from_pretrained(str(folder))
    with torch.no_grad():
        return model(**processor(images=Image.open(image), return_tensors="pt")).logits.tolist()


def test_pushed_classifier_loads_with_plain_transformers_in_a_fresh_process(classify_run, tmp_path, online, monkeypatch,
                                                                             one_thread):
    import numpy as np
    from PIL import Image

    from mxr0.hub import push_run

    image = tmp_path / "x.png"
    yy, xx = np.mgrid[0:80, 0:72]
    Image.fromarray(((xx * 3 + yy * 2) % 256).astype(np.uint8)).convert("RGB").save(image)
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"logits": _logits(classify_run / "export", image)}))

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as hub:
        push_run(classify_run, "my-org/tiny-cls", endpoint=hub.url)
        uploaded = dict(hub.files("my-org/tiny-cls"))
        n_before = len(hub.requests)
        r = _run(["-c", LOAD_CLASSIFIER, "my-org/tiny-cls", str(image), str(expected)],
                 _fresh_env(hub.url, tmp_path / "hf"), tmp_path)
        _only_known_routes(hub)
        fetched = set(hub.downloads("my-org/tiny-cls"))
        new_paths = {r_["path"] for r_ in hub.requests[n_before:]}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    folder = Path(out["folder"])
    assert folder.is_relative_to(tmp_path / "hf")  # the fresh process's own cache, not the test cache
    # every uploaded file came back, byte for byte
    assert fetched == set(uploaded)
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == set(uploaded)
    for rel, data in uploaded.items():
        assert (folder / rel).read_bytes() == data, rel
    assert out["labels"] == {str(k): v for k, v in json.loads((classify_run / "export" / "config.json").read_text())
                             ["id2label"].items()}
    assert "/api/models/my-org/tiny-cls/revision/main" in new_paths


def test_generate_with_a_hub_repo_id_in_a_fresh_process(report_run, phantom_small, tmp_path, online, monkeypatch,
                                                        one_thread):
    from mxr0.cli import main
    from mxr0.hub import push_run

    local = tmp_path / "local.jsonl"
    assert main(["generate", "--model", str(report_run / "export"), "--data", str(phantom_small), "--split", "test",
                 "--limit", "2", "--out", str(local)]) == 0

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub() as hub:
        push_run(report_run, "my-org/tiny-report", endpoint=hub.url, revision="v1")
        assert "mxr0_report.json" in hub.files("my-org/tiny-report", "v1")
        hub_preds = tmp_path / "hub.jsonl"
        r = _run(["-m", "mxr0", "generate", "--model", "my-org/tiny-report", "--revision", "v1", "--data",
                  str(phantom_small), "--split", "test", "--limit", "2", "--out", str(hub_preds)],
                 _fresh_env(hub.url, tmp_path / "hf"), tmp_path)
        _only_known_routes(hub)
        assert "mxr0_report.json" in hub.downloads("my-org/tiny-report")

        # a repo that is not there, or not at that revision: a clear error naming it, and the way out
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        args = ["generate", "--model", "my-org/nothing-here", "--data", str(phantom_small), "--out", str(tmp_path / "x")]
        err = _err_of(main, args)
        assert "my-org/nothing-here" in err and "was not found" in err and "hf auth login" in err
        args[2] = "my-org/tiny-report"
        err = _err_of(main, [*args, "--revision", "no-such-branch"])
        assert "no-such-branch" in err and "--revision" in err
    assert "[mxr0] predictions:" in r.stdout
    rows = [json.loads(line) for line in hub_preds.read_text().splitlines()]
    assert len(rows) == 2 and all(set(x) == {"study_id", "report"} for x in rows)
    assert hub_preds.read_text() == local.read_text()


def _err_of(main, args) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert main(args) == 1
    return buf.getvalue()


def test_hub_repo_id_offline_is_a_clear_error(phantom_small, tmp_path, capsys):
    from mxr0.cli import main

    # conftest: HF_HUB_OFFLINE=1 and nothing cached under this name
    assert main(["generate", "--model", "my-org/not-cached", "--data", str(phantom_small), "--out",
                 str(tmp_path / "p.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "my-org/not-cached" in err and "offline" in err and "HF_HUB_OFFLINE" in err
    assert main(["generate", "--model", str(tmp_path / "nope" / "export"), "--data", str(phantom_small), "--out",
                 str(tmp_path / "p.jsonl")]) == 1
    assert "no such folder" in capsys.readouterr().err
