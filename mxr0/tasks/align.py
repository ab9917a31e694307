"""mXR-0 alignment: contrastive image–report training of a dual encoder.

The model is Hugging Face's ``VisionTextDualEncoderModel``: a DINOv2-family vision tower (our XR-0
export, ``microsoft/rad-dino``, … or a new ViT from a config) and a BERT-like text tower (a Hub id such
as ``microsoft/BiomedVLP-CXR-BERT-general``, or a tiny BERT from a config with a WordPiece tokenizer
trained on the training reports), each with a linear projection. The loss (CLIP InfoNCE with a learnable
temperature, or SigLIP) is computed on features gathered across ranks with gradient
(`mxr0.losses.contrastive`), so N processes train exactly like one with the N-fold batch.

Text augmentation: sentences of the chosen sections are sub-sampled and shuffled per sample and epoch;
with ``texts_per_image > 1`` each image gets that many single-sentence positives (multi-positive
InfoNCE). The export is a Hugging Face folder (model, tokenizer, image-processor config) plus
``mxr0_align.json`` (loss, SigLIP bias, text settings, prompts); `mxr0 eval align` evaluates it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import AlignModelConfig
from mxr0.data.align_dataset import AlignDataset, TextCollator  # noqa: F401 (moved; re-exported)
from mxr0.data.loading import load_split
from mxr0.data.prompts import merged_prompts
from mxr0.data.text import REPORT_SECTIONS, cached_tokenizer, report_text, text_fingerprint, train_wordpiece_tokenizer
from mxr0.data.transforms import ImageTransform
from mxr0.eval.align import alignment_metrics
from mxr0.losses.contrastive import ContrastiveLoss
from mxr0.models.dual_encoder import (
    AlignModel,
    build_dual_encoder,
    default_logit_scale,
    make_text_encoder,  # noqa: F401 (moved; re-exported)
    set_unlocked,
)
from mxr0.models.encoder import load_encoder, new_encoder
from mxr0.tasks.base import CardInfo, Task

log = logging.getLogger(__name__)


class AlignTask(Task):
    name = "align"
    ModelConfig = AlignModelConfig
    main_metric = "mean_r5"

    def __init__(self, recipe):
        super().__init__(recipe)

        c = self.cfg
        bad = [s for s in c.text_sections if s not in REPORT_SECTIONS]
        if bad or not c.text_sections:
            raise ConfigError(f"model.text_sections: {c.text_sections} must be a non-empty list of {list(REPORT_SECTIONS)}")
        if c.texts_per_image < 1:
            raise ConfigError(f"model.texts_per_image={c.texts_per_image}: must be at least 1")
        if not 0 < c.sentence_keep <= 1:
            raise ConfigError(f"model.sentence_keep={c.sentence_keep}: must be in (0, 1]")
        if not c.gather_with_grad and not c.local_loss:
            raise ConfigError("model.gather_with_grad=false needs model.local_loss=true (without gradient through "
                              "the gather, a full loss on every rank trains only on local pairs)")
        try:
            self.prompts = merged_prompts(c.zero_shot_prompts)
        except ValueError as e:
            raise ConfigError(f"model.zero_shot_prompts: {e}") from None
        self._transform = None
        self.tokenizer = None
        self.max_length = c.max_text_length

        self.loss = ContrastiveLoss(c.loss, local_loss=c.local_loss, gather_with_grad=c.gather_with_grad,
                                    token_temperature=c.patch_temperature)
        self.eval_ds: AlignDataset | None = None

    @property
    def transform(self):

        if self._transform is None:
            c = self.cfg
            self._transform = ImageTransform.for_encoder(c.vision, c.image_size, c.image_mean, c.image_std)
        return self._transform

    # --- build ---------------------------------------------------------------------------------
    def _build_tokenizer(self, train_records: list[dict]):

        c = self.cfg
        if c.tokenizer or c.text:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(c.tokenizer or c.text)
        else:
            texts = [t for t in (report_text(r, c.text_sections) for r in train_records) if t]
            # trained once per run folder and shared by every rank (and a resumed run): see cached_tokenizer
            tok = cached_tokenizer(Path(self.recipe.train.output_dir) / "tokenizer",
                                   text_fingerprint(texts, c.tokenizer_vocab_size, c.max_text_length),
                                   lambda: train_wordpiece_tokenizer(texts, c.tokenizer_vocab_size, c.max_text_length))
            log.info("trained a WordPiece tokenizer of %d tokens on %d training reports", len(tok), len(texts))
        limit = getattr(tok, "model_max_length", None)
        if limit and limit < 1_000_000:
            self.max_length = min(self.max_length, int(limit))
        return tok

    def build_datasets(self):
        d, c = self.recipe.data, self.cfg
        train_recs = load_split(d, d.train_split, d.max_train_studies)
        eval_recs = load_split(d, d.eval_split, d.max_eval_studies)
        self.tokenizer = self._build_tokenizer(train_recs)
        train = AlignDataset(train_recs, self.transform, c.text_sections, d.views, train=True, augment=c.augment,
                             sentence_keep=c.sentence_keep, shuffle=c.shuffle_sentences, texts_per_image=c.texts_per_image,
                             seed=self.recipe.train.seed)
        self.eval_ds = AlignDataset(eval_recs, self.transform, c.text_sections, d.views)
        self.collate = TextCollator(self.tokenizer, self.max_length)
        return train, self.eval_ds

    def build_model(self) -> nn.Module:

        c = self.cfg
        if self.tokenizer is None:
            raise RuntimeError("build_datasets must run before build_model (the tokenizer sizes the text tower)")
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
                cfg = BertConfig(vocab_size=len(self.tokenizer), pad_token_id=self.tokenizer.pad_token_id,
                                 **{"max_position_embeddings": max(self.max_length, 64), **c.text_config})
            except TypeError as e:
                raise ConfigError(f"model.text_config: {e}") from e
            text = BertModel(cfg)
        max_pos = getattr(text.config, "max_position_embeddings", None)
        if max_pos:
            self.max_length = min(self.max_length, int(max_pos))
            self.collate = TextCollator(self.tokenizer, self.max_length)
        if len(self.tokenizer) > text.config.vocab_size:
            raise ConfigError(f"the tokenizer has {len(self.tokenizer)} tokens but the text tower's vocabulary has "
                              f"{text.config.vocab_size}; use the tower's own tokenizer (model.tokenizer)")
        scale = c.logit_scale_init if c.logit_scale_init is not None else default_logit_scale(c.loss)
        dual = build_dual_encoder(vision, text, c.projection_dim, scale)
        nv = set_unlocked(dual.vision_model, c.vision_unlocked_layers, ("layernorm",))
        nt = set_unlocked(dual.text_model, c.text_unlocked_layers, ("pooler",))
        log.info("trainable: vision tower %.2fM, text tower %.2fM parameters", nv / 1e6, nt / 1e6)
        return AlignModel(dual, siglip_bias=c.logit_bias_init if c.loss == "siglip" else None)

    # --- train ---------------------------------------------------------------------------------
    def training_step(self, model, batch):
        w = self.cfg.patch_loss_weight
        out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    with_patches=w > 0)
        losses = self.loss(out["image_embeds"], out["text_embeds"], out["logit_scale"], out.get("logit_bias"))
        if w > 0:
            local = self.loss(out["patch_embeds"], out["text_embeds"], out["logit_scale"], out.get("logit_bias"))
            losses["loss_global"] = losses["loss"].detach()
            losses["loss_patch"] = local["loss"].detach()
            losses["loss"] = losses["loss"] + w * local["loss"]
        losses["logit_scale"] = out["logit_scale"].detach().float().exp()
        return losses

    # --- evaluate ------------------------------------------------------------------------------
    def evaluate(self, model, loader, accelerator):

        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("image", "text", "patch", "index", "hw")}
        for batch in loader:
            out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"], with_patches=True)
            g = accelerator.gather_for_metrics((out["image_embeds"], out["text_embeds"], out["patch_embeds"],
                                                batch["index"], batch["orig_hw"]))
            for k, v in zip(parts, g):
                parts[k].append(v.cpu())
        cat = {k: torch.cat(v) for k, v in parts.items()}
        order = torch.argsort(cat["index"])
        cat = {k: v[order] for k, v in cat.items()}
        dual = accelerator.unwrap_model(model).dual
        ds = self.eval_ds
        p = self.transform.size // int(np.ravel(dual.vision_model.config.patch_size)[0])
        metrics, _ = alignment_metrics(
            cat["image"], cat["text"], cat["patch"], (p, p), self.transform.size, ds.records, ds.texts, ds.image_index,
            cat["hw"].numpy(), self.transform, make_text_encoder(dual, self.tokenizer, self.max_length),
            float(dual.logit_scale.detach()), self.prompts)
        return metrics

    # --- export --------------------------------------------------------------------------------
    def export(self, model, out_dir: Path, accelerator):
        if not accelerator.is_main_process:
            return
        save_align_export(model, self.tokenizer, self.transform, Path(out_dir), {
            "loss": self.cfg.loss, "text_sections": list(self.cfg.text_sections), "max_text_length": self.max_length,
            "zero_shot_prompts": self.cfg.zero_shot_prompts,
        })

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        return CardInfo("zero-shot-image-classification",
                        "a contrastive image–report dual encoder (retrieval, zero-shot classification)", f'''```python
import torch
from PIL import Image
from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

repo = "{repo}"
model = VisionTextDualEncoderModel.from_pretrained(repo).eval()
processor = VisionTextDualEncoderProcessor.from_pretrained(repo)

image = Image.open("chest_xray.png").convert("RGB")
texts = ["No pleural effusion.", "Large right pleural effusion."]
inputs = processor(text=texts, images=image, return_tensors="pt", padding=True)
with torch.no_grad():
    out = model(**inputs)
print(out.logits_per_image.softmax(dim=-1))  # zero-shot: which text fits the image best
```

`mxr0_align.json` holds the training loss, the report sections used as text, the zero-shot prompts
and the logit bias (sigmoid loss).''')


def save_align_export(model: nn.Module, tokenizer, transform, out_dir: Path, settings: dict) -> None:
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
