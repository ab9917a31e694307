"""The loop's launcher specifics: the run's Accelerator (with its trackers), the resume checkpoint agreed by every
rank, model preparation for FSDP and gradient checkpointing, the optimizer (DeepSpeed's under ZeRO-Offload), the
gradient check of each step under DeepSpeed or DDP, and the export from gathered full weights (ZeRO-3 / FSDP)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from mxr0.config import ConfigError, Recipe
from mxr0.distributed import (
    _check_launcher,
    _configure_deepspeed,
    _env_flag,
    _fit_fsdp_wrap_policy,
    _offloads_optimizer,
    _whole_model_init,
    shards_parameters,
)
from mxr0.tasks import Task
from mxr0.train.checkpoint import CheckpointError, resolve_checkpoint
from mxr0.train.trackers import tracker_list


class _DropTiedWeightNotice(logging.Filter):
    """accelerate warns at every save that it dropped a tied tensor (lm_head = embeddings) from the file;
    loading re-ties it (tested), so the notice is noise in our logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_DropTiedWeightNotice())


def make_accelerator(recipe: Recipe, run_dir: Path):
    """The run's Accelerator, after checking the launcher against the recipe; it logs to ``train.trackers``.

    DeepSpeed on a machine without CUDA gets the gloo backend (it would ask for NCCL); with
    ``ACCELERATE_USE_CPU`` set accelerate would silently run plain DDP instead, so that is an error.
    accelerate's FSDP does not run on a CPU (v1 fails, v2 runs unsharded and unsynchronised): an error."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration

    _check_launcher(recipe)
    t = recipe.train
    if t.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 (CPUs with AVX-512 bf16) or no")
    handlers = []
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        if _env_flag("ACCELERATE_USE_CPU"):
            raise ConfigError("a DeepSpeed launch with ACCELERATE_USE_CPU=1 silently runs plain DDP instead: unset "
                              "ACCELERATE_USE_CPU (on a machine without CUDA mxr0 picks the gloo backend itself)")
        if not torch.cuda.is_available():
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if _env_flag("ACCELERATE_USE_FSDP") and not torch.cuda.is_available():
        raise ConfigError("accelerate's FSDP does not run on a CPU (v1 finds no device, v2 runs unsharded and "
                          "unsynchronised); on a CPU use DDP (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu ...) "
                          "or DeepSpeed ZeRO-2/3 (see accelerate_configs/README.md)")
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir)),
        kwargs_handlers=handlers,
        log_with=tracker_list(t.trackers, run_dir),
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed(accelerator, recipe)
    return accelerator


def resolve_on_main(accelerator, run_dir: Path, resume: str) -> Path | None:
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


def build_model(task: Task, recipe: Recipe, accelerator):
    """The task's model, built whole (ZeRO-3 partitions it at ``prepare``), its FSDP wrap classes fitted, and
    gradient checkpointing switched on when the recipe asks."""
    from accelerate.utils import DistributedType

    with _whole_model_init():
        model = task.build_model()
    if accelerator.distributed_type == DistributedType.FSDP:
        _fit_fsdp_wrap_policy(accelerator, model)
    if recipe.train.gradient_checkpointing:
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ConfigError(f"train.gradient_checkpointing=true but the {recipe.task} model does not support it")
        try:  # non-reentrant: gradients also reach adapters when the inputs' embeddings are frozen (LoRA)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except TypeError:
            model.gradient_checkpointing_enable()
    return model


def make_optimizer(groups: list[dict], recipe: Recipe, accelerator):
    """AdamW over the task's parameter groups; DeepSpeed's CPU Adam under ZeRO-Offload."""
    t = recipe.train
    if _offloads_optimizer(accelerator):  # DeepSpeed refuses a torch optimizer with ZeRO-Offload
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)


def check_gradients(accelerator, model, max_grad_norm: float) -> tuple[float | None, bool]:
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


def export_model(task: Task, model, accelerator, export_dir: Path) -> None:
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
