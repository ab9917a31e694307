"""The one training loop. Every task runs in it; it owns devices, precision, accumulation, clipping,
schedules, logging, evaluation cadence, checkpoints and resume.

A task only builds its model and data, turns a batch into a dict of named losses, evaluates and
exports (`mxr0.tasks.base.Task`). The loop's pieces: `mxr0.train.setup` (data, model, optimiser, resume),
`mxr0.train.steps` (the step body), `mxr0.train.launch` (launcher specifics), `mxr0.train.finish` (the end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mxr0.config import Recipe
from mxr0.train.checkpoint import TrainState, newest_good_checkpoint, record_loss_check, save_checkpoint
from mxr0.train.faults import StopRequest, TooManyBadSamplesError
from mxr0.train.finish import finish
from mxr0.train.setup import Run, announce, resume_state, set_up
from mxr0.train.steps import (
    Window,
    batch_size_of,
    epoch_batches,
    evaluate,
    fmt_metrics,
    log_values,
    micro_step,
    record_bad_samples,
)
from mxr0.train.trackers import start_trackers


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive optimiser steps skipped for a non-finite loss or gradient norm."""


def train(recipe: Recipe, resume: str | None = None) -> dict[str, Any]:
    """Train ``recipe`` to the end; returns ``{"metrics": final eval metrics, "run_dir", "export_dir", …}``.

    ``resume``: ``latest`` continues from the newest complete checkpoint of the run folder (or
    starts fresh when there is none), a path continues from that checkpoint.
    """
    run = set_up(recipe)
    acc = run.accelerator
    state, unchecked_ckpt = resume_state(run, resume)  # unchecked: until the next step's loss tells it is good
    start_trackers(acc, recipe, run.run_dir)
    announce(run)
    bar = tqdm(total=run.total_steps, initial=state.step, disable=not (run.is_main and recipe.train.progress),
               desc=f"train {recipe.task}", dynamic_ncols=True, mininterval=1.0)
    stop = StopRequest().install()
    win = Window(samples_last=state.samples)
    last_eval: dict[str, float] = {}
    interrupted = False
    run.model.train()
    try:
        while state.step < run.total_steps:
            for batch, skipped, n_items in epoch_batches(run, state):
                if state.batch_in_epoch >= run.micro_per_epoch or state.step >= run.total_steps:
                    break
                if skipped:
                    win.pending_bad += len(skipped)
                    record_bad_samples(run.run_dir, acc.process_index, state.step, skipped)
                micro_step(run, win, batch, n_items, state.step)
                state.batch_in_epoch += 1
                state.samples += batch_size_of(batch) * acc.num_processes
                if not acc.sync_gradients:
                    continue

                # --- one optimiser step is done ------------------------------------------------
                stop_requested = _count_faults(run, state, win, stop)
                if unchecked_ckpt is not None:  # this step's loss came from the weights of the last checkpoint
                    if run.is_main:
                        record_loss_check(unchecked_ckpt, win.ok, state.step)
                    unchecked_ckpt = None
                _guard_divergence(run, state, win)
                state.step += 1
                bar.update(1)
                last_eval, unchecked_ckpt = _on_cadence(run, state, win, bar, last_eval, unchecked_ckpt)
                if stop_requested and state.step < run.total_steps:
                    interrupted = True
                    break
            if interrupted:
                break
            if state.batch_in_epoch >= run.micro_per_epoch:
                state.epoch += 1
                state.batch_in_epoch = 0
    finally:
        bar.close()
        stop.restore()
    return finish(run, state, interrupted, last_eval)


def _count_faults(run: Run, state: TrainState, win: Window, stop: StopRequest) -> bool:
    """Unreadable samples and stop requests, agreed by every rank so that all act together: the samples are added
    to ``state.bad_samples`` (over ``data.max_bad_samples``: `TooManyBadSamplesError`); True when a stop was asked."""
    acc, run_dir = run.accelerator, run.run_dir
    flags = torch.tensor([float(win.pending_bad), float(stop.requested)], device=acc.device)
    if acc.num_processes > 1:
        flags = acc.reduce(flags, reduction="sum")
    win.pending_bad = 0
    state.bad_samples += int(flags[0].item())
    budget = run.recipe.data.max_bad_samples
    if state.bad_samples > budget:
        raise TooManyBadSamplesError(
            f"{state.bad_samples} unreadable training samples, more than data.max_bad_samples={budget}; they are "
            f"listed in {run_dir / 'bad_samples.txt'}. Fix or drop those records, or raise the budget, then resume "
            f"with --resume (last checkpoint in {run_dir / 'checkpoints'})."
        )
    return flags[1].item() > 0


def _guard_divergence(run: Run, state: TrainState, win: Window) -> None:
    """Count a step skipped for a non-finite loss or gradient norm; `train.max_nonfinite` of them in a row is a
    `NonFiniteLossError` naming the newest good checkpoint. A finite step ends the task's step (``on_step_end``).
    The window starts again finite."""
    t = run.recipe.train
    if win.ok:
        state.nonfinite_streak = 0
        run.task.on_step_end(run.model, state.step, run.accelerator)
    else:
        state.nonfinite_streak += 1
        state.skipped_steps += 1
        what = "loss" if not win.loss_ok else "gradient norm"
        if run.is_main:
            tqdm.write(f"[mxr0] step {state.step}: non-finite {what}, step skipped "
                       f"({state.nonfinite_streak} in a row, limit train.max_nonfinite={t.max_nonfinite})")
        if state.nonfinite_streak >= t.max_nonfinite:
            run.accelerator.wait_for_everyone()  # the loss check is on disk before the hint reads it
            raise NonFiniteLossError(
                f"stopped at step {state.step}: the loss or its gradients were non-finite (NaN/inf) for "
                f"{state.nonfinite_streak} optimiser steps in a row. Lower train.lr, enable clipping "
                f"(train.max_grad_norm), check the data for broken images; "
                f"{_stop_hint(run.run_dir / 'checkpoints')}."
            )
    win.ok, win.loss_ok = True, True


def _stop_hint(ckpt_dir: Path) -> str:
    """Where to resume from after a divergence: the newest good checkpoint (it exists), or that there is none."""
    good = newest_good_checkpoint(ckpt_dir)
    if good is None:
        return f"no good checkpoint exists in {ckpt_dir}: start over (another train.output_dir) with a lower train.lr"
    return f"the newest good checkpoint is {good}: resume from it with --resume {good} and a lower train.lr"


def _on_cadence(run: Run, state: TrainState, win: Window, bar, last_eval: dict[str, float],
                unchecked_ckpt: Path | None) -> tuple[dict[str, float], Path | None]:
    """After optimiser step ``state.step``: the log line every ``train.log_every`` steps (and at the last),
    evaluation every ``train.eval_every`` and a checkpoint every ``train.save_every`` (the last step's are left to
    the end). Returns the latest evaluation and the checkpoint whose loss check is pending."""
    t, acc, step = run.recipe.train, run.accelerator, state.step
    if step % t.log_every == 0 or step == run.total_steps:
        logs = log_values(run, state, win)
        if run.is_main:
            acc.log(logs, step=step)
            bar.set_postfix(loss=f"{logs.get('train/loss', float('nan')):.4f}", lr=f"{logs['train/lr']:.2e}",
                            sps=f"{logs['train/samples_per_s']:.0f}")
    if run.eval_loader is not None and t.eval_every and step % t.eval_every == 0 and step < run.total_steps:
        last_eval = evaluate(run.task, run.model, run.eval_loader, acc)
        if run.is_main:
            acc.log({f"eval/{k}": v for k, v in last_eval.items()}, step=step)
            tqdm.write(f"[mxr0] step {step} eval: " + fmt_metrics(last_eval))
    if t.save_every and step % t.save_every == 0 and step < run.total_steps:
        saved = save_checkpoint(acc, run.run_dir / "checkpoints", state, t.keep_last, run.model, run.optimizer)
        unchecked_ckpt = saved or unchecked_ckpt
    return last_eval, unchecked_ckpt


__all__ = ["NonFiniteLossError", "train"]
