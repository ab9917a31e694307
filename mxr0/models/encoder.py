"""DINOv2-family image encoders: build a new one, load a pretrained one, read its tokens.

All encoders are plain Hugging Face models (``Dinov2WithRegistersModel`` or ``Dinov2Model``,
e.g. ``facebook/dinov2-with-registers-base``, ``microsoft/rad-dino``, an XR-0 export), loaded with
``AutoModel`` and without remote code. Their token sequence is ``[CLS, registers…, patches…]``,
after the final layer norm in ``last_hidden_state``.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

log = logging.getLogger(__name__)

ENCODER_TYPES = ("dinov2", "dinov2_with_registers")


def num_prefix_tokens(model: nn.Module) -> int:
    """CLS plus register tokens before the patch tokens."""
    return 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)


def patch_size(model: nn.Module) -> int:
    p = model.config.patch_size
    return int(p[0] if isinstance(p, (list, tuple)) else p)


def new_encoder_config(image_size: int, **config_kwargs):
    """The ``Dinov2WithRegistersConfig`` of a new encoder; ``intermediate_size`` is accepted and turned into
    ``mlp_ratio`` (transformers 5 DINOv2 configs take the ratio)."""
    from transformers import Dinov2WithRegistersConfig

    if "intermediate_size" in config_kwargs:
        inter = config_kwargs.pop("intermediate_size")
        config_kwargs["mlp_ratio"] = int(inter) // int(config_kwargs.get("hidden_size", 768))
    return Dinov2WithRegistersConfig(image_size=image_size, **config_kwargs)


def new_encoder(image_size: int, **config_kwargs):
    """A randomly initialised ``Dinov2WithRegistersModel`` (seed with ``torch.manual_seed`` first)."""
    from transformers import Dinov2WithRegistersModel

    return Dinov2WithRegistersModel(new_encoder_config(image_size, **config_kwargs))


def load_encoder(name_or_path: str | os.PathLike, num_register_tokens: int | None = None, **config_overrides):
    """Load a DINOv2-family encoder with ``AutoModel`` (a local folder or a Hub id).

    ``num_register_tokens``: ``None`` keeps the checkpoint's. Another count converts the encoder to
    ``Dinov2WithRegistersModel`` (e.g. to continue pretraining ``microsoft/rad-dino``, which has no
    registers, with 4): every pretrained weight is kept, existing register tokens are kept (up to
    the new count) and new ones start near zero (normal, std 1e-6, as DINOv2 initialises them).
    ``config_overrides`` (e.g. ``drop_path_rate``) are set on the loaded config.
    """
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(name_or_path))
    if config.model_type not in ENCODER_TYPES:
        raise ValueError(
            f"{name_or_path}: model_type {config.model_type!r} is not a DINOv2-family encoder "
            f"(expected one of {ENCODER_TYPES}); pass a Dinov2 / Dinov2WithRegisters checkpoint"
        )
    for k, v in config_overrides.items():
        setattr(config, k, v)
    head = any("ForImageClassification" in a for a in (getattr(config, "architectures", None) or []))
    if head:  # a classifier export: its head is dropped on purpose, so the "unexpected keys" report is noise
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModel.from_pretrained(str(name_or_path), config=config)
        finally:
            hf_logging.set_verbosity(level)
        log.info("loaded the encoder of classifier %s (its classification head is not used)", name_or_path)
    else:
        model = AutoModel.from_pretrained(str(name_or_path), config=config)
    have = int(getattr(model.config, "num_register_tokens", 0) or 0)
    if num_register_tokens is None or int(num_register_tokens) == have:
        return model
    return with_registers(model, int(num_register_tokens))


def with_registers(model: nn.Module, n: int):
    """A ``Dinov2WithRegistersModel`` with ``n`` register tokens and every other weight of ``model``."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    params = Dinov2WithRegistersConfig().to_dict()
    src = model.config.to_dict()
    kwargs = {k: src[k] for k in params if k in src and k not in ("model_type", "transformers_version", "architectures")}
    kwargs["num_register_tokens"] = n
    new = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kwargs))
    state = {k: v for k, v in model.state_dict().items() if k != "embeddings.register_tokens"}
    missing, unexpected = new.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embeddings.register_tokens"]
    if missing or unexpected:
        raise ValueError(f"cannot convert {type(model).__name__} to registers: missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        reg = new.embeddings.register_tokens
        nn.init.normal_(reg, std=1e-6)
        old = getattr(model.embeddings, "register_tokens", None)
        if old is not None and n > 0:
            k = min(n, old.shape[1])
            reg[:, :k].copy_(old[:, :k])
    log.info("converted %s to Dinov2WithRegistersModel with %d registers", type(model).__name__, n)
    return new


def random_like(name_or_path: str | os.PathLike, seed: int = 0):
    """The same architecture as a checkpoint, at random initialisation (a baseline for evaluations)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(name_or_path))
    torch.manual_seed(seed)
    return AutoModel.from_config(config)


def split_tokens(model: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS [B, D], patch tokens [B, N, D]) of a [B, 1 + R + N, D] token sequence."""
    return hidden[:, 0], hidden[:, num_prefix_tokens(model):]
