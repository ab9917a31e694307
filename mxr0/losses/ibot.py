"""iBOT masked-patch loss (Zhou et al. 2022, as used in DINOv2).

Some patches of the student's global crops are replaced by the mask token; the student must
predict, at each masked position, the teacher's prototype distribution of the *unmasked* patch.
With ``m_i`` masked patches in image ``i`` (out of ``n`` images, images without a mask included):

    L = 1 / n * sum_i 1 / m_i * sum_{p masked in i}  - sum_k P_t[p, k] log softmax(z_s[p] / T_s)_k

which is DINOv2's ``forward_masked`` (with its loss scales folded in). Only the masked patches go
through the heads. Teacher targets come from centring (an EMA of the mean teacher score over masked
patches) or Sinkhorn-Knopp over all masked patches of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mxr0.losses.dino import TeacherCentering


class IBOTPatchLoss(TeacherCentering):
    """Cross-entropy between student and teacher prototype distributions at masked patches."""

    def forward(self, student_scores: torch.Tensor, teacher_targets: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``student_scores`` and ``teacher_targets`` [M, K] at the masked patches, in the order of
        ``masks.flatten().nonzero()``; ``masks`` [n_images, n_patches] bool."""
        masks = masks.flatten(1).bool()
        n_images = masks.shape[0]
        if student_scores.shape[0] == 0:
            return student_scores.sum() * 0.0  # keeps the graph (and DDP) happy when nothing is masked
        ce = -(teacher_targets.float() * F.log_softmax(student_scores.float() / self.student_temp, dim=-1)).sum(dim=-1)
        per_image = masks.sum(dim=1, keepdim=True).clamp_min(1).float()
        weights = (1.0 / per_image).expand_as(masks)[masks]
        return (ce * weights).sum() / n_images
