"""The loop's set-up: the Accelerator, the task's data, model and optimiser prepared for it, the schedules, and
the state to start from (fresh, or a resumed checkpoint), in the order that keeps every random stream exact."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mxr0.config import ConfigError, Recipe, write_recipe
from mxr0.optim import warmup_cosine
from mxr0.tasks import Task, get_task_class
from mxr0.train.checkpoint import TrainState, load_checkpoint
from mxr0.train.faults import GuardedCollate, GuardedDataset
from mxr0.train.launch import build_model, make_accelerator, make_optimizer, resolve_on_main

log = logging.getLogger("mxr0.train")


class EpochSampler(Sampler[int]):
    """A permutation that depends only on (seed, epoch), so the data order is reproducible and a
    resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _build_loader(collate, dataset, batch_size: int, seed: int, shuffle: bool, num_workers: int, drop_last: bool,
                  sampler=None):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else EpochSampler(len(dataset), seed, shuffle=shuffle),
        collate_fn=collate,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=False,
        # Own generator: creating an iterator then draws from it, not from the global RNG, so a
        # resumed run's RNG stream matches an uninterrupted run's.
        generator=torch.Generator().manual_seed(seed),
    )


@dataclass
class Run:
    """What the loop works with, built once by `set_up`: the prepared model, optimiser and loaders, the run length
    and the learning-rate / weight-decay schedules (one value per optimiser step)."""

    recipe: Recipe
    accelerator: Any
    task: Task
    model: Any
    optimizer: Any
    train_loader: Any
    eval_loader: Any
    n_trainable: int
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    lr_at: Any
    wd_at: Any

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.train.output_dir)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def set_up(recipe: Recipe) -> Run:
    """The Accelerator, the run folder (``recipe.yaml``), the task's datasets, model and optimiser prepared for the
    launcher, and the schedules; then each rank's own random stream (augmentations)."""
    from accelerate.utils import set_seed

    t = recipe.train
    run_dir = Path(t.output_dir)
    accelerator = make_accelerator(recipe, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_recipe(recipe, run_dir / "recipe.yaml")
    task = get_task_class(recipe.task)(recipe)

    set_seed(t.seed)
    with accelerator.main_process_first():
        train_ds, eval_ds = task.build_datasets()
    model = build_model(task, recipe, accelerator)  # ZeRO-3 partitions the whole model at prepare, not here
    groups = task.param_groups(model)
    n_trainable = sum(p.numel() for g in groups for p in g["params"])
    if n_trainable == 0:
        raise ConfigError("the model has no trainable parameters (is everything frozen?)")
    optimizer = make_optimizer(groups, recipe, accelerator)

    # training batches come as (batch, skipped unreadable samples); evaluation data must be readable
    train_loader = _build_loader(GuardedCollate(task.collate), GuardedDataset(train_ds), t.batch_size, t.seed, True,
                                 recipe.data.num_workers, True, sampler=task.sampler(train_ds, t.batch_size, t.seed))
    eval_loader = None
    if eval_ds is not None and len(eval_ds) > 0:
        eval_loader = _build_loader(task.collate, eval_ds, t.batch_size, t.seed, False, recipe.data.num_workers, False)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    micro_per_epoch = (len(train_loader) // t.grad_accum) * t.grad_accum
    steps_per_epoch = micro_per_epoch // t.grad_accum
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the training set has {len(train_ds)} samples, fewer than one optimiser step needs "
            f"(batch_size {t.batch_size} x grad_accum {t.grad_accum} x {accelerator.num_processes} processes); "
            "lower train.batch_size or add data"
        )
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    lr_at = warmup_cosine(total_steps, t.lr, t.min_lr, t.warmup_steps, shape=t.schedule)
    wd_at = warmup_cosine(total_steps, t.weight_decay, t.weight_decay if t.weight_decay_end is None else t.weight_decay_end)

    task.setup(total_steps, steps_per_epoch, accelerator)
    set_seed(t.seed, device_specific=True)  # per-rank augmentation streams; a resume restores the saved RNG
    return Run(recipe, accelerator, task, model, optimizer, train_loader, eval_loader, n_trainable, micro_per_epoch,
               steps_per_epoch, total_steps, lr_at, wd_at)


def resume_state(run: Run, resume: str | None) -> tuple[TrainState, Path | None]:
    """``(state, checkpoint loaded)``: a fresh state, or the one of the checkpoint ``resume`` names (``latest``: the
    newest verified one, none when the run folder has none); loading restores every rank's random streams."""
    if not resume:
        return TrainState(), None
    ckpt = resolve_on_main(run.accelerator, run.run_dir, resume)
    if ckpt is None:
        return TrainState(), None
    state = load_checkpoint(run.accelerator, ckpt)
    log.info("resumed from %s at step %d", ckpt, state.step)
    if run.is_main:
        tqdm.write(f"[mxr0] resumed from {ckpt} (step {state.step}/{run.total_steps})")
    return state, ckpt


def announce(run: Run) -> None:
    """The run's one-line summary on the main process: task, folder, processes, device, sizes and run length."""
    if not run.is_main:
        return
    t, acc = run.recipe.train, run.accelerator
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in acc.unwrap_model(run.model).parameters())
    tqdm.write(
        f"[mxr0] task={run.recipe.task} run={run.run_dir} processes={acc.num_processes} "
        f"device={acc.device} precision={t.mixed_precision} params={n_params / 1e6:.2f}M "
        f"trainable={run.n_trainable / 1e6:.2f}M steps={run.total_steps} "
        f"(epoch={run.steps_per_epoch} steps, global batch={t.batch_size * t.grad_accum * acc.num_processes})"
    )
