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
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import SSLModelConfig
from mxr0.data.loading import load_split
from mxr0.data.multicrop import BlockMasking, MultiCrop, MultiCropDataset, collate_multicrop
from mxr0.data.transforms import ImageTransform
from mxr0.eval.vision.features import StudyImages, collate_study_images, encode_loader
from mxr0.eval.vision.knn import knn_classify
from mxr0.eval.vision.probe import quick_probe
from mxr0.models.encoder import encoder_config, load_encoder, new_encoder
from mxr0.models.ssl_meta_arch import SSLMetaArch
from mxr0.optim import layerwise_param_groups, momentum_schedule, teacher_temp_schedule
from mxr0.tasks.base import CardInfo, Task

log = logging.getLogger(__name__)

HEADS_FILE = "ssl_heads.safetensors"
HEADS_META = "ssl_heads.json"


# ---------------------------------------------------------------------------------------------
# The student / teacher model
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Parameter groups (layer-wise decay), schedules
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------


def _image_paths(records: list[dict], views: list[str] | None, all_images: bool) -> list[str]:
    paths = []
    for r in records:
        for im in r["images"]:
            if im.get("role", "current") != "current" or (views is not None and im["view"] not in views):
                continue
            paths.append(im["path"])
            if not all_images:
                break
    return paths


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
        for name in ("global_crop_size", "local_crop_size"):
            if getattr(c, name) % p:
                raise ConfigError(f"model.{name}={getattr(c, name)} is not a multiple of the patch size {p}")
        t = self.transform
        multicrop = MultiCrop(
            global_size=c.global_crop_size, local_size=c.local_crop_size, n_global=2, n_local=c.n_local_crops,
            global_scale=tuple(c.global_crop_scale), local_scale=tuple(c.local_crop_scale), flip_prob=c.flip_prob,
            intensity_prob=c.intensity_prob, brightness=c.brightness, contrast=c.contrast, gamma=tuple(c.gamma),
            blur_prob=tuple(c.blur_prob), solarize_prob=tuple(c.solarize_prob), noise_prob=c.noise_prob,
            noise_std=c.noise_std, mean=t.mean, std=t.std, channels=3,
        )
        grid = c.global_crop_size // p
        masking = BlockMasking(grid) if c.ibot_loss_weight > 0 else None
        train_recs = load_split(d, d.train_split, d.max_train_studies)
        paths = _image_paths(train_recs, d.views, c.all_images)
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

        c = self.cfg
        if c.encoder:
            try:
                backbone = load_encoder(c.encoder, c.num_register_tokens, drop_path_rate=c.drop_path_rate)
            except (OSError, ValueError) as e:
                raise ConfigError(f"model.encoder={c.encoder!r}: {e}") from e
        else:
            kwargs = dict(c.encoder_config)
            kwargs["drop_path_rate"] = c.drop_path_rate
            if c.num_register_tokens is not None:
                kwargs["num_register_tokens"] = c.num_register_tokens
            kwargs.setdefault("num_register_tokens", 4)
            try:
                backbone = new_encoder(image_size=c.global_crop_size, **kwargs)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"model.encoder_config: {e}") from e
        model = SSLMetaArch(backbone, c)
        if c.encoder and c.load_heads:
            self._load_heads(model, Path(c.encoder))
        model.sync_teacher()
        return model

    def _load_heads(self, model: SSLMetaArch, folder: Path) -> None:
        from safetensors.torch import load_file

        f = folder / HEADS_FILE
        if not f.is_file():
            log.info("no %s in %s: the DINO / iBOT heads start fresh", HEADS_FILE, folder)
            return
        state = load_file(str(f))
        heads = {k: v for k, v in state.items() if not k.startswith("loss.")}
        own = {k: v for k, v in model.student.state_dict().items() if not k.startswith("backbone.")}
        if {k: tuple(v.shape) for k, v in heads.items()} != {k: tuple(v.shape) for k, v in own.items()}:
            log.warning("%s does not match this recipe's heads (prototypes, widths or iBOT head differ): "
                        "the heads start fresh", f)
            return
        model.student.load_state_dict(heads, strict=False)
        for name, loss in (("dino", model.dino_loss), ("ibot", model.ibot_loss)):
            c = state.get(f"loss.{name}_center")
            if c is not None and c.shape == loss.center.shape:
                loss.center.copy_(c)
        log.info("continued pretraining: heads and centres loaded from %s", f)

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
        """Frozen-teacher quality on the evaluation split: kNN anatomy accuracy against a gallery of
        training studies, linear-probe mean AUROC on chest findings, and a collapse indicator."""

        m = self._unwrap(model)
        backbone = m.teacher["backbone"]
        q = encode_loader(backbone, loader, accelerator=accelerator)
        if self._gallery is None:
            self._gallery = StudyImages(self._gallery_records, self.transform, views=self.recipe.data.views)
        gl = torch.utils.data.DataLoader(self._gallery, batch_size=self.recipe.train.batch_size,
                                         collate_fn=self.collate)
        g = encode_loader(backbone, gl, device=accelerator.device)
        out: dict[str, float] = {}
        anat = sorted(set(g["anatomy"]) | set(q["anatomy"]))
        gy = np.array([anat.index(a) for a in g["anatomy"]])
        qy = np.array([anat.index(a) for a in q["anatomy"]])
        if len(set(gy)) > 1:
            pred, _ = knn_classify(g["cls"], gy, q["cls"], k=self.cfg.eval_knn_k, n_classes=len(anat))
            out["knn_anatomy_acc"] = float((pred == qy).mean())
        feats_g = np.concatenate([g["cls"], g["mean_patch"]], 1)
        feats_q = np.concatenate([q["cls"], q["mean_patch"]], 1)
        probe = quick_probe(feats_g, g["labels"], g["label_mask"], feats_q, q["labels"], q["label_mask"],
                            chest=(np.array(g["anatomy"]) == "chest", np.array(q["anatomy"]) == "chest"))
        if probe is not None:
            out["probe_mean_auroc"] = probe
        z = q["cls"] / np.linalg.norm(q["cls"], axis=1, keepdims=True).clip(1e-12)
        out["feature_std"] = float(z.std(axis=0).mean() * math.sqrt(z.shape[1]))
        return out

    # --- export -------------------------------------------------------------------------------
    def export(self, model, out_dir: Path, accelerator) -> None:
        if not accelerator.is_main_process:
            return
        export_ssl(model, self.transform, Path(out_dir))

    @classmethod
    def card_info(cls, repo: str, export: Path) -> CardInfo:
        return CardInfo("image-feature-extraction",
                        "a self-supervised image encoder (DINOv2-style image- and patch-level objectives)", f'''```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

repo = "{repo}"
processor = AutoImageProcessor.from_pretrained(repo)
model = AutoModel.from_pretrained(repo).eval()

image = Image.open("xray.png").convert("RGB")
with torch.no_grad():
    out = model(**processor(images=image, return_tensors="pt"))
embedding = out.pooler_output                       # (1, hidden_size) image-level feature (CLS)
n_skip = 1 + getattr(model.config, "num_register_tokens", 0)
patches = out.last_hidden_state[:, n_skip:]         # (1, n_patches, hidden_size) patch features
```

A frozen encoder: use the features with a linear probe, kNN, or a segmentation decoder
(`mxr0 eval vision` runs all of these).''')


def export_ssl(model: SSLMetaArch, transform, out_dir: Path) -> Path:
    """Write the teacher backbone as an HF folder, its processor config, and the heads beside it."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = model.teacher["backbone"]
    teacher.save_pretrained(out_dir, safe_serialization=True)
    transform.save_pretrained(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.teacher.state_dict().items()
             if not k.startswith("backbone.")}
    state["loss.dino_center"] = model.dino_loss.center.detach().cpu().contiguous()
    state["loss.ibot_center"] = model.ibot_loss.center.detach().cpu().contiguous()
    save_file(state, str(out_dir / HEADS_FILE))
    c = model.cfg
    meta: dict[str, Any] = {
        "what": "teacher DINO / iBOT heads and loss centres of an mxr0 XR-0 pretraining run; set "
                "model.encoder to this folder to continue pretraining with them",
        "dino": {"n_prototypes": c.dino_n_prototypes, "hidden_dim": c.dino_hidden_dim,
                 "bottleneck_dim": c.dino_bottleneck_dim, "nlayers": c.dino_nlayers},
        "ibot_separate_head": model.separate_ibot,
        "centering": c.centering,
        "step": int(model.step),
    }
    if model.separate_ibot:
        meta["ibot"] = {"n_prototypes": c.ibot_n_prototypes, "hidden_dim": c.ibot_hidden_dim,
                        "bottleneck_dim": c.ibot_bottleneck_dim, "nlayers": c.ibot_nlayers}
    (out_dir / HEADS_META).write_text(json.dumps(meta, indent=2))
    return out_dir
