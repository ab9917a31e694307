"""Image–text contrastive losses that are correct across ranks: CLIP InfoNCE and SigLIP sigmoid.

Features are gathered from every rank before the loss. Two options, as in open_clip's ``ClipLoss``:

- ``gather_with_grad=True`` (default): the gather is differentiable (its backward sums the incoming
  gradients over ranks and keeps this rank's slice). With DDP's gradient averaging, N processes with
  batch b then produce exactly the gradient of one process with batch N·b (tested in
  ``tests/distributed/test_align_distributed.py``).
- ``gather_with_grad=False``: the other ranks' features are constants; only this rank's own slice
  carries gradient. Cheaper, and the gradient is an approximation (the paths through the other
  ranks' features are dropped).

``local_loss=True`` (default) scores only this rank's rows (its images against every text, its texts
against every image): O(b·N·b) memory instead of O((N·b)²), and the mean of the per-rank losses equals
the full-batch loss. ``local_loss=False`` computes the full N·b × N·b loss on every rank.

Multi-positive training: ``text_embeds`` may hold ``K`` texts per image, image-major (texts
``i·K … i·K+K-1`` belong to image ``i``). Image→text then averages the log-probability over an image's K
positives (soft targets, uniform over the positives); text→image is ordinary cross-entropy. K = 1 is
plain CLIP.

Token-level variant (for phrase grounding): ``image_embeds`` may be a set of patch embeddings per
image ([b, P, D]); an image–text score is then a smooth maximum over patches,
``τ · log mean_p exp(cos(patch_p, text) / τ)`` (``token_temperature`` τ), so the loss pulls the
patches that match a report towards it: multiple-instance learning, as in FILIP / GLoRIA-style local
alignment.

All inputs are expected L2-normalised; ``logit_scale`` is the log of the inverse temperature (as in
CLIP and Hugging Face's ``VisionTextDualEncoderModel``); the scale is clamped at 100.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from mxr0.losses._dist import is_dist


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward all-reduces (sums) the gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def _check_equal_batches(x: torch.Tensor) -> None:
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    if len(set(sizes)) > 1:
        raise RuntimeError(
            f"contrastive loss: ranks hold different batch sizes {sizes}; the training loader must drop "
            "the last incomplete batch (the mxr0 loop does) so that every rank gathers the same shape"
        )


def gather_features(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Rows of ``x`` from every rank, rank-major ([world·b, …]); ``x`` itself outside distributed runs.

    Without gradient, this rank's own slice is still ``x`` (so it carries the local gradient)."""
    if not is_dist():
        return x
    _check_equal_batches(x)
    if with_grad:
        return _GatherWithGrad.apply(x)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.detach().contiguous())
    out[dist.get_rank()] = x
    return torch.cat(out)


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_dist() else (0, 1)


class ContrastiveLoss(nn.Module):
    """CLIP InfoNCE (``kind="clip"``) or SigLIP sigmoid loss (``kind="siglip"``), gathered across ranks.

    ``forward(image_embeds [b, D], text_embeds [b·K, D], logit_scale, logit_bias=None)`` returns a dict:
    ``loss`` (optimised), and for CLIP ``loss_i2t`` / ``loss_t2i``, for both ``acc_i2t`` (share of this
    rank's images whose best-scoring text is one of their own).
    """

    def __init__(self, kind: str = "clip", local_loss: bool = True, gather_with_grad: bool = True,
                 token_temperature: float = 0.1):
        super().__init__()
        if kind not in ("clip", "siglip"):
            raise ValueError(f"contrastive loss kind {kind!r}: expected 'clip' or 'siglip'")
        self.kind, self.local_loss, self.gather_with_grad = kind, local_loss, gather_with_grad
        self.token_temperature = token_temperature

    def similarity(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """[n_img, n_txt] scores: cosine for [n, D] images, smooth max over patches for [n, P, D]."""
        if img.ndim == 2:
            return img @ txt.T
        tau = self.token_temperature
        s = torch.einsum("npd,td->ntp", img, txt)
        return tau * (torch.logsumexp(s / tau, dim=-1) - math.log(img.shape[1]))

    def forward(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        b = image_embeds.shape[0]
        if text_embeds.shape[0] % b:
            raise ValueError(f"{text_embeds.shape[0]} texts for {b} images: expected K texts per image, image-major")
        k = text_embeds.shape[0] // b
        rank, world = _rank_world()
        img = image_embeds.float()
        txt = text_embeds.float()
        all_img = gather_features(img, self.gather_with_grad)
        all_txt = gather_features(txt, self.gather_with_grad)
        if self.local_loss:
            q_img, q_txt, first = img, txt, rank * b  # this rank's rows; global index of its first image
        else:
            q_img, q_txt, first = all_img, all_txt, 0
        n_img = q_img.shape[0]
        owner_img = torch.arange(first, first + n_img, device=img.device)  # global image index of each query image
        owner_txt = owner_img.repeat_interleave(k)  # global image index of each query text
        txt_owner_all = torch.arange(all_txt.shape[0], device=img.device) // k  # owner image of every text
        scale = logit_scale.float().clamp(max=math.log(100.0)).exp()

        logits_i2t = scale * self.similarity(q_img, all_txt)  # [n_img, world·b·K]
        pos_i2t = owner_img[:, None] == txt_owner_all[None, :]
        with torch.no_grad():
            acc = pos_i2t.gather(1, logits_i2t.argmax(1, keepdim=True)).float().mean()
        if self.kind == "siglip":
            bias = logit_bias.float() if logit_bias is not None else torch.zeros((), device=img.device)
            signs = pos_i2t.float() * 2 - 1
            loss = -F.logsigmoid(signs * (logits_i2t + bias)).sum() / n_img
            return {"loss": loss, "acc_i2t": acc}
        logp = F.log_softmax(logits_i2t, dim=1)
        loss_i2t = -(logp * pos_i2t).sum(1).div(k).mean()
        if self.local_loss:
            logits_t2i = scale * self.similarity(all_img, q_txt).T  # [n_img·K, world·b]
        else:
            logits_t2i = logits_i2t.T
        loss_t2i = F.cross_entropy(logits_t2i, owner_txt)
        loss = (loss_i2t + loss_t2i) / 2
        return {"loss": loss, "loss_i2t": loss_i2t.detach(), "loss_t2i": loss_t2i.detach(), "acc_i2t": acc}
