"""The SSL task's metrics at the evaluation cadence, on frozen teacher features: kNN anatomy accuracy against a
gallery of training studies, linear-probe mean AUROC on chest findings, and a collapse indicator."""

from __future__ import annotations

import math

import numpy as np

from mxr0.eval.vision.features import encode_loader
from mxr0.eval.vision.knn import knn_classify
from mxr0.eval.vision.probe import quick_probe


def ssl_metrics(backbone, loader, gallery_loader, accelerator, knn_k: int) -> dict[str, float]:
    """``knn_anatomy_acc`` (when the gallery has two anatomies or more), ``probe_mean_auroc`` (when the probe can be
    fitted) and ``feature_std`` (the spread of the normalised CLS features, times sqrt(width): about 1 when healthy,
    near 0 when collapsed). ``loader``'s queries are gathered across ranks; the gallery is encoded on each rank."""
    q = encode_loader(backbone, loader, accelerator=accelerator)
    g = encode_loader(backbone, gallery_loader, device=accelerator.device)
    out: dict[str, float] = {}
    anat = sorted(set(g["anatomy"]) | set(q["anatomy"]))
    gy = np.array([anat.index(a) for a in g["anatomy"]])
    qy = np.array([anat.index(a) for a in q["anatomy"]])
    if len(set(gy)) > 1:
        pred, _ = knn_classify(g["cls"], gy, q["cls"], k=knn_k, n_classes=len(anat))
        out["knn_anatomy_acc"] = float((pred == qy).mean())
    feats_g = np.concatenate([g["cls"], g["mean_patch"]], 1)
    feats_q = np.concatenate([q["cls"], q["mean_patch"]], 1)
    probe = quick_probe(feats_g, g["labels"], g["label_mask"], feats_q, q["labels"], q["label_mask"],
                        chest=(np.array(g["anatomy"]) == "chest", np.array(q["anatomy"]) == "chest"))
    if probe is not None:
        out["probe_mean_auroc"] = probe
    z = q["cls"] / np.linalg.norm(q["cls"], axis=1, keepdims=True).clip(1e-12)
    out["feature_std"] = float(z.std(axis=0).mean() * math.sqrt(z.shape[1]))
    return out
