"""Box scores for phrase grounding, localisation and grounded reports, and box overlays.

Boxes are float arrays [N, 4] of normalised (x1, y1, x2, y2), all in the same frame (the original
image's, after `mxr0.data.boxes_text.to_original`).

- ``iou``: for one example, the IoU of the union of the predicted boxes with the union of the reference
  boxes (rasterised on a 512² grid), so several boxes for one phrase (MS-CXR has them) count as one
  region; no predicted box scores 0. For one box each it equals the plain box IoU up to the grid.
- ``acc50``: the share of examples with that IoU ≥ 0.5 (Acc@0.5 of the grounding papers); ``miou``:
  its mean.
- ``map50``: per example, average precision at IoU 0.5 with the predicted boxes ranked in the order
  the model wrote them (generation gives no scores; the first box is taken as the most confident),
  each reference box matched at most once (VOC all-point interpolation), then the mean over examples;
  meaningful where examples have several boxes (``n_multi`` counts them).
- the fixed-prior baseline: every example answered with one box, the mean training box
  (`prior_box`), the trivial model a grounding result has to beat.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mxr0.data.boxes import as_boxes, box_iou, box_mask  # noqa: F401 (box_iou re-exported)

GRID = 512


_as_boxes = as_boxes


def region_iou(pred, ref, grid: int = GRID) -> float:
    """IoU of the union of ``pred`` boxes with the union of ``ref`` boxes (0 when ``pred`` is empty)."""
    pred, ref = _as_boxes(pred), _as_boxes(ref)
    if len(pred) == 0 or len(ref) == 0:
        return float(len(pred) == 0 and len(ref) == 0)
    if len(pred) == 1 and len(ref) == 1:
        return float(box_iou(pred, ref)[0, 0])
    mp, mr = box_mask(np.clip(pred, 0, 1), grid), box_mask(np.clip(ref, 0, 1), grid)
    union = np.logical_or(mp, mr).sum()
    return float(np.logical_and(mp, mr).sum() / union) if union else 0.0


def average_precision(pred, ref, threshold: float = 0.5) -> float:
    """AP at ``threshold`` of ranked predictions against the reference boxes (each matched once)."""
    pred, ref = _as_boxes(pred), _as_boxes(ref)
    if len(ref) == 0:
        return float(len(pred) == 0)
    if len(pred) == 0:
        return 0.0
    ious = box_iou(pred, ref)
    used = np.zeros(len(ref), dtype=bool)
    tp = np.zeros(len(pred))
    for i in range(len(pred)):
        cand = np.where(~used & (ious[i] >= threshold))[0]
        if len(cand):
            j = cand[np.argmax(ious[i, cand])]
            used[j] = True
            tp[i] = 1
    ctp = np.cumsum(tp)
    recall = ctp / len(ref)
    precision = ctp / np.arange(1, len(pred) + 1)
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


def grounding_scores(preds: Sequence, refs: Sequence, labels: Sequence[str] | None = None,
                     threshold: float = 0.5) -> dict[str, float]:
    """``miou``, ``acc50``, ``map50``, ``no_box`` (share of examples without a parsable box), ``n``,
    ``n_multi``, and ``acc50/<label>`` / ``miou/<label>`` per label when ``labels`` are given."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not refs:
        return {"n": 0.0}
    ious = np.array([region_iou(p, r) for p, r in zip(preds, refs)])
    aps = np.array([average_precision(p, r, threshold) for p, r in zip(preds, refs)])
    out = {"miou": float(ious.mean()), "acc50": float((ious >= threshold).mean()), "map50": float(aps.mean()),
           "no_box": float(np.mean([len(_as_boxes(p)) == 0 for p in preds])), "n": float(len(refs)),
           "n_multi": float(sum(len(_as_boxes(r)) > 1 for r in refs))}
    if labels is not None:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, lab in enumerate(labels):
            groups[str(lab)].append(i)
        for lab, idx in sorted(groups.items()):
            out[f"acc50/{lab}"] = float((ious[idx] >= threshold).mean())
            out[f"miou/{lab}"] = float(ious[idx].mean())
    return out


def prior_box(train_boxes: Sequence) -> np.ndarray:
    """The fixed-prior baseline's box: the coordinate-wise mean of all training reference boxes."""
    boxes = np.concatenate([_as_boxes(b) for b in train_boxes if len(_as_boxes(b))]) if train_boxes else np.zeros((0, 4))
    if len(boxes) == 0:
        return np.array([0.25, 0.25, 0.75, 0.75])
    return boxes.mean(axis=0)


def draw_overlay(image: np.ndarray, out_path: str | Path, pred=(), ref=(), phrase: str = "",
                 pred_labels: Sequence[str] = ()) -> Path:
    """An RGB PNG of the [0, 1] grey ``image`` (H x W) with reference boxes in green and predicted boxes in
    red (normalised, original frame), the phrase written on top; returns the path."""
    from PIL import Image, ImageDraw

    img = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    h, w = img.shape[:2]
    scale = max(1, int(np.ceil(384 / max(h, w))))  # small phantom images are drawn larger
    pil = Image.fromarray((img * 255).astype(np.uint8)).convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    W, H = pil.size
    for boxes, colour, names in ((ref, (40, 220, 60), ()), (pred, (235, 50, 40), pred_labels)):
        for k, (x1, y1, x2, y2) in enumerate(_as_boxes(boxes)):
            draw.rectangle([x1 * W, y1 * H, x2 * W, y2 * H], outline=colour, width=max(2, W // 200))
            if k < len(names) and names[k]:
                draw.text((x1 * W + 3, y1 * H + 2), names[k][:40], fill=colour)
    legend = (phrase + "  " if phrase else "") + "green: reference  red: predicted"
    draw.rectangle([0, 0, W, 14], fill=(0, 0, 0))
    draw.text((3, 1), legend[:120], fill=(255, 255, 255))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(out_path)
    return out_path
