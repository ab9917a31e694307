"""Length-aware batching: few padded positions without giving up large matrix products."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["length_batches"]


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.1,
                   sort: bool = True) -> list[np.ndarray]:
    """Indices of ``lengths`` grouped into batches of at most ``batch_size``.

    Sorted by length, a batch is closed early when adding the next (longer) item would make the
    padded positions exceed ``max_padding`` of the real ones: the long tail of reports goes in
    smaller batches instead of padding a batch of short ones to the longest. ``sort=False`` keeps
    the input order and fixed-size batches (the one-report-per-pass reference uses this)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    n = len(lengths)
    if not sort:
        order = np.arange(n)
        return [order[s:s + batch_size] for s in range(0, n, batch_size)]
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches, cur, total = [], [], 0
    for i in order:
        L = int(lengths[i])
        if cur and (len(cur) == batch_size or L * (len(cur) + 1) > (1 + max_padding) * (total + L)):
            batches.append(np.asarray(cur))
            cur, total = [], 0
        cur.append(i)
        total += L
    if cur:
        batches.append(np.asarray(cur))
    return batches
