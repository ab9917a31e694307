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

The pieces live below: the model, its build and export in `mxr0.models.dual_encoder`, the data in
`mxr0.data.align_dataset`, the tokenizer in `mxr0.data.task_tokenizers`, the metrics in `mxr0.eval.align`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import AlignModelConfig
from mxr0.data.align_dataset import AlignDataset, TextCollator
from mxr0.data.loading import load_split
from mxr0.data.prompts import merged_prompts
from mxr0.data.task_tokenizers import align_tokenizer
from mxr0.data.text import REPORT_SECTIONS
from mxr0.data.transforms import ImageTransform
from mxr0.eval.align import alignment_metrics
from mxr0.losses.contrastive import ContrastiveLoss
from mxr0.models.dual_encoder import build_align_model, make_text_encoder, save_align_export
from mxr0.tasks.base import CardInfo, Task
from mxr0.tasks.cards import align_card

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
    def build_datasets(self):
        d, c = self.recipe.data, self.cfg
        train_recs = load_split(d, d.train_split, d.max_train_studies)
        eval_recs = load_split(d, d.eval_split, d.max_eval_studies)
        self.tokenizer = align_tokenizer(c, train_recs, Path(self.recipe.train.output_dir) / "tokenizer")
        limit = getattr(self.tokenizer, "model_max_length", None)
        if limit and limit < 1_000_000:
            self.max_length = min(self.max_length, int(limit))
        train = AlignDataset(train_recs, self.transform, c.text_sections, d.views, train=True, augment=c.augment,
                             sentence_keep=c.sentence_keep, shuffle=c.shuffle_sentences, texts_per_image=c.texts_per_image,
                             seed=self.recipe.train.seed)
        self.eval_ds = AlignDataset(eval_recs, self.transform, c.text_sections, d.views)
        self.collate = TextCollator(self.tokenizer, self.max_length)
        return train, self.eval_ds

    def build_model(self) -> nn.Module:
        if self.tokenizer is None:
            raise RuntimeError("build_datasets must run before build_model (the tokenizer sizes the text tower)")
        model, self.max_length = build_align_model(self.cfg, self.tokenizer, self.max_length)
        self.collate = TextCollator(self.tokenizer, self.max_length)
        return model

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
        return align_card(repo)
