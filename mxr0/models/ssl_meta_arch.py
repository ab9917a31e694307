"""XR-0's self-supervised meta-architecture (DINOv2 style, apart from the loop): a student backbone with DINO
and iBOT heads, an EMA teacher of the same shape, and the forward pass that turns multi-crop views and iBOT
masks into the named DINO, iBOT and KoLeo losses."""

from __future__ import annotations

import copy

import torch
from torch import nn

from mxr0.config.tasks import SSLModelConfig
from mxr0.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from mxr0.models.dino_head import DINOHead
from mxr0.models.encoder import num_prefix_tokens


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
