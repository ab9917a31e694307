"""Segmentation with a frozen backbone: a linear head or a light multi-scale decoder, Dice per organ.

The backbone's patch-token maps are computed once (`mxr0.eval.vision.features`, ``patches``
[N, n_layers, D, h, w]); only the head trains, on those cached maps, so the backbone is frozen by
construction. Two heads, as XR-0 / DINOv2 evaluate:

- ``linear``: a 1x1 convolution on the last block's standardised patch map (DINOv2's "linear"
  segmentation protocol), logits upsampled bilinearly to the mask size;
- ``multiscale``: a light UPerNet-style decoder on four evenly spaced blocks: each map is projected
  (1x1 conv) and resampled to strides 2x, 1x, 1/2x and 1/4x of the patch grid (a ViTDet simple
  pyramid), merged top-down (FPN), smoothed (3x3 conv), fused at the finest level and classified.

Each organ is an independent sigmoid channel (masks may touch or overlap); the loss is BCE + soft
Dice. Dice per organ is computed per image on the binarised prediction (0.5) at the mask
resolution, ``2 |P n T| / (|P| + |T|)``, with 1 when both are empty, then averaged over images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


class LinearSegHead(nn.Module):
    """1x1 convolution on the last block's patch map."""

    def __init__(self, dim: int, n_classes: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.norm = _Standardise(mean[-1:], std[-1:])
        self.conv = nn.Conv2d(dim, n_classes, kernel_size=1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps`` [B, n_layers, D, h, w] → logits [B, C, h, w]."""
        return self.conv(self.norm(maps[:, -1:])[:, 0])


class MultiScaleDecoder(nn.Module):
    """Simple-pyramid + FPN decoder over four block maps; logits at 2x the patch grid.

    Block maps (shallow to deep) are projected to ``width`` channels (1x1 conv) and resampled to
    strides 2x, 1x, 1/2x and 1/4x of the patch grid (the ViTDet simple pyramid, one octave coarser
    than UPerNet's 4x-0.5x to stay light on a CPU), merged top-down (FPN), smoothed by a 3x3 conv
    per level, summed at the finest level, and classified after one more 3x3 conv.
    """

    SCALES = (2.0, 1.0, 0.5, 0.25)

    def __init__(self, dim: int, n_classes: int, mean: torch.Tensor, std: torch.Tensor, width: int = 32):
        super().__init__()
        n = mean.shape[0]
        if n != len(self.SCALES):
            raise ValueError(f"the multi-scale decoder takes {len(self.SCALES)} block maps, got {n}")
        self.norm = _Standardise(mean, std)
        self.lateral = nn.ModuleList([nn.Conv2d(dim, width, 1) for _ in range(n)])
        self.smooth = nn.ModuleList([nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU()) for _ in range(n)])
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.classifier = nn.Conv2d(width, n_classes, 1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        x = self.norm(maps)
        h, w = x.shape[-2:]
        lat = []
        for i, (conv, s) in enumerate(zip(self.lateral, self.SCALES)):
            size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
            y = conv(x[:, i])
            if s > 1:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            elif s < 1:
                y = F.adaptive_avg_pool2d(y, size)
            lat.append(y)
        for i in range(len(lat) - 2, -1, -1):  # top-down
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="bilinear", align_corners=False)
        outs = [sm(y) for sm, y in zip(self.smooth, lat)]
        size = outs[0].shape[-2:]
        fused = outs[0]
        for o in outs[1:]:
            fused = fused + F.interpolate(o, size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(fused))


def dice_scores(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image, per-class Dice [N, C] of boolean masks [N, C, H, W] (1 when both are empty)."""
    pred, target = pred.astype(bool), target.astype(bool)
    inter = (pred & target).sum(axis=(2, 3)).astype(np.float64)
    total = pred.sum(axis=(2, 3)) + target.sum(axis=(2, 3))
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(2, 3))
    soft_dice = (2 * inter + 1) / (p.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


def train_seg_head(head: str, maps: np.ndarray, masks: np.ndarray, steps: int = 300, lr: float = 1e-3,
                   batch_size: int = 32, weight_decay: float = 1e-4, seed: int = 0, width: int = 32) -> nn.Module:
    """Fit a ``linear`` or ``multiscale`` head on cached maps [N, L, D, h, w] and masks [N, C, H, W]."""
    with torch.enable_grad():
        return _train_seg_head(head, maps, masks, steps, lr, batch_size, weight_decay, seed, width)


def _train_seg_head(head, maps, masks, steps, lr, batch_size, weight_decay, seed, width) -> nn.Module:
    torch.manual_seed(seed)
    x = torch.from_numpy(maps)
    y = torch.from_numpy(masks.astype(np.float32))
    xf = x.float()
    mean = xf.mean(dim=(0, 3, 4)).view(-1, xf.shape[2], 1, 1)  # per layer, per channel
    std = xf.std(dim=(0, 3, 4)).view(-1, xf.shape[2], 1, 1) + 1e-6
    dim, n_classes = x.shape[2], y.shape[1]
    if head == "linear":
        model: nn.Module = LinearSegHead(dim, n_classes, mean, std)
    elif head == "multiscale":
        model = MultiScaleDecoder(dim, n_classes, mean, std, width=width)
    else:
        raise ValueError(f"unknown segmentation head {head!r}; valid: linear, multiscale")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    bs = min(batch_size, n)
    perm, pos = torch.randperm(n, generator=g), 0
    for step in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        logits = model(x[idx].float())
        logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = _loss(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict_masks(model: nn.Module, maps: np.ndarray, size: tuple[int, int], batch_size: int = 64) -> np.ndarray:
    """Binarised predictions [N, C, H, W] of a trained head."""
    out = []
    for s in range(0, len(maps), batch_size):
        logits = model(torch.from_numpy(maps[s:s + batch_size]).float())
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out.append((logits > 0).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, *size), dtype=bool)


def patch_layers(n_layers: int, n: int = 4) -> list[int]:
    """``n`` evenly spaced 1-based block indices ending with the last block (12 → 3, 6, 9, 12;
    a shallower encoder repeats blocks: 2 → 1, 1, 2, 2)."""
    return [max(1, min(n_layers, int(math.floor(n_layers * (i + 1) / n + 0.5)))) for i in range(n)]
