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

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import ReportModelConfig
from mxr0.data.chat import stop_token_ids

MIN_ANSWER_TOKENS = 8
"""`mxr0.data.chat.encode_example` refuses an example with room for fewer answer tokens than this."""

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


# --- precision and 4-bit quantisation (QLoRA) ---------------------------------------------------------
QLORA_SKIP_MODULES = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
"""Kept in full precision under QLoRA: only the language model's linear layers are quantised. transformers 5
matches these from the start of a module's name or as its suffix: a bare ``vision_tower`` would quantise the
vision tower of a ``LlavaForConditionalGeneration`` (its modules are ``model.vision_tower.…``)."""


def check_qlora_backend() -> None:
    """Raise `ConfigError` unless bitsandbytes can run QLoRA here: on a CUDA GPU, or on a CPU from bitsandbytes
    0.50 (its CPU nf4 kernels: slow, for tests and small experiments; a warning says so)."""
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ConfigError("model.train_llm=qlora needs bitsandbytes: pip install 'mxr0[qlora]', or use "
                          "model.train_llm=lora") from e
    if torch.cuda.is_available():
        return
    from packaging.version import Version

    if Version(bnb.__version__) < Version("0.50"):
        raise ConfigError(f"model.train_llm=qlora on a CPU needs bitsandbytes >= 0.50 (its CPU 4-bit kernels), found "
                          f"{bnb.__version__}: upgrade it, train on a CUDA GPU, or use model.train_llm=lora")
    log.warning("model.train_llm=qlora on a CPU: bitsandbytes' CPU nf4 kernels are slow, fit for tests and small "
                "experiments (their gradients are checked in tests/unit/test_qlora_cpu.py)")


def qlora_quantization_config(compute_dtype: torch.dtype = torch.bfloat16):
    """QLoRA's base: nf4 weights with double quantisation, products in ``compute_dtype``; the vision tower,
    projector and LM head are left out."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=True, llm_int8_skip_modules=list(QLORA_SKIP_MODULES))


def llm_load_dtype(train_llm: str, mixed_precision: str) -> torch.dtype:
    """The dtype to load a pretrained LLM in: bf16 when its own weights are not trained (frozen, LoRA, QLoRA)
    and the run computes in bf16, so a 7B base takes half the memory; fp32 otherwise (trained weights and
    their optimizer need fp32 masters). LoRA adapters stay fp32 either way (peft upcasts them)."""
    frozen_base = train_llm in ("frozen", "lora", "qlora")
    return torch.bfloat16 if frozen_base and mixed_precision == "bf16" else torch.float32


def load_vlm(path: str, train_llm: str, mixed_precision: str):
    """A saved VLM (a stage-1 export) for further training: 4-bit nf4 language model under QLoRA, else the
    language model in `llm_load_dtype` (the vision tower and projector in fp32)."""
    from transformers import AutoModelForImageTextToText

    if train_llm == "qlora":
        return AutoModelForImageTextToText.from_pretrained(path, quantization_config=qlora_quantization_config())
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=llm_load_dtype(train_llm, mixed_precision))
    core = llava_core(model)  # transformers 5 loads one dtype for all parts
    core.vision_tower.float()
    core.multi_modal_projector.float()
    return model


def quantise_language_model(model: nn.Module, config=None, device=None) -> nn.Module:
    """Quantise the language model of a built VLM in place: each of its ``nn.Linear`` layers becomes a
    bitsandbytes ``Linear4bit`` (``config``: `qlora_quantization_config` by default), as ``from_pretrained`` with
    that config does for a saved VLM. QLoRA from ``model.llm``. Weights are quantised on ``device`` (the current
    CUDA device, else the CPU); the vision tower, projector and LM head are untouched."""
    import bitsandbytes as bnb

    config = config or qlora_quantization_config()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    quant = dict(compress_statistics=config.bnb_4bit_use_double_quant, quant_type=config.bnb_4bit_quant_type,
                 quant_storage=config.bnb_4bit_quant_storage)
    lm = llava_core(model).language_model
    for name, mod in list(lm.named_modules()):
        if type(mod) is not nn.Linear:
            continue
        q = bnb.nn.Linear4bit(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta",
                              compute_dtype=config.bnb_4bit_compute_dtype, **quant)
        q.weight = bnb.nn.Params4bit(mod.weight.data, requires_grad=False, module=q, **quant).to(device)
        if mod.bias is not None:
            q.bias = nn.Parameter(mod.bias.data.to(device), requires_grad=False)
        lm.set_submodule(name, q)
    model.config.quantization_config = config  # saved with the model: transformers reloads the 4-bit weights
    model.is_loaded_in_4bit = True  # what from_pretrained sets; peft's prepare_model_for_kbit_training reads it
    return model


def dequantise_language_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The inverse of `quantise_language_model`, in place: each bitsandbytes ``Linear4bit`` of the language model
    becomes an ``nn.Linear`` holding its dequantised nf4 weight in ``dtype`` (the weights the 4-bit model
    computed with), and the model no longer says it is quantised."""
    import bitsandbytes as bnb

    lm = llava_core(model).language_model
    for name, mod in list(lm.named_modules()):
        if not isinstance(mod, bnb.nn.Linear4bit):
            continue
        weight = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state).to(dtype)
        lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
        lin.weight = nn.Parameter(weight, requires_grad=False)
        if mod.bias is not None:
            lin.bias = nn.Parameter(mod.bias.data.to(dtype), requires_grad=False)
        lm.set_submodule(name, lin)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_loaded_in_4bit", "hf_quantizer", "quantization_method"):
        if attr in model.__dict__:
            delattr(model, attr)
    model.is_quantized = False
    return model


def merge_lora(model, adapter_dir: Path):
    """A LoRA / QLoRA model merged into a plain model for the export. Under QLoRA the nf4 base is dequantised
    first and the adapter (saved in ``adapter_dir``) merged into it in fp32; the language model and LM head are
    then stored in the products' dtype (``bnb_4bit_compute_dtype``, bf16 in production), as a LoRA run stores its
    bf16 base. peft's own merge into a 4-bit layer would re-quantise the merged weight to nf4 and move the logits
    the run was trained and evaluated on (tests/unit/test_qlora_cpu.py: 0.13-0.14 in logit on a tiny VLM); the
    dequantised merge reproduces them to the storage dtype's rounding (0.0000 fp32, 0.0039 bf16)."""
    import importlib.util

    base = model.get_base_model()
    if importlib.util.find_spec("bitsandbytes") is None or not _four_bit_layers(base):
        return model.merge_and_unload()
    from peft import PeftModel

    store = getattr(getattr(base.config, "quantization_config", None), "bnb_4bit_compute_dtype", None) or torch.float32
    base = dequantise_language_model(model.unload(), torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    llava_core(merged).language_model.to(store)  # as a LoRA run's bf16 base is stored (`llm_load_dtype`)
    merged.lm_head.to(store)
    return merged


def _four_bit_layers(module: nn.Module) -> list[str]:
    import bitsandbytes as bnb

    return [n for n, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


# --- image-token budget -------------------------------------------------------------------------------
def check_image_token_budget(cfg, tokens_per_image: int) -> None:
    """Raise `ConfigError` when an example of some kind of ``cfg.tasks`` cannot fit ``cfg.max_length``: its
    images (``len(cfg.views)`` for reports, 1 for VQA / grounding / localisation) x ``tokens_per_image`` plus
    the answer's generation limit (``max_new_tokens`` / ``max_new_tokens_short``)."""
    weights = getattr(cfg, "tasks", None) or {"report": 1.0}
    for kind in [k for k, w in weights.items() if w > 0]:
        report_like = kind in ("report", "grounded_report")
        n = len(cfg.views) if report_like else 1
        image = n * int(tokens_per_image)
        answer = int(cfg.max_new_tokens if report_like else cfg.max_new_tokens_short)
        what = f"{n} image{'s' if n > 1 else ''} x {tokens_per_image:,} tokens = {image:,} image tokens"
        fix = ("raise model.max_length (image tokens + prompt + answer), or give fewer model.views / a smaller "
               "image size")
        if image + MIN_ANSWER_TOKENS > cfg.max_length:
            rel = ">" if image > cfg.max_length else f"leave under {MIN_ANSWER_TOKENS} tokens of"
            raise ConfigError(f"{kind} examples: {what} {rel} model.max_length {cfg.max_length}: no room for the "
                              f"prompt and the answer; {fix}")
        if image + answer > cfg.max_length:
            limit = "max_new_tokens" if report_like else "max_new_tokens_short"
            raise ConfigError(f"{kind} examples: {what} + model.{limit} {answer:,} = {image + answer:,} tokens > "
                              f"model.max_length {cfg.max_length}: answers would be cut in training; {fix}")


def image_tokens_per_image(vision_config, image_size: int, select_strategy: str = "default") -> int:
    return image_token_count(vision_config, image_size, select_strategy)


def llava_core(model: nn.Module) -> nn.Module:
    """The ``LlavaModel`` inside a (peft-wrapped) ``LlavaForConditionalGeneration``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


@torch.no_grad()
def cache_vision_features(model: nn.Module, datasets: list, device, batch_size: int = 32, limit_gb: float = 8.0) -> None:
    """Compute the frozen vision tower's hidden states once for every example of ``datasets`` and make the
    tower return them instead of recomputing (its weights and state-dict names are untouched)."""
    from tqdm.auto import tqdm

    core = llava_core(model)
    tower = core.vision_tower
    layer = model.config.vision_feature_layer
    datasets = [d for d in datasets if d is not None]
    n_images = len({path for d in datasets for ex in d.examples for _, path in ex.images})
    vcfg = model.config.vision_config
    size = int(datasets[0].transform.size)
    p = int(np.ravel(vcfg.patch_size)[0])
    tokens = (size // p) ** 2 + 1 + int(getattr(vcfg, "num_register_tokens", 0) or 0)
    gb = n_images * tokens * vcfg.hidden_size * 2 / 1e9
    if gb > limit_gb:
        raise ConfigError(f"model.cache_features: {n_images} images x {tokens} tokens x {vcfg.hidden_size} would take "
                          f"{gb:.1f} GB of RAM (limit {limit_gb} GB); turn the cache off for a set this size")
    was_training = tower.training
    tower.eval()
    done: dict[tuple[str, ...], torch.Tensor] = {}  # examples of one study (VQA, grounding, …) share images
    for ds in datasets:
        feats: list[torch.Tensor] = []
        for i in tqdm(range(len(ds)), desc="caching vision features", leave=False, mininterval=2.0):
            key = tuple(path for _, path in ds.examples[i].images)
            if key not in done:
                px = ds.read_images(i).to(device)
                hs = tower(pixel_values=px, output_hidden_states=True, return_dict=True).hidden_states[layer]
                done[key] = hs.to("cpu", torch.float16)
            feats.append(done[key])
        ds.features = feats
    tower.train(was_training)
    n_states = int(vcfg.num_hidden_layers) + 1  # any vision_feature_layer index finds the cached state

    def cached_forward(pixel_values=None, **kwargs):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if pixel_values is None or pixel_values.ndim != 3:
            raise RuntimeError("the vision tower serves cached features: expected [images, tokens, width] inputs")
        hs = pixel_values.to(next(core.multi_modal_projector.parameters()).dtype)
        return BaseModelOutputWithPooling(last_hidden_state=hs, pooler_output=hs[:, 0], hidden_states=(hs,) * n_states)

    tower.forward = cached_forward
    log.info("cached vision features of %d images (%.2f GB float16)", n_images, gb)


def restore_vision_tower(model: nn.Module) -> None:
    tower = llava_core(model).vision_tower
    if "forward" in tower.__dict__:
        del tower.forward


def save_vlm_export(model, tokenizer, transform, out_dir: Path, cfg: ReportModelConfig, n_image_tokens: int) -> Path:
    """The merged Hugging Face model + processor (+ ``adapter/`` when LoRA was used) + ``mxr0_report.json``."""
    from transformers import LlavaProcessor

    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):  # a peft model: keep the adapter, then merge for the export
        model.save_pretrained(out_dir / "adapter", safe_serialization=True)
        model = merge_lora(model, out_dir / "adapter")
    if getattr(model, "generation_config", None) is not None:  # plain `model.generate` stops at the end of the turn

        model.generation_config.eos_token_id = stop_token_ids(tokenizer, model.generation_config)
    model.save_pretrained(out_dir, safe_serialization=True)
    vcfg = model.config.vision_config
    processor = LlavaProcessor(image_processor=transform.to_image_processor(), tokenizer=tokenizer,
                               patch_size=int(np.ravel(vcfg.patch_size)[0]),
                               vision_feature_select_strategy=model.config.vision_feature_select_strategy,
                               num_additional_image_tokens=1 + int(getattr(vcfg, "num_register_tokens", 0) or 0),
                               chat_template=tokenizer.chat_template)
    processor.save_pretrained(out_dir)
    transform.save_pretrained(out_dir, keep_existing=True)  # also for AutoImageProcessor (the processor file nests it)
    settings = {k: getattr(cfg, k) for k in ("views", "context_sections", "target_sections", "instruction",
                                             "system_prompt", "max_length", "max_new_tokens", "tasks", "box_format",
                                             "vqa_answer_types", "grounding_prompt", "localisation_prompt",
                                             "grounded_instruction", "max_new_tokens_short")}
    settings["n_image_tokens"] = n_image_tokens
    (out_dir / "mxr0_report.json").write_text(json.dumps(settings, indent=2))
    return out_dir
