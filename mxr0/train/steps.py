"""The loop's step body: the batches of an epoch (with the loss-item counts some tasks need), one micro-batch's
forward / backward / optimiser step with the non-finite guard, what is gathered between log lines, the log line
itself, evaluation, and the record of unreadable samples."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mxr0.tasks import Task
from mxr0.train.checkpoint import TrainState
from mxr0.train.launch import check_gradients
from mxr0.train.setup import Run


@dataclass
class Window:
    """What the loop gathers between optimiser steps (whether the accumulation window's losses and gradients were
    finite, its gradient norm, unreadable samples) and between log lines (loss sums, throughput)."""

    samples_last: int
    """Samples seen at the last log line (throughput)."""
    t_last: float = field(default_factory=time.perf_counter)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    n_sum: int = 0
    ok: bool = True
    """The window's losses and gradients were finite (the optimiser stepped)."""
    loss_ok: bool = True
    """The window's losses were finite (when not ``ok``: the gradient norm was not)."""
    grad_norm: float | None = None
    pending_bad: int = 0
    """Unreadable samples met since the last optimiser step, this rank."""


def epoch_batches(run: Run, state: TrainState):
    """``(batch, skipped, n_items)`` for the rest of ``state.epoch``: its first ``state.batch_in_epoch`` batches
    skipped after a resume."""
    loader = run.train_loader
    # Accelerate's loader owns the epoch counter and hands it to the sampler (and to the skipping
    # loader made on resume); setting it on the sampler alone would be overwritten.
    loader.set_epoch(state.epoch)
    # accelerate 1.15 skips dataset.set_epoch when the batch sampler is sharded (several processes):
    # tell the dataset itself, or every epoch would reuse epoch 0's crops and augmentations
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(state.epoch)
    it = run.accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
    # tasks whose loss averages over a varying number of items (tokens) get the step's count
    return with_item_counts(it, run.task, run.recipe.train.grad_accum, run.accelerator)


def micro_step(run: Run, win: Window, batch, n_items, step: int) -> None:
    """One micro-batch at optimiser step ``step``: the schedules' values set, forward, and backward when the loss is
    finite on every rank; at the window's end the optimiser steps unless a loss or the gradient norm was non-finite
    (gradients zeroed either way)."""
    acc, model, optimizer, task = run.accelerator, run.model, run.optimizer, run.task
    for g in optimizer.param_groups:
        g["lr"] = float(run.lr_at[step]) * g.get("lr_scale", 1.0)
        g["weight_decay"] = float(run.wd_at[step]) * g.get("wd_scale", 1.0)
    with acc.accumulate(model):
        if n_items is None:
            losses = task.training_step(model, batch)
        else:
            losses = task.training_step(model, batch, num_items=n_items)
        loss = losses["loss"]
        finite = torch.isfinite(loss.detach()).float()
        finite = acc.reduce(finite, reduction="mean") if acc.num_processes > 1 else finite
        if bool(finite.item() == 1.0):
            acc.backward(loss)
            for k, v in losses.items():
                win.sums[k] = win.sums.get(k, 0.0) + v.detach().float()
            win.n_sum += 1
        else:
            win.ok = False
        if acc.sync_gradients:
            win.grad_norm = None
            if win.ok:
                task.before_optimizer_step(model, step)
                # a non-finite gradient norm skips the step before the optimizer moves
                win.grad_norm, grads_ok = check_gradients(acc, model, run.recipe.train.max_grad_norm)
                if grads_ok:
                    optimizer.step()
                else:
                    win.ok, win.loss_ok = False, True
            else:
                win.loss_ok = False
            optimizer.zero_grad(set_to_none=True)


def log_values(run: Run, state: TrainState, win: Window) -> dict[str, float]:
    """The log line after optimiser step ``state.step``: mean losses since the last line (over the processes),
    learning rate, throughput, epoch, gradient norm; the window's sums and throughput clock start again."""
    acc = run.accelerator
    logs = {}
    if win.n_sum:
        keys = sorted(win.sums)
        vec = torch.stack([win.sums[k] / win.n_sum for k in keys])
        vec = acc.reduce(vec, reduction="mean") if acc.num_processes > 1 else vec
        logs = {f"train/{k}": float(v) for k, v in zip(keys, vec.tolist())}
    now = time.perf_counter()
    logs["train/lr"] = float(run.lr_at[state.step - 1])
    logs["train/samples_per_s"] = (state.samples - win.samples_last) / max(now - win.t_last, 1e-9)
    logs["train/epoch"] = state.epoch + state.batch_in_epoch / run.micro_per_epoch
    if win.grad_norm is not None:
        logs["train/grad_norm"] = float(win.grad_norm)
    win.t_last, win.samples_last = now, state.samples
    win.sums, win.n_sum = {}, 0
    return logs


def evaluate(task: Task, model, loader, accelerator) -> dict[str, float]:
    """The task's evaluation metrics, in eval mode without gradients (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = task.evaluate(model, loader, accelerator)
    finally:
        model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def record_bad_samples(run_dir: Path, rank: int, step: int, skipped: list[str]) -> None:
    """Append skipped samples to the run folder's ``bad_samples.txt`` (one line each, any rank)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "bad_samples.txt", "a") as f:
        f.writelines(f"step {step} rank {rank} {msg}\n" for msg in skipped)


def with_item_counts(batches, task: Task, grad_accum: int, accelerator):
    """``(batch, skipped, n_items)`` for each micro-batch; ``n_items`` is None unless the task counts its
    loss items (`Task.count_items`). Then each accumulation window is read ahead, its count summed over
    the window and the processes, and ``n_items`` = that total / (grad_accum × processes): the
    normaliser that makes the loop's averages the global batch's per-item mean (see `Task.count_items`).
    Windows start at the loader's start: a resume always starts at an optimiser-step boundary."""
    if type(task).count_items is Task.count_items:
        for batch, skipped in batches:
            yield batch, skipped, None
        return
    source = iter(batches)
    while True:
        window = list(itertools.islice(source, grad_accum))
        if not window:
            return
        # Accelerate's loader flags its last batch when it hands it out, and `accumulate` then syncs and
        # steps at once: hold the flag back until the window's last micro-batch is trained.
        gs = accelerator.gradient_state
        loader = gs.active_dataloader if gs.in_dataloader else None
        held = bool(getattr(loader, "end_of_dataloader", False))
        if held:
            loader.end_of_dataloader = False
        count = sum(float(task.count_items(b)) for b, _ in window)
        total = torch.tensor(count, device=accelerator.device)
        if accelerator.num_processes > 1:
            total = accelerator.reduce(total, reduction="sum")
        n_items = total.clamp_min(1.0) / (grad_accum * accelerator.num_processes)
        for j, (batch, skipped) in enumerate(window):
            if held and j == len(window) - 1:
                loader.end_of_dataloader = True
            yield batch, skipped, n_items


def batch_size_of(batch: Any) -> int:
    """Samples in a collated batch (the first batched tensor's length), 0 when none is found."""
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 0


def fmt_metrics(metrics: dict[str, float]) -> str:
    """``a=0.1234 b=…`` for the top-level metrics (names without a ``/``), or ``(none)``."""
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "/" not in k) or "(none)"
