"""Production recipes checked without downloads (issue #15, item 3).

Full shapes: every production recipe's model is built by its own task code on the meta device from the exact
``config.json`` of the Hub models it names (``tests/fixtures/hub_configs/<org>--<name>/``, written from the
published files; `mxr0.train.sizing.build_on_meta`), the ``init_from`` chain through the stage-1 model's
config. Checked: parameter and trainable counts against closed forms and published totals, image tokens
against ``model.max_length``, memory per GPU per launcher, and that docs/scaling.md shows this code's table.

Small shapes: every production recipe trains 2 steps on the CPU with stand-ins of the same architecture classes
(Dinov2Model, BertForMaskedLM, Qwen2ForCausalLM) reduced in depth and width, on the phantom set, the stage-2
recipes from the stand-in stage-1 export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from mxr0.config import ConfigError, load_recipe
from mxr0.train import sizing
from mxr0.train.sizing import (HUB_CONFIGS, LAUNCHERS, PRODUCTION_RECIPES, bert_params, build_on_meta, count_params,
                                decoder_params, dinov2_params, lora_params, memory_per_gpu, projector_params,
                                resolve_hub_ids)

REPO = Path(__file__).resolve().parents[2]
GPU_GB = 80.0  # an 80 GB H100 / A100: the card docs/scaling.md plans for
QWEN_7B_PARAMS = 7_615_616_512  # Qwen2.5-7B-Instruct's safetensors total (the model card's "7.61B")


def _cfg(name: str) -> dict:
    return json.loads((HUB_CONFIGS / name.replace("/", "--") / "config.json").read_text())


# --- the fixtures are the published configs ---------------------------------------------------------------
def test_hub_fixture_configs_hold_the_published_architectures():
    from transformers import AutoConfig

    rad = AutoConfig.from_pretrained(HUB_CONFIGS / "microsoft--rad-dino")
    assert (rad.model_type, rad.hidden_size, rad.num_hidden_layers, rad.num_attention_heads, rad.patch_size,
            rad.image_size, getattr(rad, "num_register_tokens", 0)) == ("dinov2", 768, 12, 12, 14, 518, 0)
    reg = AutoConfig.from_pretrained(HUB_CONFIGS / "facebook--dinov2-with-registers-base")
    assert (reg.model_type, reg.hidden_size, reg.num_hidden_layers, reg.num_attention_heads, reg.patch_size,
            reg.num_register_tokens) == ("dinov2_with_registers", 768, 12, 12, 14, 4)
    bert = AutoConfig.from_pretrained(HUB_CONFIGS / "microsoft--BiomedVLP-CXR-BERT-general")
    assert (bert.model_type, bert.hidden_size, bert.num_hidden_layers, bert.vocab_size) == ("bert", 768, 12, 30522)
    q = AutoConfig.from_pretrained(HUB_CONFIGS / "Qwen--Qwen2.5-7B-Instruct")
    assert (q.model_type, q.hidden_size, q.intermediate_size, q.num_hidden_layers, q.num_attention_heads,
            q.num_key_value_heads, q.vocab_size, q.tie_word_embeddings, q.max_position_embeddings) == \
        ("qwen2", 3584, 18944, 28, 28, 4, 152064, False, 32768)
    # closed forms against published totals
    assert decoder_params(q) == QWEN_7B_PARAMS
    assert bert_params(bert) == 109_482_240  # bert-base-uncased's BertModel (pooler included)
    assert dinov2_params(rad) == 86_580_480  # ViT-B/14 at 518 px (1,370 position embeddings)


def test_every_hub_id_of_a_production_recipe_has_a_fixture():
    ids = set()
    for name in PRODUCTION_RECIPES:
        text = (REPO / "recipes" / f"{name}.yaml").read_text()
        ids |= set(re.findall(r"\b((?:microsoft|facebook|Qwen|google|meta-llama|mistralai)/[\w.\-]+)", text))
    assert {"microsoft/rad-dino", "microsoft/BiomedVLP-CXR-BERT-general", "Qwen/Qwen2.5-7B-Instruct",
            "facebook/dinov2-with-registers-base"} <= ids
    missing = [i for i in ids if sizing.hub_folder(i) is None]
    assert not missing, f"Hub ids named by production recipes without a config fixture: {missing}"


# --- full shapes on the meta device -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    """{recipe name: (Shape, task, model)} of every production recipe, built on meta (~25 s)."""
    out = sizing.production_shapes(tmp=tmp_path_factory.mktemp("sizing"))
    return {s.name: (s, task, model) for s, task, model in out}


def test_production_models_build_on_meta_with_the_expected_parameter_counts(meta):
    rad, bert = _cfg("microsoft/rad-dino"), _cfg("microsoft/BiomedVLP-CXR-BERT-general")
    qwen = _cfg("Qwen/Qwen2.5-7B-Instruct")
    vit = dinov2_params(rad)
    vit_block = dinov2_params({**rad, "num_hidden_layers": 1}) - dinov2_params({**rad, "num_hidden_layers": 0})
    llm = decoder_params(qwen)
    proj = projector_params(768, 3584)

    s, _, model = meta["classify_rad_dino"]
    labels = 9
    head = (2 * 768 + 1) * labels  # CLS + mean patch -> 9 labels; all trained but DINOv2's mask token
    assert count_params(model) == (vit + head, vit + head - 768)

    s, _, model = meta["mxr0_align"]  # vision: last 4 blocks + final norm; text: all; 2 projections + logit scale
    projections = 2 * 768 * 512 + 1
    assert count_params(model) == (vit + bert_params(bert) + projections,
                                   4 * vit_block + 2 * 768 + bert_params(bert) + projections)

    s, task, model = meta["mxr0_report_stage1"]  # projector only
    assert task.n_image_tokens == 37 * 37
    assert count_params(model) == (vit + llm + proj, proj)
    lm_params = [p for n, p in model.named_parameters() if "language_model" in n]
    assert lm_params and all(p.is_meta for p in lm_params)  # no 7B allocation
    assert model.config.text_config.vocab_size == 152064  # Qwen's tokenizer + <image> fits its embeddings: no resize

    lora = lora_params(qwen, 64, r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
    assert lora == 161_480_704
    for name in ("mxr0_report", "mxr0_grounding", "mxr0_vqa", "mxr0_mixture"):  # LoRA r=64 + projector (peft's copy)
        s, task, model = meta[name]
        assert count_params(model) == (vit + llm + 2 * proj + lora, lora + proj), name

    s, _, model = meta["xr0_pretrain"]  # ViT-B/14 (4 registers, 224 px) + DINO head; the EMA teacher is the same again
    backbone = dinov2_params({**_cfg("facebook/dinov2-with-registers-base"), "image_size": 224})
    assert count_params(model.student.backbone)[0] == backbone
    assert s.trainable == count_params(model.student)[1] and s.extra_fp32 >= count_params(model.teacher)[0]


def test_production_image_tokens_fit_max_length(meta):
    for name in PRODUCTION_RECIPES:
        s, task, model = meta[name]
        if getattr(task, "n_image_tokens", None) is None or not hasattr(task.cfg, "views"):
            continue
        c = task.cfg
        report_kinds = [k for k, w in c.tasks.items() if w > 0 and k in ("report", "grounded_report")]
        n_images = len(c.views) if report_kinds else 1
        assert n_images * task.n_image_tokens + c.max_new_tokens <= c.max_length, name


def test_image_token_overflow_is_a_config_error_naming_the_numbers(tmp_path):
    path = REPO / "recipes/mxr0_report_stage1.yaml"
    with pytest.raises(ConfigError, match=r"3 images x 1,369 tokens = 4,107 image tokens > model.max_length 4096"):
        build_on_meta(resolve_hub_ids(path, ["model.max_length=4096"]))
    with pytest.raises(ConfigError, match=r"4,107 image tokens \+ model.max_new_tokens 300 = 4,407 tokens > "
                                          r"model.max_length 4400"):
        build_on_meta(resolve_hub_ids(path, ["model.max_length=4400"]))
    # one view fits the old limit; select_strategy=full adds the CLS token to each image
    build_on_meta(resolve_hub_ids(path, ["model.max_length=4096", "model.views=[frontal]"]))
    with pytest.raises(ConfigError, match=r"3 images x 1,370 tokens = 4,110 image tokens"):
        build_on_meta(resolve_hub_ids(path, ["model.max_length=4096", "model.select_strategy=full"]))


def test_memory_per_gpu_follows_the_rules(meta):
    s = meta["mxr0_report"][0]
    t, frozen = s.trainable, s.total - s.trainable
    ddp = memory_per_gpu(s, "ddp", 8)
    assert ddp["state"] == pytest.approx((20 * t + s.frozen_bytes) / 1e9)
    # stage 2 loads the frozen LLM in bf16 (llm_load_dtype), the vision tower and projector in fp32
    assert 2 * frozen < s.frozen_bytes < 2.1 * frozen
    z2, z3, off, fsdp = (memory_per_gpu(s, k, 8) for k in ("zero2", "zero3", "zero3_offload", "fsdp"))
    assert z2["state"] == pytest.approx((2 * frozen + 2 * t + 14 * t / 8) / 1e9)
    assert z3["state"] == pytest.approx((16 * t + 2 * frozen) / 8 / 1e9 + 4 * s.largest_block / 1e9)
    assert off["state"] < z3["state"] < z2["state"] < ddp["state"] and fsdp["state"] < ddp["state"]
    assert off["cpu"] == pytest.approx((16 * t + 2 * frozen) / 8 / 1e9)
    assert memory_per_gpu(s, "zero3", 16)["state"] < z3["state"]
    assert s.largest_block == 233_057_792  # one Qwen2.5-7B block
    for launcher in LAUNCHERS:  # activations do not depend on the launcher
        assert memory_per_gpu(s, launcher, 8)["activations"] == ddp["activations"]
    ssl = meta["xr0_pretrain"][0]
    assert [memory_per_gpu(ssl, k) for k in ("zero2", "zero3", "zero3_offload")] == [None] * 3
    with pytest.raises(ValueError, match="launcher"):
        memory_per_gpu(s, "zero1")


def test_every_production_recipe_fits_an_80gb_gpu_under_ddp(meta):
    """The recipes' own launcher (their comments say accelerate_configs/ddp.yaml) at their batch size."""
    too_big = {n: round(memory_per_gpu(meta[n][0], "ddp")["total"], 1) for n in PRODUCTION_RECIPES
               if memory_per_gpu(meta[n][0], "ddp")["total"] > GPU_GB * 0.85}
    assert not too_big, f"over 85% of {GPU_GB:.0f} GB per GPU under DDP: {too_big}"


def test_scaling_doc_shows_this_codes_table(meta):
    table = sizing.table([meta[n][0] for n in PRODUCTION_RECIPES])
    doc = (REPO / "docs/scaling.md").read_text()
    assert table in doc, "docs/scaling.md is out of date: paste the output of `python -m mxr0.train.sizing`"


def test_slake_is_prepared_xray_only_wherever_a_recipe_prepares_it():
    lines = [ln for p in sorted((REPO / "recipes").glob("*.yaml")) for ln in p.read_text().splitlines()
             if "prepare slake" in ln]
    assert lines and all("--xray-only" in ln for ln in lines), lines


# --- 2 CPU steps with stand-ins of the same classes ------------------------------------------------------------
TEXTS = ["Findings: No pleural effusion. The heart size is normal.\nImpression: No acute process.",
         "Findings: Small left pleural effusion with basilar atelectasis.\nImpression: Effusion.",
         "Is there a pneumothorax? yes no left right upper lower lobe opacity cardiomegaly edema",
         "Locate this finding: Write the findings and impression of this chest X-ray report. [0.12, 0.40, 0.55, 0.90]"] * 10


def _build_standins(out: Path) -> Path:
    """Hub stand-ins: same classes and config files as the Hub models, tiny sizes, random weights, own tokenizers."""
    from transformers import (BertConfig, BertForMaskedLM, Dinov2Config, Dinov2Model, Qwen2Config,
                              Qwen2ForCausalLM)

    from mxr0.data.chat import train_chat_tokenizer
    from mxr0.data.text import train_wordpiece_tokenizer

    torch.manual_seed(0)
    rad = out / "microsoft--rad-dino"
    Dinov2Model(Dinov2Config(**{**_cfg("microsoft/rad-dino"), "hidden_size": 32, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "image_size": 56})).save_pretrained(rad)
    pre = json.loads((HUB_CONFIGS / "microsoft--rad-dino/preprocessor_config.json").read_text())
    (rad / "preprocessor_config.json").write_text(json.dumps({**pre, "crop_size": {"height": 56, "width": 56},
                                                             "size": {"shortest_edge": 56}}))
    bert = out / "microsoft--BiomedVLP-CXR-BERT-general"
    tok = train_wordpiece_tokenizer(TEXTS, 200, 512, save_dir=bert)
    BertForMaskedLM(BertConfig(**{**_cfg("microsoft/BiomedVLP-CXR-BERT-general"), "vocab_size": len(tok),
                                  "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                  "intermediate_size": 64})).save_pretrained(bert)
    qwen = out / "Qwen--Qwen2.5-7B-Instruct"
    tok = train_chat_tokenizer(TEXTS, 400, 8192, save_dir=qwen)
    q = {k: v for k, v in _cfg("Qwen/Qwen2.5-7B-Instruct").items() if k not in ("bos_token_id", "eos_token_id")}
    Qwen2ForCausalLM(Qwen2Config(**{**q, "vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128,
                                    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                    "max_window_layers": 2, "pad_token_id": tok.pad_token_id})).save_pretrained(qwen)
    return out


# batch 2, not 1: the contrastive losses (align) and KoLeo (ssl) need a pair
SMALL = ["data.source=records", "data.extra_paths=[]", "data.num_workers=0", "train.max_steps=2",
         "train.batch_size=2", "train.grad_accum=1", "train.warmup_steps=1", "train.eval_every=0", "train.save_every=0",
         "train.progress=false", "train.trackers=[jsonl]", 'train.mixed_precision="no"']
SHRINK = {
    "xr0_pretrain": ["model.encoder_config={hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, mlp_ratio: 2, "
                     "patch_size: 8, layerscale_value: 0.1}", "model.global_crop_size=16", "model.local_crop_size=8",
                     "model.n_local_crops=2", "model.dino_n_prototypes=32", "model.dino_hidden_dim=32",
                     "model.dino_bottleneck_dim=16", "model.eval_gallery_studies=40", "model.freeze_last_layer_epochs=0.1",
                     "model.warmup_teacher_temp_epochs=0.1"],
    "vlm": ["model.eval_generate=0", "data.max_train_studies=24", "data.max_eval_studies=4"],
}


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    return _build_standins(tmp_path_factory.mktemp("hub_standins"))


def _small_run(name: str, data: Path, standins: Path, out: Path, init_from: str | None = None,
               more: tuple[str, ...] = ()) -> dict:
    from mxr0.train.loop import train

    extra = [f"data.path={data}", f"train.output_dir={out}", *more,
             *SHRINK.get(name, SHRINK["vlm"] if name.startswith("mxr0_") and name != "mxr0_align" else [])]
    recipe = resolve_hub_ids(REPO / "recipes" / f"{name}.yaml", [*SMALL, *extra], configs=standins, init_from=init_from)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(recipe)
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def stage1_export(phantom_small, standins, tmp_path_factory):
    out = tmp_path_factory.mktemp("standin_stage1")
    return Path(_small_run("mxr0_report_stage1", phantom_small, standins, out / "run")["export_dir"])


def _check_run(result: dict, name: str) -> None:
    run = Path(result["run_dir"])
    steps = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in steps if "train/loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(x)) and x > 0 for x in losses), (name, losses)
    assert any(r.get("step") == 2 for r in steps), name
    assert (Path(result["export_dir"]) / "config.json").is_file(), name


@pytest.mark.parametrize("name", [n for n in PRODUCTION_RECIPES if n != "mxr0_report_stage1"])
def test_production_recipe_trains_two_cpu_steps_with_standins(name, phantom_small, standins, tmp_path, request):
    chained = load_recipe(REPO / "recipes" / f"{name}.yaml").model
    init = str(request.getfixturevalue("stage1_export")) if getattr(chained, "init_from", "") else None
    result = _small_run(name, phantom_small, standins, tmp_path / "run", init_from=init)
    _check_run(result, name)
    recipe = load_recipe(Path(result["run_dir"]) / "recipe.yaml")
    for key in ("vision", "text", "llm", "encoder", "init_from"):  # the stand-ins were really used
        val = getattr(recipe.model, key, "")
        assert not val or Path(val).exists(), (name, key, val)


def test_stage1_standin_export_has_the_hub_classes(stage1_export):
    from transformers import AutoConfig

    _check_run({"run_dir": stage1_export.parent, "export_dir": stage1_export}, "mxr0_report_stage1")
    cfg = AutoConfig.from_pretrained(stage1_export)
    assert cfg.model_type == "llava"
    assert cfg.vision_config.model_type == "dinov2" and cfg.text_config.model_type == "qwen2"


def test_report_recipe_under_qlora_exports_a_plain_model(stage1_export, phantom_small, standins, tmp_path):
    """The production report recipe with its documented QLoRA switch (``model.train_llm=qlora``, bitsandbytes'
    CPU kernels): 2 steps, then the export merges the adapter into the dequantised base (`merge_lora`), so the
    exported model has no quantisation config and loads without bitsandbytes. (The Qwen stand-in is 64 wide:
    bitsandbytes' CPU nf4 inference kernel needs in_features of at least one quantisation block, 64.)"""
    pytest.importorskip("bitsandbytes")
    result = _small_run("mxr0_report", phantom_small, standins, tmp_path / "run", init_from=str(stage1_export),
                        more=("model.train_llm=qlora",))
    _check_run(result, "mxr0_report+qlora")
    export = Path(result["export_dir"])
    cfg = json.loads((export / "config.json").read_text())
    assert "quantization_config" not in cfg and "quantization_config" not in cfg.get("text_config", {}), cfg
    assert (export / "adapter" / "adapter_config.json").is_file()
