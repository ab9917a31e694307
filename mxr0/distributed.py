"""Launcher specifics, apart from the loop: the launcher check (precision and accumulation owned by the recipe, a
disagreeing launcher refused; `mxr0.train.launch.make_accelerator` builds the Accelerator), DeepSpeed configuration, FSDP wrapping, whether parameters are
sharded (ZeRO-3 / FSDP: every rank must join each model call), whole-model initialisation under ZeRO-3, and the
per-rank weight checksums the invariance tests compare. Tasks (decoding under sharding) and the loop share it."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from mxr0.config import ConfigError, Recipe

log = logging.getLogger(__name__)


def _check_launcher(recipe: Recipe) -> None:
    """Precision and accumulation are set by the recipe only; a launcher that disagrees is an error."""
    t = recipe.train
    env_mp = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if env_mp and env_mp != "no" and env_mp != t.mixed_precision:
        raise ConfigError(
            f"the launcher sets mixed precision {env_mp!r} but the recipe says train.mixed_precision="
            f"{t.mixed_precision!r}. Precision is set in the recipe only: remove it from the accelerate "
            f"config / command line, or override the recipe with train.mixed_precision={env_mp}"
        )
    env_ga = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if env_ga and int(env_ga) not in (1, t.grad_accum):
        raise ConfigError(
            f"the launcher sets gradient_accumulation_steps={env_ga} but the recipe says "
            f"train.grad_accum={t.grad_accum}. Accumulation is set in the recipe only: remove it from "
            f"the accelerate config, or override the recipe with train.grad_accum={env_ga}"
        )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def zero_stage(accelerator) -> int:
    """The DeepSpeed ZeRO stage of the run, 0 when it does not run under DeepSpeed."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]["stage"])


def shards_parameters(accelerator) -> bool:
    """True under ZeRO-3 and FSDP: no rank holds the full weights outside a forward / backward pass, so a
    model call on one rank alone hangs and the weights must be gathered to be saved."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP or zero_stage(accelerator) == 3


def _configure_deepspeed(accelerator, recipe: Recipe) -> None:
    """Write the recipe's accumulation and clipping into the DeepSpeed config (before ``prepare`` reads it), so
    they cannot drift from the recipe: DeepSpeed clips and steps inside ``backward`` and would otherwise clip at
    accelerate's default 1.0 and take the launcher's accumulation. A launcher value that disagrees is an error."""
    t = recipe.train
    plugin = accelerator.state.deepspeed_plugin
    cfg = plugin.deepspeed_config
    ga = cfg.get("gradient_accumulation_steps", "auto")
    if ga not in ("auto", None, 1, t.grad_accum):  # 1: accelerate launch's default when nothing is given
        raise ConfigError(f"the DeepSpeed config sets gradient_accumulation_steps={ga} but the recipe says "
                          f"train.grad_accum={t.grad_accum}: remove it from the launcher config (the recipe owns it)")
    cfg["gradient_accumulation_steps"] = t.grad_accum
    plugin.gradient_accumulation_steps = t.grad_accum
    clip = cfg.get("gradient_clipping", "auto")
    if clip not in ("auto", None) and float(clip) != float(t.max_grad_norm):
        raise ConfigError(f"the DeepSpeed config sets gradient_clipping={clip} but the recipe says train.max_grad_norm="
                          f"{t.max_grad_norm}: remove it from the launcher config (the recipe owns clipping)")
    cfg["gradient_clipping"] = float(t.max_grad_norm)  # 0 turns DeepSpeed's clipping off
    plugin.gradient_clipping = float(t.max_grad_norm)
    for mode in ("fp16", "bf16"):
        if cfg.get(mode, {}).get("enabled") is True and t.mixed_precision != mode:
            raise ConfigError(f"the DeepSpeed config enables {mode} but the recipe says train.mixed_precision="
                              f"{t.mixed_precision!r}: precision is set in the recipe only")
    zero = cfg.setdefault("zero_optimization", {})
    if int(zero.get("stage", 0)) == 3:  # the end-of-run export needs the gathered weights
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        plugin.zero3_save_16bit_model = True


def _offloads_optimizer(accelerator) -> bool:
    if zero_stage(accelerator) == 0:
        return False
    zero = accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"]
    return str((zero.get("offload_optimizer") or {}).get("device", "none")).lower() in ("cpu", "nvme")


@contextlib.contextmanager
def _whole_model_init():
    """Build models whole, never under ``deepspeed.zero.Init``: with an Accelerator running ZeRO-3, transformers'
    ``from_pretrained`` / ``from_config`` would partition parameters at construction, which the task builders
    (EMA-teacher deepcopy, token resizing, LoRA wrapping, the frozen-feature cache) and a main-process-only
    export copy cannot handle. DeepSpeed partitions the whole model at ``prepare`` instead."""
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:
        yield
        return
    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def fsdp_wrap_classes(names: list[str], model) -> list[str]:
    """mxr0's FSDP wrapping policy: of the block classes ``names`` (``fsdp_transformer_layer_cls_to_wrap`` in
    accelerate_configs/fsdp.yaml, which names the blocks of every mxr0 model) those present in ``model``, each
    instance its own FSDP unit. accelerate rejects a name absent from the model; none present is an error."""
    present = {type(m).__name__ for m in model.modules()}
    keep = [n for n in names if n in present]
    if not keep:
        raise ConfigError(f"FSDP: none of the wrap classes {names} is in the {type(model).__name__} model "
                          f"(fsdp_transformer_layer_cls_to_wrap in the accelerate config)")
    return keep


def _fit_fsdp_wrap_policy(accelerator, model) -> None:
    """Keep the wrap classes of the accelerate config that this model has (`fsdp_wrap_classes`)."""
    plugin = accelerator.state.fsdp_plugin
    names = plugin.transformer_cls_names_to_wrap
    if names:
        plugin.transformer_cls_names_to_wrap = fsdp_wrap_classes(names, model)


def _rank_checksums(model, accelerator) -> list[float] | None:
    """Every rank's checksum of its trainable weights (equal when the replicas are in sync); None under
    ZeRO-3 / FSDP, where each rank holds different shards."""
    if shards_parameters(accelerator):
        return None
    params = [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad]
    with torch.no_grad():
        s = sum((p.detach().double() * (1.0 + 1e-3 * i)).sum() for i, p in enumerate(params))
    s = torch.as_tensor(s, dtype=torch.float64, device=accelerator.device).reshape(1)
    return [float(v) for v in accelerator.gather(s).tolist()] if accelerator.num_processes > 1 else [float(s)]
