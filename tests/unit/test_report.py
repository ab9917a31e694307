"""mXR-0 report generation: chat encoding, the HF-native VLM, LoRA export / merge / resume, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mxr0.config import ConfigError, load_recipe
from mxr0.data.chat import IMAGE_TOKEN, encode_example, study_messages, train_chat_tokenizer
from mxr0.train.loop import train

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes/tiny/mxr0_report.yaml"


def tiny_report(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "data.source=records", f"data.path={data}", f"train.output_dir={out}", "model.vision=", "model.image_size=56",
        "model.vision_config={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, mlp_ratio: 2, "
        "patch_size: 14, num_register_tokens: 2}",
        "model.llm_config={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
        "num_key_value_heads: 2}",
        "model.tokenizer_vocab_size=400", "model.cache_features=false", "model.augment=true", "model.eval_generate=4", "model.max_new_tokens=12", "model.max_length=256",
        "train.batch_size=8", "train.max_steps=4", "train.eval_every=0", "train.save_every=0", "train.progress=false",
        "train.trackers=[jsonl]", *extra,
    ]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = ["Findings: No pleural effusion.\nImpression: No acute process.",
             "Findings: Small left pleural effusion.\nImpression: Effusion."] * 20
    return train_chat_tokenizer(texts, vocab_size=300, save_dir=tmp_path_factory.mktemp("tok"))


def test_labels_cover_only_the_answer(tokenizer):
    msgs = study_messages({"indication": "Cough."}, ["frontal", "lateral"], "Write the report.", ["indication"])
    ids, labels = encode_example(tokenizer, msgs, "Findings: No pleural effusion.", n_image_tokens=5)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ids.count(image_id) == 10
    answer = [t for t in labels if t != -100]
    assert tokenizer.decode(answer).startswith("Findings: No pleural effusion.<|end|>")
    assert answer[-1] == tokenizer.eos_token_id
    first = labels.index(answer[0])
    assert all(t == -100 for t in labels[:first]) and image_id not in answer
    assert "Indication: Cough." in tokenizer.decode(ids[:first])
    with pytest.raises(ValueError, match="prompt alone"):
        encode_example(tokenizer, msgs, "x", n_image_tokens=5, max_length=12)


def test_qlora_needs_a_pretrained_llm(phantom_small, tmp_path):
    from mxr0.tasks.report import ReportTask

    pytest.importorskip("bitsandbytes", reason="the QLoRA backend check comes first")
    with pytest.raises(ConfigError, match="qlora quantises a pretrained LLM"):
        ReportTask(load_recipe(TINY, tiny_report(phantom_small, tmp_path, "model.train_llm=qlora")))


def test_length_grouped_sampler_is_seeded_and_groups_lengths():
    from mxr0.data.instruct import MixtureSampler

    lengths = list(torch.randint(10, 300, (400,), generator=torch.Generator().manual_seed(0)).tolist())
    s = MixtureSampler(["report"] * 400, {"report": 1.0}, seed=1, lengths=lengths, batch_size=8)
    a = list(s)
    assert sorted(a) == list(range(400)) and a == list(MixtureSampler(["report"] * 400, {"report": 1.0}, 1, lengths, 8))
    s.set_epoch(1)
    assert list(s) != a
    spread = [max(lengths[i] for i in a[k:k + 8]) - min(lengths[i] for i in a[k:k + 8]) for k in range(0, 400, 8)]
    assert sum(spread) / len(spread) < 40  # random batches spread ~230 tokens


@pytest.fixture(scope="module")
def lora_run(phantom_small, tmp_path_factory):
    """Stage 1 (projector only) then stage 2 (LoRA on the LLM from the stage-1 export)."""
    root = tmp_path_factory.mktemp("report")
    s1 = train(load_recipe(TINY, tiny_report(phantom_small, root / "s1", "model.train_llm=full",
                                             "model.train_vision=frozen")))
    s2 = train(load_recipe(TINY, tiny_report(phantom_small, root / "s2", f"model.init_from={s1['export_dir']}",
                                             "model.train_llm=lora", "model.lora_r=4", "model.lora_alpha=8",
                                             "model.train_vision=frozen", "train.max_steps=8", "train.save_every=4")))
    return root, s1, s2


def test_export_loads_with_plain_transformers_and_the_processor_matches(lora_run):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root, _, s2 = lora_run
    export = Path(s2["export_dir"])
    assert (export / "adapter" / "adapter_config.json").exists()
    model = AutoModelForImageTextToText.from_pretrained(str(export)).eval()
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not any("lora" in n for n, _ in model.named_parameters())
    processor = AutoProcessor.from_pretrained(str(export))
    settings = json.loads((export / "mxr0_report.json").read_text())
    # the processor's chat template + image-token expansion give the prompt mxr0 trains on
    msgs = study_messages({}, ["frontal"], settings["instruction"], [])
    ours, _ = encode_example(processor.tokenizer, msgs, None, settings["n_image_tokens"])
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    from PIL import Image

    image = Image.fromarray((torch.rand(64, 64) * 255).to(torch.uint8).numpy()).convert("RGB")
    theirs = processor(text=text, images=[image], return_tensors="pt")
    ids = theirs["input_ids"][0].tolist()
    if processor.tokenizer.bos_token_id is not None and ids[0] != processor.tokenizer.bos_token_id:
        ids = [processor.tokenizer.bos_token_id] + ids
    assert ids == ours
    assert theirs["pixel_values"].shape[-1] == 56


def test_answer_logits_only_give_the_full_loss_and_gradients(lora_run, phantom_small):
    """The training step's loss (`answer_forward`: logits from the first answer-predicting position on) equals the
    loss over the full logits, with the same gradients, on the plain stage-1 model and through peft's LoRA wrapper."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mxr0.data.records import read_records
    from mxr0.data.report_dataset import ChatCollator, ReportDataset
    from mxr0.generate import _config_from, load_vlm
    from mxr0.losses.answer import answer_forward, answer_logit_start, answer_token_loss

    root, s1, s2 = lora_run
    _, tok, transform, settings = load_vlm(s1["export_dir"])
    recs = [r for r in read_records(phantom_small, splits=["train"]) if r["anatomy"] == "chest"][:6]
    ds = ReportDataset(recs, tok, transform, _config_from(settings), settings["n_image_tokens"], train=False)
    batch = ChatCollator(tok.pad_token_id, "right")([ds[i] for i in range(len(ds))])
    start = answer_logit_start(batch["labels"])
    assert start > settings["n_image_tokens"]  # the image and the prompt never reach the LM head
    assert (batch["labels"][:, : start + 1] == -100).all() and (batch["labels"][:, start + 1] != -100).any()
    base = AutoModelForImageTextToText.from_pretrained(s1["export_dir"])
    peft = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(s1["export_dir"]),
                                     str(Path(s2["export_dir"]) / "adapter"), is_trainable=True)
    for model in (base, peft):
        model.eval()  # no dropout / drop path: both passes see the same network (gradients still flow)
        params = [p for p in model.parameters() if p.requires_grad]
        full = answer_token_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       pixel_values=batch["pixel_values"]).logits, batch["labels"])
        g_full = torch.autograd.grad(full, params, allow_unused=True)  # (DINOv2's mask token is unused)
        part = answer_forward(model, batch)
        g_part = torch.autograd.grad(part, params, allow_unused=True)
        torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-6)
        assert sum(g is not None for g in g_full) > len(params) // 2
        for a, b in zip(g_part, g_full):
            assert (a is None) == (b is None)
            if a is not None:  # float rounding only (other matmul shapes sum in another order): relative to the norm
                assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-7
    no_answer = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    assert answer_logit_start(no_answer["labels"]) == 0


def test_merged_export_generates_the_same_tokens_as_the_adapter_model(lora_run, phantom_small):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from mxr0.data.records import read_records
    from mxr0.generate import load_vlm
    from mxr0.models.decoding import generate_batch
    from mxr0.generate import _config_from
    from mxr0.data.report_dataset import ReportDataset

    root, s1, s2 = lora_run
    merged, tok, transform, settings = load_vlm(s2["export_dir"])
    base = AutoModelForImageTextToText.from_pretrained(s1["export_dir"]).eval()
    unmerged = PeftModel.from_pretrained(base, str(Path(s2["export_dir"]) / "adapter")).eval()
    recs = [r for r in read_records(phantom_small, splits=["test"]) if r["anatomy"] == "chest"][:4]
    ds = ReportDataset(recs, tok, transform, _config_from(settings), settings["n_image_tokens"], train=False,
                       with_answer=False)
    items = [ds[i] for i in range(len(ds))]
    a = generate_batch(merged, tok, items, max_new_tokens=12)
    b = generate_batch(unmerged, tok, items, max_new_tokens=12)
    assert a == b
    # and the adapter holds trained (non-initial) LoRA B matrices
    lora_b = [p for n, p in unmerged.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().max()) > 0 for p in lora_b)


def test_lora_resume_gives_the_same_adapter(lora_run, phantom_small):
    """A LoRA run stopped after its step-4 checkpoint (later state deleted, as a kill leaves it) and resumed
    ends with the uninterrupted run's adapter, bit for bit."""
    import shutil

    from safetensors.torch import load_file

    root, s1, s2 = lora_run
    run = root / "resumed"
    shutil.copytree(s2["run_dir"], run)
    shutil.rmtree(run / "checkpoints" / "step-00000008")
    shutil.rmtree(run / "export")
    common = [f"model.init_from={s1['export_dir']}", "model.train_llm=lora", "model.lora_r=4", "model.lora_alpha=8",
              "model.train_vision=frozen", "train.save_every=4", "train.max_steps=8"]
    resumed = train(load_recipe(TINY, tiny_report(phantom_small, run, *common)), resume="latest")
    assert resumed["state"]["step"] == 8
    a = load_file(str(Path(s2["export_dir"]) / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run / "export" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"adapter differs after resume: {k}")


def test_mxr0_export_of_a_checkpoint(lora_run):
    from transformers import AutoModelForImageTextToText

    from mxr0.cli import main

    root, _, s2 = lora_run
    out = root / "exported"
    assert main(["export", s2["run_dir"], "--checkpoint", "latest", "--out", str(out)]) == 0
    a = AutoModelForImageTextToText.from_pretrained(s2["export_dir"])
    b = AutoModelForImageTextToText.from_pretrained(str(out))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


def test_generate_split_resumes_and_generate_cli(lora_run, phantom_small, tmp_path, capsys):
    from mxr0.cli import main
    from mxr0.data.records import read_records

    _, _, s2 = lora_run
    recs = [r for r in read_records(phantom_small, splits=["test"]) if r["anatomy"] == "chest"][:5]
    out = tmp_path / "preds.jsonl"
    out.write_text(json.dumps({"study_id": recs[0]["study_id"], "report": "kept"}) + "\n" + '{"study_id": "tru')
    refs = tmp_path / "refs.jsonl"
    assert main(["generate", "--model", s2["export_dir"], "--data", str(phantom_small), "--split", "test",
                 "--limit", "5", "--out", str(out), "--batch-size", "2", "--max-new-tokens", "8",
                 "--write-refs", str(refs)]) == 0
    ref_rows = [json.loads(line) for line in refs.read_text().splitlines()]
    assert [r["study_id"] for r in ref_rows] == [r["study_id"] for r in recs]
    assert ref_rows[0]["report"].startswith("Findings:") or ref_rows[0]["report"].startswith("Impression:")
    assert main(["eval", "reports", "--pred", str(out), "--ref", str(refs), "--metrics", "nlg", "--bootstrap", "0"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["study_id"] for r in rows] == [r["study_id"] for r in recs]
    assert rows[0]["report"] == "kept"
    assert main(["generate", "--model", s2["export_dir"], "--image", recs[1]["images"][0]["path"],
                 "--max-new-tokens", "6"]) == 0


def test_lora_with_gradient_checkpointing_trains_the_adapter(phantom_small, tmp_path):
    from safetensors.torch import load_file

    run = train(load_recipe(TINY, tiny_report(phantom_small, tmp_path / "gc", "model.train_llm=lora", "model.lora_r=4",
                                              "model.train_vision=lora", "train.gradient_checkpointing=true",
                                              "model.eval_generate=0", "train.max_steps=3")))
    adapter = load_file(str(Path(run["export_dir"]) / "adapter" / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert any("vision_tower" in k for k in lora_b) and any("language_model" in k for k in lora_b)
    assert all(float(v.abs().max()) > 0 for v in lora_b.values())  # B starts at zero: every one was trained


def test_cached_frozen_features_train_like_the_images(phantom_small, tmp_path):
    """With the encoder frozen and no augmentation, caching its features changes nothing but speed."""
    from safetensors.torch import load_file

    common = ["model.train_vision=frozen", "model.augment=false", "model.eval_generate=2", "train.max_steps=3"]
    a = train(load_recipe(TINY, tiny_report(phantom_small, tmp_path / "plain", *common)))
    b = train(load_recipe(TINY, tiny_report(phantom_small, tmp_path / "cached", *common, "model.cache_features=true")))
    assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-4)
    wa, wb = (load_file(str(Path(r["export_dir"]) / "model.safetensors")) for r in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5, msg=k)
    with pytest.raises(ConfigError, match="cache_features"):
        from mxr0.tasks.report import ReportTask

        ReportTask(load_recipe(TINY, tiny_report(phantom_small, tmp_path / "x", "model.cache_features=true",
                                                 "model.augment=true")))
