"""The generation loss: next-token cross-entropy on the answer tokens only (labels -100 elsewhere), averaged over
the step's answer tokens when the loop passes their count (so accumulation and ranks do not reweight examples).

`answer_forward` asks the model for logits from the batch's first answer-predicting position on
(``logits_to_keep``): the image and prompt positions before it never reach the LM head. Same loss, to float
rounding (tested); on the tiny chain it skips about 40% of the head's work, and at production shapes it is what
keeps the head's output in memory: 3 RAD-DINO images are 4,107 positions, whose Qwen2.5 logits (152,064 words)
would take 1.2 GB per example in bf16, 2.5 GB once cast to float32 for the loss."""

from __future__ import annotations

import torch
from torch import nn


def answer_token_count(labels: torch.Tensor) -> torch.Tensor:
    """Tokens predicted under the loss (label after the shift is not -100)."""
    return (labels[:, 1:] != -100).sum()


def answer_logit_start(labels: torch.Tensor) -> int:
    """The first position whose next token is under the loss, over the batch (0 when there is none): the logits
    before it are never used."""
    hit = (labels[:, 1:] != -100).any(dim=0).nonzero()
    return int(hit[0]) if len(hit) else 0


def answer_forward(model, batch: dict, num_items=None) -> torch.Tensor:
    """The model's answer-token loss on ``batch`` (``input_ids``, ``attention_mask``, ``pixel_values``,
    ``labels``), with logits computed only from `answer_logit_start` on (``logits_to_keep``, transformers' slice of
    the LM's hidden states before its head)."""
    labels = batch["labels"]
    start = answer_logit_start(labels)
    keep = torch.arange(start, labels.shape[1], device=batch["input_ids"].device) if start > 0 else 0
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], logits_to_keep=keep)
    return answer_token_loss(out.logits, labels[:, start:], num_items)


def answer_token_loss(logits: torch.Tensor, labels: torch.Tensor, num_items=None) -> torch.Tensor:
    """Causal-LM cross-entropy over the answer tokens (labels -100 are ignored), as transformers computes it:
    their sum divided by ``num_items``, or their mean when None."""
    target = labels[:, 1:].to(logits.device)
    total = nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), ignore_index=-100,
                                        reduction="sum")
    return total / (answer_token_count(labels).clamp_min(1) if num_items is None else num_items)
