"""The mXR-0 dual encoder: Hugging Face's ``VisionTextDualEncoderModel`` around a DINOv2-family vision
tower and a BERT-like text tower, with our training wrapper.

The saved artifact is the plain Hugging Face model (loads with ``AutoModel`` without remote code):
``model.get_image_features(pixel_values).pooler_output`` and ``model.get_text_features(input_ids,
attention_mask).pooler_output`` are the embeddings we trained (vision pooler output = the CLS token after
the final layer norm, text pooler output = BERT's pooler, each through its projection). Patch tokens go
through the same visual projection to give patch–text similarity maps (`patch_embeddings`).

`AlignModel` wraps it for training: its ``forward`` returns a dict of normalised embeddings (so that
DDP / FSDP see one forward call), and it holds SigLIP's learnable bias, which the Hugging Face class has
no slot for (exported beside the model in ``mxr0_align.json``). `build_align_model` builds it from the align
task's recipe section, `save_align_export` writes the export.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mxr0.config import ConfigError
from mxr0.config.tasks import AlignModelConfig
from mxr0.models.encoder import load_encoder, new_encoder, num_prefix_tokens, patch_size

log = logging.getLogger(__name__)


def build_dual_encoder(vision_model: nn.Module, text_model: nn.Module, projection_dim: int, logit_scale_init: float):
    """A ``VisionTextDualEncoderModel`` joining two built towers (their weights are kept as they are)."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        vision_model.config, text_model.config, projection_dim=projection_dim, logit_scale_init_value=logit_scale_init
    )
    ref = {k: v.detach().clone() for k, v in list(vision_model.state_dict().items())[:2]}
    model = VisionTextDualEncoderModel(config=config, vision_model=vision_model, text_model=text_model)
    for k, v in ref.items():  # post_init must not re-initialise pretrained towers (meta: shapes only)
        if not v.is_meta and not torch.equal(model.vision_model.state_dict()[k], v):
            raise RuntimeError(f"building the dual encoder re-initialised the vision tower ({k}); report this bug")
    return model


def _blocks(tower: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a tower (DINOv2: ``encoder.layer``; BERT-like: ``encoder.layer``)."""
    enc = getattr(tower, "encoder", None)
    layers = getattr(enc, "layer", None) if enc is not None else None
    if layers is None:
        layers = getattr(enc, "layers", None) if enc is not None else None
    if layers is None:
        raise ValueError(f"cannot find the transformer blocks of {type(tower).__name__} (expected .encoder.layer)")
    return list(layers)


def set_unlocked(tower: nn.Module, unlocked_layers: int, final_modules: tuple[str, ...]) -> int:
    """Freeze a tower except its last ``unlocked_layers`` blocks and its final modules (e.g. the last
    layer norm, BERT's pooler); ``-1`` trains everything, ``0`` freezes the whole tower (LiT).
    Returns the number of trainable parameters left in the tower."""
    if unlocked_layers < 0:
        for p in tower.parameters():
            p.requires_grad_(True)
    else:
        for p in tower.parameters():
            p.requires_grad_(False)
        if unlocked_layers > 0:
            blocks = _blocks(tower)
            for block in blocks[max(0, len(blocks) - unlocked_layers):]:
                for p in block.parameters():
                    p.requires_grad_(True)
            for name in final_modules:
                mod = getattr(tower, name, None)
                if mod is not None:
                    for p in mod.parameters():
                        p.requires_grad_(True)
    for name, p in tower.named_parameters():
        if name.endswith("mask_token"):  # used by masked-image pretraining only; DDP rejects unused params
            p.requires_grad_(False)
    return sum(p.numel() for p in tower.parameters() if p.requires_grad)


def image_outputs(dual: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(image embeddings [B, P], projected patch tokens [B, h·w, P], (h, w)), neither normalised."""
    out = dual.vision_model(pixel_values=pixel_values, return_dict=True)
    image = dual.visual_projection(out.pooler_output)
    patches = dual.visual_projection(out.last_hidden_state[:, num_prefix_tokens(dual.vision_model):])
    p = patch_size(dual.vision_model)
    grid = (pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)
    return image, patches, grid


def text_embeddings(dual: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Projected text embeddings [B, P] (not normalised), as ``get_text_features`` computes them."""
    out = dual.text_model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    return dual.text_projection(out.pooler_output)


class AlignModel(nn.Module):
    """Training wrapper: ``forward`` → dict of L2-normalised ``image_embeds``, ``text_embeds``
    (and ``patch_embeds`` when asked), ``logit_scale`` and, for SigLIP, ``logit_bias``."""

    def __init__(self, dual: nn.Module, siglip_bias: float | None = None):
        super().__init__()
        self.dual = dual
        self.logit_bias = nn.Parameter(torch.tensor(float(siglip_bias))) if siglip_bias is not None else None

    @property
    def config(self):
        return self.dual.config

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        for tower in (self.dual.vision_model, self.dual.text_model):
            if getattr(tower, "supports_gradient_checkpointing", False):
                tower.gradient_checkpointing_enable(**kwargs)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, with_patches: bool = False) -> dict:
        out: dict[str, torch.Tensor] = {"logit_scale": self.dual.logit_scale}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        if pixel_values is not None:
            image, patches, _ = image_outputs(self.dual, pixel_values)
            out["image_embeds"] = F.normalize(image.float(), dim=-1)
            if with_patches:
                out["patch_embeds"] = F.normalize(patches.float(), dim=-1)
        if input_ids is not None:
            out["text_embeds"] = F.normalize(text_embeddings(self.dual, input_ids, attention_mask).float(), dim=-1)
        return out


def default_logit_scale(kind: str) -> float:
    """CLIP starts at temperature 0.07, SigLIP at scale 10 (log values)."""
    return math.log(1 / 0.07) if kind == "clip" else math.log(10.0)


def make_text_encoder(dual: nn.Module, tokenizer, max_length: int, batch_size: int = 64):
    """Texts → L2-normalised embeddings (CPU float), batched, with the model in its current mode."""


    device = next(dual.parameters()).device

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), batch_size):
            tok = tokenizer(list(texts[s:s + batch_size]), padding="longest", truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            out.append(F.normalize(text_embeddings(dual, tok["input_ids"], tok["attention_mask"]).float(), dim=-1).cpu())
        return torch.cat(out)

    return encode


def build_align_model(c: AlignModelConfig, tokenizer, max_length: int) -> tuple[AlignModel, int]:
    """The training model of a recipe section: the vision tower (``vision`` or a new one from ``vision_config``) and
    the text tower (``text`` or a new BERT from ``text_config`` sized to ``tokenizer``) joined and partly unlocked.
    Returns it and the text length the towers allow (``max_length`` capped by the text positions)."""
    try:
        vision = load_encoder(c.vision) if c.vision else new_encoder(c.image_size, **c.vision_config)
    except TypeError as e:
        raise ConfigError(f"model.vision_config: {e}") from e
    if c.text:
        from transformers import AutoModel

        text = AutoModel.from_pretrained(c.text)
    else:
        from transformers import BertConfig, BertModel

        try:
            cfg = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             **{"max_position_embeddings": max(max_length, 64), **c.text_config})
        except TypeError as e:
            raise ConfigError(f"model.text_config: {e}") from e
        text = BertModel(cfg)
    max_pos = getattr(text.config, "max_position_embeddings", None)
    if max_pos:
        max_length = min(max_length, int(max_pos))
    if len(tokenizer) > text.config.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the text tower's vocabulary has "
                          f"{text.config.vocab_size}; use the tower's own tokenizer (model.tokenizer)")
    scale = c.logit_scale_init if c.logit_scale_init is not None else default_logit_scale(c.loss)
    dual = build_dual_encoder(vision, text, c.projection_dim, scale)
    nv = set_unlocked(dual.vision_model, c.vision_unlocked_layers, ("layernorm",))
    nt = set_unlocked(dual.text_model, c.text_unlocked_layers, ("pooler",))
    log.info("trainable: vision tower %.2fM, text tower %.2fM parameters", nv / 1e6, nt / 1e6)
    return AlignModel(dual, siglip_bias=c.logit_bias_init if c.loss == "siglip" else None), max_length


def save_align_export(model: AlignModel, tokenizer, transform, out_dir: Path, settings: dict) -> None:
    """The dual encoder, tokenizer, image processor (as a ``VisionTextDualEncoderProcessor``) and
    ``mxr0_align.json``, all loadable without mxr0."""
    from transformers import VisionTextDualEncoderProcessor

    out_dir.mkdir(parents=True, exist_ok=True)
    model.dual.save_pretrained(out_dir, safe_serialization=True)
    processor = VisionTextDualEncoderProcessor(image_processor=transform.to_image_processor(), tokenizer=tokenizer)
    processor.save_pretrained(out_dir)
    transform.save_pretrained(out_dir, keep_existing=True)  # our exact transform, also for AutoImageProcessor
    bias = model.logit_bias
    settings = {**settings, "logit_bias": None if bias is None else float(bias.detach())}
    (out_dir / "mxr0_align.json").write_text(json.dumps(settings, indent=2))
