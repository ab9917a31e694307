"""DINOv2-family image encoders: build a new one, load a pretrained one, read its tokens.

All encoders are plain Hugging Face models (``Dinov2WithRegistersModel`` or ``Dinov2Model``,
e.g. ``facebook/dinov2-with-registers-base``, ``microsoft/rad-dino``, an XR-0 export), loaded without
remote code. `load_encoder` also takes the encoder out of every other stage's export — a classifier, an
alignment dual encoder (its vision tower), a report / VLM (its vision tower, without loading the LLM) — so
any stage's encoder feeds the next (``mxr0 export-encoder`` writes it as a standalone folder). Their token
sequence is ``[CLS, registers…, patches…]``, after the final layer norm in ``last_hidden_state``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.data.transforms import ImageTransform

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
        inter, hidden = int(config_kwargs.pop("intermediate_size")), int(config_kwargs.get("hidden_size", 768))
        ratio = inter // hidden
        if inter % hidden or ratio < 1:
            raise ConfigError(f"encoder_config.intermediate_size {inter} is not a multiple of hidden_size {hidden}: "
                              f"DINOv2 encoders size their MLP by mlp_ratio (intermediate = mlp_ratio x hidden); set "
                              f"mlp_ratio instead")
        if "mlp_ratio" in config_kwargs and float(config_kwargs["mlp_ratio"]) != ratio:
            raise ConfigError(f"encoder_config: intermediate_size {inter} (mlp_ratio {ratio}) disagrees with mlp_ratio "
                              f"{config_kwargs['mlp_ratio']}: give one of them")
        config_kwargs["mlp_ratio"] = ratio
    return Dinov2WithRegistersConfig(image_size=image_size, **config_kwargs)


def new_encoder(image_size: int, **config_kwargs):
    """A randomly initialised ``Dinov2WithRegistersModel`` (seed with ``torch.manual_seed`` first)."""
    from transformers import Dinov2WithRegistersModel

    return Dinov2WithRegistersModel(new_encoder_config(image_size, **config_kwargs))


# --- where an encoder comes from ----------------------------------------------------------------
# Every kind of export this project writes (and plain DINOv2-family checkpoints) holds one DINOv2-family
# vision encoder; `encoder_source` says which kind a folder / Hub id is and where its vision weights live.
KIND_ENCODER = "encoder"  # an XR-0 export, DINOv2 / RAD-DINO (Dinov2Model / Dinov2WithRegistersModel)
KIND_CLASSIFIER = "classifier"  # a classifier export (*ForImageClassification: the head is dropped)
KIND_DUAL = "dual-encoder"  # an alignment export (VisionTextDualEncoderModel: its vision_model)
KIND_VLM = "vlm"  # a report / instruction export (LlavaForConditionalGeneration: its vision_tower)

ACCEPTED_SOURCES = (
    "a DINOv2-family encoder (config model_type 'dinov2' / 'dinov2_with_registers': an XR-0 export, "
    "facebook/dinov2-*, microsoft/rad-dino, or a classifier export), an alignment export (model_type "
    "'vision-text-dual-encoder') or a report / VLM export (model_type 'llava'), each with a DINOv2-family "
    "vision tower"
)

# where the vision tower's weights live in each composite export's state dict (transformers saves Llava with
# the legacy ``vision_tower.`` keys; ``model.vision_tower.`` is the in-memory layout some tools save)
_TOWER_PREFIXES = {KIND_DUAL: ("vision_model.",), KIND_VLM: ("vision_tower.", "model.vision_tower.")}


class EncoderSourceError(ValueError):
    """A path / Hub id that is no known kind of encoder source (or whose encoder cannot be read)."""


@dataclass
class EncoderSource:
    """What `encoder_source` found: the kind, the encoder's config (for a composite export, its vision
    config) and the source's whole config."""

    name_or_path: str
    kind: str
    vision_config: Any
    config: Any


def _source_file(name_or_path: str | os.PathLike, filename: str) -> str | None:
    """``filename`` of a local folder or a Hub repo (the local cache when offline), or None when absent."""
    p = Path(name_or_path)
    if p.is_dir():
        f = p / filename
        return str(f) if f.is_file() else None
    from transformers.utils import cached_file

    try:
        return cached_file(str(name_or_path), filename, _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):  # ValueError: not a valid repo id (e.g. a mistyped local path)
        return None


def _raw_config(name_or_path: str | os.PathLike) -> dict:
    p = Path(name_or_path)
    if p.exists() and not p.is_dir():
        raise EncoderSourceError(f"{p}: is a file, not a model folder; expected {ACCEPTED_SOURCES}")
    f = _source_file(name_or_path, "config.json")
    if f is None:
        if p.is_dir():
            hint = (f" (it looks like a training run folder: pass {p / 'export'})"
                    if (p / "export" / "config.json").is_file() else "")
            raise EncoderSourceError(f"{p}: no config.json, so not a Hugging Face model folder{hint}; "
                                     f"expected {ACCEPTED_SOURCES}")
        raise EncoderSourceError(f"{name_or_path}: not a local folder, and no config.json for it as a Hub id "
                                 f"(offline, or not in the local cache); expected {ACCEPTED_SOURCES}")
    try:
        with open(f, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise EncoderSourceError(f"{f}: cannot read the model config ({e})") from e
    if not isinstance(raw, dict):
        raise EncoderSourceError(f"{f}: the model config is not a JSON object")
    return raw


def encoder_source(name_or_path: str | os.PathLike) -> EncoderSource:
    """Which kind of encoder source ``name_or_path`` is, from its ``config.json`` (``model_type``, and
    ``architectures`` to tell a classifier from a plain encoder). Raises `EncoderSourceError` naming the
    path, what it found and what is accepted."""
    from transformers import AutoConfig

    raw = _raw_config(name_or_path)
    mt = raw.get("model_type")
    archs = raw.get("architectures") or []
    if mt in ENCODER_TYPES:
        kind = KIND_CLASSIFIER if any("ForImageClassification" in a for a in archs) else KIND_ENCODER
    elif mt == "vision-text-dual-encoder":
        kind = KIND_DUAL
    elif mt == "llava":
        kind = KIND_VLM
    else:
        raise EncoderSourceError(f"{name_or_path}: config.json has model_type {mt!r} (architectures {archs}), "
                                 f"which holds no encoder this project reads; expected {ACCEPTED_SOURCES}")
    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EncoderSourceError(f"{name_or_path}: cannot parse its config.json as {mt!r} ({e})") from e
    vision = config if kind in (KIND_ENCODER, KIND_CLASSIFIER) else getattr(config, "vision_config", None)
    vt = getattr(vision, "model_type", None)
    if vt not in ENCODER_TYPES:
        what = "vision_model" if kind == KIND_DUAL else "vision_tower"
        raise EncoderSourceError(f"{name_or_path}: a {kind} export whose {what} has model_type {vt!r}, not a "
                                 f"DINOv2-family encoder (expected one of {ENCODER_TYPES})")
    return EncoderSource(str(name_or_path), kind, vision, config)


def encoder_config(name_or_path: str | os.PathLike):
    """The encoder's config of any accepted source (a composite export's vision config), e.g. for its
    ``patch_size``, without loading weights."""
    return encoder_source(name_or_path).vision_config


def _tower_state(src: EncoderSource) -> dict[str, torch.Tensor] | None:
    """The vision tower's tensors of a dual-encoder / VLM export, read from its safetensors (only the
    shards that hold them, only those tensors); None when the export has no safetensors."""
    from safetensors import safe_open

    prefixes = _TOWER_PREFIXES[src.kind]
    index = _source_file(src.name_or_path, "model.safetensors.index.json")
    if index is not None:
        with open(index, encoding="utf-8") as fh:
            weight_map = json.load(fh).get("weight_map", {})
        names = sorted({f for k, f in weight_map.items() if k.startswith(prefixes)})
        files = []
        for n in names:
            f = _source_file(src.name_or_path, n)
            if f is None:
                raise EncoderSourceError(f"{src.name_or_path}: {Path(index).name} lists shard {n}, which is missing")
            files.append(f)
    else:
        single = _source_file(src.name_or_path, "model.safetensors")
        if single is None:
            return None
        files = [single]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():
                for pre in prefixes:
                    if key.startswith(pre):
                        state[key[len(pre):]] = st.get_tensor(key)
                        break
    if not state:
        raise EncoderSourceError(f"{src.name_or_path}: a {src.kind} export, but its safetensors hold no tensor "
                                 f"under {list(prefixes)} (the vision tower's weights)")
    return state


def _tower_from_full_model(src: EncoderSource):
    """Fallback for exports without safetensors: load the whole model, keep its vision tower."""
    from transformers import AutoModel, AutoModelForImageTextToText

    if src.kind == KIND_DUAL:
        return AutoModel.from_pretrained(src.name_or_path).vision_model
    full = AutoModelForImageTextToText.from_pretrained(src.name_or_path)
    return full.model.vision_tower if hasattr(full, "model") else full.vision_tower


def _load_tower(src: EncoderSource, config_overrides: dict):
    """The plain DINOv2-family model of a dual-encoder / VLM export, with the tower's weights.

    The tower's tensors are stored under transformers' on-disk names (which its loader converts to the
    in-memory ones), so they are written as a standalone checkpoint in a temporary folder and loaded from
    there with ``AutoModel``: the same conversion as for any encoder folder, and every weight checked."""
    import tempfile

    from safetensors.torch import save_file
    from transformers import AutoModel

    vcfg = copy.deepcopy(src.vision_config)
    for k, v in config_overrides.items():
        setattr(vcfg, k, v)
    state = _tower_state(src)
    if state is None:
        log.info("%s has no safetensors: loading the whole %s export to take its vision tower", src.name_or_path,
                 src.kind)
        tower = _tower_from_full_model(src)
        model = AutoModel.from_config(vcfg)
        model.load_state_dict(tower.state_dict(), strict=True)
        return model.eval()
    with tempfile.TemporaryDirectory(prefix="mxr0-encoder-") as tmp:
        vcfg.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        del state
        model, info = AutoModel.from_pretrained(tmp, output_loading_info=True)
    bad = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise EncoderSourceError(f"{src.name_or_path}: the {src.kind} export's vision weights do not fit its vision "
                                 f"config ({type(model).__name__}): {bad}")
    log.info("loaded the vision tower of %s export %s as %s", src.kind, src.name_or_path, type(model).__name__)
    return model.eval()


def load_encoder(name_or_path: str | os.PathLike, num_register_tokens: int | None = None, **config_overrides):
    """Load the DINOv2-family encoder of any stage's output (a local folder or a Hub id): an XR-0 export,
    a DINOv2 / RAD-DINO checkpoint, a classifier export (its head is dropped), an alignment export
    (``VisionTextDualEncoderModel``: its ``vision_model``) or a report / VLM export
    (``LlavaForConditionalGeneration``: its ``vision_tower``, read from the safetensors alone, so the LLM is
    never loaded). The kind is read from ``config.json`` (`encoder_source`); the result is always a plain
    ``Dinov2Model`` / ``Dinov2WithRegistersModel`` with the source's weights.

    ``num_register_tokens``: ``None`` keeps the checkpoint's. Another count converts the encoder to
    ``Dinov2WithRegistersModel`` (e.g. to continue pretraining ``microsoft/rad-dino``, which has no
    registers, with 4): every pretrained weight is kept, existing register tokens are kept (up to
    the new count) and new ones start near zero (normal, std 1e-6, as DINOv2 initialises them).
    ``config_overrides`` (e.g. ``drop_path_rate``) are set on the loaded config.
    """
    from transformers import AutoModel

    src = encoder_source(name_or_path)
    if src.kind in (KIND_DUAL, KIND_VLM):
        model = _load_tower(src, config_overrides)
    else:
        config = src.config
        for k, v in config_overrides.items():
            setattr(config, k, v)
        if src.kind == KIND_CLASSIFIER:  # its head is dropped on purpose, so the "unexpected keys" report is noise
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


def image_processor_config(name_or_path: str | os.PathLike) -> dict | None:
    """The image-processor config of any accepted source: its ``preprocessor_config.json``, else the
    ``image_processor`` a processor nests in ``processor_config.json`` (dual-encoder / Llava processors);
    None when it has neither."""
    f = _source_file(name_or_path, "preprocessor_config.json")
    if f is not None:
        with open(f, encoding="utf-8") as fh:
            return json.load(fh)
    f = _source_file(name_or_path, "processor_config.json")
    if f is not None:
        with open(f, encoding="utf-8") as fh:
            nested = json.load(fh).get("image_processor")
        if isinstance(nested, dict):
            return nested
    return None


def encoder_transform(name_or_path: str | os.PathLike):
    """The model-facing `ImageTransform` of any accepted source (see `image_processor_config`)."""

    cfg = image_processor_config(name_or_path)
    if cfg is None:
        if Path(name_or_path).is_dir():
            raise FileNotFoundError(f"{name_or_path}: no preprocessor_config.json (nor an image processor in "
                                    "processor_config.json); export the model with its image processor")
        return ImageTransform.from_pretrained(name_or_path)  # a Hub id: AutoImageProcessor's error, if any
    return ImageTransform.from_processor_config(cfg)


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
    """The same encoder architecture as any accepted source (see `load_encoder`), at random initialisation
    (a baseline for evaluations)."""
    from transformers import AutoModel

    config = encoder_config(name_or_path)
    torch.manual_seed(seed)
    return AutoModel.from_config(config)
