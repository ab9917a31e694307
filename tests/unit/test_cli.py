"""The `mxr0` command as a user runs it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mxr0.cli import main

REPO = Path(__file__).resolve().parents[2]


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command(capsys):
    from mxr0.cli import COMMANDS, build_parser

    out = _help([], capsys)
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) == 10 and len(COMMANDS) == 9  # export.py declares export and export-encoder
    for cmd in commands:
        assert f"\n    {cmd} " in out, cmd


def test_help_stays_free_of_torch():
    code = ("import sys\nfrom mxr0.cli import main\n"
            "for argv in (['--help'], ['prepare', 'slake', '--help'], ['eval', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "sys.exit(any(m in sys.modules for m in ('torch', 'transformers', 'datasets')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_prepare_slake_help_shows_its_own_options_only(capsys):
    out = _help(["prepare", "slake"], capsys)
    assert "--xray-only" in out and "--root" in out and "--cache-size" in out
    assert "--labeler" not in out and "--no-priors" not in out and "--n N" not in out  # mimic-cxr's, phantom's
    mimic = _help(["prepare", "mimic-cxr"], capsys)
    assert "--labeler" in mimic and "--no-priors" in mimic and "--xray-only" not in mimic


def test_every_registered_source_has_a_parser_whose_options_are_converter_keywords():
    import inspect

    from mxr0.cli.prepare import BUILTIN, source_parser
    from mxr0.data.sources import SOURCES, get_converter

    for name in (*BUILTIN, *SOURCES):
        parser, shared = source_parser(name)
        assert parser.prog == f"mxr0 prepare {name}" and parser.description
        assert {"out", "cache_size"} <= shared
        if name in BUILTIN:
            continue
        own = {a.dest for a in parser._actions if a.dest not in shared and a.dest != "help"}
        keywords = {k for k, p in inspect.signature(get_converter(name)).parameters.items() if p.kind == p.KEYWORD_ONLY}
        assert own <= keywords, (name, own - keywords)


def test_prepare_source_options_reach_the_converter(monkeypatch):
    from mxr0.cli import prepare

    seen = {}

    def fake_convert(name, root, out, **options):
        seen.update(name=name, root=root, out=out, **options)
        return Path(out) / "records.jsonl"

    monkeypatch.setattr(prepare, "convert", fake_convert)
    assert main(["prepare", "mimic-cxr", "--root", "r", "--labeler", "none", "--no-priors"]) == 0
    assert seen == {"name": "mimic-cxr", "root": "r", "out": "data_cache/mimic-cxr", "fmt": "jsonl",
                    "show_progress": True, "reports": None, "labeler": None, "priors": False, "check_images": True}
    seen.clear()
    assert main(["prepare", "vqa-rad", "--root", "r", "--out", "o"]) == 0
    assert "organs" not in seen  # absent --all-organs: the converter's default (chest)
    assert main(["prepare", "vqa-rad", "--root", "r", "--out", "o", "--all-organs"]) == 0
    assert seen["organs"] is None
    assert main(["prepare", "nih-boxes", "--root", "r", "--table", "b.csv", "--no-check-images"]) == 0
    assert seen["bbox"] == "b.csv" and seen["check_images"] is False and seen["all_images"] is False


def test_prepare_usage_errors_return_2(capsys):
    assert main(["prepare", "slake", "--root", "r", "--labeler", "none"]) == 2  # mimic-cxr's option
    assert "unrecognized arguments: --labeler" in capsys.readouterr().err
    assert main(["prepare", "merge", "--root", "r"]) == 2
    assert "--ms-cxr" in capsys.readouterr().err


def test_help_texts_carry_no_developer_notes(capsys):
    from mxr0.cli.prepare import BUILTIN, source_parser
    from mxr0.data.sources import SOURCES

    texts = [_help([], capsys)] + [_help([cmd], capsys) for cmd in ("demo", "prepare", "train", "eval", "generate",
                                                                       "serve", "export", "export-encoder", "push")]
    texts += [source_parser(name)[0].format_help() for name in (*BUILTIN, *SOURCES)]
    for text in texts:
        assert ".py" not in text.replace("evaluate_reports.py", "") and "mxr0.precision" not in text


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
