"""KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search"; DINOv2).

The Kozachenko-Leonenko differential-entropy estimator on L2-normalised features: for each sample,
the distance to its nearest neighbour in the batch,

    L = - 1 / B * sum_i log(|| x_i - x_nn(i) + eps || + eps),

pushes features apart and so spreads them over the sphere. DINOv2 applies it to the student's CLS
tokens (after the backbone, before the head), separately for each global crop so that two views of
one image are never each other's neighbour. Computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = float(eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [B, D] (B >= 2) -> scalar loss."""
        if features.shape[0] < 2:
            raise ValueError(f"KoLeo needs at least two samples, got {features.shape[0]}")
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(features.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()
                dots.fill_diagonal_(-2.0)  # below any cosine: a sample is never its own neighbour
                nn_idx = dots.argmax(dim=1)
            dist = torch.linalg.vector_norm(x - x[nn_idx] + self.eps, dim=-1)
            return -torch.log(dist + self.eps).mean()
