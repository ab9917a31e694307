"""XR-0's self-supervised meta-architecture (DINOv2 style, apart from the loop): a student backbone with DINO
and iBOT heads, an EMA teacher of the same shape, and the forward pass that turns multi-crop views and iBOT
masks into the named DINO, iBOT and KoLeo losses; its build from a recipe section (continued pretraining loads
the heads saved beside an export) and its export (the teacher backbone with the heads and loss centres beside it)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mxr0.config import ConfigError
from mxr0.config.tasks import SSLModelConfig
from mxr0.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from mxr0.models.dino_head import DINOHead
from mxr0.models.encoder import load_encoder, new_encoder, num_prefix_tokens

log = logging.getLogger(__name__)

HEADS_FILE = "ssl_heads.safetensors"
HEADS_META = "ssl_heads.json"


class SSLMetaArch(nn.Module):
    """Student and EMA teacher (backbone + heads) with the DINO, iBOT and KoLeo losses.

    ``forward`` runs one training step's teacher and student passes and returns the named losses,
    so that the whole step lives inside the (possibly DDP-wrapped) module's forward. ``step`` is a
    buffer counting optimiser steps (it travels in checkpoints, so schedules resume exactly).
    """

    def __init__(self, backbone: nn.Module, cfg: SSLModelConfig):
        super().__init__()

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


def build_ssl_model(c: SSLModelConfig) -> SSLMetaArch:
    """The meta-architecture of a recipe section: the backbone loaded from ``encoder`` (with the heads and loss
    centres saved beside it when ``load_heads``) or new from ``encoder_config``; the teacher a copy of the student."""
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
        load_heads(model, Path(c.encoder))
    model.sync_teacher()
    return model


def load_heads(model: SSLMetaArch, folder: Path) -> None:
    """The student heads and loss centres from ``folder/ssl_heads.safetensors`` (`export_ssl`), when it is there and
    its shapes match this model's heads; else the heads stay fresh (logged)."""
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
