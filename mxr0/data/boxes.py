"""Box geometry on normalised ``[x1, y1, x2, y2]`` boxes: pairwise IoU and rasterising a union of boxes.

Written here rather than taken from a library: ``torchvision.ops.box_iou`` is the maintained one, but torchvision
is kept out of the venv (its PyPI builds fail to load beside the CPU torch we pin: ../shared/STACK_NOTES.md), and
shapely would be a heavy dependency for two numpy broadcasts. The data converters (VinDr reader fusion) and the
grounding / alignment metrics share these two functions.
"""

from __future__ import annotations

import numpy as np


def as_boxes(b) -> np.ndarray:
    """Any box-like input as a float64 ``[n, 4]`` array."""
    return np.asarray(b, dtype=np.float64).reshape(-1, 4)


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU [len(a), len(b)] of two box arrays."""
    a, b = as_boxes(a), as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_mask(boxes_model: np.ndarray, size: int) -> np.ndarray:
    """Union of normalised model-frame boxes as a [size, size] bool mask (pixel centres inside)."""
    c = (np.arange(size) + 0.5) / size
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in as_boxes(boxes_model):
        mask |= ((c[:, None] >= y0) & (c[:, None] < y1)) & ((c[None, :] >= x0) & (c[None, :] < x1))
    return mask
