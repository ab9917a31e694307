"""Binary cross-entropy over the labelled entries only (CheXpert blanks and, by policy, uncertain labels carry
no loss): the finding classifier's loss."""

from __future__ import annotations

import torch
from torch import nn


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the unmasked entries."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)
