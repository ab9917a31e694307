"""The report / instruct task's VLM from its recipe section (`ReportModelConfig`): the section's checks, the vision
config, a new or loaded Llava model sized to the tokenizer, and its trainable parts (full, frozen or LoRA)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import VIEW_CHOICES, ReportModelConfig
from mxr0.data.chat import IMAGE_TOKEN
from mxr0.data.instruct import KINDS
from mxr0.models.encoder import encoder_config, load_encoder, new_encoder, new_encoder_config
from mxr0.models.vlm import (build_vlm, check_image_token_budget, check_qlora_backend, llm_load_dtype, load_vlm,
                             quantise_language_model, tiny_causal_lm)

log = logging.getLogger(__name__)


def _check_local_path(value: str, key: str) -> None:
    """A clear error for a missing local folder (Hub ids are ``org/name``: one slash, no leading dot)."""
    if not value or Path(value).exists():
        return
    if value.startswith((".", "/", "~")) or value.count("/") > 1:
        hint = " (train recipes/tiny/classify.yaml first, or set it to an encoder folder / Hub id)" \
            if "classify" in value else ""
        raise ConfigError(f"{key}={value!r}: no such folder{hint}")


def check_report_config(c: ReportModelConfig) -> None:
    """Refuse a model section the task cannot train, naming the key and the way out."""
    bad = {k: w for k, w in c.tasks.items() if k not in KINDS or not isinstance(w, (int, float)) or w < 0}
    if bad or not any(w > 0 for w in c.tasks.values()):
        raise ConfigError(f"model.tasks={c.tasks}: give kinds from {list(KINDS)} with sampling weights >= 0, "
                          "at least one > 0 (e.g. {report: 1.0, vqa: 1.0, grounding: 0.5})")
    if c.box_format not in ("plain", "tokens"):
        raise ConfigError(f"model.box_format={c.box_format!r}: choose 'plain' or 'tokens'")
    if not c.vqa_answer_types or any(t not in ("closed", "open") for t in c.vqa_answer_types):
        raise ConfigError(f"model.vqa_answer_types={c.vqa_answer_types}: choose from ['closed', 'open']")
    bad = [v for v in c.views if v not in VIEW_CHOICES]
    if bad or "frontal" not in c.views:
        raise ConfigError(f"model.views={c.views}: must include 'frontal'; choices {list(VIEW_CHOICES)}")
    for key, allowed in (("context_sections", ("indication", "technique", "comparison")),
                         ("target_sections", ("findings", "impression"))):
        vals = getattr(c, key)
        if any(s not in allowed for s in vals) or (key == "target_sections" and not vals):
            raise ConfigError(f"model.{key}={vals}: choose from {list(allowed)}")
    for key in ("vision", "llm", "init_from"):
        _check_local_path(getattr(c, key), f"model.{key}")
    if c.cache_features and (c.train_vision != "frozen" or c.augment):
        raise ConfigError("model.cache_features=true needs model.train_vision=frozen and model.augment=false "
                          "(the cached features are those of the unaugmented images through the frozen encoder)")
    if c.train_llm == "qlora":
        check_qlora_backend()  # a CUDA GPU, or bitsandbytes >= 0.50 on the CPU (slow: tests and small experiments)
    if c.train_llm == "qlora" and not c.init_from and not c.llm:
        raise ConfigError("model.train_llm=qlora quantises a pretrained LLM: set model.llm or model.init_from")


def report_vision_config(c: ReportModelConfig):
    """The vision tower's config: ``init_from``'s, ``vision``'s (any stage's export: an encoder, a classifier, an
    alignment / VLM tower) or a new encoder's."""
    if c.init_from:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(c.init_from).vision_config
    if c.vision:
        return encoder_config(c.vision)
    return new_encoder_config(c.image_size, **c.vision_config)


def build_report_vlm(c: ReportModelConfig, tokenizer, image_size: int, n_image_tokens: int,
                     gradient_checkpointing: bool, mixed_precision: str = "no") -> nn.Module:
    """The VLM to train: loaded from ``init_from`` or joined from ``vision`` and ``llm`` (or new ones), its
    embeddings sized to ``tokenizer``, its trainable parts set (`set_trainable`)."""
    check_image_token_budget(c, n_image_tokens)  # before loading any weights: images must fit max_length
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if c.init_from:
        model = load_vlm(c.init_from, c.train_llm, mixed_precision)
    else:
        model = _new_vlm(c, tokenizer, image_token_id, image_size, mixed_precision)
        if c.train_llm == "qlora":  # QLoRA from model.llm: the base is quantised before the adapters go on
            model = quantise_language_model(model)
    if len(tokenizer) > model.config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return set_trainable(model, c, gradient_checkpointing)


def _new_vlm(c: ReportModelConfig, tokenizer, image_token_id: int, image_size: int, mixed_precision: str):
    vision = load_encoder(c.vision) if c.vision else new_encoder(c.image_size, **c.vision_config)
    if c.llm:
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(c.llm, dtype=llm_load_dtype(c.train_llm, mixed_precision))
        if len(tokenizer) > lm.config.vocab_size:
            lm.resize_token_embeddings(len(tokenizer))
    else:
        t = tokenizer
        try:
            lm = tiny_causal_lm(len(t), t.pad_token_id, t.bos_token_id, t.eos_token_id,
                                **{"max_position_embeddings": max(c.max_length, 256), **c.llm_config})
        except TypeError as e:
            raise ConfigError(f"model.llm_config: {e}") from e
    return build_vlm(vision, lm, image_token_id, image_size, c.select_strategy, c.feature_layer, c.projector_act)


def set_trainable(model, c: ReportModelConfig, gradient_checkpointing: bool):
    """Vision tower, projector and LLM trained in full or frozen as the section says; LoRA (QLoRA) adapters on the
    modules matching ``lora_target`` / ``vision_lora_target`` (the projector then saved with the adapter)."""
    for name, p in model.named_parameters():
        part = "vision" if "vision_tower" in name else "projector" if "multi_modal_projector" in name else "llm"
        want = {"vision": c.train_vision == "full", "projector": c.train_projector,
                "llm": c.train_llm == "full"}[part]
        p.requires_grad_(want and not name.endswith("mask_token"))
    targets = []
    if c.train_llm in ("lora", "qlora"):
        targets.append(c.lora_target)
    if c.train_vision == "lora":
        targets.append(c.vision_lora_target)
    if not targets:
        return model
    from peft import LoraConfig, get_peft_model

    if c.train_llm == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                      target_modules="|".join(f"(?:{t})" for t in targets),
                      modules_to_save=["multi_modal_projector"] if c.train_projector else None)
    model = get_peft_model(model, lora)
    if c.train_vision == "full":
        for name, p in model.named_parameters():
            if "vision_tower" in name and not name.endswith("mask_token"):
                p.requires_grad_(True)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA on %s: %.2fM trainable parameters", targets, n / 1e6)
    return model
