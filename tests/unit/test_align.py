"""mXR-0 alignment: losses against naive references, text handling, metrics, export round trip."""

from __future__ import annotations

import json
import os
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mxr0.data.text import normalise_text, sample_sentences, split_sentences, train_wordpiece_tokenizer
from mxr0.eval.align import (box_mask, cnr, grounding_metrics, merged_prompts, miou_over_thresholds, retrieval_metrics,
                             save_overlay, zero_shot_metrics)
from mxr0.losses.contrastive import ContrastiveLoss

REPO = Path(__file__).resolve().parents[2]


def _emb(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1)


# --- losses ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("local", [True, False])
def test_clip_loss_matches_naive_infonce(local):
    img, txt = _emb(6), _emb(6, seed=1)
    scale = torch.tensor(math.log(10.0))
    got = ContrastiveLoss("clip", local_loss=local)(img, txt, scale)
    logits = 10.0 * img @ txt.T
    ref = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert got["loss"].item() == pytest.approx(ref.item(), rel=1e-6)


def test_multi_positive_clip_loss():
    img, txt = _emb(3), _emb(6, seed=1)  # 2 texts per image, image-major
    got = ContrastiveLoss("clip")(img, txt, torch.tensor(0.0))["loss"]
    logits = img @ txt.T
    owner = torch.arange(6) // 2
    i2t = -torch.stack([F.log_softmax(logits[i], 0)[owner == i].mean() for i in range(3)]).mean()
    t2i = F.cross_entropy(logits.T, owner)
    assert got.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)


def test_siglip_loss_matches_formula():
    img, txt = _emb(4), _emb(4, seed=2)
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-3.0)
    got = ContrastiveLoss("siglip")(img, txt, scale, bias)["loss"]
    z = 2 * torch.eye(4) - 1
    ref = -F.logsigmoid(z * (10.0 * img @ txt.T - 3.0)).sum() / 4
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_loss_rejects_ragged_text_count():
    with pytest.raises(ValueError, match="texts per image"):
        ContrastiveLoss("clip")(_emb(3), _emb(4), torch.tensor(0.0))


# --- text ------------------------------------------------------------------------------------------
def test_split_sentences_handles_lists_glued_sentences_and_decimals():
    text = "1. Small right apical pneumothorax. 2. A 2.5 cm nodule in the left lung.Normal heart size."
    assert split_sentences(text) == ["Small right apical pneumothorax.", "A 2.5 cm nodule in the left lung.",
                                     "Normal heart size."]


def test_sample_sentences_keeps_at_least_one_and_is_seeded():
    s = ["a.", "b.", "c.", "d."]
    a = sample_sentences(s, np.random.default_rng(3), keep=0.5, shuffle=True)
    assert a == sample_sentences(s, np.random.default_rng(3), keep=0.5, shuffle=True)
    assert len(a.split()) == 2
    assert len(sample_sentences(s, np.random.default_rng(0), keep=0.01, shuffle=False).split()) == 1


def test_wordpiece_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    texts = ["There is a small left pleural effusion.", "No pneumothorax.", "Heart size is normal."] * 5
    tok = train_wordpiece_tokenizer(texts, vocab_size=200, save_dir=tmp_path)
    ids = tok("No pleural effusion.")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert again("No pleural effusion.")["input_ids"] == ids


def test_wordpiece_vocabulary_is_the_same_in_every_process():
    """HF's WordPiece trainer breaks ties in per-process hash order (different vocabularies on the same texts);
    ours must give the same tokens and ids in fresh interpreters with different hash seeds."""
    import subprocess
    import sys

    code = ("import json, random; from mxr0.data.text import train_wordpiece_tokenizer; r = random.Random(0); "
            "w = 'the heart size is normal small left pleural effusion no pneumothorax mild cardiomegaly'.split(); "
            "t = [' '.join(r.choice(w) for _ in range(r.randint(3, 20))) + '.' for _ in range(500)]; "
            "print(json.dumps(sorted(train_wordpiece_tokenizer(t, vocab_size=80).get_vocab().items())))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(outs) == 1 and len(json.loads(outs.pop())) > 30


# --- metrics ---------------------------------------------------------------------------------------
def test_retrieval_perfect_random_and_duplicates():
    e = _emb(50, d=64)
    texts = [f"report {i}" for i in range(50)]
    m = retrieval_metrics(e, e, texts)
    assert m["i2t_r1"] == 1.0 and m["t2i_r1"] == 1.0 and m["i2t_median_rank"] == 1.0
    rnd = retrieval_metrics(e, _emb(50, d=64, seed=9), texts)
    assert rnd["i2t_r5"] < 0.4 and rnd["chance_r5_i2t"] == pytest.approx(0.1)
    # two studies with the same normal report: one candidate, either image is right for it
    texts2 = ["No acute process."] * 2 + texts[2:]
    t = e.clone()
    t[1] = e[0]  # identical texts give identical embeddings
    m2 = retrieval_metrics(e, t, texts2)
    assert m2["n_unique_reports"] == 49 and m2["t2i_r1"] == 1.0
    assert normalise_text("No  acute\nProcess.") == normalise_text("no acute process.")


def test_zero_shot_auroc_from_a_fake_encoder():
    # image embeddings carry the label in dim 0; the prompt encoder maps "positive" prompts to +e0
    labels = [{"Pleural Effusion": 1 if i % 2 else 0, "Edema": -1} for i in range(20)]
    img = torch.zeros(20, 4)
    img[:, 0] = torch.tensor([1.0 if i % 2 else -1.0 for i in range(20)])
    img[:, 1] = 1.0
    img = F.normalize(img, dim=-1)

    def encode(texts):
        return F.normalize(torch.tensor([[-1.0 if t.startswith("no ") else 1.0, 1.0, 0, 0] for t in texts]), dim=-1)

    m = zero_shot_metrics(img, labels, encode, logit_scale=2.0)
    assert m["zeroshot_auroc/Pleural Effusion"] == 1.0
    assert "zeroshot_auroc/Edema" not in m  # only uncertain labels: skipped
    with pytest.raises(ValueError, match="unknown observation"):
        merged_prompts({"Effusion": {"positive": ["x"]}})


def test_box_mask_miou_and_cnr():
    mask = box_mask(np.array([[0.25, 0.25, 0.75, 0.75]]), 8)
    assert mask.sum() == 16 and mask[2:6, 2:6].all()
    sim = np.where(mask, 0.6, 0.0)
    assert miou_over_thresholds(sim, mask) == 1.0
    assert miou_over_thresholds(np.zeros((8, 8)), mask) == 0.0
    assert cnr(sim + np.random.default_rng(0).normal(0, 0.01, sim.shape), mask) > 10
    assert cnr(np.full((8, 8), 0.3), mask) == 0.0


def test_grounding_metrics_prefers_the_right_patches(tmp_path):
    # 4x4 patch grid; the phrase embedding equals the patches inside the box at the top left
    d = 6
    phrase = F.normalize(torch.ones(d), dim=0)
    patches = torch.zeros(1, 16, d)
    patches[0, :, 0], patches[0, :, 1] = 1.0, -1.0  # orthogonal to the phrase outside the box
    patches[0, [0, 1, 4, 5]] = phrase
    items = [{"row": 0, "phrase": "nodule", "boxes": np.array([[0.0, 0.0, 0.5, 0.5]]), "study_id": "s"}]
    m, maps = grounding_metrics(patches, (4, 4), 32, items, lambda texts: phrase[None].repeat(len(texts), 1))
    assert m["grounding_pointing"] == 1.0 and m["grounding_miou"] > 0.5 > m["grounding_baseline_miou"]
    out = save_overlay(tmp_path / "o.png", np.random.rand(3, 32, 32), maps[0], items[0]["boxes"], "nodule")
    from PIL import Image

    assert Image.open(out).size == (256, 256 + 28)


# --- export round trip -----------------------------------------------------------------------------
def test_export_loads_with_plain_transformers(phantom_small, tmp_path):
    from transformers import AutoModel, AutoProcessor

    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    recipe = load_recipe(REPO / "recipes/tiny/mxr0_align.yaml", [
        "data.source=records", f"data.path={phantom_small}", f"train.output_dir={tmp_path / 'run'}",
        "model.image_size=56", "model.loss=siglip", "model.texts_per_image=2", "model.patch_loss_weight=0.5",
        "model.vision_unlocked_layers=1", "model.text_unlocked_layers=0",
        "train.max_steps=3", "train.batch_size=8", "train.progress=false", "train.trackers=[jsonl]",
    ])
    result = train(recipe)
    for k in ("mean_r5", "zeroshot_mean_auroc", "grounding_miou", "grounding_baseline_miou"):
        assert math.isfinite(result["metrics"][k]), result["metrics"]
    export = Path(result["export_dir"])
    model = AutoModel.from_pretrained(str(export)).eval()
    assert type(model).__name__ == "VisionTextDualEncoderModel"
    processor = AutoProcessor.from_pretrained(str(export))
    settings = json.loads((export / "mxr0_align.json").read_text())
    assert settings["loss"] == "siglip" and isinstance(settings["logit_bias"], float)
    # plain-transformers embeddings equal the ones mxr0 evaluates
    from mxr0.models.dual_encoder import AlignModel

    px = torch.randn(2, 3, 56, 56)
    tok = processor.tokenizer(["No pleural effusion.", "Small left pneumothorax."], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = AlignModel(model)(pixel_values=px, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        hf_img = F.normalize(model.get_image_features(pixel_values=px).pooler_output, dim=-1)
        hf_txt = F.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
    torch.testing.assert_close(ours["image_embeds"], hf_img)
    torch.testing.assert_close(ours["text_embeds"], hf_txt)


def test_eval_align_cli_writes_metrics_and_overlays(phantom_small, tmp_path):
    from mxr0.cli import main
    from mxr0.config import load_recipe
    from mxr0.train.loop import train

    recipe = load_recipe(REPO / "recipes/tiny/mxr0_align.yaml", [
        "data.source=records", f"data.path={phantom_small}", f"train.output_dir={tmp_path / 'run'}",
        "model.image_size=56", "train.max_steps=2", "train.batch_size=8", "train.progress=false",
        "train.trackers=[jsonl]",
    ])
    export = train(recipe)["export_dir"]
    out = tmp_path / "eval"
    assert main(["eval", "align", "--model", export, "--data", str(phantom_small), "--split", "test",
                 "--out", str(out), "--overlays", "3"]) == 0
    metrics = json.loads((out / "align_metrics.json").read_text())
    assert {"i2t_r5", "t2i_median_rank", "zeroshot_mean_auroc", "grounding_cnr"} <= set(metrics)
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert "image → report" in (out / "align_metrics.md").read_text()


def test_config_errors_name_the_key():
    from mxr0.config import ConfigError, load_recipe
    from mxr0.tasks.align import AlignTask

    with pytest.raises(ConfigError, match="text_sections"):
        AlignTask(load_recipe(REPO / "recipes/tiny/mxr0_align.yaml", ["model.text_sections=[summary]"]))
    with pytest.raises(ConfigError, match="gather_with_grad"):
        AlignTask(load_recipe(REPO / "recipes/tiny/mxr0_align.yaml", ["model.gather_with_grad=false",
                                                                      "model.local_loss=false"]))
