"""Run logging through accelerate's tracker API: the JSONL tracker, TensorBoard when asked, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate import Accelerator
from accelerate.tracking import TensorBoardTracker, get_available_trackers

from mxr0.config import ConfigError, load_recipe
from mxr0.train.trackers import JsonlTracker, run_config, start_trackers, tracker_list

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny" / "classify.yaml"


def _recipe(run_dir: Path, trackers: str):
    return load_recipe(TINY, [f"train.output_dir={run_dir}", f"train.trackers={trackers}"])


def test_jsonl_tracker_writes_the_metrics_lines_through_accelerate(tmp_path):
    run = tmp_path / "run"
    acc = Accelerator(log_with=tracker_list(["jsonl"], run))
    start_trackers(acc, _recipe(run, "[jsonl]"), run)
    assert isinstance(acc.get_tracker("jsonl", unwrap=False), JsonlTracker)
    acc.log({"train/loss": 0.5, "train/lr": 1e-3}, step=2)
    acc.log({"eval/mean_auroc": 0.75}, step=4)
    acc.log({}, step=4)
    acc.end_training()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(x) for x in lines] == [["step", "time", "train/loss", "train/lr"], ["eval/mean_auroc", "step", "time"],
                                          ["step", "time"]]
    assert [x["step"] for x in lines] == [2, 4, 4] and lines[0]["train/loss"] == 0.5
    assert all(isinstance(x["time"], float) for x in lines)
    # a resumed run appends to the same file
    acc = Accelerator(log_with=tracker_list(["jsonl"], run))
    acc.init_trackers("mxr0")
    acc.log({"train/loss": 0.25}, step=6)
    acc.end_training()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.skipif("tensorboard" not in {str(t) for t in get_available_trackers()},
                    reason="tensorboard is not installed (pip install tensorboard)")
def test_tensorboard_is_used_when_asked_and_writes_into_the_run_folder(tmp_path):
    run = tmp_path / "run"
    log_with = tracker_list(["jsonl", "tensorboard"], run)
    assert [type(t) for t in log_with] == [JsonlTracker, TensorBoardTracker]
    acc = Accelerator(log_with=log_with)
    start_trackers(acc, _recipe(run, "[jsonl, tensorboard]"), run)  # the recipe as hyperparameters
    acc.log({"train/loss": 0.5}, step=1)
    acc.end_training()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_an_unknown_tracker_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown tracker\(s\) \['tensorbord'\].*valid: .*'tensorboard'"):
        tracker_list(["jsonl", "tensorbord"], tmp_path)


def test_a_tracker_whose_package_is_missing_names_the_package(tmp_path):
    missing = [n for n in ("mlflow", "trackio", "wandb", "aim") if n not in {str(t) for t in get_available_trackers()}]
    if not missing:
        pytest.skip("every probed tracker package is installed")
    with pytest.raises(ConfigError, match=f"includes {missing[0]} but its package is not installed: pip install "
                                          f"{missing[0]}"):
        tracker_list([missing[0]], tmp_path)


def test_the_tracked_configuration_is_flat_and_keeps_secrets_out(tmp_path):
    cfg = run_config(_recipe(tmp_path / "run", "[jsonl]"))
    assert cfg["train.lr"] == 1e-3 and cfg["task"] == "classify"
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in cfg.values())
    assert json.loads(cfg["train.trackers"]) == ["jsonl"]
    recipe = _recipe(tmp_path / "run", "[jsonl]")
    recipe.model.encoder_config["hub_token"] = "hf_" + "x" * 30
    recipe.model.encoder_config["note"] = "key hf_" + "y" * 30
    cfg = run_config(recipe)
    assert not any("hub_token" in k or "note" in k for k in cfg)
    assert "model.encoder_config.hidden_size" in cfg
