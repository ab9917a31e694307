"""``mxr0.Pipeline``: the package top exposes it without loading torch; ``Pipeline.from_pretrained(export)`` loads the
VLM once, and its ``report`` / ``ask`` / ``ground`` give the greedy answers of the direct generation path
(`mxr0.generate.generate_study` / `ask_image`, which read the export again for every call). The export is the tiny
untrained VLM of the serving tests (tests/unit/_serve_exports.py); the tests check plumbing, not quality."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _serve_exports import tiny_vlm_export, xray_png

import mxr0
from mxr0.generate import ask_image, generate_study
from mxr0.serve import loading
from mxr0.serve.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline-export")
    return tiny_vlm_export(root / "report-run" / "export", root / "tok")


@pytest.fixture(scope="module")
def loaded(export):
    """The pipeline, and how many times the VLM was read while it was built."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    calls = []
    real = loading.load_vlm
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loading, "load_vlm", lambda *a, **kw: calls.append(a) or real(*a, **kw))
        p = mxr0.Pipeline.from_pretrained(export, device="cpu")
    yield p, len(calls)
    p.close()
    torch.set_num_threads(old)


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "cxr.png"
    path.write_bytes(xray_png(51, 56, 44))
    return path


def test_import_mxr0_stays_light_and_pipeline_comes_on_first_use():
    code = ("import sys, mxr0; assert 'torch' not in sys.modules, 'import mxr0 loaded torch'; "
            "assert 'Pipeline' in dir(mxr0); from mxr0 import Pipeline; from mxr0.serve.pipeline import Pipeline as P; "
            "assert Pipeline is P and 'torch' in sys.modules; print('ok')")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        mxr0.nothing  # noqa: B018


def test_version_matches_pyproject():
    text = (REPO / "pyproject.toml").read_text()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    declared = re.search(r'^version\s*=\s*"([^"]+)"', project, re.M)
    assert declared, "pyproject.toml: [project] version not found"
    assert declared.group(1) == mxr0.__version__, ("mxr0/_version.py and pyproject.toml's [project] version differ: "
                                                   "change both")


def test_report_ask_ground_equal_the_direct_generation_path(loaded, export, png):
    p, loads = loaded
    assert loads == 1
    rep = p.report(png)
    assert rep["text"] and rep["text"] == generate_study(export, [str(png)], stream=False)
    q = "Is there a pleural effusion?"
    assert p.ask(png, q)["text"] == ask_image(export, png, "vqa", q)[0]
    text, boxes = ask_image(export, png, "grounding", "left effusion")
    g = p.ground(png, "left effusion")
    assert g["text"] == text and g["boxes_normalized"] == pytest.approx(boxes, abs=1e-4)
    assert g["image_size"] == {"width": 44, "height": 56}


def test_models_stay_loaded_and_every_image_form_gives_the_same_answer(loaded, png, monkeypatch):
    p, _ = loaded
    model = p.vlm["model"]

    def no_reload(*a, **kw):
        raise AssertionError("the pipeline read the export again")

    monkeypatch.setattr(loading, "load_vlm", no_reload)
    monkeypatch.setattr("mxr0.generate.load_vlm", no_reload)
    first = p.ask(png, "Is the heart enlarged?")
    for image in (str(png), png.read_bytes(), p.read(png)):
        assert p.ask(image, "Is the heart enlarged?") == first
    streamed: list[str] = []
    again = p.report(png, indication="Cough.", max_new_tokens=4, on_delta=streamed.append)
    assert again["completion_tokens"] == 4 and "".join(streamed).strip() == again["text"]
    assert p.vlm["model"] is model


def test_cli_generate_one_study_and_question_run_on_the_pipeline(export, png, capsys):
    from mxr0.cli import main

    direct = generate_study(str(export), [str(png)], ["PA"], stream=False, max_new_tokens=12)
    assert direct.strip(), "the tiny export should say something for this comparison to mean anything"
    assert main(["generate", "--model", str(export), "--image", str(png), "--view", "PA", "--max-new-tokens", "12"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == (direct or "(empty report)")
    text, _ = ask_image(str(export), png, "vqa", "Is there a pleural effusion?")
    assert main(["generate", "--task", "vqa", "--model", str(export), "--image", str(png), "--prompt",
                 "Is there a pleural effusion?"]) == 0
    assert capsys.readouterr().out.strip() == text


def test_demo_shows_one_study_through_the_pipeline(export, png, capsys):
    from mxr0.demo.main import one_study

    study = {"study_id": "s", "indication": "Cough.", "images": [{"path": str(png), "view": "PA", "role": "current"}],
             "boxes": [{"phrase": "small left pleural effusion", "x0": 0.1, "y0": 0.1, "x1": 0.5, "y1": 0.5}]}
    one_study({"vlm_stage2": {"export": str(export)}}, study)
    out = capsys.readouterr().out
    assert "through mxr0.Pipeline" in out and "boxes for 'small left pleural effusion'" in out
