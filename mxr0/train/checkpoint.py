"""Full-state checkpoints, written atomically.

A checkpoint is a folder ``checkpoints/step-00000100`` holding Accelerate's state (model weights as
safetensors, optimizer, GradScaler, RNG of every rank) and ``trainer_state.json`` (step, epoch, data
position, counters). It is written under a hidden temporary name, flushed, then renamed into place
in one ``os.rename``: a kill at any moment leaves either the complete folder or no folder with that
name, never a half-written checkpoint that would load wrongly. Leftover temporary folders are
removed at the next save. ``trainer_state.json`` is written last inside the temporary folder, and a
checkpoint without it is ignored when resuming.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """Where training stands; everything needed besides the tensors to continue exactly."""

    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    """Current epoch (data order is a function of the seed and the epoch)."""
    batch_in_epoch: int = 0
    """Micro-batches of this epoch already consumed (skipped on resume)."""
    samples: int = 0
    """Training samples seen, all processes together."""
    nonfinite_streak: int = 0
    """Consecutive optimiser steps skipped for a non-finite loss."""
    skipped_steps: int = 0
    """Steps skipped for a non-finite loss in the whole run."""
    bad_samples: int = 0
    """Unreadable training samples skipped so far, all processes together."""


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and CKPT_RE.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def resolve_checkpoint(run_dir: str | os.PathLike, resume: str) -> Path | None:
    """``latest`` → newest complete checkpoint of the run (None when there is none yet);
    a path → that checkpoint (an error when it is not a complete one)."""
    run_dir = Path(run_dir)
    if resume in ("latest", "auto"):
        found = list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(
            f"--resume {resume}: not a complete mxr0 checkpoint (no {STATE_FILE}); "
            f"complete ones in this run: {[str(p) for p in list_checkpoints(run_dir / 'checkpoints')] or 'none'}"
        )
    return path


def read_state(ckpt: Path) -> TrainState:
    data = json.loads((ckpt / STATE_FILE).read_text())
    return TrainState(**{k: v for k, v in data.items() if k in TrainState.__dataclass_fields__})


def save_checkpoint(accelerator, ckpt_dir: str | os.PathLike, state: TrainState, keep_last: int) -> Path:
    """Save the full training state atomically; keep the newest ``keep_last`` checkpoints.

    Every process must call this (sharded states are written by each rank)."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step-{state.step:08d}"
    tmp = ckpt_dir / f".tmp-step-{state.step:08d}"
    if (final / STATE_FILE).exists():  # this step is already saved (e.g. a periodic save, then the final one)
        return final
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state_tmp = tmp / (STATE_FILE + ".tmp")
        state_tmp.write_text(json.dumps(asdict(state), indent=2))
        os.replace(state_tmp, tmp / STATE_FILE)
        _fsync_tree(tmp)
        if final.exists():  # an incomplete folder of this name (no trainer_state.json): never loadable
            shutil.rmtree(final)
        os.rename(tmp, final)
        fd = os.open(ckpt_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for old in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, ckpt: Path) -> TrainState:
    """Restore the full training state (weights, optimizer, RNG) and return where training stands."""
    state = read_state(ckpt)
    accelerator.load_state(str(ckpt))
    return state
