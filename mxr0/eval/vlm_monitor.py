"""The report / instruct task's metrics at the evaluation cadence: the token-weighted answer loss gathered across
ranks, and greedy answers for the first examples of each kind scored per kind (`mxr0.eval.instruct`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mxr0.eval.instruct import ranked_closed_accuracy, score_kind
from mxr0.losses.answer import answer_forward, answer_token_count
from mxr0.models.decoding import generate_batch


def answer_loss(model, loader, accelerator) -> float:
    """The next-token loss over the answer tokens of the whole evaluation set, every token weighted equally."""
    losses, tokens = [], []
    for batch in loader:
        n = answer_token_count(batch["labels"])
        total = answer_forward(model, batch, num_items=1)  # the sum over this batch's answer tokens
        lt = accelerator.gather_for_metrics(torch.stack([total.detach().float(), n.float()])[None])
        losses.append(lt[:, 0].sum())
        tokens.append(lt[:, 1].sum())
    return float(torch.stack(losses).sum() / torch.stack(tokens).sum().clamp_min(1))


def generation_metrics(model, tokenizer, eval_ds, kinds: Sequence[str], per_kind: int, max_new_tokens: int,
                       max_new_tokens_short: int, train_ds=None) -> dict[str, float]:
    """Greedy answers for the first ``per_kind`` examples of each kind of ``eval_ds`` (a `ReportDataset`), scored
    per kind (`mxr0.eval.instruct.score_kind`; closed VQA also by ranked options). Reports and grounded reports
    get ``max_new_tokens``, the other kinds ``max_new_tokens_short``."""
    ds = eval_ds
    metrics: dict[str, float] = {}
    ds.with_answer = False
    try:
        for kind in kinds:
            idx = [i for i, k in enumerate(ds.kinds) if k == kind][:per_kind]
            limit = max_new_tokens if kind in ("report", "grounded_report") else max_new_tokens_short
            preds = []
            for s in range(0, len(idx), 16):
                items = [ds[i] for i in idx[s:s + 16]]
                preds += generate_batch(model, tokenizer, items, max_new_tokens=limit)
            metrics.update(score_kind(ds, idx, preds, kind, train_ds=train_ds))
            if kind == "vqa":
                metrics.update(ranked_closed_accuracy(model, tokenizer, ds, idx))
    finally:
        ds.with_answer = True
    return metrics
