"""The mXR-0 VLM: Hugging Face's ``LlavaForConditionalGeneration`` with a DINOv2-family vision tower.

Built from parts (an encoder checkpoint — our XR-0 export, ``microsoft/rad-dino``, a classifier export —
and a causal LM by path or Hub id: Llama, Qwen2, Phi, Mistral families), it is a plain transformers
model: saved with ``save_pretrained`` it loads with ``AutoModelForImageTextToText`` and its processor
(``LlavaProcessor``: image processor + tokenizer + chat template) with ``AutoProcessor``, no remote code.

Image tokens (transformers' Llava semantics): ``vision_feature_select_strategy="default"`` drops the
CLS token and keeps registers + patches, ``"full"`` keeps all; ``vision_feature_layer`` picks the hidden
state (before DINOv2's final layer norm; -1 = last block). The projector is Llava's 2-layer MLP
(linear → activation → linear), the LLaVA-1.5 design; deeper projectors or token pooling would need
custom code in the checkpoint, which this project refuses (Hugging Face-native artifacts).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def image_token_count(vision_config, image_size: int, select_strategy: str) -> int:
    """Features one image yields: patches + registers (+ CLS with ``full``)."""
    p = vision_config.patch_size
    p = int(p[0] if isinstance(p, (list, tuple)) else p)
    n = (image_size // p) ** 2 + 1 + int(getattr(vision_config, "num_register_tokens", 0) or 0)
    return n - 1 if select_strategy == "default" else n


def tiny_causal_lm(vocab_size: int, pad_token_id: int, bos_token_id: int, eos_token_id: int, **config):
    """A small Llama from a config (seed first), for CPU recipes and tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    defaults = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)
    cfg = LlamaConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                      eos_token_id=eos_token_id, **{**defaults, **config})
    return LlamaForCausalLM(cfg)


def build_vlm(vision: nn.Module, lm: nn.Module, image_token_id: int, image_size: int,
              select_strategy: str = "default", feature_layer: int = -1, projector_act: str = "gelu"):
    """Join a built vision tower and causal LM into a ``LlavaForConditionalGeneration``.

    Their weights are moved in (constructed on the meta device, then assigned), the projector is new."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    if select_strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy {select_strategy!r}: expected 'default' or 'full'")
    vcfg = vision.config
    if vcfg.model_type not in ("dinov2", "dinov2_with_registers"):
        raise ValueError(f"the vision tower must be a DINOv2-family encoder, got model_type {vcfg.model_type!r}")
    tcfg = lm.config
    if image_token_id >= tcfg.vocab_size:
        raise ValueError(f"image token id {image_token_id} is outside the LM vocabulary ({tcfg.vocab_size}); "
                         "resize the embeddings after adding <image> to the tokenizer")
    config = LlavaConfig(
        vision_config=vcfg.to_dict(), text_config=tcfg.to_dict(), image_token_index=image_token_id,
        image_seq_length=image_token_count(vcfg, image_size, select_strategy), projector_hidden_act=projector_act,
        vision_feature_select_strategy=select_strategy, vision_feature_layer=feature_layer,
        tie_word_embeddings=bool(getattr(tcfg, "tie_word_embeddings", False)),
    )
    config.vision_config.image_size = image_size
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    inner = model.model
    inner.vision_tower.load_state_dict(vision.state_dict(), assign=True)
    base = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    inner.language_model.load_state_dict(base.state_dict(), assign=True)
    for dst, src in ((inner.vision_tower, vision), (inner.language_model, base)):
        _copy_buffers(dst, src)  # non-persistent buffers (rotary inv_freq, …) are not in state dicts
    model.lm_head.load_state_dict(lm.lm_head.state_dict(), assign=True)
    proj = inner.multi_modal_projector
    proj.to_empty(device="cpu")
    for mod in proj.modules():
        if isinstance(mod, nn.Linear):
            mod.reset_parameters()
    if config.tie_word_embeddings:
        model.tie_weights()
    # buffers created on meta (e.g. rotary inv_freq) are rebuilt from the config
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            raise RuntimeError(f"buffer {name} is still on the meta device after building the VLM; report this bug")
    return model


def _copy_buffers(dst: nn.Module, src: nn.Module) -> None:
    for name, buf in src.named_buffers():
        owner_name, _, attr = name.rpartition(".")
        owner = dst.get_submodule(owner_name) if owner_name else dst
        current = getattr(owner, attr, None)
        if isinstance(current, torch.Tensor) and current.is_meta:
            persistent = attr not in getattr(owner, "_non_persistent_buffers_set", set())
            owner.register_buffer(attr, buf.detach().clone(), persistent=persistent)
