"""The one training loop. Every task runs in it; it owns devices, precision, accumulation, clipping,
schedules, logging, evaluation cadence, checkpoints and resume.

A task only builds its model and data, turns a batch into a dict of named losses, evaluates and
exports (`mxr0.tasks.base.Task`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from mxr0.config import ConfigError, Recipe, write_recipe
from mxr0.distributed import (
    _fit_fsdp_wrap_policy,
    _offloads_optimizer,
    _rank_checksums,
    _whole_model_init,
    make_accelerator,
    shards_parameters,
    zero_stage,
)
from mxr0.hub import push_run
from mxr0.optim import warmup_cosine
from mxr0.tasks import Task, get_task_class
from mxr0.train.checkpoint import (
    CheckpointError,
    TrainState,
    list_checkpoints,
    load_checkpoint,
    newest_good_checkpoint,
    record_loss_check,
    resolve_checkpoint,
    save_checkpoint,
)
from mxr0.train.faults import GuardedCollate, GuardedDataset, StopRequest, TooManyBadSamplesError
from mxr0.train.trackers import Trackers

log = logging.getLogger("mxr0.train")


class _DropTiedWeightNotice(logging.Filter):
    """accelerate warns at every save that it dropped a tied tensor (lm_head = embeddings) from the file;
    loading re-ties it (tested), so the notice is noise in our logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_DropTiedWeightNotice())


class NonFiniteLossError(RuntimeError):
    """Training stopped after too many consecutive optimiser steps skipped for a non-finite loss or gradient norm."""


def _stop_hint(ckpt_dir: Path) -> str:
    """Where to resume from after a divergence: the newest good checkpoint (it exists), or that there is none."""
    good = newest_good_checkpoint(ckpt_dir)
    if good is None:
        return f"no good checkpoint exists in {ckpt_dir}: start over (another train.output_dir) with a lower train.lr"
    return f"the newest good checkpoint is {good}: resume from it with --resume {good} and a lower train.lr"


def _resolve_on_main(accelerator, run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from, chosen and verified (checksums) by the main process alone and handed to every
    rank; an error there is raised on every rank."""
    if accelerator.num_processes == 1:
        return resolve_checkpoint(run_dir, resume)
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            found = resolve_checkpoint(run_dir, resume)
            box[0] = ("ok", None if found is None else str(found))
        except CheckpointError as e:
            box[0] = ("error", e)
    broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return None if value is None else Path(value)


def _check_gradients(accelerator, model, max_grad_norm: float) -> tuple[float | None, bool]:
    """``(grad norm, finite)`` of the step's gradients, clipped to ``max_grad_norm`` when it is > 0; every rank
    agrees on ``finite``. Under DeepSpeed the engine has already stepped inside ``accelerator.backward``:
    ``finite`` is False when it skipped the step for an overflow (``was_step_applied``) or reports a non-finite
    global norm (then the weights may have moved: the checkpoint guard keeps them out of checkpoints). With an
    fp16 GradScaler, the scaler skips inf / NaN steps itself and lowers its scale: always True there."""
    from accelerate.utils import DistributedType

    finite = True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        wrapped = getattr(accelerator, "deepspeed_engine_wrapped", None)
        engine = getattr(wrapped, "engine", None)
        norm = None
        if engine is not None:
            if hasattr(engine, "was_step_applied") and not engine.was_step_applied():
                finite = False
            try:
                norm = engine.get_global_grad_norm()
            except Exception:  # noqa: BLE001 - no norm computed (ZeRO without norm computation)
                norm = None
            if norm is not None:
                norm = float(norm)
                finite = finite and math.isfinite(norm) and norm >= 0  # DeepSpeed reports inf / NaN as -1
    else:
        # clipping off: an infinite bound measures the norm without changing the gradients
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
        if norm is not None:
            norm = float(norm)
            finite = math.isfinite(norm) or accelerator.scaler is not None
    if accelerator.num_processes > 1:
        flag = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
        finite = bool(accelerator.reduce(flag, reduction="sum").item() == 0)
    return (norm if norm is not None and math.isfinite(norm) else None), finite


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


def _make_optimizer(groups: list[dict], recipe: Recipe, accelerator):
    t = recipe.train
    if _offloads_optimizer(accelerator):  # DeepSpeed refuses a torch optimizer with ZeRO-Offload
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


def _export(task: Task, model, accelerator, export_dir: Path) -> None:
    """The task's export, from the full weights. Under ZeRO-3 / FSDP every rank takes part in gathering the full
    state dict (``accelerator.get_state_dict``), which the main process loads into a fresh, whole copy of the
    model (built as in training, LoRA wrappers included) for the task to export; so LoRA adapters are saved with
    their trained values, not the shards or the initial ones."""
    unwrapped = accelerator.unwrap_model(model)
    if not shards_parameters(accelerator):
        task.export(unwrapped, export_dir, accelerator)
        return
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        task.export(unwrapped, export_dir, accelerator)  # writes nothing off the main process
        return
    with _whole_model_init():
        whole = task.build_model()
    missing, unexpected = whole.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") or k.endswith("lm_head.base_layer.weight")}
    if [k for k in missing if k not in tied] or unexpected:
        raise RuntimeError(f"the gathered state dict does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                           f"unexpected {unexpected[:5]}")
    if tied and hasattr(whole, "tie_weights"):
        whole.tie_weights()
    whole.eval()
    task.export(whole, export_dir, accelerator)


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


def evaluate(task: Task, model, loader, accelerator) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = task.evaluate(model, loader, accelerator)
    finally:
        model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


def train(recipe: Recipe, resume: str | None = None) -> dict[str, Any]:
    """Train ``recipe`` to the end; returns ``{"metrics": final eval metrics, "run_dir", "export_dir", …}``.

    ``resume``: ``latest`` continues from the newest complete checkpoint of the run folder (or
    starts fresh when there is none), a path continues from that checkpoint.
    """
    from accelerate.utils import DistributedType, set_seed
    from tqdm.auto import tqdm

    t = recipe.train
    run_dir = Path(t.output_dir)
    accelerator = make_accelerator(recipe, run_dir)
    is_main = accelerator.is_main_process
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_recipe(recipe, run_dir / "recipe.yaml")
    task = get_task_class(recipe.task)(recipe)

    set_seed(t.seed)
    with accelerator.main_process_first():
        train_ds, eval_ds = task.build_datasets()
    with _whole_model_init():  # ZeRO-3 partitions the whole model at prepare, never at construction
        model = task.build_model()
    if accelerator.distributed_type == DistributedType.FSDP:
        _fit_fsdp_wrap_policy(accelerator, model)
    if t.gradient_checkpointing:
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ConfigError(f"train.gradient_checkpointing=true but the {recipe.task} model does not support it")
        try:  # non-reentrant: gradients also reach adapters when the inputs' embeddings are frozen (LoRA)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except TypeError:
            model.gradient_checkpointing_enable()
    groups = task.param_groups(model)
    n_trainable = sum(p.numel() for g in groups for p in g["params"])
    if n_trainable == 0:
        raise ConfigError("the model has no trainable parameters (is everything frozen?)")
    optimizer = _make_optimizer(groups, recipe, accelerator)

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
    state = TrainState()
    unchecked_ckpt = None  # the checkpoint written / loaded last, until the next step's loss tells whether it is good
    if resume:
        ckpt = _resolve_on_main(accelerator, run_dir, resume)
        if ckpt is not None:
            state = load_checkpoint(accelerator, ckpt)
            unchecked_ckpt = ckpt
            log.info("resumed from %s at step %d", ckpt, state.step)
            if is_main:
                tqdm.write(f"[mxr0] resumed from {ckpt} (step {state.step}/{total_steps})")

    trackers = Trackers(run_dir, t.trackers, config=recipe) if is_main else None
    if is_main:
        n_params = sum(getattr(p, "ds_numel", p.numel()) for p in accelerator.unwrap_model(model).parameters())
        tqdm.write(
            f"[mxr0] task={recipe.task} run={run_dir} processes={accelerator.num_processes} "
            f"device={accelerator.device} precision={t.mixed_precision} params={n_params / 1e6:.2f}M "
            f"trainable={n_trainable / 1e6:.2f}M steps={total_steps} "
            f"(epoch={steps_per_epoch} steps, global batch={t.batch_size * t.grad_accum * accelerator.num_processes})"
        )
    bar = tqdm(total=total_steps, initial=state.step, disable=not (is_main and t.progress), desc=f"train {recipe.task}",
               dynamic_ncols=True, mininterval=1.0)

    last_eval: dict[str, float] = {}
    stop = StopRequest().install()
    pending_bad = 0
    interrupted = False
    sums: dict[str, torch.Tensor] = {}
    n_sum = 0
    window_ok = loss_ok = True  # the accumulation window's losses and gradients were finite
    grad_norm = None
    t_last, samples_last = time.perf_counter(), state.samples
    model.train()
    while state.step < total_steps:
        # Accelerate's loader owns the epoch counter and hands it to the sampler (and to the skipping
        # loader made on resume); setting it on the sampler alone would be overwritten.
        train_loader.set_epoch(state.epoch)
        # accelerate 1.15 skips dataset.set_epoch when the batch sampler is sharded (several processes):
        # tell the dataset itself, or every epoch would reuse epoch 0's crops and augmentations
        if hasattr(train_loader.dataset, "set_epoch"):
            train_loader.dataset.set_epoch(state.epoch)
        it = accelerator.skip_first_batches(train_loader, state.batch_in_epoch) if state.batch_in_epoch else train_loader
        # tasks whose loss averages over a varying number of items (tokens) get the step's count
        for batch, skipped, n_items in _with_item_counts(it, task, t.grad_accum, accelerator):
            if state.batch_in_epoch >= micro_per_epoch or state.step >= total_steps:
                break
            if skipped:
                pending_bad += len(skipped)
                _record_bad_samples(run_dir, accelerator.process_index, state.step, skipped)
            for g in optimizer.param_groups:
                g["lr"] = float(lr_at[state.step]) * g.get("lr_scale", 1.0)
                g["weight_decay"] = float(wd_at[state.step]) * g.get("wd_scale", 1.0)
            with accelerator.accumulate(model):
                if n_items is None:
                    losses = task.training_step(model, batch)
                else:
                    losses = task.training_step(model, batch, num_items=n_items)
                loss = losses["loss"]
                finite = torch.isfinite(loss.detach()).float()
                finite = accelerator.reduce(finite, reduction="mean") if accelerator.num_processes > 1 else finite
                if bool(finite.item() == 1.0):
                    accelerator.backward(loss)
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v.detach().float()
                    n_sum += 1
                else:
                    window_ok = False
                if accelerator.sync_gradients:
                    grad_norm = None
                    if window_ok:
                        task.before_optimizer_step(model, state.step)
                        # a non-finite gradient norm skips the step before the optimizer moves
                        grad_norm, grads_ok = _check_gradients(accelerator, model, t.max_grad_norm)
                        if grads_ok:
                            optimizer.step()
                        else:
                            window_ok, loss_ok = False, True
                    else:
                        loss_ok = False
                    optimizer.zero_grad(set_to_none=True)
            state.batch_in_epoch += 1
            state.samples += _batch_size(batch) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue

            # --- one optimiser step is done ------------------------------------------------
            # unreadable samples and stop requests, agreed by every rank so that all act together
            flags = torch.tensor([float(pending_bad), float(stop.requested)], device=accelerator.device)
            if accelerator.num_processes > 1:
                flags = accelerator.reduce(flags, reduction="sum")
            pending_bad = 0
            state.bad_samples += int(flags[0].item())
            if state.bad_samples > recipe.data.max_bad_samples:
                bar.close()
                stop.restore()
                raise TooManyBadSamplesError(
                    f"{state.bad_samples} unreadable training samples, more than data.max_bad_samples="
                    f"{recipe.data.max_bad_samples}; they are listed in {run_dir / 'bad_samples.txt'}. Fix or drop "
                    f"those records, or raise the budget, then resume with --resume (last checkpoint in "
                    f"{run_dir / 'checkpoints'})."
                )
            if unchecked_ckpt is not None:  # this step's loss came from the weights of the last checkpoint
                if is_main:
                    record_loss_check(unchecked_ckpt, window_ok, state.step)
                unchecked_ckpt = None
            if window_ok:
                state.nonfinite_streak = 0
                task.on_step_end(model, state.step, accelerator)
            else:
                state.nonfinite_streak += 1
                state.skipped_steps += 1
                what = "loss" if not loss_ok else "gradient norm"
                if is_main:
                    tqdm.write(f"[mxr0] step {state.step}: non-finite {what}, step skipped "
                               f"({state.nonfinite_streak} in a row, limit train.max_nonfinite={t.max_nonfinite})")
                if state.nonfinite_streak >= t.max_nonfinite:
                    bar.close()
                    stop.restore()
                    accelerator.wait_for_everyone()  # the loss check above is on disk before the hint reads it
                    raise NonFiniteLossError(
                        f"stopped at step {state.step}: the loss or its gradients were non-finite (NaN/inf) for "
                        f"{state.nonfinite_streak} optimiser steps in a row. Lower train.lr, enable clipping "
                        f"(train.max_grad_norm), check the data for broken images; "
                        f"{_stop_hint(run_dir / 'checkpoints')}."
                    )
            window_ok, loss_ok = True, True
            state.step += 1
            bar.update(1)

            if state.step % t.log_every == 0 or state.step == total_steps:
                logs = {}
                if n_sum:
                    keys = sorted(sums)
                    vec = torch.stack([sums[k] / n_sum for k in keys])
                    vec = accelerator.reduce(vec, reduction="mean") if accelerator.num_processes > 1 else vec
                    logs = {f"train/{k}": float(v) for k, v in zip(keys, vec.tolist())}
                now = time.perf_counter()
                logs["train/lr"] = float(lr_at[state.step - 1])
                logs["train/samples_per_s"] = (state.samples - samples_last) / max(now - t_last, 1e-9)
                logs["train/epoch"] = state.epoch + state.batch_in_epoch / micro_per_epoch
                if grad_norm is not None:
                    logs["train/grad_norm"] = float(grad_norm)
                t_last, samples_last = now, state.samples
                sums, n_sum = {}, 0
                if is_main:
                    trackers.log(logs, state.step)
                    bar.set_postfix(loss=f"{logs.get('train/loss', float('nan')):.4f}", lr=f"{logs['train/lr']:.2e}",
                                    sps=f"{logs['train/samples_per_s']:.0f}")

            if eval_loader is not None and t.eval_every and state.step % t.eval_every == 0 and state.step < total_steps:
                last_eval = evaluate(task, model, eval_loader, accelerator)
                if is_main:
                    trackers.log({f"eval/{k}": v for k, v in last_eval.items()}, state.step)
                    tqdm.write(f"[mxr0] step {state.step} eval: " + _fmt(last_eval))

            if t.save_every and state.step % t.save_every == 0 and state.step < total_steps:
                saved = save_checkpoint(accelerator, run_dir / "checkpoints", state, t.keep_last, model, optimizer)
                unchecked_ckpt = saved or unchecked_ckpt
            if flags[1].item() > 0 and state.step < total_steps:
                interrupted = True
                break
        if interrupted:
            break
        if state.batch_in_epoch >= micro_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    stop.restore()

    ckpt = save_checkpoint(accelerator, run_dir / "checkpoints", state, t.keep_last, model, optimizer)
    if ckpt is None:  # not written: the weights or the last steps were not good
        ckpt = newest_good_checkpoint(run_dir / "checkpoints")
    if interrupted:
        if is_main:
            where = f"checkpoint {ckpt}" if ckpt else f"no good checkpoint in {run_dir / 'checkpoints'}"
            tqdm.write(f"[mxr0] stopped by a signal at step {state.step}/{total_steps}; {where}. "
                       f"Continue with: mxr0 train <recipe> --resume")
            trackers.close()
        accelerator.end_training()
        return {"metrics": {}, "run_dir": str(run_dir), "export_dir": None, "checkpoint": str(ckpt) if ckpt else None,
                "state": asdict(state), "main_metric": task.main_metric, "num_processes": accelerator.num_processes,
                "interrupted": True}
    if eval_loader is not None:
        last_eval = evaluate(task, model, eval_loader, accelerator)
    export_dir = run_dir / "export"
    accelerator.wait_for_everyone()
    checksums = _rank_checksums(model, accelerator)
    _export(task, model, accelerator, export_dir)
    accelerator.wait_for_everyone()
    result = {"metrics": last_eval, "run_dir": str(run_dir), "export_dir": str(export_dir),
              "checkpoint": str(ckpt) if ckpt else None,
              "state": asdict(state), "main_metric": task.main_metric, "num_processes": accelerator.num_processes,
              "distributed_type": str(accelerator.distributed_type).split(".")[-1],
              "zero_stage": zero_stage(accelerator), "rank_param_checksums": checksums, "interrupted": False}
    if is_main:
        trackers.log({f"eval/{k}": v for k, v in last_eval.items()}, state.step)
        trackers.write_results(result)
        trackers.close()
        tqdm.write(f"[mxr0] done: step {state.step}, eval: {_fmt(last_eval)}; model in {export_dir}")
        if t.push_to_hub:
            _push_after_training(recipe, run_dir, export_dir, result)
    accelerator.end_training()
    return result


def _push_after_training(recipe: Recipe, run_dir: Path, export_dir: Path, result: dict) -> None:
    """``train.push_to_hub``: upload the export and its card; a failure is logged, never raised (the
    trained model is already safe in the run folder)."""
    t = recipe.train
    retry = f"mxr0 push {run_dir} --repo-id {t.hub_repo_id or 'OWNER/NAME'}" + ("" if t.hub_private else " --public") + (
        f" --revision {t.hub_revision}" if t.hub_revision else "")
    try:
        if not t.hub_repo_id:
            raise ValueError("train.push_to_hub=true needs train.hub_repo_id=OWNER/NAME")

        result["hub_url"] = push_run(run_dir, t.hub_repo_id, private=t.hub_private, revision=t.hub_revision)
        log.info("pushed to the Hub: %s", result["hub_url"])
    except Exception as e:  # noqa: BLE001 - a failed upload must not lose the trained model
        log.error("push to the Hub failed (%s: %s). The export is safe at %s; retry with: %s",
                  type(e).__name__, e, export_dir, retry)


def _record_bad_samples(run_dir: Path, rank: int, step: int, skipped: list[str]) -> None:
    """Append skipped samples to the run folder's ``bad_samples.txt`` (one line each, any rank)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "bad_samples.txt", "a") as f:
        f.writelines(f"step {step} rank {rank} {msg}\n" for msg in skipped)


def _with_item_counts(batches, task: Task, grad_accum: int, accelerator):
    """``(batch, skipped, n_items)`` for each micro-batch; ``n_items`` is None unless the task counts its
    loss items (`Task.count_items`). Then each accumulation window is read ahead, its count summed over
    the window and the processes, and ``n_items`` = that total / (grad_accum × processes): the
    normaliser that makes the loop's averages the global batch's per-item mean (see `Task.count_items`).
    Windows start at the loader's start: a resume always starts at an optimiser-step boundary."""
    if type(task).count_items is Task.count_items:
        for batch, skipped in batches:
            yield batch, skipped, None
        return
    import itertools

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


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                return int(v.shape[0])
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0])
    return 0


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if "/" not in k) or "(none)"


__all__ = ["EpochSampler", "NonFiniteLossError", "evaluate", "list_checkpoints", "train"]
