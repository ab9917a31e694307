"""kNN classification and retrieval on frozen features (cosine similarity).

Classification is DINO's weighted kNN: the ``k`` most similar gallery images vote for their class
with weight ``exp(similarity / T)`` (T = 0.07). Retrieval ranks the whole gallery for every query
by cosine similarity; an item is relevant when it has the query's class. ``precision@k`` is the
share of relevant items among the first k; average precision is the mean of the precision at each
relevant item's rank (over all relevant gallery items), and mAP its mean over queries.
"""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def knn_classify(gallery: np.ndarray, gallery_y: np.ndarray, queries: np.ndarray, k: int = 20,
                 temperature: float = 0.07, n_classes: int | None = None, chunk: int = 1024
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class [Q], class scores [Q, n_classes]) by similarity-weighted voting."""
    g, q = _normalise(gallery), _normalise(queries)
    gallery_y = np.asarray(gallery_y, dtype=int)
    n_classes = int(n_classes or gallery_y.max() + 1)
    k = min(k, len(g))
    scores = np.zeros((len(q), n_classes), dtype=np.float64)
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ g.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        top_sim = np.take_along_axis(sim, top, axis=1)
        w = np.exp(top_sim / temperature)
        votes = np.zeros((len(sim), n_classes))
        np.add.at(votes, (np.repeat(np.arange(len(sim)), k), gallery_y[top].ravel()), w.ravel())
        scores[s:s + chunk] = votes / votes.sum(1, keepdims=True)
    return scores.argmax(1), scores


def retrieval_metrics(gallery: np.ndarray, gallery_y: np.ndarray, queries: np.ndarray, queries_y: np.ndarray,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """``precision@k`` for each k and ``mAP`` of class-based retrieval (queries against the gallery)."""
    g, q = _normalise(gallery), _normalise(queries)
    gy, qy = np.asarray(gallery_y), np.asarray(queries_y)
    order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    rel = (gy[order] == qy[:, None]).astype(np.float64)  # [Q, G] relevance in rank order
    out = {f"precision@{k}": float(rel[:, :k].mean()) for k in ks if k <= len(g)}
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(1)
    ap = np.where(n_rel > 0, (prec * rel).sum(1) / np.maximum(n_rel, 1), np.nan)
    out["mAP"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")
    out["_ap"] = ap  # per-query, for subgroup slices
    out["_p1"] = rel[:, 0]
    return out
