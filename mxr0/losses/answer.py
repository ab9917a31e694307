"""The generation loss: next-token cross-entropy on the answer tokens only (labels -100 elsewhere), averaged over
the step's answer tokens when the loop passes their count (so accumulation and ranks do not reweight examples)."""

from __future__ import annotations

import torch
from torch import nn


def answer_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Tokens predicted under the loss (label after the shift is not -100)."""
    return (labels[:, 1:] != -100).sum()


def answer_token_loss(logits: torch.Tensor, labels: torch.Tensor, num_items=None) -> torch.Tensor:
    """Causal-LM cross-entropy over the answer tokens (labels -100 are ignored), as transformers computes it:
    their sum divided by ``num_items``, or their mean when None."""
    target = labels[:, 1:].to(logits.device)
    total = nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=-100,
                                        reduction="sum")
    return total / (answer_token_count(labels).clamp_min(1) if num_items is None else num_items)
