"""Tiny untrained exports built with the project's own builders, for the serving and pipeline tests
(tests/unit/test_serve.py, tests/unit/test_pipeline.py): a report / instruction VLM, a dual encoder and a
finding classifier, and synthetic PNG X-rays. The VLM's output layer never picks a special token (its rows are
zeroed), so untrained answers are visible text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel, Dinov2WithRegistersForImageClassification

from mxr0.config.tasks import ReportModelConfig
from mxr0.data.chat import IMAGE_TOKEN, special_token_ids, train_chat_tokenizer
from mxr0.data.text import train_wordpiece_tokenizer
from mxr0.data.transforms import ImageTransform
from mxr0.models.dual_encoder import AlignModel, build_dual_encoder, save_align_export
from mxr0.models.encoder import new_encoder
from mxr0.models.vlm import build_vlm, image_token_count, save_vlm_export, tiny_causal_lm
from mxr0.serve.images import png_bytes

VISION = dict(patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              num_register_tokens=2)
SIZE = 32
TEXTS = ["Findings: no pleural effusion.", "Findings: mild cardiomegaly.", "the lungs are clear",
         "small left pleural effusion", "Impression: no pneumothorax.", "heart size is normal [0.25, 0.30, 0.50, 0.75]",
         "Locate this finding: effusion.", "Is there a pleural effusion? yes no"] * 4


def tower(seed: int):
    """A small DINOv2-with-registers encoder, slightly perturbed from its initialisation."""
    torch.manual_seed(seed)
    enc = new_encoder(SIZE, **VISION)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc.eval()


def transform():
    """The exports' image transform (32 px)."""
    return ImageTransform(size=SIZE, mean=(0.45, 0.45, 0.45), std=(0.25, 0.25, 0.25))


def tiny_vlm_export(out: Path, tok_dir: Path) -> Path:
    """A report / VQA / grounding VLM export (max_new_tokens 10, short answers 6) in ``out``."""
    tok = train_chat_tokenizer(TEXTS, vocab_size=300, save_dir=tok_dir)
    torch.manual_seed(3)
    lm = tiny_causal_lm(len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, hidden_size=32,
                        intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                        max_position_embeddings=200, tie_word_embeddings=False)
    with torch.no_grad():  # untrained, but never a special token: answers are visible text
        lm.lm_head.weight[sorted(special_token_ids(tok))] = 0.0
        lm.lm_head.weight.mul_(20.0)  # sharp logits: greedy choices are far from ties
    vlm = build_vlm(tower(3), lm, tok.convert_tokens_to_ids(IMAGE_TOKEN), SIZE)
    cfg = ReportModelConfig(tasks={"report": 1.0, "vqa": 1.0, "grounding": 1.0}, max_new_tokens=10,
                            max_new_tokens_short=6)
    save_vlm_export(vlm, tok, transform(), out, cfg, image_token_count(vlm.config.vision_config, SIZE, "default"))
    return out


def tiny_align_export(out: Path, tok_dir: Path) -> Path:
    """A dual-encoder export (CLIP loss) in ``out``."""
    tok = train_wordpiece_tokenizer(TEXTS, vocab_size=80, save_dir=tok_dir)
    torch.manual_seed(2)
    text = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64))
    dual = build_dual_encoder(tower(2), text, projection_dim=16, logit_scale_init=2.6592)
    save_align_export(AlignModel(dual), tok, transform(), out, {"loss": "clip"})
    return out


def tiny_classifier_export(out: Path) -> Path:
    """A 3-finding multi-label classifier export in ``out``."""
    cfg = tower(1).config
    cfg.num_labels = 3
    cfg.id2label = {0: "Cardiomegaly", 1: "Pleural Effusion", 2: "Pneumothorax"}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    cfg.problem_type = "multi_label_classification"
    torch.manual_seed(1)
    clf = Dinov2WithRegistersForImageClassification(cfg)
    clf.save_pretrained(out, safe_serialization=True)
    transform().save_pretrained(out)
    return out


def xray_png(seed: int, h: int = 48, w: int = 40) -> bytes:
    """A synthetic grey image (a ramp plus noise) as PNG bytes."""
    g = np.random.default_rng(seed)
    img = np.clip(np.linspace(0, 1, w)[None, :] * 0.5 + g.random((h, w)) * 0.5, 0, 1).astype(np.float32)
    return png_bytes(img)
