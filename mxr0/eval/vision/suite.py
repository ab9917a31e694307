"""The frozen-encoder evaluation suite: probe, kNN / retrieval, segmentation, fairness, convergence.

`evaluate_encoders` runs every evaluation for each encoder on the same studies and splits (training
split: probe fitting, kNN gallery, segmentation head fitting; selection split: probe
hyper-parameters and convergence curves; test split: every reported number), and returns one
JSON-able dict that `mxr0.eval.vision.report` turns into Markdown and plots. Each encoder gets its own 95%
percentile bootstrap intervals over test studies (`mxr0.eval.vision.bootstrap`); encoders are not compared
by a paired test.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mxr0.data.records import read_records
from mxr0.eval.vision import fairness as fair
from mxr0.eval.vision.convergence import compare, run_curve
from mxr0.eval.vision.features import StudyImages, cached_features, load_encoder_spec
from mxr0.eval.vision.knn import knn_classify, retrieval_metrics
from mxr0.eval.vision.bootstrap import mean_ci
from mxr0.eval.vision.probe import auroc_columns, bootstrap_mean_auroc, mean_auroc, sweep_linear_probe, trainable_labels
from mxr0.eval.vision.segmentation import dice_scores, patch_layers, predict_masks, train_seg_head

TASKS = ("probe", "knn", "segmentation", "fairness", "convergence")
SEG_LR = {"linear": 1e-1, "multiscale": 1e-3}
"""Default learning rate of each segmentation head."""


@dataclass
class VisionEvalConfig:
    """Settings of `evaluate_encoders` (the ``mxr0 eval vision`` options)."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Evaluations to run (fairness slices the others; convergence uses the probe's curves)."""
    features: str = "cls+mean"
    """Probe features: ``cls``, ``cls+mean`` (CLS and mean patch token) or ``last4`` (CLS of the
    last four blocks and the mean patch token)."""
    probe_anatomies: list[str] = field(default_factory=lambda: ["chest"])
    """Anatomies the finding probe trains and tests on (the CheXpert labels are chest findings)."""
    views: list[str] | None = None
    """Views allowed for the one image per study (``None``: the first current image)."""
    labels: list[str] | None = None
    """Observations to probe; ``None``: every one with both classes in the training split."""
    uncertain: str = "ones"
    """Uncertain labels: ``ones`` (U-Ones), ``zeros`` or ``ignore``."""
    blank: str = "zeros"
    """Not-mentioned labels: ``zeros`` or ``ignore``."""
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
    """Probe learning-rate sweep."""
    weight_decays: list[float] = field(default_factory=lambda: [1e-4])
    """Probe weight-decay sweep."""
    probe_steps: int = 300
    """Probe optimiser steps."""
    probe_batch_size: int = 256
    """Probe mini-batch size."""
    probe_eval_every: int = 10
    """Probe steps between validation AUROC records (the convergence curve's resolution)."""
    knn_k: int = 20
    """Neighbours of kNN classification."""
    knn_target: str = "anatomy"
    """Study attribute classified and retrieved by kNN."""
    retrieval_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    """k of precision@k."""
    seg_heads: list[str] = field(default_factory=lambda: ["linear", "multiscale"])
    """Segmentation heads on the frozen backbone."""
    seg_masks: list[str] = field(default_factory=lambda: ["right_lung", "left_lung", "heart"])
    """Mask names segmented (studies that have them all)."""
    seg_steps: int = 300
    """Segmentation head optimiser steps."""
    seg_lr: float | None = None
    """Segmentation head learning rate; ``None``: 0.1 for the linear head, 1e-3 for the decoder."""
    age_bands: list[float] = field(default_factory=lambda: [0, 40, 60, 75])
    """Lower edges of the fairness age bands (years)."""
    min_group_size: int = 5
    """Subgroups smaller than this are reported but left out of the gap."""
    n_bootstrap: int = 200
    """Bootstrap resamples of the test studies for confidence intervals (0: none)."""
    target_auroc: float | None = None
    """Convergence target (validation mean AUROC); ``None``: the lowest final value among the
    encoders, the level every one of them reaches."""
    train_split: str = "train"
    """Split the probe, kNN gallery and segmentation heads are fitted on."""
    select_split: str = "validation"
    """Split the probe hyper-parameters are chosen on."""
    test_split: str = "test"
    """Split every reported number is computed on."""
    batch_size: int = 64
    """Feature-extraction batch size."""
    cache_dir: str | None = None
    """Feature cache folder (``None``: no cache)."""
    seed: int = 0
    """Seed of random-initialisation baselines, probe batches and bootstrap."""
    device: str | None = None
    """Feature-extraction device (default: cuda when available)."""
    precision: str | None = None
    """Feature-extraction precision: ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where the device has fast bf16,
    `mxr0.precision`); ``None``: ``$MXR0_FEATURE_PRECISION`` or fp32. The precision that ran is in the results."""


def _probe_matrix(f: dict[str, Any], kind: str) -> np.ndarray:
    if kind == "cls":
        return f["cls"]
    if kind == "cls+mean":
        return np.concatenate([f["cls"], f["mean_patch"]], axis=1)
    if kind == "last4":
        return np.concatenate([f["last4"], f["mean_patch"]], axis=1)
    raise ValueError(f"unknown probe features {kind!r}; valid: cls, cls+mean, last4")


def _subset(f: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    idx = np.flatnonzero(keep)
    out = {}
    for k, v in f.items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == len(keep):
            out[k] = v[idx]
        elif isinstance(v, list) and len(v) == len(keep):
            out[k] = [v[i] for i in idx]
        else:
            out[k] = v
    return out


def _finite(v: float) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _probe(cfg: VisionEvalConfig, feats: dict[str, dict[str, Any]], tasks: set[str]
           ) -> tuple[dict[str, Any], tuple[list[int], list[float]] | None]:
    """The linear probe on the probe anatomies: (result, validation curve of the chosen setting or None)."""
    keep = {s: np.isin(np.array(feats[s]["anatomy"]), cfg.probe_anatomies) for s in feats}
    ptr, pse, pte = (_subset(feats[s], keep[s]) for s in (cfg.train_split, cfg.select_split, cfg.test_split))
    cols = trainable_labels(ptr["labels"], ptr["label_mask"])
    names = [feats[cfg.train_split]["label_names"][j] for j in cols]
    if len(cols) == 0 or len(pte["labels"]) == 0:
        return {"error": "no observation with both classes in the training split"}, None
    sw = sweep_linear_probe(_probe_matrix(ptr, cfg.features), ptr["labels"][:, cols], ptr["label_mask"][:, cols],
                            _probe_matrix(pse, cfg.features), pse["labels"][:, cols], pse["label_mask"][:, cols],
                            lrs=tuple(cfg.lrs), weight_decays=tuple(cfg.weight_decays), steps=cfg.probe_steps,
                            batch_size=cfg.probe_batch_size, eval_every=cfg.probe_eval_every, seed=cfg.seed)
    scores = sw.scores(_probe_matrix(pte, cfg.features))
    y, m = pte["labels"][:, cols], pte["label_mask"][:, cols]
    per = auroc_columns(scores, y, m)
    res = {
        "features": cfg.features,
        "auroc": {n: _finite(a) for n, a in zip(names, per)},
        "mean_auroc": float(np.nanmean(per)) if np.isfinite(per).any() else None,
        "mean_auroc_ci95": [_finite(v) for v in bootstrap_mean_auroc(scores, y, m, cfg.n_bootstrap, cfg.seed)],
        "best": sw.settings[sw.best],
        "val_mean_auroc": float(sw.val_curves[sw.best, -1]),
        "sweep": [{**s_, "val_mean_auroc": float(sw.val_curves[i, -1])} for i, s_ in enumerate(sw.settings)],
        "n_train": int(len(ptr["labels"])), "n_test": int(len(y)),
        "policy": f"uncertain={cfg.uncertain}, blank={cfg.blank}",
    }
    if "fairness" in tasks:
        g = fair.group_labels(pte["sex"], pte["age"], cfg.age_bands)
        res["fairness"] = fair.slice_metric(lambda idx: mean_auroc(scores[idx], y[idx], m[idx]), g, cfg.min_group_size)
    return res, (list(sw.eval_steps), [float(v) for v in sw.val_curves[sw.best]])


def _knn(cfg: VisionEvalConfig, tr: dict[str, Any], te: dict[str, Any], tasks: set[str]) -> dict[str, Any]:
    """kNN classification of ``cfg.knn_target`` and retrieval (gallery: training split, queries: test split)."""
    key = cfg.knn_target
    if key not in tr:
        raise ValueError(f"knn_target {key!r} is not a study attribute (anatomy, view, sex)")
    classes = sorted(set(tr[key]) | set(te[key]))
    gy = np.array([classes.index(v) for v in tr[key]])
    qy = np.array([classes.index(v) for v in te[key]])
    pred, _ = knn_classify(tr["cls"], gy, te["cls"], k=cfg.knn_k, n_classes=len(classes))
    correct = (pred == qy).astype(np.float64)
    ret = retrieval_metrics(tr["cls"], gy, te["cls"], qy, ks=tuple(cfg.retrieval_ks))
    ap = ret.pop("_ap")
    ret.pop("_p1")
    res = {
        "target": key, "k": cfg.knn_k, "accuracy": float(correct.mean()),
        "accuracy_ci95": list(mean_ci(correct, cfg.n_bootstrap, cfg.seed)),
        "per_class_accuracy": {c: float(correct[qy == i].mean()) for i, c in enumerate(classes) if (qy == i).any()},
        "balanced_accuracy": float(np.mean([correct[qy == i].mean() for i in range(len(classes)) if (qy == i).any()])),
        "retrieval": ret, "n_gallery": int(len(gy)), "n_queries": int(len(qy)),
    }
    if "fairness" in tasks:
        groups = fair.group_labels(te["sex"], te["age"], cfg.age_bands)
        res["fairness"] = {
            "accuracy": fair.slice_metric(lambda idx: float(correct[idx].mean()), groups, cfg.min_group_size),
            "mAP": fair.slice_metric(lambda idx: float(np.nanmean(ap[idx])), groups, cfg.min_group_size),
        }
    return res


def _segmentation(cfg: VisionEvalConfig, enc, splits: dict[str, list], tasks: set[str]) -> dict[str, Any]:
    """Segmentation heads on the frozen backbone's patch features, against the organ-position prior."""
    layers = patch_layers(enc.model.config.num_hidden_layers)
    seg = {}
    for s in (cfg.train_split, cfg.test_split):
        ds = StudyImages(splits[s], enc.transform, views=cfg.views, masks=cfg.seg_masks)
        seg[s] = cached_features(enc, ds, cfg.cache_dir, cfg.batch_size, patch_layers=layers,
                                 device=cfg.device, precision=cfg.precision) if len(ds) else None
    str_, ste = seg[cfg.train_split], seg[cfg.test_split]
    if str_ is None or ste is None:
        return {"error": f"no studies with masks {cfg.seg_masks} in the train and test splits"}
    size = tuple(ste["masks"].shape[-2:])
    # The organ-position prior: the training masks' per-pixel majority, for every test image.
    prior = np.repeat(str_["masks"].mean(0, keepdims=True) > 0.5, len(ste["masks"]), 0)
    dp = dice_scores(prior, ste["masks"])
    res = {"masks": list(cfg.seg_masks), "layers": layers, "n_train": int(len(str_["masks"])),
           "n_test": int(len(ste["masks"])), "heads": {},
           "prior_dice": {n: float(dp[:, j].mean()) for j, n in enumerate(cfg.seg_masks)},
           "prior_mean_dice": float(dp.mean())}
    g = fair.group_labels(ste["sex"], ste["age"], cfg.age_bands)
    for head in cfg.seg_heads:
        lr = cfg.seg_lr if cfg.seg_lr is not None else SEG_LR[head]
        model = train_seg_head(head, str_["patches"], str_["masks"], steps=cfg.seg_steps, lr=lr, seed=cfg.seed)
        d = dice_scores(predict_masks(model, ste["patches"], size), ste["masks"])
        per_img = d.mean(1)
        h = {"dice": {n: float(d[:, j].mean()) for j, n in enumerate(cfg.seg_masks)},
             "mean_dice": float(per_img.mean()),
             "mean_dice_ci95": list(mean_ci(per_img, cfg.n_bootstrap, cfg.seed))}
        if "fairness" in tasks:
            h["fairness"] = fair.slice_metric(lambda idx, p=per_img: float(p[idx].mean()), g, cfg.min_group_size)
        res["heads"][head] = h
    return res


def _convergence(cfg: VisionEvalConfig, probe_curves: dict[str, tuple[list[int], list[float]]],
                 runs: dict[str, str] | None) -> dict[str, Any]:
    """Steps to a common validation AUROC: of the probe training, and of the pretraining runs in ``runs``."""
    conv: dict[str, Any] = {}
    if probe_curves:
        target = cfg.target_auroc if cfg.target_auroc is not None else min(v[-1] for _, v in probe_curves.values())
        conv["probe"] = compare(probe_curves, target)
        conv["probe"]["curves"] = {k: {"steps": s, "val_mean_auroc": v} for k, (s, v) in probe_curves.items()}
    curves = {name: run_curve(d) for name, d in (runs or {}).items()}
    curves = {k: v for k, v in curves.items() if v[0]}
    if curves:
        target = cfg.target_auroc if cfg.target_auroc is not None else min(max(v) for _, v in curves.values())
        conv["pretraining"] = compare(curves, target)
        conv["pretraining"]["curves"] = {k: {"steps": s, "probe_mean_auroc": v} for k, (s, v) in curves.items()}
    return conv


def _read_splits(data: str | Path, cfg: VisionEvalConfig, encoders: dict[str, str]) -> dict[str, list]:
    """The records of the training, selection and test splits, after checking the settings."""
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown evaluation(s) {unknown}; valid: {list(TASKS)}")
    if not encoders:
        raise ValueError("no encoder to evaluate")
    splits = {s: read_records(data, splits=[s]) for s in {cfg.train_split, cfg.select_split, cfg.test_split}}
    for s, recs in splits.items():
        if not recs:
            raise ValueError(f"{data}: split {s!r} has no studies")
    return splits


def evaluate_encoders(encoders: dict[str, str], data: str | Path, cfg: VisionEvalConfig | None = None,
                      runs: dict[str, str] | None = None, echo=print) -> dict[str, Any]:
    """Evaluate each ``name -> spec`` encoder (a path, a Hub id, or ``random:PATH``) on the records
    at ``data``; ``runs`` (``name -> run folder``) adds pretraining-convergence curves."""
    cfg = cfg or VisionEvalConfig()
    splits = _read_splits(data, cfg, encoders)
    tasks = set(cfg.tasks)
    result: dict[str, Any] = {"data": str(data), "config": asdict(cfg), "encoders": {}, "n_studies": {}}
    probe_curves: dict[str, tuple[list[int], list[float]]] = {}
    for name, spec in encoders.items():
        t0 = time.perf_counter()
        enc = load_encoder_spec(spec, seed=cfg.seed, device=cfg.device)
        res: dict[str, Any] = {"spec": spec, "params_M": round(sum(p.numel() for p in enc.model.parameters()) / 1e6, 3)}
        feats = {}
        for s, recs in splits.items():
            ds = StudyImages(recs, enc.transform, views=cfg.views, labels=cfg.labels, uncertain=cfg.uncertain,
                             blank=cfg.blank)
            feats[s] = cached_features(enc, ds, cfg.cache_dir, cfg.batch_size, last4=cfg.features == "last4",
                                       device=cfg.device, precision=cfg.precision)
            result["n_studies"][s] = len(ds)
        res["precision"] = str(next(iter(feats.values()))["precision"]) if feats else "fp32"
        if "probe" in tasks:
            res["probe"], curve = _probe(cfg, feats, tasks)
            if curve is not None:
                probe_curves[name] = curve
        if "knn" in tasks:
            res["knn"] = _knn(cfg, feats[cfg.train_split], feats[cfg.test_split], tasks)
        if "segmentation" in tasks:
            res["segmentation"] = _segmentation(cfg, enc, splits, tasks)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        result["encoders"][name] = res
        echo(f"[eval vision] {name}: done in {res['seconds']} s")
    if "convergence" in tasks:
        result["convergence"] = _convergence(cfg, probe_curves, runs)
    return result
