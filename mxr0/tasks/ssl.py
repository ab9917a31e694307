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

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.tasks.base import CardInfo, Task

log = logging.getLogger(__name__)

HEADS_FILE = "ssl_heads.safetensors"
HEADS_META = "ssl_heads.json"


@dataclass
class SSLModelConfig:
    """Encoder, multi-crop views, DINO / iBOT / KoLeo objectives and the teacher schedules."""

    # --- encoder ---------------------------------------------------------------------------
    encoder: str = ""
    """Path or Hub id of a DINOv2-family checkpoint to continue pretraining from (e.g.
    facebook/dinov2-with-registers-base, microsoft/rad-dino, an XR-0 export); empty builds a new
    Dinov2WithRegisters encoder from ``encoder_config``."""
    encoder_config: dict = field(default_factory=dict)
    """Dinov2WithRegistersConfig arguments for a new encoder (hidden_size, num_hidden_layers,
    num_attention_heads, mlp_ratio, patch_size, layerscale_value, …)."""
    num_register_tokens: int | None = None
    """Register tokens. ``null``: 4 for a new encoder, the checkpoint's count for a pretrained one;
    a number different from the checkpoint's converts it to Dinov2WithRegisters (new registers
    start near zero, every other weight is kept)."""
    drop_path_rate: float = 0.1
    """Stochastic depth of the student (the teacher runs without it)."""
    load_heads: bool = True
    """When ``encoder`` is an XR-0 export with ``ssl_heads.safetensors``, start the heads (and loss
    centres) from it; otherwise heads start fresh."""
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    """Normalisation mean (in [0, 1] units) for a new encoder; a pretrained one uses its image-processor config."""
    image_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    """Normalisation std for a new encoder."""

    # --- multi-crop --------------------------------------------------------------------------
    global_crop_size: int = 224
    """Side of the two global crops (a multiple of the patch size); also the exported processor's input size."""
    local_crop_size: int = 98
    """Side of the local crops (a multiple of the patch size)."""
    n_local_crops: int = 8
    """Local crops per image (0 disables them)."""
    global_crop_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    """Area range of a global crop, as a fraction of the image."""
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    """Area range of a local crop, as a fraction of the image."""
    flip_prob: float = 0.0
    """Horizontal flip probability per crop. 0 by default: laterality is anatomy on a radiograph."""
    intensity_prob: float = 0.8
    """Probability of brightness / contrast / gamma jitter per crop."""
    brightness: float = 0.4
    """Brightness factor drawn from [1 - b, 1 + b] (exposure)."""
    contrast: float = 0.4
    """Contrast factor drawn from [1 - c, 1 + c] (windowing)."""
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.4])
    """Gamma range (log-uniform): the detector / VOI LUT response curve."""
    blur_prob: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])
    """Gaussian-blur probability for (first global, other globals, locals), DINOv2's asymmetric recipe."""
    solarize_prob: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.0])
    """Solarisation probability for (first global, other globals, locals)."""
    noise_prob: float = 0.2
    """Probability of additive Gaussian noise (quantum mottle) per crop."""
    noise_std: float = 0.03
    """Largest noise standard deviation, in [0, 1] intensity units."""
    all_images: bool = True
    """Pretrain on every current image of a study (frontal and lateral); false takes the first only."""

    # --- DINO --------------------------------------------------------------------------------
    dino_loss_weight: float = 1.0
    """Weight of the image-level DINO loss (CLS token)."""
    dino_n_prototypes: int = 65536
    """Prototypes (output dimension) of the DINO head."""
    dino_hidden_dim: int = 2048
    """Hidden width of the DINO head MLP."""
    dino_bottleneck_dim: int = 256
    """Bottleneck (L2-normalised) dimension before the prototype layer."""
    dino_nlayers: int = 3
    """Linear layers in the head MLP."""
    norm_last_layer: bool = True
    """Keep the prototype vectors unit-norm (cosine scores, DINO's default); false learns their scale."""
    koleo_loss_weight: float = 0.1
    """Weight of the KoLeo regulariser on the student's global-crop CLS tokens (0 disables it)."""
    centering: Literal["centering", "sinkhorn_knopp"] = "centering"
    """Teacher target normalisation: EMA centre (``centering``) or Sinkhorn-Knopp."""
    center_momentum: float = 0.9
    """Momentum of the EMA centre."""
    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations."""
    student_temp: float = 0.1
    """Student softmax temperature."""
    teacher_temp: float = 0.07
    """Teacher softmax temperature after warm-up."""
    warmup_teacher_temp: float = 0.04
    """Teacher temperature at the start of training."""
    warmup_teacher_temp_epochs: float = 30.0
    """Epochs of linear teacher-temperature warm-up (capped at the run length)."""

    # --- iBOT --------------------------------------------------------------------------------
    ibot_loss_weight: float = 1.0
    """Weight of the patch-level iBOT loss (0 disables masking and the loss)."""
    ibot_separate_head: bool = False
    """A separate iBOT head (true) or the DINO head shared for patches (false, DINOv2's default)."""
    ibot_n_prototypes: int = 65536
    """Prototypes of a separate iBOT head."""
    ibot_hidden_dim: int = 2048
    """Hidden width of a separate iBOT head."""
    ibot_bottleneck_dim: int = 256
    """Bottleneck dimension of a separate iBOT head."""
    ibot_nlayers: int = 3
    """Linear layers of a separate iBOT head."""
    mask_probability: float = 0.5
    """Probability that a global crop is masked."""
    mask_ratio: list[float] = field(default_factory=lambda: [0.1, 0.5])
    """Range of the masked share of patches of a masked crop (block masking)."""

    # --- teacher and optimisation -------------------------------------------------------------
    momentum_teacher: float = 0.992
    """EMA momentum of the teacher at the start (cosine schedule to ``final_momentum_teacher``)."""
    final_momentum_teacher: float = 1.0
    """EMA momentum at the end of training."""
    freeze_last_layer_epochs: float = 1.0
    """Epochs during which the prototype layers of the student heads are not updated."""
    layerwise_decay: float = 0.9
    """Layer-wise learning-rate decay: block i of L gets lr x decay^(L + 1 - (i + 1)); 1 disables it."""
    patch_embed_lr_mult: float = 0.2
    """Extra learning-rate factor of the patch embedding."""

    # --- evaluation during training ----------------------------------------------------------
    eval_gallery_studies: int = 1000
    """Training studies whose teacher features form the kNN gallery and the linear-probe training set
    of the in-training evaluation (frozen teacher, evaluation split as queries)."""
    eval_knn_k: int = 20
    """Neighbours of the in-training kNN evaluation."""

    def __post_init__(self):
        from mxr0.config import FieldError, check_hf_config, check_mean_std, check_pair, check_ranges

        check_hf_config(self, "encoder_config", "Dinov2WithRegistersConfig", aliases=("intermediate_size",),
                        reserved={"image_size": "set model.global_crop_size", "drop_path_rate": "set model.drop_path_rate"})
        n_reg = self.encoder_config.get("num_register_tokens")
        if self.num_register_tokens is not None and n_reg is not None and n_reg != self.num_register_tokens:
            raise FieldError("encoder_config.num_register_tokens", f"disagrees with model.num_register_tokens="
                             f"{self.num_register_tokens} (which wins); set one of them", n_reg)
        check_mean_std(self)
        check_ranges(self, {
            "num_register_tokens": "[0, inf)", "drop_path_rate": "[0, 1)", "global_crop_size": "[1, inf)",
            "local_crop_size": "[1, inf)", "n_local_crops": "[0, inf)", "flip_prob": "[0, 1]", "intensity_prob": "[0, 1]",
            "brightness": "[0, 1]", "contrast": "[0, 1]", "blur_prob": "[0, 1]", "solarize_prob": "[0, 1]",
            "noise_prob": "[0, 1]", "noise_std": "[0, inf)", "dino_loss_weight": "(0, inf)",
            "dino_n_prototypes": "[1, inf)", "dino_hidden_dim": "[1, inf)", "dino_bottleneck_dim": "[1, inf)",
            "dino_nlayers": "[1, inf)", "koleo_loss_weight": "[0, inf)", "center_momentum": "[0, 1]",
            "sinkhorn_iterations": "[1, inf)", "student_temp": "(0, inf)", "teacher_temp": "(0, inf)",
            "warmup_teacher_temp": "(0, inf)", "warmup_teacher_temp_epochs": "[0, inf)", "ibot_loss_weight": "[0, inf)",
            "ibot_n_prototypes": "[1, inf)", "ibot_hidden_dim": "[1, inf)", "ibot_bottleneck_dim": "[1, inf)",
            "ibot_nlayers": "[1, inf)", "mask_probability": "[0, 1]", "momentum_teacher": "[0, 1]",
            "final_momentum_teacher": "[0, 1]", "freeze_last_layer_epochs": "[0, inf)", "layerwise_decay": "(0, 1]",
            "patch_embed_lr_mult": "[0, inf)", "eval_gallery_studies": "[1, inf)", "eval_knn_k": "[1, inf)",
        })
        for name in ("global_crop_scale", "local_crop_scale"):
            check_pair(self, name, "(0, 1]")
        check_pair(self, "gamma", "(0, inf)")
        check_pair(self, "mask_ratio", "[0, 1)")
        for name in ("blur_prob", "solarize_prob"):
            if len(getattr(self, name)) != 3:
                raise FieldError(name, "expected 3 probabilities (first global, other globals, locals)", getattr(self, name))
        if not self.encoder:  # a new encoder: its patch size is known here (a pretrained one is checked at build)
            p = self.encoder_config.get("patch_size", 16)
            p = int(p[0] if isinstance(p, (list, tuple)) else p)
            for name in ("global_crop_size", "local_crop_size"):
                if getattr(self, name) % p:
                    raise FieldError(name, f"must be a multiple of the patch size {p} (model.encoder_config.patch_size)",
                                     getattr(self, name))


# ---------------------------------------------------------------------------------------------
# The student / teacher model
# ---------------------------------------------------------------------------------------------


class SSLMetaArch(nn.Module):
    """Student and EMA teacher (backbone + heads) with the DINO, iBOT and KoLeo losses.

    ``forward`` runs one training step's teacher and student passes and returns the named losses,
    so that the whole step lives inside the (possibly DDP-wrapped) module's forward. ``step`` is a
    buffer counting optimiser steps (it travels in checkpoints, so schedules resume exactly).
    """

    def __init__(self, backbone: nn.Module, cfg: SSLModelConfig):
        super().__init__()
        from mxr0.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
        from mxr0.models.dino_head import DINOHead
        from mxr0.models.encoder import num_prefix_tokens

        self.cfg = cfg
        dim = backbone.config.hidden_size
        self.n_prefix = num_prefix_tokens(backbone)
        self.do_ibot = cfg.ibot_loss_weight > 0
        self.do_koleo = cfg.koleo_loss_weight > 0
        self.separate_ibot = self.do_ibot and cfg.ibot_separate_head
        student = {"backbone": backbone,
                   "dino_head": DINOHead(dim, cfg.dino_n_prototypes, cfg.dino_hidden_dim, cfg.dino_bottleneck_dim,
                                         cfg.dino_nlayers, cfg.norm_last_layer)}
        if self.separate_ibot:
            student["ibot_head"] = DINOHead(dim, cfg.ibot_n_prototypes, cfg.ibot_hidden_dim, cfg.ibot_bottleneck_dim,
                                            cfg.ibot_nlayers, cfg.norm_last_layer)
        self.student = nn.ModuleDict(student)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = DINOLoss(cfg.dino_n_prototypes, cfg.student_temp, cfg.center_momentum, cfg.centering,
                                  cfg.sinkhorn_iterations)
        ibot_dim = cfg.ibot_n_prototypes if self.separate_ibot else cfg.dino_n_prototypes
        self.ibot_loss = IBOTPatchLoss(ibot_dim, cfg.student_temp, cfg.center_momentum, cfg.centering,
                                       cfg.sinkhorn_iterations)
        self.koleo_loss = KoLeoLoss()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    # --- modes --------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never uses drop path
        return self

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.student["backbone"].gradient_checkpointing_enable(**kwargs)

    # --- teacher ------------------------------------------------------------------------------
    def sync_teacher(self) -> None:
        """Copy the student's weights into the teacher (at initialisation)."""
        self.teacher.load_state_dict(self.student.state_dict())

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher <- m · teacher + (1 - m) · student`` for every parameter (fused foreach ops)."""
        if self._ema_pairs is None:
            t = dict(self.teacher.named_parameters())
            s = dict(self.student.named_parameters())
            self._ema_pairs = ([t[k] for k in t], [s[k].detach() for k in t])
        tp, sp = self._ema_pairs
        torch._foreach_mul_(tp, momentum)
        torch._foreach_add_(tp, sp, alpha=1.0 - momentum)

    def teacher_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The teacher backbone's final-normed token sequence (what the export computes)."""
        return self.teacher["backbone"](pixel_values=pixel_values).last_hidden_state

    # --- one step -----------------------------------------------------------------------------
    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor, masks: torch.Tensor,
                teacher_temp: float, n_global: int = 2) -> dict[str, torch.Tensor]:
        """Losses of one batch. ``global_crops`` [n_global·B, C, G, G] and ``local_crops``
        [n_local·B, C, L, L] are crop-major (`mxr0.data.multicrop.collate_multicrop`); ``masks``
        [n_global·B, n_patches] bool marks the iBOT-masked patches of the global crops."""
        cfg = self.cfg
        n_imgs = global_crops.shape[0]
        batch = n_imgs // n_global
        n_local = local_crops.shape[0] // batch if local_crops.numel() else 0
        masks = masks.bool()
        do_ibot = self.do_ibot and masks.shape[-1] > 0
        mask_idx = masks.flatten().nonzero().squeeze(1) if do_ibot else None

        # 1. teacher: global crops, one pass
        with torch.no_grad():
            t_tokens = self.teacher["backbone"](pixel_values=global_crops).last_hidden_state
            t_cls = t_tokens[:, 0]
            if do_ibot:
                t_patch = t_tokens[:, self.n_prefix:].flatten(0, 1).index_select(0, mask_idx)
                if self.separate_ibot:
                    t_cls_scores = self.teacher["dino_head"](t_cls)
                    t_patch_scores = self.teacher["ibot_head"](t_patch)
                else:
                    out = self.teacher["dino_head"](torch.cat([t_cls, t_patch]))
                    t_cls_scores, t_patch_scores = out[:n_imgs], out[n_imgs:]
                t_ibot = self.ibot_loss.teacher_targets(t_patch_scores, teacher_temp)
            else:
                t_cls_scores = self.teacher["dino_head"](t_cls)
            t_dino = self.dino_loss.teacher_targets(t_cls_scores, teacher_temp).view(n_global, batch, -1)

        # 2. student: global crops (masked) in one pass, local crops in another
        s_global = self.student["backbone"](pixel_values=global_crops,
                                           bool_masked_pos=masks if do_ibot else None).last_hidden_state
        s_cls = [s_global[:, 0]]
        if n_local:
            s_cls.append(self.student["backbone"](pixel_values=local_crops).last_hidden_state[:, 0])
        head_in = list(s_cls)
        if do_ibot:
            s_patch = s_global[:, self.n_prefix:].flatten(0, 1).index_select(0, mask_idx)
            if not self.separate_ibot:
                head_in.append(s_patch)
        scores = self.student["dino_head"](torch.cat(head_in))
        n_cls = n_imgs + n_local * batch
        s_cls_scores = scores[:n_cls].view(n_global + n_local, batch, -1)

        # 3. losses
        dino_g, dino_l = self.dino_loss(s_cls_scores, t_dino, n_global=n_global)
        losses = {"dino_global": dino_g, "dino_local": dino_l}
        loss = cfg.dino_loss_weight * (dino_g + dino_l)
        if self.do_koleo:
            koleo = sum(self.koleo_loss(c) for c in s_cls[0].chunk(n_global))
            losses["koleo"] = koleo
            loss = loss + cfg.koleo_loss_weight * koleo
        if do_ibot:
            s_patch_scores = self.student["ibot_head"](s_patch) if self.separate_ibot else scores[n_cls:]
            ibot = self.ibot_loss(s_patch_scores, t_ibot, masks)
            losses["ibot"] = ibot
            loss = loss + cfg.ibot_loss_weight * ibot
        losses["loss"] = loss
        return losses


# ---------------------------------------------------------------------------------------------
# Parameter groups (layer-wise decay), schedules
# ---------------------------------------------------------------------------------------------


def _layer_id(name: str, n_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder block i, n_layers + 1 for the final norm and the heads."""
    if name.startswith("backbone.embeddings."):
        return 0
    if name.startswith("backbone.encoder.layer."):
        return int(name.split(".")[3]) + 1
    return n_layers + 1


def _no_weight_decay(name: str, p: torch.Tensor) -> bool:
    return (p.ndim < 2 or name.endswith(".bias") or "norm" in name or "layer_scale" in name or "lambda1" in name
            or "token" in name or "position_embeddings" in name)


def layerwise_param_groups(student: nn.Module, weight_decay: float, layerwise_decay: float,
                           patch_embed_lr_mult: float) -> list[dict]:
    """Trainable student parameters grouped by (lr_scale, wd_scale), DINOv2's layer-wise decay."""
    n_layers = student["backbone"].config.num_hidden_layers
    groups: dict[tuple[float, float], dict] = {}
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        lr_scale = layerwise_decay ** (n_layers + 1 - _layer_id(name, n_layers))
        if "patch_embeddings" in name:
            lr_scale *= patch_embed_lr_mult
        wd_scale = 0.0 if _no_weight_decay(name, p) else 1.0
        key = (round(lr_scale, 12), wd_scale)
        g = groups.setdefault(key, {"params": [], "names": [], "lr_scale": lr_scale, "wd_scale": wd_scale,
                                    "weight_decay": weight_decay * wd_scale})
        g["params"].append(p)
        g["names"].append(name)
    out = []
    for g in groups.values():
        g = dict(g)
        g.pop("names")
        out.append(g)
    return out


def teacher_temp_schedule(total: int, warmup_steps: int, start: float, end: float) -> np.ndarray:
    """Linear warm-up of the teacher temperature from ``start`` to ``end``, then constant."""
    warmup_steps = min(max(int(warmup_steps), 0), total)
    return np.concatenate([np.linspace(start, end, warmup_steps, endpoint=False) if warmup_steps else np.empty(0),
                           np.full(total - warmup_steps, end)])


def momentum_schedule(total: int, start: float, end: float) -> np.ndarray:
    """Cosine from ``start`` to ``end`` over the run (DINOv2's teacher momentum)."""
    from mxr0.train.schedules import warmup_cosine

    return warmup_cosine(total, start, end)


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
        from mxr0.data.transforms import ImageTransform

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
                from mxr0.models.encoder import encoder_config

                p = encoder_config(self.cfg.encoder).patch_size  # any stage's export (see load_encoder)
            else:
                p = self.cfg.encoder_config.get("patch_size", 16)
            self._patch = int(p[0] if isinstance(p, (list, tuple)) else p)
        return self._patch

    # --- build --------------------------------------------------------------------------------
    def build_datasets(self):
        from mxr0.data.loading import load_split
        from mxr0.data.multicrop import BlockMasking, MultiCrop, MultiCropDataset
        from mxr0.eval.vision.features import StudyImages

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
        from mxr0.data.multicrop import collate_multicrop
        from mxr0.eval.vision.features import collate_study_images

        if "global_crops" in items[0]:
            return collate_multicrop(items)
        return collate_study_images(items)

    def build_model(self) -> nn.Module:
        from mxr0.models.encoder import load_encoder, new_encoder

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
        from mxr0.eval.vision.features import StudyImages, encode_loader
        from mxr0.eval.vision.knn import knn_classify
        from mxr0.eval.vision.probe import quick_probe

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
