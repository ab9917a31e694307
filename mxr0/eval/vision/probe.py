"""Linear probe on cached frozen features: multi-label logistic regression, AUROC per label.

Protocol (DINOv2 / XR-0 linear evaluation): features are standardised with the training split's
mean and standard deviation; one logistic-regression layer per hyper-parameter setting is trained
with AdamW and a cosine learning rate on the training split; the setting with the best mean
validation AUROC is reported on the test split, per label and as a mean, with a percentile
bootstrap interval over test studies. The whole sweep trains at once as one batched weight tensor
[settings, D, labels] with a per-setting learning rate and weight decay, so it costs about as much
as one probe and needs the features only once. Validation AUROC is recorded every ``eval_every``
steps: the curve feeds `mxr0.eval.vision.convergence`.

AUROC is the Mann-Whitney statistic over average ranks (ties count one half): the same number as
``sklearn.metrics.roc_auc_score`` (tested to 1e-12), without its per-call input validation, which cost about
4 ms per call and 20 s of a 37 s frozen-suite run (a bootstrap and a sweep score thousands of columns). It is
computed per label on the entries the label policy keeps (``label_mask``); a label needs both classes among
them to be scored. Intervals:
`mxr0.eval.vision.bootstrap` (``scipy.stats.bootstrap``, percentile, seeded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from mxr0.eval.vision.bootstrap import study_bootstrap_ci


def auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``targets`` (nan when one class is missing)."""
    y = np.asarray(targets).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"targets and scores differ in length: {y.size} and {s.size}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} non-finite values (NaN or inf)")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: a tie between a positive and a negative counts one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_columns(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-column AUROC over the unmasked rows (nan for columns without both classes)."""
    out = np.full(scores.shape[1], np.nan)
    for j in range(scores.shape[1]):
        keep = mask[:, j] > 0
        out[j] = auroc(targets[keep, j], scores[keep, j])
    return out


def mean_auroc(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the scoreable labels of `auroc_columns` (nan when none has both classes)."""
    a = auroc_columns(scores, targets, mask)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def trainable_labels(targets: np.ndarray, mask: np.ndarray, min_per_class: int = 2) -> np.ndarray:
    """Indices of labels with at least ``min_per_class`` positives and negatives among valid entries."""
    keep = []
    for j in range(targets.shape[1]):
        v = mask[:, j] > 0
        pos = int((targets[v, j] > 0.5).sum())
        if pos >= min_per_class and int(v.sum()) - pos >= min_per_class:
            keep.append(j)
    return np.array(keep, dtype=int)


@dataclass
class ProbeSweep:
    """The result of a sweep: settings, validation curves and the chosen setting's weights."""

    settings: list[dict]
    """One ``{"lr", "weight_decay"}`` per trained probe."""
    eval_steps: list[int]
    """Optimiser steps at which validation AUROC was recorded."""
    val_curves: np.ndarray
    """Mean validation AUROC [settings, len(eval_steps)]."""
    best: int
    """Index of the chosen setting (best final mean validation AUROC)."""
    weight: np.ndarray
    """Chosen weights [D, labels] on standardised features."""
    bias: np.ndarray
    """Chosen biases [labels]."""
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Training-split feature mean (standardisation)."""
    std: np.ndarray = field(default_factory=lambda: np.ones(0))
    """Training-split feature std."""

    def scores(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        return z @ self.weight + self.bias


def sweep_linear_probe(x_train: np.ndarray, y_train: np.ndarray, m_train: np.ndarray,
                       x_val: np.ndarray, y_val: np.ndarray, m_val: np.ndarray,
                       lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
                       weight_decays: tuple[float, ...] = (1e-4,), steps: int = 300, batch_size: int = 256,
                       eval_every: int = 10, seed: int = 0) -> ProbeSweep:
    """Train one logistic-regression probe per (lr, weight decay) at once; pick by validation AUROC.

    Masked BCE (``m_*`` zero entries are ignored), AdamW with betas (0.9, 0.999), cosine decay of
    each setting's learning rate to zero over ``steps``, mini-batches of ``batch_size`` drawn from
    a seeded permutation shared by all settings.
    """
    mu = x_train.mean(0, keepdims=True)
    sd = x_train.std(0, keepdims=True) + 1e-6
    xt = torch.from_numpy(((x_train - mu) / sd).astype(np.float32))
    xv = torch.from_numpy(((x_val - mu) / sd).astype(np.float32))
    yt = torch.from_numpy(y_train.astype(np.float32))
    mt = torch.from_numpy(m_train.astype(np.float32))
    settings = [{"lr": float(lr), "weight_decay": float(wd)} for lr in lrs for wd in weight_decays]
    k, d, c = len(settings), xt.shape[1], yt.shape[1]
    lr0 = torch.tensor([s["lr"] for s in settings]).view(k, 1, 1)
    wd = torch.tensor([s["weight_decay"] for s in settings]).view(k, 1, 1)
    w = torch.zeros(k, d, c)
    b = torch.zeros(k, 1, c)
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    g = torch.Generator().manual_seed(seed)
    n = xt.shape[0]
    bs = min(batch_size, n)
    perm, pos = torch.randperm(n, generator=g), 0
    eval_steps, curves = [], []
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def val_auroc(w_, b_) -> list[float]:
        s = (torch.einsum("nd,kdc->knc", xv, w_) + b_).numpy()
        return [mean_auroc(s[i], y_val, m_val) for i in range(k)]

    for step in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        xb, yb, mb = xt[idx], yt[idx], mt[idx]
        with torch.enable_grad():  # also when called under no_grad (the training loop's evaluation)
            w.requires_grad_(True)
            b.requires_grad_(True)
            logits = torch.einsum("nd,kdc->knc", xb, w) + b
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb.expand_as(logits), reduction="none")
            loss = ((bce * mb).sum(dim=(1, 2)) / mb.sum().clamp_min(1)).sum()
            gw, gb = torch.autograd.grad(loss, (w, b))
        w, b = w.detach(), b.detach()
        lr = lr0 * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        t = step + 1
        for p, grad, (m1, m2), decay in ((w, gw, state[0], True), (b, gb, state[1], False)):
            m1.mul_(beta1).add_(grad, alpha=1 - beta1)
            m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            upd = (m1 / (1 - beta1 ** t)) / ((m2 / (1 - beta2 ** t)).sqrt() + eps)
            if decay:
                p.mul_(1 - lr * wd)
            p.sub_(lr * upd)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            eval_steps.append(step + 1)
            curves.append(val_auroc(w, b))
    curves_arr = np.array(curves).T  # [k, n_eval]
    final = np.nan_to_num(curves_arr[:, -1], nan=-1.0)
    best = int(np.argmax(final))
    return ProbeSweep(settings=settings, eval_steps=eval_steps, val_curves=curves_arr, best=best,
                      weight=w[best].numpy(), bias=b[best, 0].numpy(), mean=mu, std=sd)


def bootstrap_mean_auroc(scores: np.ndarray, targets: np.ndarray, mask: np.ndarray, n_bootstrap: int = 500,
                         seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the mean-over-labels AUROC, resampling studies with replacement (resamples
    where no label has both classes are left out)."""
    return study_bootstrap_ci(lambda i: mean_auroc(scores[i], targets[i], mask[i]), len(scores), n_bootstrap,
                              seed, alpha)


def quick_probe(x_train: np.ndarray, y_train: np.ndarray, m_train: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, m_test: np.ndarray, chest: tuple[np.ndarray, np.ndarray] | None = None,
                lr: float = 1e-2, weight_decay: float = 1e-4, steps: int = 200) -> float | None:
    """Mean test AUROC of a single fixed-hyper-parameter probe (the in-training monitor); None
    when no label has both classes in both sets."""
    if chest is not None:
        x_train, y_train, m_train = x_train[chest[0]], y_train[chest[0]], m_train[chest[0]]
        x_test, y_test, m_test = x_test[chest[1]], y_test[chest[1]], m_test[chest[1]]
    if len(x_train) < 4 or len(x_test) < 2:
        return None
    cols = trainable_labels(y_train, m_train)
    if len(cols) == 0:
        return None
    sweep = sweep_linear_probe(x_train, y_train[:, cols], m_train[:, cols], x_test, y_test[:, cols],
                               m_test[:, cols], lrs=(lr,), weight_decays=(weight_decay,), steps=steps,
                               eval_every=steps)
    a = mean_auroc(sweep.scores(x_test), y_test[:, cols], m_test[:, cols])
    return a if np.isfinite(a) else None
