"""No run loses its last good checkpoint (issue #16): non-finite steps are skipped before the optimizer moves,
checkpoints are only written while the tensors are finite, rotation keeps the newest good one, resume verifies
the manifest and falls back past a corrupt checkpoint, and a full disk is a named error."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train_loop import TINY, tiny_overrides

from mxr0.config import load_recipe
from mxr0.train import checkpoint as ckpt_mod
from mxr0.train.checkpoint import (CheckpointNotFoundError, CorruptCheckpointError, DiskFullError, TrainState,
                                   check_checkpoint, checkpoint_is_good, list_checkpoints, newest_good_checkpoint,
                                   resolve_checkpoint, save_checkpoint)
from mxr0.train.loop import NonFiniteLossError, train


# --- unit level: a stand-in accelerator that writes what accelerate writes ------------------------------------

class FakeAccelerator:
    num_processes = 1
    is_main_process = True
    device = torch.device("cpu")

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def wait_for_everyone(self):
        pass

    def save_state(self, out, safe_serialization=True):
        Path(out).mkdir(parents=True, exist_ok=True)
        save_file(self.model.state_dict(), f"{out}/model.safetensors")
        torch.save(self.optimizer.state_dict(), f"{out}/optimizer.bin")


def _tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_no_checkpoint_is_written_while_weights_or_optimizer_state_are_nonfinite(tmp_path, caplog):
    model, opt = _tiny_model()
    acc = FakeAccelerator(model, opt)
    ck = tmp_path / "checkpoints"
    assert save_checkpoint(acc, ck, TrainState(step=1), keep_last=2, model=model, optimizer=opt) == ck / "step-00000001"
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with caplog.at_level(logging.WARNING):
        assert save_checkpoint(acc, ck, TrainState(step=2), keep_last=2, model=model, optimizer=opt) is None
    assert "parameter weight" in caplog.text and "step-00000001" in caplog.text
    with torch.no_grad():
        model.weight[0, 0] = 0.0
        next(iter(opt.state.values()))["exp_avg_sq"][0] = float("inf")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert save_checkpoint(acc, ck, TrainState(step=3), keep_last=2, model=model, optimizer=opt) is None
    assert "optimizer state 'exp_avg_sq'" in caplog.text
    # a save after skipped steps is not written either
    with torch.no_grad():
        next(iter(opt.state.values()))["exp_avg_sq"][0] = 1.0
    assert save_checkpoint(acc, ck, TrainState(step=4, nonfinite_streak=1), keep_last=2, model=model, optimizer=opt) is None
    assert [p.name for p in list_checkpoints(ck)] == ["step-00000001"]
    assert not list(ck.glob(".tmp-*"))


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path, monkeypatch):
    import hashlib

    model, opt = _tiny_model()
    acc = FakeAccelerator(model, opt)
    c = save_checkpoint(acc, tmp_path / "checkpoints", TrainState(step=5), keep_last=2)
    manifest = json.loads((c / "manifest.json").read_text())
    assert manifest["good"] is True and manifest["checksum"] == "sha256" and manifest["step"] == 5
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.bin", "trainer_state.json"}
    for name, info in manifest["files"].items():
        assert info["size"] == (c / name).stat().st_size
        assert info["sha256"] == hashlib.sha256((c / name).read_bytes()).hexdigest()
    assert check_checkpoint(c) is None
    # above the size limit: sizes only (truncation still caught)
    monkeypatch.setenv("MXR0_CHECKSUM_MAX_BYTES", "0")
    c = save_checkpoint(acc, tmp_path / "checkpoints", TrainState(step=6), keep_last=2)
    manifest = json.loads((c / "manifest.json").read_text())
    assert manifest["checksum"] is None and "sha256" not in manifest["files"]["model.safetensors"]
    with open(c / "optimizer.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(CorruptCheckpointError, match="optimizer.bin has 10 bytes"):
        check_checkpoint(c)


def test_rotation_keeps_the_newest_good_checkpoint_beyond_keep_last(tmp_path):
    model, opt = _tiny_model()
    acc = FakeAccelerator(model, opt)
    ck = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        c = save_checkpoint(acc, ck, TrainState(step=step), keep_last=1)
        # step 1's weights gave a finite loss; 2 and 3 were poisoned (their next loss was NaN)
        ckpt_mod.record_loss_check(c, finite=step == 1, step=step)
    save_checkpoint(acc, ck, TrainState(step=4), keep_last=1)
    assert [p.name for p in list_checkpoints(ck)] == ["step-00000001", "step-00000004"]
    ckpt_mod.record_loss_check(ck / "step-00000004", finite=False, step=4)
    assert newest_good_checkpoint(ck) == ck / "step-00000001"
    assert resolve_checkpoint(tmp_path, "latest") == ck / "step-00000001"
    # every checkpoint bad: resume stops at once, saying so
    ckpt_mod.record_loss_check(ck / "step-00000001", finite=False, step=1)
    with pytest.raises(CheckpointNotFoundError, match="no good checkpoint exists in"):
        resolve_checkpoint(tmp_path, "latest")


def test_disk_full_while_finishing_a_save_is_a_named_error(tmp_path, monkeypatch):
    model, opt = _tiny_model()
    acc = FakeAccelerator(model, opt)
    ck = tmp_path / "checkpoints"
    first = save_checkpoint(acc, ck, TrainState(step=1), keep_last=2)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "write_manifest", full)
    with pytest.raises(DiskFullError, match=r"the disk is full .*step-00000001 is intact") as e:
        save_checkpoint(acc, ck, TrainState(step=2), keep_last=2)
    assert e.value.path == ck / ".tmp-step-00000002"
    assert list_checkpoints(ck) == [first] and check_checkpoint(first) is None
    assert not list(ck.glob(".tmp-*"))


# --- end to end, with the tiny classifier -------------------------------------------------------------------

def _run(data: Path, out: Path, resume=None, **extra):
    o = {"train.eval_every": 0, **extra}
    return train(load_recipe(TINY, tiny_overrides(data, out, **o)), resume=resume)


@pytest.fixture(scope="module")
def three_checkpoints(phantom_small, tmp_path_factory) -> Path:
    """A finished run with checkpoints at steps 4, 8 and 12."""
    out = tmp_path_factory.mktemp("ckpt3") / "run"
    _run(phantom_small.parent, out, **{"train.keep_last": 3})
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000004", "step-00000008", "step-00000012"]
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


CORRUPTIONS = {
    "truncated weights": ("model.safetensors", _truncate),
    "truncated optimizer": ("optimizer.bin", _truncate),
    "deleted weights": ("model.safetensors", Path.unlink),
    "unparseable trainer_state.json": ("trainer_state.json", lambda p: p.write_text('{"step": 12, "epo')),
    "unparseable manifest": ("manifest.json", lambda p: p.write_text("{")),
    "flipped byte": ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00")),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_resume_latest_passes_over_a_corrupt_newest_checkpoint(three_checkpoints, tmp_path, caplog, kind):
    run = _copy_run(three_checkpoints, tmp_path / "run")
    name, damage = CORRUPTIONS[kind]
    damage(run / "checkpoints" / "step-00000012" / name)
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(run, "latest") == run / "checkpoints" / "step-00000008"
    assert "step-00000012" in caplog.text and name in caplog.text
    # asked for by path, the same checkpoint is a named error
    with pytest.raises(CorruptCheckpointError, match=f"step-00000012.*{name}") as e:
        resolve_checkpoint(run, str(run / "checkpoints" / "step-00000012"))
    assert e.value.file == name and e.value.path == run / "checkpoints" / "step-00000012"


def test_resume_falls_back_and_trains_on_from_the_previous_intact_checkpoint(phantom_small, three_checkpoints, tmp_path,
                                                                            caplog):
    run = _copy_run(three_checkpoints, tmp_path / "run")
    _truncate(run / "checkpoints" / "step-00000012" / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="mxr0.train"):
        result = _run(phantom_small.parent, run, resume="latest", **{"train.max_steps": 14, "train.keep_last": 3})
    assert f"resumed from {run / 'checkpoints' / 'step-00000008'} at step 8" in caplog.text
    assert result["state"]["step"] == 14 and result["state"]["samples"] == 14 * 16


def test_resume_path_on_a_corrupt_checkpoint_is_a_named_error_in_the_cli(phantom_small, three_checkpoints, tmp_path,
                                                                           capsys):
    from mxr0.cli import main

    run = _copy_run(three_checkpoints, tmp_path / "run")
    bad = run / "checkpoints" / "step-00000008"
    _truncate(bad / "optimizer.bin")
    with pytest.raises(CorruptCheckpointError, match="optimizer.bin"):
        _run(phantom_small.parent, run, resume=str(bad))
    rc = main(["train", str(TINY), *tiny_overrides(phantom_small.parent, run), "--resume", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1 and "checkpoint error" in err and str(bad) in err and "optimizer.bin" in err
    assert "Traceback" not in err


def test_old_checkpoints_without_a_manifest_stay_loadable(phantom_small, three_checkpoints, tmp_path, caplog):
    run = _copy_run(three_checkpoints, tmp_path / "run")
    for c in list_checkpoints(run / "checkpoints"):
        (c / "manifest.json").unlink()
        (c / "loss_check.json").unlink(missing_ok=True)
    with caplog.at_level(logging.INFO):
        result = _run(phantom_small.parent, run, resume="latest", **{"train.max_steps": 14})
    assert "no manifest.json" in caplog.text and "at step 12" in caplog.text
    assert result["state"]["step"] == 14 and result["state"]["samples"] == 14 * 16


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(phantom_small, tmp_path, monkeypatch):
    from accelerate import Accelerator

    real = Accelerator.save_state
    calls = {"n": 0}

    def save_state(self, output_dir=None, **kw):
        calls["n"] += 1
        out = real(self, output_dir, **kw)
        if calls["n"] == 2:  # the step-8 save: its files are (partly) written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "optimizer.bin"))
        return out

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    run = tmp_path / "run"
    with pytest.raises(DiskFullError, match="step-00000008 .*the disk is full") as e:
        _run(phantom_small.parent, run)
    assert "step-00000004 is intact" in str(e.value)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000004"]
    assert check_checkpoint(run / "checkpoints" / "step-00000004") is None
    assert not list((run / "checkpoints").glob(".tmp-*"))


def _poison_grads_on(monkeypatch, steps: set[int]):
    from mxr0.tasks.classify import ClassifyTask

    def before(self, model, step):
        if step in steps:
            p = next(q for q in model.parameters() if q.grad is not None)
            p.grad.view(-1)[0] = float("nan")

    monkeypatch.setattr(ClassifyTask, "before_optimizer_step", before)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_a_nonfinite_gradient_skips_the_step_before_the_optimizer_moves(phantom_small, tmp_path, monkeypatch, clip):
    _poison_grads_on(monkeypatch, {3, 6})
    run = tmp_path / "run"
    result = _run(phantom_small.parent, run, **{"train.max_grad_norm": clip})
    assert result["state"]["step"] == 12 and result["state"]["skipped_steps"] == 2
    for c in list_checkpoints(run / "checkpoints"):  # weights and optimizer moments stayed finite
        assert all(torch.isfinite(v).all() for v in load_file(c / "model.safetensors").values())
        opt = torch.load(c / "optimizer.bin", weights_only=True)
        assert all(torch.isfinite(v).all() for s in opt["state"].values() for v in s.values() if torch.is_tensor(v))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(x["train/loss"] == x["train/loss"] for x in lines if "train/loss" in x)  # no NaN logged


def test_a_diverged_run_resumes_from_a_checkpoint_whose_loss_was_finite(phantom_small, tmp_path, caplog):
    """The issue's done-when: a sane run, then the same run resumed with train.lr=1e30 and clipping off diverges and
    stops naming the newest good checkpoint, which exists; --resume with a sane lr trains on from it."""
    data, run = phantom_small.parent, tmp_path / "run"
    _run(data, run, **{"train.max_steps": 8})  # checkpoints 4 and 8
    with pytest.raises(NonFiniteLossError, match="non-finite") as e:
        # a save after every step and keep_last=1: before the fix rotation kept only poisoned checkpoints
        _run(data, run, resume="latest", **{"train.max_steps": 24, "train.lr": 1e30, "train.max_grad_norm": 0,
                                            "train.save_every": 1, "train.keep_last": 1, "train.max_nonfinite": 3})
    good = run / "checkpoints" / "step-00000008"
    assert f"the newest good checkpoint is {good}" in str(e.value) and check_checkpoint(good) is None
    assert checkpoint_is_good(good)
    # the checkpoint written right after the bad update (finite but huge weights) was found bad by its next loss
    assert not checkpoint_is_good(run / "checkpoints" / "step-00000009")
    with caplog.at_level(logging.INFO):
        result = _run(data, run, resume="latest", **{"train.max_steps": 12})
    assert f"resumed from {good} at step 8" in caplog.text
    assert result["state"]["step"] == 12 and result["state"]["skipped_steps"] == 0
    assert all(torch.isfinite(v).all() for v in load_file(run / "export" / "model.safetensors").values())


def test_a_run_diverged_from_the_start_has_no_good_checkpoint_and_resume_says_so(phantom_small, tmp_path):
    data, run = phantom_small.parent, tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="no good checkpoint exists in"):
        _run(data, run, **{"train.lr": 1e30, "train.max_grad_norm": 0, "train.warmup_steps": 0,
                           "train.save_every": 1, "train.max_nonfinite": 3})
    with pytest.raises(CheckpointNotFoundError, match="no good checkpoint exists in .*step-00000001 \\(the loss "
                                                      "computed from its weights was non-finite\\)"):
        _run(data, run, resume="latest", **{"train.lr": 1e-3})


@pytest.mark.slow
def test_two_ranks_fall_back_past_a_corrupt_checkpoint_and_survive_a_divergence(phantom_small, tmp_path):
    """2 gloo ranks: the main process verifies and picks the checkpoint for both; the gradient / tensor checks
    and the stop after a divergence are agreed by both ranks (no hang), naming the newest good checkpoint."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "-m", "mxr0", "train", str(TINY), *tiny_overrides(phantom_small.parent, out, **{"train.batch_size": 8}),
            "train.eval_every=0"]

    def launch(*extra, ok=True):
        p = subprocess.run([*base, *extra], env=env, capture_output=True, text=True, timeout=600)
        assert (p.returncode == 0) == ok, p.stderr[-3000:]
        return p.stderr + p.stdout

    launch("train.max_steps=6", "train.save_every=3")
    _truncate(out / "checkpoints" / "step-00000006" / "model.safetensors")
    err = launch("train.max_steps=8", "train.save_every=0", "--resume")
    assert "step-00000006" in err and "model.safetensors" in err
    assert f"resumed from {out / 'checkpoints' / 'step-00000003'} (step 3/8)" in err
    err = launch("train.max_steps=24", "train.lr=1e30", "train.max_grad_norm=0", "train.save_every=1",
                 "train.keep_last=1", "train.max_nonfinite=3", "--resume", ok=False)
    good = out / "checkpoints" / "step-00000008"
    assert f"the newest good checkpoint is {good}" in err and check_checkpoint(good) is None
    launch("train.max_steps=10", "train.save_every=0", "--resume")
    assert json.loads((out / "results.json").read_text())["state"]["step"] == 10
