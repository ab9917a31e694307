"""Evaluation of an image–text dual encoder: retrieval, zero-shot classification, phrase grounding.

Conventions (also written into every results file):

- **Retrieval** (image → report, report → image): R@1, R@5, R@10 and median rank over the evaluation
  studies. Reports identical after lowercasing and white-space normalisation are one candidate (the
  phantom set and real sets have many identical normal reports, which no model can tell apart): an
  image's query is correct when its report text is ranked, a report's query when any image of that
  report is. Chance R@K is K / number of candidates, given as ``chance_r5_*``.
- **Zero-shot classification**, CheXzero style: each observation has positive and negative prompts
  (embeddings averaged per side, prompt ensembling); the score is the softmax over the two
  similarities scaled by the model's logit scale. AUROC per observation with uncertain (-1) labels left
  out and not-mentioned ones counted negative; observations without both classes are skipped.
- **Phrase grounding** from patch–text similarity maps (BioViL / MS-CXR protocol): the cosine
  similarity of the phrase embedding with every projected patch token, upsampled bilinearly to the
  model's input frame; mIoU is the IoU of ``map > t`` with the union of the phrase's boxes, averaged
  over t ∈ {0.1, 0.2, 0.3, 0.4, 0.5}, then over phrases; CNR = |μ_in − μ_out| / √(σ²_in + σ²_out)
  inside versus outside the boxes; pointing accuracy = share of maps whose maximum lies in a box. The
  baseline is a fixed centred box of the evaluation boxes' mean width and height (an oracle size, so
  a generous baseline).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mxr0.data.boxes import box_mask  # noqa: F401 (re-exported)
from mxr0.data.classify_dataset import label_targets
from mxr0.data.prompts import merged_prompts  # noqa: F401 (moved; re-exported)
from mxr0.data.records import CHEXPERT_LABELS
from mxr0.data.text import normalise_text
from mxr0.eval.classify import auroc_table

log = logging.getLogger(__name__)

GROUNDING_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


TextEncoder = Callable[[list[str]], torch.Tensor]
"""Texts → L2-normalised embeddings [n, P] (float, CPU)."""


# ---------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, texts: Sequence[str]) -> dict[str, float]:
    """Image↔report retrieval with identical reports merged (see the module docstring)."""

    keys = [normalise_text(t) for t in texts]
    uniq: dict[str, int] = {}
    owner = np.array([uniq.setdefault(k, len(uniq)) for k in keys])  # unique report id of each study
    first = np.zeros(len(uniq), dtype=int)
    for i in range(len(keys) - 1, -1, -1):
        first[owner[i]] = i
    cand = text_emb[torch.as_tensor(first)]  # one embedding per unique report
    sim = (image_emb.float() @ cand.float().T).numpy()  # [n_images, n_unique]
    true = sim[np.arange(len(owner)), owner]
    i2t_rank = 1 + (sim > true[:, None]).sum(1)
    # report → image: best rank among the images of that report
    sim_t = sim.T  # [n_unique, n_images]
    order = np.argsort(-sim_t, axis=1, kind="stable")
    ranks_of = np.empty_like(order)
    rows = np.arange(order.shape[0])[:, None]
    ranks_of[rows, order] = np.arange(1, order.shape[1] + 1)[None, :]
    t2i_rank = np.array([ranks_of[u, owner == u].min() for u in range(len(uniq))])
    out: dict[str, float] = {"n_images": float(len(owner)), "n_unique_reports": float(len(uniq))}
    for name, ranks, n_cand in (("i2t", i2t_rank, len(uniq)), ("t2i", t2i_rank, len(owner))):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float(np.mean(ranks <= k))
        out[f"{name}_median_rank"] = float(np.median(ranks))
        out[f"chance_r5_{name}"] = float(min(1.0, 5 / n_cand)) if name == "i2t" else float(
            np.mean([min(1.0, 5 * (owner == u).sum() / len(owner)) for u in range(len(uniq))]))
    out["mean_r5"] = (out["i2t_r5"] + out["t2i_r5"]) / 2
    return out


# ---------------------------------------------------------------------------------------------
# Zero-shot classification
# ---------------------------------------------------------------------------------------------


def zero_shot_scores(image_emb: torch.Tensor, encode_text: TextEncoder, labels: Sequence[str],
                     prompts: dict[str, dict[str, list[str]]], logit_scale: float) -> np.ndarray:
    """[n_images, n_labels] probabilities of each observation (softmax over positive vs negative)."""
    scores = []
    for label in labels:
        sides = []
        for side in ("positive", "negative"):
            e = encode_text(prompts[label][side]).mean(0)
            sides.append(F.normalize(e, dim=-1))
        sims = image_emb.float() @ torch.stack(sides).T * float(np.exp(min(logit_scale, np.log(100.0))))
        scores.append(torch.softmax(sims, dim=1)[:, 0])
    return torch.stack(scores, 1).numpy()


def zero_shot_metrics(image_emb: torch.Tensor, label_rows: Sequence[dict], encode_text: TextEncoder,
                      logit_scale: float, prompts: dict | None = None, labels: Sequence[str] | None = None) -> dict:
    """AUROC per observation (uncertain excluded, not mentioned = negative) and their mean."""

    prompts = merged_prompts(prompts)
    labels = list(labels or CHEXPERT_LABELS)
    y = np.zeros((len(label_rows), len(labels)), dtype=np.float32)
    m = np.zeros_like(y)
    for i, lab in enumerate(label_rows):
        y[i], m[i] = label_targets({"labels": lab}, labels, uncertain="ignore", blank="zeros")
    keep = [j for j, _ in enumerate(labels) if len(set(y[m[:, j] > 0, j].tolist())) == 2]
    if not keep:
        return {}
    labels = [labels[j] for j in keep]
    s = zero_shot_scores(image_emb, encode_text, labels, prompts, logit_scale)
    table = auroc_table(s, y[:, keep], m[:, keep], labels)
    return {("zeroshot_" + k if k == "mean_auroc" else k.replace("auroc/", "zeroshot_auroc/")): v
            for k, v in table.items()}


# ---------------------------------------------------------------------------------------------
# Phrase grounding
# ---------------------------------------------------------------------------------------------


def similarity_map(patch_emb: torch.Tensor, text_emb: torch.Tensor, grid: tuple[int, int], size: int) -> np.ndarray:
    """Cosine similarity of one phrase with every patch, bilinearly upsampled to ``size`` x ``size``."""
    sim = F.normalize(patch_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1)
    sim = sim.reshape(1, 1, *grid)
    return F.interpolate(sim, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def miou_over_thresholds(sim: np.ndarray, target: np.ndarray, thresholds: Sequence[float] = GROUNDING_THRESHOLDS) -> float:
    ious = []
    for t in thresholds:
        pred = sim > t
        union = np.logical_or(pred, target).sum()
        ious.append(np.logical_and(pred, target).sum() / union if union else 0.0)
    return float(np.mean(ious))


def cnr(sim: np.ndarray, target: np.ndarray) -> float:
    inside, outside = sim[target], sim[~target]
    if inside.size == 0 or outside.size == 0:
        return 0.0
    denom = np.sqrt(inside.var() + outside.var())
    return float(abs(inside.mean() - outside.mean()) / denom) if denom > 0 else 0.0


def grounding_items(records: Sequence[dict], image_index: Sequence[int], orig_hw: np.ndarray, transform) -> list[dict]:
    """One item per (study, phrase) with boxes on the evaluated image: row, phrase, model-frame boxes."""
    items = []
    for row, (r, k) in enumerate(zip(records, image_index)):
        by_phrase: dict[str, list] = {}
        for b in r.get("boxes") or []:
            if b.get("image_index", 0) == k and b.get("phrase"):
                by_phrase.setdefault(b["phrase"], []).append([b["x0"], b["y0"], b["x1"], b["y1"]])
        if not by_phrase:
            continue
        geo = transform.geometry(int(orig_hw[row][0]), int(orig_hw[row][1]))
        for phrase, boxes in by_phrase.items():
            mb = geo.to_model(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
            mb = mb[~np.isnan(mb).any(axis=1)]
            if len(mb):
                items.append({"row": row, "phrase": phrase, "boxes": mb, "study_id": r["study_id"]})
    return items


def grounding_metrics(patch_emb: torch.Tensor, grid: tuple[int, int], size: int, items: Sequence[dict],
                      encode_text: TextEncoder) -> tuple[dict[str, float], list[np.ndarray]]:
    """mIoU over thresholds, CNR and pointing accuracy of similarity maps, with the centred-box
    baseline; also returns each item's similarity map (for overlays)."""
    if not items:
        return {}, []
    phrases = sorted({it["phrase"] for it in items})
    emb = encode_text(phrases)
    index = {p: i for i, p in enumerate(phrases)}
    mious, cnrs, hits, base, maps = [], [], [], [], []
    wh = np.concatenate([it["boxes"] for it in items])
    w, h = float(np.mean(wh[:, 2] - wh[:, 0])), float(np.mean(wh[:, 3] - wh[:, 1]))
    centred = box_mask(np.array([[0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2]]), size)
    for it in items:
        sim = similarity_map(patch_emb[it["row"]], emb[index[it["phrase"]]], grid, size)
        target = box_mask(it["boxes"], size)
        mious.append(miou_over_thresholds(sim, target))
        cnrs.append(cnr(sim, target))
        hits.append(bool(target.flat[int(np.argmax(sim))]))
        union = np.logical_or(centred, target).sum()
        base.append(np.logical_and(centred, target).sum() / union if union else 0.0)
        maps.append(sim)
    return {
        "grounding_miou": float(np.mean(mious)),
        "grounding_cnr": float(np.mean(cnrs)),
        "grounding_pointing": float(np.mean(hits)),
        "grounding_baseline_miou": float(np.mean(base)),
        "grounding_n_phrases": float(len(items)),
    }, maps


# ---------------------------------------------------------------------------------------------
# Overlays
# ---------------------------------------------------------------------------------------------


def _heat(v: np.ndarray) -> np.ndarray:
    """A perceptually ordered dark-blue → red → yellow colour ramp for values in [0, 1]."""
    v = np.clip(v, 0, 1)[..., None]
    stops = np.array([[0, 0, 80], [120, 0, 160], [230, 40, 40], [255, 160, 0], [255, 255, 160]], dtype=np.float64)
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = pos - lo
    return (stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, sim: np.ndarray, boxes_model: np.ndarray, phrase: str,
                 alpha: float = 0.45) -> Path:
    """The model-frame image with the similarity map blended in (min–max scaled), the reference boxes
    in green and the phrase and its map range written below."""
    from PIL import Image, ImageDraw

    size = sim.shape[0]
    gray = np.asarray(image, dtype=np.float64)
    if gray.ndim == 3:
        gray = gray.mean(0) if gray.shape[0] in (1, 3) else gray.mean(-1)
    gray = (gray - gray.min()) / max(np.ptp(gray), 1e-8)
    lo, hi = float(sim.min()), float(sim.max())
    heat = _heat((sim - lo) / max(hi - lo, 1e-8)).astype(np.float64)
    rgb = (1 - alpha) * np.repeat(gray[..., None] * 255, 3, -1) + alpha * heat
    scale = max(1, 256 // size)
    canvas = Image.new("RGB", (size * scale, size * scale + 28), "black")
    canvas.paste(Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).resize((size * scale, size * scale), Image.NEAREST))
    draw = ImageDraw.Draw(canvas)
    for x0, y0, x1, y1 in np.asarray(boxes_model).reshape(-1, 4) * size * scale:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 0), width=2)
    draw.text((4, size * scale + 2), phrase[:60], fill=(255, 255, 255))
    draw.text((4, size * scale + 14), f"cosine {lo:.2f} .. {hi:.2f}", fill=(180, 180, 180))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# All metrics from embeddings
# ---------------------------------------------------------------------------------------------


def alignment_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, patch_emb: torch.Tensor | None,
                      grid: tuple[int, int], size: int, records: Sequence[dict], texts: Sequence[str],
                      image_index: Sequence[int], orig_hw: np.ndarray, transform, encode_text: TextEncoder,
                      logit_scale: float, prompts: dict | None = None) -> tuple[dict[str, float], dict]:
    """Retrieval, zero-shot and grounding metrics; also returns ``{"items", "maps"}`` for overlays."""
    metrics = retrieval_metrics(image_emb, text_emb, texts)
    metrics.update(zero_shot_metrics(image_emb, [r["labels"] for r in records], encode_text, logit_scale, prompts))
    extras: dict = {"items": [], "maps": []}
    if patch_emb is not None:
        items = grounding_items(records, image_index, orig_hw, transform)
        g, maps = grounding_metrics(patch_emb, grid, size, items, encode_text)
        metrics.update(g)
        extras = {"items": items, "maps": maps}
    return metrics, extras


CONVENTIONS = (
    "Retrieval: identical reports (after lowercasing) are one candidate. Zero-shot: softmax over positive vs "
    "negative prompt similarity, uncertain labels excluded, not mentioned = negative. Grounding: cosine "
    "patch-phrase maps upsampled to the input frame; mIoU averaged over thresholds 0.1-0.5; baseline = centred "
    "box of the mean reference size."
)


def markdown_report(metrics: dict[str, float], title: str = "") -> str:
    """A readable Markdown summary of `alignment_metrics`."""
    g = metrics.get
    lines = [f"### {title}", ""] if title else []
    lines += ["| retrieval | R@1 | R@5 | R@10 | median rank | chance R@5 |", "|---|---|---|---|---|---|"]
    for name, label in (("i2t", "image → report"), ("t2i", "report → image")):
        if f"{name}_r1" in metrics:
            lines.append(f"| {label} | {g(name + '_r1'):.3f} | {g(name + '_r5'):.3f} | {g(name + '_r10'):.3f} | "
                         f"{g(name + '_median_rank'):.0f} | {g('chance_r5_' + name):.3f} |")
    zs = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("zeroshot_auroc/")}
    if zs:
        lines += ["", "| zero-shot observation | AUROC |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in zs.items()]
        lines.append(f"| **mean** | **{g('zeroshot_mean_auroc'):.3f}** |")
    if "grounding_miou" in metrics:
        lines += ["", "| grounding | mIoU | CNR | pointing | centred-box mIoU | phrases |", "|---|---|---|---|---|---|",
                  f"| similarity map | {g('grounding_miou'):.3f} | {g('grounding_cnr'):.3f} | "
                  f"{g('grounding_pointing'):.3f} | {g('grounding_baseline_miou'):.3f} | {g('grounding_n_phrases'):.0f} |"]
    lines += ["", CONVENTIONS]
    return "\n".join(lines)


def write_results(out_dir: str | Path, metrics: dict[str, float], title: str = "") -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "align_metrics.json").write_text(json.dumps({**metrics, "conventions": CONVENTIONS}, indent=2))
    (out_dir / "align_metrics.md").write_text(markdown_report(metrics, title) + "\n")
