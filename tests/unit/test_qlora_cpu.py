"""QLoRA on a CPU (bitsandbytes >= 0.50): the VLM's language model quantised to nf4, LoRA gradients through it.

A tiny Llama saved to a folder and loaded as ``model.llm`` is built into a VLM and quantised
(`mxr0.models.vlm.quantise_language_model`): its linear layers become ``Linear4bit`` (nf4), the vision tower,
projector and LM head stay ``nn.Linear``. bitsandbytes warns on CPU that the nf4 backward has no registered
autograd kernel ("may lead to silently incorrect behaviour"), so one step's LoRA gradients are compared with a
reference: the same model with the nf4 weights dequantised into plain fp32 ``nn.Linear`` layers and the same
LoRA weights. Measured (bitsandbytes 0.50.2, torch 2.13 CPU): with fp32 products the gradients are identical
(relative error 0.0); with QLoRA's bf16 products the worst tensor is off by 0.64 % and all of them together by
0.24 %. The export merges the adapter into the dequantised base (`merge_lora`): measured on this tiny VLM, the
exported logits differ from the trained QLoRA model's by 0.0000 (fp32 products) / 0.0039 (bf16, stored in bf16),
against 0.13 / 0.14 for peft's merge into the 4-bit layers (which re-quantises). Also: stage 2's loading of a saved VLM (`load_vlm`) quantises only the language model, or loads it in
bf16 when its weights are not trained.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install 'mxr0[dev]' or 'mxr0[qlora]')")

from mxr0.config import ConfigError  # noqa: E402
from mxr0.models.encoder import new_encoder  # noqa: E402
from mxr0.models.vlm import (  # noqa: E402
    build_vlm,
    check_qlora_backend,
    llava_core,
    load_vlm,
    qlora_quantization_config,
    quantise_language_model,
    tiny_causal_lm,
)

IMAGE_TOKEN_ID = 299
N_IMAGE_TOKENS = 5  # 28 px, 14 px patches: 4 patches + 1 register
LORA_TARGET = r".*language_model.*\.(q_proj|v_proj|o_proj|down_proj)"


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    torch.manual_seed(0)
    lm = tiny_causal_lm(300, 0, 1, 2, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=2)
    out = tmp_path_factory.mktemp("tiny-llama")
    lm.save_pretrained(out)
    return out


def _vlm(llm_dir):
    """A VLM built from ``model.llm`` as `ReportTask._new_vlm` builds it (unquantised)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    vision = new_encoder(28, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                         num_register_tokens=1)
    return build_vlm(vision, AutoModelForCausalLM.from_pretrained(llm_dir), IMAGE_TOKEN_ID, 28)


def _batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 290, (2, 14), generator=g)
    ids[:, :N_IMAGE_TOKENS] = IMAGE_TOKEN_ID
    return ids, torch.randn(2, 3, 28, 28, generator=g)


def _lora(model, quantised: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantised:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model.requires_grad_(False)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGET))


def _linear_kinds(model) -> dict[str, set[str]]:
    core = llava_core(model)
    parts = {"llm": core.language_model, "vision": core.vision_tower, "projector": core.multi_modal_projector}
    kinds = {k: {type(m).__name__ for m in part.modules() if isinstance(m, nn.Linear)} for k, part in parts.items()}
    kinds["lm_head"] = {type(model.lm_head).__name__}
    return kinds


def test_qlora_from_llm_quantises_only_the_language_model(llm_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    model = quantise_language_model(_vlm(llm_dir))
    assert _linear_kinds(model) == {"llm": {"Linear4bit"}, "vision": {"Linear"}, "projector": {"Linear"},
                                    "lm_head": {"Linear"}}
    q_proj = llava_core(model).language_model.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.uint8 and q_proj.weight.quant_state.quant_type == "nf4"
    model = _lora(model, quantised=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable), trainable
    assert all("language_model" in n for n in trainable)
    # a 4-bit model saves and loads back as a 4-bit model (the export dequantises first: the test below)
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path, safe_serialization=True)
    back = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert _linear_kinds(back) == _linear_kinds(merged)
    ids, px = _batch()
    with torch.no_grad():
        a = merged(input_ids=ids, pixel_values=px).logits
        b = back(input_ids=ids, pixel_values=px).logits
    assert torch.allclose(a, b, atol=1e-2), (a - b).abs().max()


@pytest.mark.parametrize("compute_dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_lora_gradients_match_a_dequantised_reference(llm_dir, compute_dtype, tol):
    built = _vlm(llm_dir)
    model = quantise_language_model(copy.deepcopy(built), qlora_quantization_config(compute_dtype))
    ref = copy.deepcopy(built)
    moved = 0.0
    for name, mod in llava_core(model).language_model.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            target = llava_core(ref).language_model.get_submodule(name)
            w = bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
            moved = max(moved, float((w - target.weight.detach()).norm() / target.weight.detach().norm()))
            target.weight.data = w
    assert moved > 1e-2, "the nf4 weights equal the originals: nothing was quantised"
    model, ref = _lora(model, quantised=True), _lora(ref, quantised=False)
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if ".lora_B." in name:  # peft starts B at zero: give both factors gradients
            p.data.normal_(0, 0.1)
    missing = ref.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora_" in k}, strict=False)
    assert not missing.unexpected_keys
    ids, px = _batch()
    grads = []
    for m in (model, ref):
        m(input_ids=ids, pixel_values=px, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 16  # A and B of 4 modules x 2 layers
    for name, g in grads[1].items():
        assert g.norm() > 0, name
        err = float((grads[0][name] - g).norm() / g.norm())
        assert err < tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def test_stage2_loads_the_llm_quantised_or_in_bf16(llm_dir, tmp_path):
    _vlm(llm_dir).save_pretrained(tmp_path, safe_serialization=True)  # a stage-1 export
    q = load_vlm(str(tmp_path), "qlora", "bf16")
    assert _linear_kinds(q) == {"llm": {"Linear4bit"}, "vision": {"Linear"}, "projector": {"Linear"},
                                "lm_head": {"Linear"}}
    for train_llm, precision, llm_dtype in (("lora", "bf16", torch.bfloat16), ("frozen", "bf16", torch.bfloat16),
                                            ("full", "bf16", torch.float32), ("lora", "no", torch.float32)):
        m = load_vlm(str(tmp_path), train_llm, precision)
        core = llava_core(m)
        assert {p.dtype for p in core.language_model.parameters()} == {llm_dtype}, (train_llm, precision)
        assert {p.dtype for p in core.vision_tower.parameters()} == {torch.float32}
        assert {p.dtype for p in core.multi_modal_projector.parameters()} == {torch.float32}


def test_qlora_backend_check_on_cpu(monkeypatch, caplog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU rule")
    check_qlora_backend()  # bitsandbytes >= 0.50: allowed, with a warning
    assert "qlora on a CPU" in caplog.text
    monkeypatch.setattr(bnb, "__version__", "0.45.0")
    with pytest.raises(ConfigError, match="bitsandbytes >= 0.50"):
        check_qlora_backend()


def test_report_build_from_model_llm_quantises_the_base(llm_dir):
    """The recipe path (`build_report_vlm`, what `ReportTask.build_model` calls) with ``model.train_llm=qlora`` and
    ``model.llm``: the language model's linear layers are nf4, the vision tower and projector are not, and only LoRA
    adapters (and the projector) train."""
    from mxr0.config.tasks import ReportModelConfig
    from mxr0.data.chat import train_chat_tokenizer
    from mxr0.models.report_vlm import build_report_vlm, check_report_config

    tok = train_chat_tokenizer(["the lungs are clear", "small left pleural effusion", "no pneumothorax"], vocab_size=280)
    c = ReportModelConfig(vision="", vision_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                    "mlp_ratio": 2, "patch_size": 14, "num_register_tokens": 1},
                          image_size=28, llm=str(llm_dir), train_llm="qlora", train_vision="frozen", max_length=256,
                          augment=False, cache_features=False)
    check_report_config(c)  # allowed on this CPU (bitsandbytes >= 0.50), with a warning
    model = build_report_vlm(c, tok, 28, N_IMAGE_TOKENS, gradient_checkpointing=False, mixed_precision="bf16")
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    # the base linear layers of the language model (under peft's LoRA wrappers where LoRA targets them)
    base = [n for n in kinds if "language_model" in n and "lora_" not in n and n.endswith(("_proj", "_proj.base_layer"))]
    assert len(base) >= 14 and all(kinds[n] == "Linear4bit" for n in base), {n: kinds[n] for n in base}
    assert not any(k == "Linear4bit" for n, k in kinds.items() if "vision_tower" in n or "multi_modal_projector" in n)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable), trainable


@pytest.mark.parametrize("compute_dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.05)])
def test_qlora_export_merges_into_the_dequantised_base(llm_dir, tmp_path, compute_dtype, tol):
    """The export (`merge_lora`) dequantises the nf4 base and merges the adapter into it, so the exported model
    computes what the trained QLoRA model computed (to the storage dtype's rounding) and loads with plain
    transformers, no bitsandbytes config; peft's merge into the 4-bit layers re-quantises and moves the logits."""
    from transformers import AutoModelForImageTextToText

    from mxr0.models.vlm import merge_lora

    model = _lora(quantise_language_model(_vlm(llm_dir), qlora_quantization_config(compute_dtype)), quantised=True)
    torch.manual_seed(4)
    for name, p in model.named_parameters():
        if ".lora_B." in name:  # a trained adapter (peft starts B at zero)
            p.data.normal_(0, 0.3)
    ids, px = _batch()
    with torch.no_grad():
        trained = model(input_ids=ids, pixel_values=px).logits.float()
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    requantised = copy.deepcopy(model).merge_and_unload()
    merged = merge_lora(model, tmp_path / "adapter")
    assert _linear_kinds(merged) == {"llm": {"Linear"}, "vision": {"Linear"}, "projector": {"Linear"},
                                     "lm_head": {"Linear"}}
    assert {p.dtype for p in llava_core(merged).language_model.parameters()} == {compute_dtype}
    merged.save_pretrained(tmp_path / "export", safe_serialization=True)
    back = AutoModelForImageTextToText.from_pretrained(tmp_path / "export")
    assert getattr(back.config, "quantization_config", None) is None and _linear_kinds(back) == _linear_kinds(merged)
    with torch.no_grad():
        ours = back(input_ids=ids, pixel_values=px).logits.float()
        peft_merge = requantised(input_ids=ids, pixel_values=px).logits.float()
    err, old_err = float((ours - trained).abs().max()), float((peft_merge - trained).abs().max())
    print(f"{compute_dtype}: max logit change, dequantised merge {err:.4f}, peft's 4-bit merge {old_err:.4f}")
    assert err < tol and err < old_err, (err, old_err)
