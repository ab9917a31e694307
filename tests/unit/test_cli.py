"""The `mxr0` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mxr0.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "prepare", "train", "eval", "config"):
        assert cmd in out


def test_config_show_documents_every_field(capsys):
    assert main(["config", "show", str(REPO / "recipes/tiny/classify.yaml"), "train.lr=2e-4"]) == 0
    out = capsys.readouterr().out
    assert "train.lr = 0.0002  # Peak learning rate" in out
    assert "model.uncertain = 'ones'  # Uncertain labels" in out


def test_config_error_exits_2_with_the_key(capsys):
    assert main(["config", "show", str(REPO / "recipes/tiny/classify.yaml"), "train.lrr=1"]) == 2
    assert "train.lrr: unknown key" in capsys.readouterr().err


def test_prepare_phantom_with_preview(tmp_path):
    out = tmp_path / "ph"
    proc = subprocess.run([sys.executable, "-m", "mxr0", "prepare", "phantom", "--out", str(out), "--n", "24",
                           "--size", "64", "--preview", str(tmp_path / "grid.png")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "records.jsonl").exists()
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[0] > 256


def test_train_then_eval_classify(phantom_small, tmp_path, capsys):
    from test_train_loop import TINY, tiny_overrides

    run = tmp_path / "run"
    assert main(["train", str(TINY), *tiny_overrides(phantom_small.parent, run, **{"train.save_every": 0})]) == 0
    assert "mean_auroc = " in capsys.readouterr().out
    metrics_file = tmp_path / "m.json"
    assert main(["eval", "classify", "--model", str(run / "export"), "--data", str(phantom_small.parent),
                 "--split", "test", "--out", str(metrics_file)]) == 0
    out = capsys.readouterr().out
    assert "| observation | AUROC |" in out and "**mean**" in out
    metrics = json.loads(metrics_file.read_text())
    assert 0.0 <= metrics["mean_auroc"] <= 1.0 and metrics["n_studies"] > 0
