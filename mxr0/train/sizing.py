"""Production shapes without downloads: image-token budgets, parameter counts and memory per GPU per launcher.

- `check_image_token_budget`: the report / instruct task calls it when it builds or loads the VLM; a recipe whose
  images alone (plus the answer's generation limit) exceed ``model.max_length`` is a `ConfigError` naming the
  numbers (e.g. 3 images x 1,369 tokens = 4,107 image tokens > model.max_length 4096).
- ``*_params``: closed-form parameter counts of the architectures the recipes use (DINOv2 ViT, BERT, Llama /
  Qwen2 decoders, the Llava projector, LoRA adapters); tests check them against models built on the meta device.
- `build_on_meta`: a recipe's model built by its own task code on the meta device from ``config.json`` files only
  (no weights, no tokenizer download): Hub ids resolve to folders of a config directory
  (``tests/fixtures/hub_configs/<org>--<name>/``); ``from_pretrained`` of a folder without weights becomes
  ``from_config`` (the hook `config_only_from_pretrained`).
- `memory_per_gpu`: the training state (weights, gradients, AdamW states, DDP buckets, the unsharded working set
  of ZeRO-3 / FSDP) and activations per GPU for each ``accelerate_configs/`` launcher, by the rules written out in
  ``docs/scaling.md``.
- ``python -m mxr0.train.sizing``: the table of every production recipe that ``docs/scaling.md`` shows.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mxr0.config import load_recipe
from mxr0.models.vlm import check_image_token_budget, image_tokens_per_image  # noqa: F401 (re-exported: the budget check lives with the VLM build)
from mxr0.tasks import get_task_class

REPO = Path(__file__).resolve().parents[2]
HUB_CONFIGS = REPO / "tests" / "fixtures" / "hub_configs"
PRODUCTION_RECIPES = ("classify_rad_dino", "mxr0_align", "xr0_pretrain", "mxr0_report_stage1", "mxr0_report",
                      "mxr0_grounding", "mxr0_vqa", "mxr0_mixture")
LAUNCHERS = ("ddp", "fsdp", "zero2", "zero3", "zero3_offload")
GB = 1e9


# --- closed-form parameter counts -----------------------------------------------------------------------
def _get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def dinov2_params(cfg, image_size: int | None = None) -> int:
    """A ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (no SwiGLU FFN): embeddings (patch conv, CLS, mask
    token, registers, position embeddings of ``image_size``) + blocks (2 layer norms, qkv + out, MLP, 2
    layer scales) + the final layer norm."""
    h, L = _get(cfg, "hidden_size"), _get(cfg, "num_hidden_layers")
    p = _get(cfg, "patch_size")
    p = int(p[0] if isinstance(p, (list, tuple)) else p)
    if _get(cfg, "use_swiglu_ffn", False):
        raise NotImplementedError("SwiGLU DINOv2 FFN")
    inter = int(h * _get(cfg, "mlp_ratio", 4))
    size = int(image_size or _get(cfg, "image_size"))
    c = int(_get(cfg, "num_channels", 3))
    regs = int(_get(cfg, "num_register_tokens", 0) or 0)
    emb = (c * p * p * h + h) + h + h + regs * h + ((size // p) ** 2 + 1) * h
    block = 2 * 2 * h + 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * h
    return emb + L * block + 2 * h


def bert_params(cfg, pooler: bool = True) -> int:
    """A ``BertModel``: word / position / token-type embeddings + LN, blocks, the pooler."""
    h, L, i = _get(cfg, "hidden_size"), _get(cfg, "num_hidden_layers"), _get(cfg, "intermediate_size")
    emb = (_get(cfg, "vocab_size") + _get(cfg, "max_position_embeddings") + _get(cfg, "type_vocab_size", 2)) * h + 2 * h
    block = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    return emb + L * block + (h * h + h if pooler else 0)


def decoder_params(cfg, lm_head: bool = True) -> int:
    """A Llama / Qwen2 / Mistral decoder (SwiGLU MLP, RMSNorm, GQA): embeddings, blocks, final norm and the LM
    head (counted once when tied). Qwen2 has q / k / v biases; Llama ``attention_bias`` / ``mlp_bias``."""
    h, L, i, V = (_get(cfg, k) for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    heads = _get(cfg, "num_attention_heads")
    kv = _get(cfg, "num_key_value_heads") or heads
    d = _get(cfg, "head_dim") or h // heads
    qkv_bias = _get(cfg, "model_type") == "qwen2" or bool(_get(cfg, "attention_bias", False))
    o_bias = bool(_get(cfg, "attention_bias", False)) and _get(cfg, "model_type") != "qwen2"
    mlp_bias = bool(_get(cfg, "mlp_bias", False))
    q, k = heads * d, kv * d
    attn = h * q + 2 * h * k + q * h + ((q + 2 * k) if qkv_bias else 0) + (h if o_bias else 0)
    mlp = 3 * h * i + ((2 * i + h) if mlp_bias else 0)
    block = attn + mlp + 2 * h
    tied = bool(_get(cfg, "tie_word_embeddings", False))
    return V * h + L * block + h + (V * h if lm_head and not tied else 0)


def projector_params(vision_hidden: int, text_hidden: int) -> int:
    """Llava's 2-layer MLP projector (one vision feature layer)."""
    return vision_hidden * text_hidden + text_hidden + text_hidden * text_hidden + text_hidden


def decoder_linear_shapes(cfg) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear of one decoder block."""
    h, i = _get(cfg, "hidden_size"), _get(cfg, "intermediate_size")
    heads = _get(cfg, "num_attention_heads")
    kv = _get(cfg, "num_key_value_heads") or heads
    d = _get(cfg, "head_dim") or h // heads
    return {"q_proj": (h, heads * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (heads * d, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def lora_params(cfg, r: int, target_regex: str) -> int:
    """LoRA A (r x in) + B (out x r) on every decoder linear whose name the regex (scoped to the language model)
    matches, over all blocks."""
    pat = re.compile(target_regex)
    per_block = 0
    for name, (fi, fo) in decoder_linear_shapes(cfg).items():
        owner = "mlp" if name in ("gate_proj", "up_proj", "down_proj") else "self_attn"
        if pat.fullmatch(f"model.language_model.layers.0.{owner}.{name}"):
            per_block += r * (fi + fo)
    return per_block * _get(cfg, "num_hidden_layers")


# --- counting a built model -------------------------------------------------------------------------------
def count_params(model) -> tuple[int, int]:
    """(all, trainable) parameters, shared tensors once (meta tensors included)."""
    seen, total, train = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        train += p.numel() if p.requires_grad else 0
    return total, train


# --- building a recipe's model on the meta device ------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hub_folder(name: str, configs: Path = HUB_CONFIGS) -> Path | None:
    """The config folder standing for Hub id ``org/name`` (``<configs>/org--name``), or None."""
    if not name or name.count("/") != 1 or name.startswith((".", "/")):
        return None
    f = Path(configs) / name.replace("/", "--")
    return f if (f / "config.json").is_file() else None


@contextlib.contextmanager
def config_only_from_pretrained():
    """While active, ``from_pretrained(folder)`` of any transformers model (the ``Auto*`` classes end there) with a
    folder holding a ``config.json`` and no weights builds the model from that config instead of failing, in the
    dtype ``from_pretrained`` would load (the config's, by default): with accelerate's ``init_empty_weights``
    around it, a production-sized model costs no memory and no download."""
    from transformers import PreTrainedModel

    original = PreTrainedModel.__dict__["from_pretrained"]

    def from_pretrained(cls, name, *args, **kwargs):
        p = Path(str(name))
        if not (p.is_dir() and (p / "config.json").is_file() and not any((p / w).exists() for w in WEIGHT_FILES)):
            return original.__func__(cls, name, *args, **kwargs)
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None) or "auto"
        config = kwargs.pop("config", None)
        for k in ("ignore_mismatched_sizes", "quantization_config", "trust_remote_code", "local_files_only"):
            kwargs.pop(k, None)
        if config is None:
            config, kwargs = cls.config_class.from_pretrained(str(p), return_unused_kwargs=True, **kwargs)
        if dtype == "auto":  # from_pretrained's default: the dtype the config names (else float32)
            dtype = getattr(config, "dtype", None) or torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        return cls._from_config(config, dtype=dtype)

    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        PreTrainedModel.from_pretrained = original


class TokenizerStub:
    """What a task's ``build_model`` reads from a tokenizer: its length, the pad id and the ``<image>`` id."""

    def __init__(self, length: int, pad_token_id: int, image_token_id: int | None = None):
        self.length, self.pad_token_id = int(length), int(pad_token_id)
        self.image_token_id = image_token_id

    def __len__(self) -> int:
        return self.length

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.image_token_id if self.image_token_id is not None else self.length - 1


def tokenizer_facts(folder: Path) -> dict:
    """``mxr0_tokenizer.json`` of a config folder: the published tokenizer's length and pad id."""
    return json.loads((Path(folder) / "mxr0_tokenizer.json").read_text())


def resolve_hub_ids(recipe_path, overrides=(), configs: Path = HUB_CONFIGS, init_from: str | None = None):
    """The recipe with every Hub id of ``model.*`` pointing at its config folder (and ``model.init_from``
    replaced by ``init_from``: the config folder of the run it starts from)."""

    raw = load_recipe(recipe_path, list(overrides))
    extra = []
    for key in ("encoder", "vision", "text", "llm", "tokenizer"):
        val = getattr(raw.model, key, None)
        if isinstance(val, str) and val:
            folder = hub_folder(val, configs)
            if folder is None:
                raise FileNotFoundError(f"model.{key}={val!r}: no config folder {Path(configs) / val.replace('/', '--')}")
            extra.append(f"model.{key}={folder}")
    if getattr(raw.model, "init_from", ""):
        if not init_from:
            raise ValueError(f"{recipe_path}: model.init_from={raw.model.init_from!r}: pass the config folder of that run")
        extra.append(f"model.init_from={init_from}")
    return load_recipe(recipe_path, [*overrides, *extra])


def build_on_meta(recipe, configs: Path = HUB_CONFIGS):
    """(task, model) of ``recipe`` (Hub ids already resolved, see `resolve_hub_ids`) built by the task's own
    ``build_model`` with parameters on the meta device; the tokenizer is a stub with the published sizes."""
    from accelerate import init_empty_weights


    task = get_task_class(recipe.task)(recipe)
    c = task.cfg
    if recipe.task in ("report", "instruct"):
        src = c.init_from or c.llm
        facts = tokenizer_facts(_llm_folder(src, configs))
        # ensure_image_token adds <image> as one more special token: length + 1, its id = the old length
        task.tokenizer = TokenizerStub(facts["length"] + 1, facts["pad_token_id"], facts["length"])
    elif recipe.task == "align":
        facts = tokenizer_facts(Path(c.tokenizer or c.text))
        task.tokenizer = TokenizerStub(facts["length"], facts["pad_token_id"])
        task.max_length = c.max_text_length
    elif recipe.task == "classify":
        task.labels = list(c.labels)
    with config_only_from_pretrained(), init_empty_weights():
        model = task.build_model()
    return task, model


def _llm_folder(src: str, configs: Path) -> Path:
    p = Path(src)
    if (p / "mxr0_tokenizer.json").is_file():
        return p
    with open(p / "config.json") as f:
        base = json.load(f).get("mxr0_llm")  # a VLM config folder names the LLM it was built from
    return Path(configs) / base.replace("/", "--")


def write_vlm_config(model, transform, out: Path, llm: str) -> Path:
    """The ``config.json`` a run's export would hold (what ``init_from`` reads), plus the LLM's Hub id so the
    tokenizer facts can be found, and the vision tower's image-processor config."""
    out.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # save_pretrained records the dtype of the first floating parameter (the vision tower's): what
    # `from_pretrained(init_from)` then loads the whole VLM in
    base.config.dtype = next(p.dtype for p in base.parameters() if p.is_floating_point())
    base.config.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["mxr0_llm"] = llm
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    transform.save_pretrained(out)
    return out


# --- memory per GPU ----------------------------------------------------------------------------------------
@dataclass
class Shape:
    """What the memory estimate needs of a recipe's model and batch."""

    name: str
    total: int
    """All parameters."""
    trainable: int
    frozen_bytes: float
    """Bytes of the frozen parameters as loaded (bf16 LLM 2 B, fp32 ViT 4 B per parameter)."""
    largest_block: int
    """Parameters of the largest transformer block (the ZeRO-3 / FSDP working set holds ~2 of them, bf16)."""
    activations_per_sample: float
    """Bytes, at the recipe's gradient-checkpointing setting."""
    batch: int
    tokens: int
    """Tokens per sample (the longest sequence the estimate assumes)."""
    extra_fp32: int = 0
    """Parameters kept in fp32 without gradients (the SSL EMA teacher)."""
    deepspeed_ok: bool = True
    notes: list[str] = field(default_factory=list)


def memory_per_gpu(s: Shape, launcher: str, n_gpus: int = 8) -> dict[str, float] | None:
    """GB per GPU: ``state`` (weights + gradients + AdamW + DDP buckets + the working set), ``activations``,
    ``total``; ``cpu`` (offloaded state per GPU) for ZeRO-3 + offload. None where mxr0 refuses the launcher.

    Rules (docs/scaling.md): trainable parameters 16 B each (DDP: fp32 weights 4 + grads 4 + Adam m, v 8;
    DeepSpeed bf16: 2 + 2 + fp32 master and m, v 12), DDP gradient buckets +4 B; frozen parameters as loaded
    under DDP / FSDP, in bf16 (2 B) under DeepSpeed. ZeRO-2: 2 B weights + (2 + 12) B / N for trainable ones;
    ZeRO-3 and FSDP FULL_SHARD: everything / N plus a working set of 2 blocks in bf16; ZeRO-3 + offload: only
    the working set stays on the GPU."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: choose from {LAUNCHERS}")
    if launcher.startswith("zero") and not s.deepspeed_ok:
        return None
    t, N = s.trainable, n_gpus
    frozen_ds = 2.0 * (s.total - t)  # DeepSpeed casts the whole model to bf16
    working = 2 * 2.0 * s.largest_block
    teacher = 4.0 * s.extra_fp32
    cpu = 0.0
    if launcher == "ddp":
        state = 16.0 * t + 4.0 * t + s.frozen_bytes + teacher
    elif launcher == "fsdp":
        state = (16.0 * t + s.frozen_bytes + teacher) / N + working
    elif launcher == "zero2":
        state = 2.0 * t + 14.0 * t / N + frozen_ds + teacher
    elif launcher == "zero3":
        state = (16.0 * t + frozen_ds + teacher) / N + working
    else:  # zero3_offload
        state = working
        cpu = (16.0 * t + frozen_ds + teacher) / N
    act = s.activations_per_sample * s.batch
    out = {"state": state / GB, "activations": act / GB, "total": (state + act) / GB}
    if launcher == "zero3_offload":
        out["cpu"] = cpu / GB
    return out


def vit_activation_bytes(h: int, layers: int, tokens: int, checkpointing: bool) -> float:
    """Korthikanti et al.: ~34 h bytes per token per standard block (bf16, SDPA); 2 h with checkpointing plus
    one block recomputed."""
    if checkpointing:
        return tokens * (2 * h * layers + 34 * h)
    return tokens * 34 * h * layers


def swiglu_activation_bytes(h: int, i: int, layers: int, tokens: int, vocab: int, checkpointing: bool) -> float:
    """~(12 h + 8 i) bytes per token per SwiGLU block (2 h with checkpointing + one block recomputed), plus the
    logits: bf16 (2 B), their fp32 copy for the loss (4 B) and its gradient (4 B) per vocabulary entry."""
    block = 12 * h + 8 * i
    body = tokens * (2 * h * layers + block) if checkpointing else tokens * block * layers
    return body + tokens * vocab * 10.0


# --- the production table ----------------------------------------------------------------------------------
def production_shapes(configs: Path = HUB_CONFIGS, tmp: Path | None = None) -> list[tuple[Shape, object, object]]:
    """(Shape, task, model) of every production recipe built on the meta device, the ``init_from`` chain
    through a config folder of the stage-1 model."""
    import tempfile

    tmp = Path(tmp or tempfile.mkdtemp(prefix="mxr0-sizing-"))
    out = []
    stage1_dir = None
    for name in PRODUCTION_RECIPES:
        path = REPO / "recipes" / f"{name}.yaml"
        init = str(stage1_dir) if stage1_dir else None
        recipe = resolve_hub_ids(path, configs=configs, init_from=init)
        task, model = build_on_meta(recipe, configs)
        if name == "mxr0_report_stage1":
            stage1_dir = write_vlm_config(model, task.transform, tmp / "mxr0-report-stage1", _hub_id(recipe.model.llm))
        out.append((shape_of(name, recipe, task, model), task, model))
    return out


def _hub_id(folder: str) -> str:
    return Path(folder).name.replace("--", "/", 1)


def shape_of(name: str, recipe, task, model) -> Shape:
    """The memory-relevant shape of a model built on meta for ``recipe``."""
    total, trainable = count_params(model)
    t = recipe.train
    ckpt = bool(t.gradient_checkpointing)
    frozen_bytes = 0.0
    for p in model.parameters():
        if not p.requires_grad:
            frozen_bytes += p.numel() * p.element_size()
    if recipe.task in ("report", "instruct"):
        cfg = model.config if not hasattr(model, "get_base_model") else model.get_base_model().config
        tc = cfg.text_config
        tokens = int(recipe.model.max_length)
        act = swiglu_activation_bytes(tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, tokens,
                                      tc.vocab_size, ckpt)
        block = _one_block(decoder_params, tc)
        return Shape(name, total, trainable, frozen_bytes, block, act, t.batch_size, tokens)
    if recipe.task == "align":
        vc = model.dual.config.vision_config if hasattr(model, "dual") else model.config.vision_config
        txt = model.dual.config.text_config if hasattr(model, "dual") else model.config.text_config
        img = image_tokens_per_image(vc, int(task.transform.size), "full")
        text_tokens = int(recipe.model.max_text_length)
        act = (vit_activation_bytes(vc.hidden_size, vc.num_hidden_layers, img, ckpt)
               + vit_activation_bytes(txt.hidden_size, txt.num_hidden_layers, text_tokens, ckpt))
        block = _one_block(dinov2_params, vc)
        return Shape(name, total, trainable, frozen_bytes, block, act, t.batch_size, img + text_tokens)
    if recipe.task == "classify":
        vc = model.config
        img = image_tokens_per_image(vc, int(task.transform.size), "full")
        act = vit_activation_bytes(vc.hidden_size, vc.num_hidden_layers, img, ckpt)
        return Shape(name, total, trainable, frozen_bytes, _one_block(dinov2_params, vc), act, t.batch_size, img)
    # ssl: student = trainable, the EMA teacher is a frozen fp32 copy; tokens: 2 global + n local crops
    c = recipe.model
    vc = model.student.backbone.config
    p = int(vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size)
    prefix = 1 + int(getattr(vc, "num_register_tokens", 0) or 0)
    tokens = 2 * ((c.global_crop_size // p) ** 2 + prefix) + c.n_local_crops * ((c.local_crop_size // p) ** 2 + prefix)
    act = vit_activation_bytes(vc.hidden_size, vc.num_hidden_layers, tokens, ckpt)
    return Shape(name, trainable, trainable, 0.0, _one_block(dinov2_params, vc), act, t.batch_size, tokens,
                 extra_fp32=total - trainable, deepspeed_ok=False)


def _one_block(count, config) -> int:
    """Parameters of one transformer block by a closed form ``count(config)``."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return count({**d, "num_hidden_layers": 1}) - count({**d, "num_hidden_layers": 0})


def table(shapes: list[Shape], n_gpus: int = 8) -> str:
    """The Markdown table of docs/scaling.md: parameters, tokens, GB per GPU per launcher (state + activations)."""
    head = ("| recipe | params (trainable) | tokens x batch / GPU | DDP | FSDP | ZeRO-2 | ZeRO-3 "
            "| ZeRO-3 + offload (CPU) |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for s in shapes:
        cells = []
        for launcher in LAUNCHERS:
            m = memory_per_gpu(s, launcher, n_gpus)
            if m is None:
                cells.append("refused")
            elif launcher == "zero3_offload":
                cells.append(f"{m['total']:.1f} ({m['cpu']:.1f})")
            else:
                cells.append(f"{m['state']:.1f} + {m['activations']:.1f} = {m['total']:.1f}")
        rows.append(f"| {s.name} | {_m(s.total)} ({_m(s.trainable)}) | {s.tokens:,} x {s.batch} | " + " | ".join(cells) + " |")
    return "\n".join([head, *rows])


def _m(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def main() -> None:  # pragma: no cover - exercised by tests/unit/test_production_shapes.py through table()
    import logging

    logging.disable(logging.WARNING)
    shapes = [s for s, _, _ in production_shapes()]
    print(table(shapes))


if __name__ == "__main__":
    main()
