"""The one training loop: checkpoints, resume after SIGKILL, non-finite guard, export, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mxr0.config import ConfigError, load_recipe
from mxr0.train import checkpoint as ckpt_mod
from mxr0.train.checkpoint import list_checkpoints, resolve_checkpoint
from mxr0.train.loop import NonFiniteLossError, train

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny" / "classify.yaml"


def tiny_overrides(data_dir: Path, out: Path, **extra) -> list[str]:
    """The tiny recipe shrunk further: 56 px input (4x4 patches), a 2-layer 32-wide ViT."""
    o = {
        "data.source": "records",
        "data.path": str(data_dir),
        "model.image_size": 56,
        "model.encoder_config": "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
                                "intermediate_size: 64, patch_size: 14, num_register_tokens: 2}",
        "train.output_dir": str(out),
        "train.batch_size": 16,
        "train.max_steps": 12,
        "train.warmup_steps": 2,
        "train.log_every": 2,
        "train.eval_every": 6,
        "train.save_every": 4,
        "train.keep_last": 2,
        "train.progress": "false",
        "train.trackers": "[jsonl, tensorboard]",
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def test_train_saves_exports_and_logs(phantom_small, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out = tmp_path / "run"
    # a previous export in the run folder (another image size, a file this task does not write) is replaced whole
    (out / "export").mkdir(parents=True)
    (out / "export" / "preprocessor_config.json").write_text('{"size": {"shortest_edge": 112}}')
    (out / "export" / "stale_adapter.safetensors").write_text("old")
    result = train(load_recipe(TINY, tiny_overrides(phantom_small.parent, out)))
    assert result["state"]["step"] == 12
    assert not (out / "export" / "stale_adapter.safetensors").exists() and not (out / "export.partial").exists()
    # keep_last=2: steps 8 and 12 remain, 4 was rotated out
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000008", "step-00000012"]
    assert (out / "recipe.yaml").exists() and load_recipe(out / "recipe.yaml").train.max_steps == 12
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in x for x in lines) and any("eval/mean_auroc" in x for x in lines)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "mean_auroc" in result["metrics"]
    # The export is Hugging Face-native: plain AutoModel / AutoImageProcessor, no remote code.
    model = AutoModelForImageClassification.from_pretrained(out / "export")
    proc = AutoImageProcessor.from_pretrained(out / "export")
    assert model.config.problem_type == "multi_label_classification"
    assert model.config.num_labels == len(json.loads((out / "export" / "mxr0_labels.json").read_text())["labels"])
    assert proc.crop_size["height"] == 56


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "export" / "model.safetensors")


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_weights(phantom_small, tmp_path):
    """A run killed with SIGKILL mid-training and resumed ends with the uninterrupted run's weights."""
    steps = 24
    ref = tmp_path / "ref"
    train(load_recipe(TINY, tiny_overrides(phantom_small.parent, ref, **{"train.max_steps": steps})))

    run = tmp_path / "killed"
    args = [sys.executable, "-m", "mxr0", "train", str(TINY),
            *tiny_overrides(phantom_small.parent, run, **{"train.max_steps": steps})]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "step-00000008").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list_checkpoints(run / "checkpoints")
    assert done and int(done[-1].name.split("-")[1]) < steps
    assert not (run / "export").exists()

    subprocess.run([*args, "--resume"], env=env, check=True, stdout=subprocess.DEVNULL)
    a, b = _final_weights(ref), _final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"weights differ after resume: {k}")


def test_incomplete_checkpoints_are_never_loaded(tmp_path):
    run = tmp_path
    ck = run / "checkpoints"
    good = ck / "step-00000004"
    good.mkdir(parents=True)
    (good / "trainer_state.json").write_text(json.dumps({"step": 4}))
    (ck / ".tmp-step-00000008").mkdir()  # killed while writing
    (ck / "step-00000012").mkdir()  # no trainer_state.json: not complete
    assert resolve_checkpoint(run, "latest") == good
    with pytest.raises(FileNotFoundError, match="not a complete mxr0 checkpoint"):
        resolve_checkpoint(run, str(ck / "step-00000012"))
    assert resolve_checkpoint(tmp_path / "other", "latest") is None


def test_a_crash_during_checkpoint_write_leaves_no_checkpoint(phantom_small, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = ckpt_mod._fsync_tree

    def crash(path):
        real(path)
        raise KeyboardInterrupt("killed during checkpoint write")

    monkeypatch.setattr(ckpt_mod, "_fsync_tree", crash)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(TINY, tiny_overrides(phantom_small.parent, out)))
    assert list_checkpoints(out / "checkpoints") == []
    assert list((out / "checkpoints").glob(".tmp-step-*"))  # the partial write stayed hidden
    monkeypatch.setattr(ckpt_mod, "_fsync_tree", real)
    # the next run starts fresh (nothing to resume) and removes the stale temporary folder
    result = train(load_recipe(TINY, tiny_overrides(phantom_small.parent, out)), resume="latest")
    assert result["state"]["step"] == 12
    assert not list((out / "checkpoints").glob(".tmp-step-*"))


def _nan_on_steps(monkeypatch, bad_calls):
    from mxr0.tasks.classify import ClassifyTask

    real = ClassifyTask.training_step
    calls = {"n": 0}

    def step(self, model, batch):
        out = real(self, model, batch)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ClassifyTask, "training_step", step)


def test_nonfinite_losses_are_skipped(phantom_small, tmp_path, monkeypatch):
    _nan_on_steps(monkeypatch, {3, 5})
    result = train(load_recipe(TINY, tiny_overrides(phantom_small.parent, tmp_path / "run", **{"train.save_every": 0})))
    assert result["state"]["skipped_steps"] == 2 and result["state"]["step"] == 12
    weights = _final_weights(tmp_path / "run")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_too_many_nonfinite_losses_stop_with_a_clear_message(phantom_small, tmp_path, monkeypatch):
    _nan_on_steps(monkeypatch, set(range(100)))
    with pytest.raises(NonFiniteLossError, match="non-finite .* for 3 optimiser steps in a row"):
        train(load_recipe(TINY, tiny_overrides(phantom_small.parent, tmp_path / "run",
                                               **{"train.max_nonfinite": 3, "train.save_every": 0})))


def test_launcher_precision_conflict_is_an_error(phantom_small, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="Precision is set in the recipe only"):
        train(load_recipe(TINY, tiny_overrides(phantom_small.parent, tmp_path / "run")))


def test_grad_accumulation_counts_optimizer_steps(phantom_small, tmp_path):
    out = tmp_path / "run"
    result = train(load_recipe(TINY, tiny_overrides(phantom_small.parent, out, **{
        "train.grad_accum": 2, "train.batch_size": 8, "train.max_steps": 6, "train.save_every": 0})))
    assert result["state"]["step"] == 6
    assert result["state"]["samples"] == 6 * 2 * 8  # 6 optimiser steps of 2 micro-batches of 8


@pytest.mark.slow
def test_two_cpu_processes_train_and_resume(phantom_small, tmp_path):
    """2 gloo ranks (the launch form that really starts 2 synchronised processes), then a resume."""
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "-m", "mxr0", "train", str(TINY)]
    over = tiny_overrides(phantom_small.parent, out, **{"train.batch_size": 8})
    subprocess.run([*base, *over, "train.max_steps=6", "train.save_every=3"], env=env, check=True, capture_output=True)
    first = json.loads((out / "results.json").read_text())
    assert first["num_processes"] == 2 and first["state"]["step"] == 6
    assert first["state"]["samples"] == 6 * 8 * 2
    subprocess.run([*base, *over, "train.max_steps=8", "--resume"], env=env, check=True, capture_output=True)
    second = json.loads((out / "results.json").read_text())
    assert second["num_processes"] == 2 and second["state"]["step"] == 8


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(phantom_small, tmp_path):
    """Schedulers send SIGTERM before killing: the run saves at the step boundary, exits 0, and resumes."""
    run = tmp_path / "term"
    args = [sys.executable, "-m", "mxr0", "train", str(TINY),
            *tiny_overrides(phantom_small.parent, run, **{"train.max_steps": 400, "train.save_every": 0,
                                                          "train.log_every": 1, "train.eval_every": 0})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "stopped by a signal" in out
    done = list_checkpoints(run / "checkpoints")
    assert len(done) == 1 and 3 <= int(done[0].name.split("-")[1]) < 400
    assert not (run / "export").exists()
    # the resumed run continues from that step
    resumed = train(load_recipe(TINY, tiny_overrides(phantom_small.parent, run, **{
        "train.max_steps": int(done[0].name.split("-")[1]) + 2, "train.save_every": 0})), resume="latest")
    assert resumed["state"]["step"] == int(done[0].name.split("-")[1]) + 2 and not resumed["interrupted"]


def _copy_with_broken_images(src: Path, dst: Path, n_broken: int) -> list[str]:
    import shutil

    from mxr0.data.records import read_records

    shutil.copytree(src, dst)
    recs = [r for r in read_records(dst, splits=["train"]) if r["anatomy"] == "chest"]
    broken = []
    for r in recs[:n_broken]:
        for im in r["images"]:
            Path(im["path"]).write_bytes(b"not an image at all")
            broken.append(Path(im["path"]).name)
    return broken


def test_unreadable_samples_are_skipped_counted_and_named(phantom_small, tmp_path):
    data = tmp_path / "data"
    broken = _copy_with_broken_images(phantom_small.parent, data, 2)
    run = tmp_path / "run"
    result = train(load_recipe(TINY, tiny_overrides(data, run, **{
        "data.max_bad_samples": 100, "train.max_steps": 12, "data.anatomies": "[chest]"})))
    assert result["state"]["bad_samples"] >= 2
    listed = (run / "bad_samples.txt").read_text()
    assert any(name in listed for name in broken), listed


def test_too_many_unreadable_samples_stop_the_run_with_the_file_named(phantom_small, tmp_path):
    from mxr0.train.faults import TooManyBadSamplesError

    data = tmp_path / "data"
    broken = _copy_with_broken_images(phantom_small.parent, data, 3)
    run = tmp_path / "run"
    with pytest.raises(TooManyBadSamplesError, match="data.max_bad_samples=0"):
        train(load_recipe(TINY, tiny_overrides(data, run, **{
            "data.max_bad_samples": 0, "train.max_steps": 12, "data.anatomies": "[chest]"})))
    assert any(name in (run / "bad_samples.txt").read_text() for name in broken)
