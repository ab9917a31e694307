"""DINO loss on the CLS token (Caron et al. 2021; Oquab et al. 2023, DINOv2).

The teacher's prototype scores of the global crops are turned into target distributions, either by
centring and sharpening (``softmax((t - c) / T_t)`` with ``c`` an EMA of the batch mean teacher
score, the DINO centre) or by Sinkhorn-Knopp normalisation (``sinkhorn_knopp``, the SwAV / DINOv2
option that makes every prototype equally used over the batch). The student's scores of every crop
are compared with the teacher's targets of every *other* global crop by cross-entropy:

    L = 1 / |pairs| * sum_{(s, t) in pairs} mean_b  - sum_k P_t[b, k] log softmax(z_s[b] / T_s)_k

where the pairs are (global i, global j) with i != j, and (local l, global j). This is the DINOv2
formula (its ``dino_global_crops_loss + dino_local_crops_loss``). It is computed here with one
weighted sum per student crop instead of one cross-entropy per pair: the teacher targets are summed
over the crops a student crop is compared with, which gives the same value with ``n_teacher`` times
fewer multiplications.

In distributed runs the centre is the mean over all ranks' teacher scores, and Sinkhorn-Knopp
normalises over the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mxr0.losses._dist import all_reduce_


def _global_logsumexp(x: torch.Tensor, dim: int | None) -> torch.Tensor:
    """log(sum(exp(x))) over ``dim`` (None: all) and over every rank's copy of it."""
    m = x.amax() if dim is None else x.amax(dim=dim, keepdim=True)
    m = all_reduce_(m.clone().reshape(-1), op="max").reshape(m.shape)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m).sum() if dim is None else torch.exp(x - m).sum(dim=dim, keepdim=True)
    return torch.log(all_reduce_(s.reshape(-1)).reshape(s.shape)) + m


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, temp: float, n_iterations: int = 3, n_samples: int | None = None) -> torch.Tensor:
    """Sinkhorn-Knopp targets for ``scores`` [B, K] (this rank's rows of the global batch).

    ``Q = exp(scores / temp)`` is alternately normalised so that every prototype (row of ``Q^T``)
    gets total mass 1 / K and every sample (column) 1 / B, ``n_iterations`` times, over the global
    batch; the result is scaled so that each sample's row sums to 1 (SwAV / DINOv2). The
    iterations run in the log domain: the same values, but neither ``exp`` overflow at small
    temperatures nor prototypes whose mass underflows to 0 (0 / 0) turn the targets into NaN.
    ``n_samples`` is this rank's sample count (defaults to ``B``); the global B is its sum.
    """
    log_q = (scores.double() / temp).t()  # K x B
    n = torch.tensor([float(log_q.shape[1] if n_samples is None else n_samples)], device=scores.device)
    b = all_reduce_(n).item()
    k = log_q.shape[0]
    log_q = log_q - _global_logsumexp(log_q, None)
    for _ in range(n_iterations):
        log_q = log_q - _global_logsumexp(log_q, 1) - math.log(k)  # prototypes: mass 1/K each
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(b)  # samples: 1/B each
    return torch.exp(log_q + math.log(b)).t().to(scores.dtype if scores.is_floating_point() else torch.float32)


class TeacherCentering(nn.Module):
    """Teacher targets shared by the DINO and iBOT losses: softmax of the centred teacher scores
    (EMA centre over every rank, a buffer saved with the heads) or Sinkhorn-Knopp."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "centering", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in ("centering", "sinkhorn_knopp"):
            raise ValueError(f"centering must be 'centering' or 'sinkhorn_knopp', got {centering!r}")
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.centering = centering
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_targets(self, teacher_scores: torch.Tensor, teacher_temp: float, update_center: bool = True) -> torch.Tensor:
        """Target distributions [N, K] from the teacher's scores [N, K] (all global crops of the batch).

        With EMA centring the centre used is the one *before* this batch, then it is updated with
        this batch's mean (DINOv2 order). A batch with non-finite scores leaves the centre alone.
        """
        t = teacher_scores.float()
        if self.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(t, teacher_temp, self.sinkhorn_iterations)
        probs = F.softmax((t - self.center) / teacher_temp, dim=-1)
        if update_center:
            self.update_center(t)
        return probs

    @torch.no_grad()
    def update_center(self, teacher_scores: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher_scores)`` with the mean over every rank's rows."""
        t = teacher_scores.float()
        stats = torch.cat([t.sum(dim=0), t.new_tensor([float(t.shape[0])])])
        stats = all_reduce_(stats)
        if stats[-1] <= 0 or not torch.isfinite(stats).all():
            return
        batch_center = (stats[:-1] / stats[-1]).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)


class DINOLoss(TeacherCentering):
    """Cross-entropy between the student's and the teacher's prototype distributions.

    ``centering``: ``"centering"`` (EMA centre with ``center_momentum``) or ``"sinkhorn_knopp"``.
    The centre is a buffer, so it is saved in checkpoints and exported with the heads.
    """

    def forward(self, student_scores: torch.Tensor, teacher_targets: torch.Tensor, n_global: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(global-crop part, local-crop part) of the DINO loss; their sum is the loss.

        ``student_scores`` [n_student, B, K]: the first ``n_global`` crops are the same views as
        the teacher's (compared only with the other teacher crops), the rest are local crops
        (compared with every teacher crop). ``teacher_targets`` [n_teacher, B, K].
        Both parts are divided by the total number of pairs, as in DINOv2.
        """
        n_s, batch, _ = student_scores.shape
        n_t = teacher_targets.shape[0]
        n_global = n_t if n_global is None else n_global
        if n_global > n_t or n_global > n_s:
            raise ValueError(f"n_global={n_global} exceeds the teacher ({n_t}) or student ({n_s}) crop count")
        n_local = n_s - n_global
        n_pairs = n_global * (n_t - 1) + n_local * n_t
        if n_pairs == 0:
            raise ValueError("the DINO loss needs at least one (student, other teacher crop) pair")
        logp = F.log_softmax(student_scores.float() / self.student_temp, dim=-1)
        t = teacher_targets.float()
        t_sum = t.sum(dim=0)
        zero = logp.new_zeros(())
        loss_global = zero
        if n_global:
            w = t_sum.unsqueeze(0) - t[:n_global]  # every teacher crop but the same view
            loss_global = -(w * logp[:n_global]).sum() / (batch * n_pairs)
        loss_local = zero
        if n_local:
            loss_local = -(t_sum.unsqueeze(0) * logp[n_global:]).sum() / (batch * n_pairs)
        return loss_global, loss_local
