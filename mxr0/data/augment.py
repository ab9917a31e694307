"""Light training augmentations for radiographs (applied to the [0, 1] image before the model
transform). No horizontal flips: the patient's left is on the image's right, and a flipped film
contradicts its report's laterality. No rotation either: the crop keeps the image axis-aligned (boxes and
masks of the record stay valid after a crop) and patient positioning varies little in upright films."""

from __future__ import annotations

import numpy as np
import torch


def light_augment(img: np.ndarray, scale: tuple[float, float] = (0.85, 1.0), max_shift: float = 0.05,
                  gamma: tuple[float, float] = (0.8, 1.25), contrast: tuple[float, float] = (0.85, 1.15),
                  generator: torch.Generator | None = None) -> np.ndarray:
    """Random crop (area ``scale``, keeping the aspect ratio, shifted by up to ``max_shift``), gamma
    and contrast jitter. Draws from torch's RNG (``generator`` or the global one), so a resumed run
    that restores the RNG repeats the same augmentations."""
    h, w = img.shape
    r = torch.rand(5, generator=generator).numpy()
    s = np.sqrt(scale[0] + (scale[1] - scale[0]) * r[0])
    ch, cw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    y0 = int(round((h - ch) * (0.5 + (r[1] - 0.5) * min(1.0, 2 * max_shift / max(1 - s, 1e-6)))))
    x0 = int(round((w - cw) * (0.5 + (r[2] - 0.5) * min(1.0, 2 * max_shift / max(1 - s, 1e-6)))))
    out = img[y0:y0 + ch, x0:x0 + cw]
    g = gamma[0] + (gamma[1] - gamma[0]) * r[3]
    c = contrast[0] + (contrast[1] - contrast[0]) * r[4]
    out = np.clip(out, 0.0, 1.0) ** g
    out = np.clip((out - 0.5) * c + 0.5, 0.0, 1.0)
    return out.astype(np.float32, copy=False)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one sample in one epoch. Augmentations drawn from it do not depend on
    worker count, prefetching or where a run was resumed, so a resumed run repeats an
    uninterrupted one exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 10_000_019 + index)
