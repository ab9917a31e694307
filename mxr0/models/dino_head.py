"""The DINO / iBOT projection head: MLP → L2-normalised bottleneck → weight-normalised prototypes.

As in DINO / DINOv2: ``nlayers`` linear layers with GELU (hidden width ``hidden_dim``) down to a
``bottleneck_dim`` embedding, L2-normalised, then a bias-free linear layer to ``out_dim`` prototype
scores whose weight is weight-normalised (direction ``weight_v``, per-prototype scale ``weight_g``).
With ``norm_last_layer`` (DINO's default) the scale stays 1 and the scores are cosine similarities
to the prototypes; otherwise the scale is learned (DINOv2 leaves ``weight_g`` trainable).
The last layer is the one frozen for the first epochs (``last_layer`` in parameter names).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PrototypeLayer(nn.Module):
    """Bias-free linear layer with weight normalisation ``W = g * v / ||v||`` (row-wise)."""

    def __init__(self, in_dim: int, out_dim: int, norm_last_layer: bool = True):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.normalize(self.weight_v, dim=1) * self.weight_g
        return F.linear(x, w.to(x.dtype))


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        nlayers = max(int(nlayers), 1)
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = PrototypeLayer(bottleneck_dim, out_dim, norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
