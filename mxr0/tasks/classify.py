"""Multi-label finding classification on a DINOv2-family encoder (CheXpert observations).

The model is Hugging Face's ``Dinov2WithRegistersForImageClassification`` (or the class that fits a
pretrained checkpoint, through ``AutoModelForImageClassification``): a linear head on the CLS token
concatenated with the mean patch token (registers excluded). It is built from a config or loaded from
a path / Hub id (our XR-0 export, ``microsoft/rad-dino``, ``facebook/dinov2-with-registers-base``),
trained frozen (linear probe) or fine-tuned, and exported as a folder that loads with
``AutoModelForImageClassification`` and ``AutoImageProcessor`` without remote code.

Label policy (CheXpert convention, named in every metrics file): uncertain (-1) → ``uncertain``
(``ones``: U-Ones, ``zeros``: U-Zeros, ``ignore``: masked out of loss and metrics); not mentioned
(None) → ``blank`` (``zeros`` or ``ignore``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import ClassifyModelConfig
from mxr0.data.classify_dataset import StudyImageDataset
from mxr0.data.loading import load_split
from mxr0.data.records import CHEXPERT_LABELS
from mxr0.data.transforms import ImageTransform
from mxr0.eval.classify import auroc_table
from mxr0.losses.bce import masked_bce
from mxr0.tasks.base import CardInfo, Task
from mxr0.tasks.cards import classify_card

log = logging.getLogger(__name__)


class ClassifyTask(Task):
    name = "classify"
    ModelConfig = ClassifyModelConfig
    main_metric = "mean_auroc"

    def __init__(self, recipe):
        super().__init__(recipe)
        self._transform = None
        self.labels: list[str] = list(self.cfg.labels)
        bad = [name for name in self.labels if name not in CHEXPERT_LABELS]
        if bad:
            raise ConfigError(f"model.labels: unknown observation(s) {bad}; valid: {list(CHEXPERT_LABELS)}")

    # --- image transform: from the encoder's processor config, or the recipe for a new encoder ---
    @property
    def transform(self):

        if self._transform is None:
            c = self.cfg
            self._transform = ImageTransform.for_encoder(c.encoder, c.image_size, c.image_mean, c.image_std)
        return self._transform

    def build_datasets(self):
        d = self.recipe.data
        train_recs = load_split(d, d.train_split, d.max_train_studies)
        eval_recs = load_split(d, d.eval_split, d.max_eval_studies)
        if not self.labels:
            self.labels = [name for name in CHEXPERT_LABELS if self._has_both_classes(train_recs, name)]
            log.info("classifying %d observations found in the training split: %s", len(self.labels), self.labels)
        if not self.labels:
            raise ConfigError("no observation has both positive and negative studies in the training split; set model.labels")
        c = self.cfg
        train = StudyImageDataset(train_recs, self.labels, self.transform, c.uncertain, c.blank, d.views, c.augment,
                                  seed=self.recipe.train.seed)
        evald = StudyImageDataset(eval_recs, self.labels, self.transform, c.uncertain, c.blank, d.views, False)
        return train, evald

    def _has_both_classes(self, records: list[dict], name: str) -> bool:
        vals = {r["labels"][name] for r in records}
        pos = 1 in vals or (-1 in vals and self.cfg.uncertain == "ones")
        neg = 0 in vals or (None in vals and self.cfg.blank == "zeros") or (-1 in vals and self.cfg.uncertain == "zeros")
        return pos and neg

    def build_model(self) -> nn.Module:
        from transformers import AutoModelForImageClassification, Dinov2WithRegistersConfig

        c = self.cfg
        kwargs = dict(
            num_labels=len(self.labels),
            id2label=dict(enumerate(self.labels)),
            label2id={n: i for i, n in enumerate(self.labels)},
            problem_type="multi_label_classification",
        )
        if c.encoder:
            model = AutoModelForImageClassification.from_pretrained(c.encoder, ignore_mismatched_sizes=True, **kwargs)
        else:
            from transformers import Dinov2WithRegistersForImageClassification

            try:
                config = Dinov2WithRegistersConfig(image_size=c.image_size, **c.encoder_config, **kwargs)
            except TypeError as e:
                raise ConfigError(f"model.encoder_config: {e}") from e
            model = Dinov2WithRegistersForImageClassification(config)
        for name, p in model.named_parameters():
            # The mask token serves masked-image pretraining only; left trainable it would get no
            # gradient, which DDP rejects as an unused parameter.
            if name.endswith("mask_token") or (c.freeze_encoder and not name.startswith("classifier")):
                p.requires_grad_(False)
        return model

    def training_step(self, model, batch):
        logits = model(pixel_values=batch["pixel_values"]).logits
        return {"loss": masked_bce(logits, batch["labels"], batch["label_mask"])}

    def evaluate(self, model, loader, accelerator):
        scores, targets, masks, losses = [], [], [], []
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
            logits, y, m = accelerator.gather_for_metrics((logits, batch["labels"], batch["label_mask"]))
            losses.append(masked_bce(logits, y, m).item() * len(y))
            scores.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(y.cpu().numpy())
            masks.append(m.cpu().numpy())
        s, y, m = (np.concatenate(a) for a in (scores, targets, masks))
        out = auroc_table(s, y, m, self.labels)
        out["loss"] = float(np.sum(losses) / max(len(y), 1))
        return out

    def export(self, model, out_dir: Path, accelerator):
        if not accelerator.is_main_process:
            return
        out_dir = Path(out_dir)
        model.save_pretrained(out_dir, safe_serialization=True)
        self.transform.save_pretrained(out_dir)
        policy = {"labels": self.labels, "uncertain": self.cfg.uncertain, "blank": self.cfg.blank}
        (out_dir / "mxr0_labels.json").write_text(json.dumps(policy, indent=2))

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        return classify_card(repo)
