"""XR-0 self-supervised pretraining: DINO + iBOT + KoLeo on a DINOv2-family encoder (DINOv2 recipe).

A student and an EMA teacher share one architecture, a Hugging Face ``Dinov2WithRegistersModel``
built from ``model.encoder_config`` or loaded from a path / Hub id for continued pretraining
(``facebook/dinov2-with-registers-base``, ``microsoft/rad-dino``, an XR-0 export), each with a DINO
head (and optionally a separate iBOT head). Per step:

1. the teacher (no gradients) sees the global crops in one forward pass; its CLS scores become the
   DINO targets and its patch scores at the student's masked positions the iBOT targets (centring
   or Sinkhorn-Knopp, teacher temperature warmed up linearly);
2. the student sees the global crops, with iBOT block masks, in one forward pass and all local
   crops in a second one (two resolutions cannot share a pass through HF's position-embedding
   interpolation); CLS tokens of all crops and the masked patch tokens go through the head in one
   call (one per head when the iBOT head is separate);
3. loss = w_dino · DINO(every student crop vs every other teacher crop) + w_koleo · KoLeo(student
   global CLS, per crop) + w_ibot · iBOT(masked patches);
4. after the optimiser step the teacher follows the student by EMA with a momentum that rises from
   ``momentum_teacher`` to ``final_momentum_teacher`` on a cosine.

Layer-wise learning-rate decay (and a lower rate for the patch embedding) is expressed as per-group
``lr_scale`` in `SSLTask.param_groups`; weight decay follows ``train.weight_decay`` →
``train.weight_decay_end`` (no decay on biases, norms, layer scales, tokens and position
embeddings); the prototype layer of each student head is frozen for the first
``freeze_last_layer_epochs``. All schedules are precomputed per step in `SSLTask.setup`.

Export: the teacher backbone as a Hugging Face folder (``AutoModel`` + ``AutoImageProcessor``, no
remote code) with ``ssl_heads.safetensors`` (teacher heads and loss centres) and
``ssl_heads.json`` beside it, so that ``model.encoder=<export>`` continues pretraining with the heads.

The pieces live below: the model, its build and export in `mxr0.models.ssl_meta_arch`, the multi-crop data in
`mxr0.data.ssl_dataset` / `mxr0.data.multicrop`, the evaluation in `mxr0.eval.ssl_monitor`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import SSLModelConfig
from mxr0.data.loading import load_split
from mxr0.data.multicrop import MultiCropDataset, collate_multicrop
from mxr0.data.ssl_dataset import image_paths, multicrop_views
from mxr0.data.transforms import ImageTransform
from mxr0.eval.ssl_monitor import ssl_metrics
from mxr0.eval.vision.features import StudyImages, collate_study_images
from mxr0.models.encoder import encoder_config
from mxr0.models.ssl_meta_arch import SSLMetaArch, build_ssl_model, export_ssl
from mxr0.optim import layerwise_param_groups, momentum_schedule, teacher_temp_schedule
from mxr0.tasks.base import CardInfo, Task
from mxr0.tasks.cards import ssl_card

log = logging.getLogger(__name__)


class SSLTask(Task):
    name = "ssl"
    ModelConfig = SSLModelConfig
    main_metric = "probe_mean_auroc"

    def __init__(self, recipe):
        super().__init__(recipe)
        c = self.cfg
        for name in ("global_crop_scale", "local_crop_scale", "mask_ratio", "gamma"):
            v = getattr(c, name)
            if len(v) != 2 or not 0 <= v[0] <= v[1]:
                raise ConfigError(f"model.{name}: expected [low, high] with 0 <= low <= high, got {v}")
        if c.mask_ratio[1] >= 1:
            raise ConfigError(f"model.mask_ratio: the upper bound must be < 1, got {c.mask_ratio}")
        for name in ("blur_prob", "solarize_prob"):
            if len(getattr(c, name)) != 3:
                raise ConfigError(f"model.{name}: expected 3 probabilities (first global, other globals, locals)")
        if c.dino_loss_weight <= 0:
            raise ConfigError("model.dino_loss_weight must be > 0 (the CLS objective drives the teacher)")
        self._transform = None
        self._patch = None
        self.accelerator = None
        self.teacher_temp: np.ndarray | None = None
        self.momentum: np.ndarray | None = None
        self.freeze_last_layer_steps = 0
        self._gallery = None

    # --- transform / sizes ----------------------------------------------------------------------
    @property
    def transform(self):
        """The evaluation / export transform: resize and centre-crop to ``global_crop_size``."""
        if self._transform is None:
            c = self.cfg
            if c.encoder:
                base = ImageTransform.from_pretrained(c.encoder)
                mean, std = base.mean, base.std
            else:
                mean, std = tuple(c.image_mean), tuple(c.image_std)
            self._transform = ImageTransform(size=c.global_crop_size, mean=mean, std=std)
        return self._transform

    def _patch_size(self) -> int:
        if self._patch is None:
            if self.cfg.encoder:
                p = encoder_config(self.cfg.encoder).patch_size  # any stage's export (see load_encoder)
            else:
                p = self.cfg.encoder_config.get("patch_size", 16)
            self._patch = int(p[0] if isinstance(p, (list, tuple)) else p)
        return self._patch

    # --- build --------------------------------------------------------------------------------
    def build_datasets(self):
        c, d = self.cfg, self.recipe.data
        p = self._patch_size()
        t = self.transform
        multicrop, masking = multicrop_views(c, p, t.mean, t.std)
        train_recs = load_split(d, d.train_split, d.max_train_studies)
        paths = image_paths(train_recs, d.views, c.all_images)
        if not paths:
            raise ConfigError(f"no training images of the views {d.views} in {d.path}")
        train = MultiCropDataset(paths, multicrop, masking, c.mask_probability, tuple(c.mask_ratio),
                                 seed=self.recipe.train.seed)
        self._gallery_records = train_recs[: c.eval_gallery_studies]
        eval_recs = load_split(d, d.eval_split, d.max_eval_studies)
        evald = StudyImages(eval_recs, t, views=d.views)
        log.info("SSL pretraining on %d images of %d studies; evaluation on %d studies", len(paths), len(train_recs),
                 len(evald))
        return train, evald

    def collate(self, items):
        if "global_crops" in items[0]:
            return collate_multicrop(items)
        return collate_study_images(items)

    def build_model(self) -> nn.Module:
        return build_ssl_model(self.cfg)

    def param_groups(self, model: SSLMetaArch) -> list[dict]:
        c = self.cfg
        return layerwise_param_groups(model.student, self.recipe.train.weight_decay, c.layerwise_decay,
                                      c.patch_embed_lr_mult)

    # --- schedules --------------------------------------------------------------------------
    def setup(self, total_steps: int, steps_per_epoch: int, accelerator) -> None:
        from accelerate.utils import DistributedType

        if getattr(accelerator, "distributed_type", None) == DistributedType.DEEPSPEED:
            raise ConfigError(
                "SSL pretraining does not run under DeepSpeed: DeepSpeed steps the optimiser inside backward (the "
                "last-layer freeze of the first epochs could not act), keeps the EMA teacher in the training "
                "precision (bf16 loses the small EMA updates), and under ZeRO-3 the teacher update would see "
                "parameter shards. Use DDP (accelerate_configs/ddp.yaml; a ViT-B fits one GPU) or FSDP "
                "(accelerate_configs/fsdp.yaml)")
        c = self.cfg
        self.accelerator = accelerator
        warm = int(round(c.warmup_teacher_temp_epochs * steps_per_epoch))
        self.teacher_temp = teacher_temp_schedule(total_steps, warm, c.warmup_teacher_temp, c.teacher_temp)
        self.momentum = momentum_schedule(total_steps, c.momentum_teacher, c.final_momentum_teacher)
        self.freeze_last_layer_steps = int(round(c.freeze_last_layer_epochs * steps_per_epoch))

    def _unwrap(self, model):
        return self.accelerator.unwrap_model(model) if self.accelerator is not None else model

    # --- train --------------------------------------------------------------------------------
    def training_step(self, model, batch):
        if self.teacher_temp is None:
            raise RuntimeError("SSLTask.setup was not called")
        step = int(self._unwrap(model).step)
        temp = float(self.teacher_temp[min(step, len(self.teacher_temp) - 1)])
        return model(global_crops=batch["global_crops"], local_crops=batch["local_crops"], masks=batch["masks"],
                     teacher_temp=temp)

    def before_optimizer_step(self, model, step: int) -> None:
        if step < self.freeze_last_layer_steps:
            for name, p in self._unwrap(model).student.named_parameters():
                if ".last_layer." in name:
                    p.grad = None

    def on_step_end(self, model, step: int, accelerator) -> None:
        m = self._unwrap(model)
        m.update_teacher(float(self.momentum[min(step, len(self.momentum) - 1)]))
        m.step.fill_(step + 1)

    # --- evaluate -----------------------------------------------------------------------------
    def evaluate(self, model, loader, accelerator) -> dict[str, float]:
        """Frozen-teacher quality on the evaluation split (`mxr0.eval.ssl_monitor.ssl_metrics`)."""
        if self._gallery is None:
            self._gallery = StudyImages(self._gallery_records, self.transform, views=self.recipe.data.views)
        gallery = torch.utils.data.DataLoader(self._gallery, batch_size=self.recipe.train.batch_size,
                                              collate_fn=self.collate)
        return ssl_metrics(self._unwrap(model).teacher["backbone"], loader, gallery, accelerator, self.cfg.eval_knn_k)

    # --- export -------------------------------------------------------------------------------
    def export(self, model, out_dir: Path, accelerator) -> None:
        if not accelerator.is_main_process:
            return
        export_ssl(model, self.transform, Path(out_dir))

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        return ssl_card(repo)
