"""Multi-crop views and iBOT block masks for self-supervised pretraining on radiographs.

`MultiCrop` turns one [0, 1] radiograph into ``n_global`` large and ``n_local`` small random
views (DINO multi-crop), with augmentations chosen for grayscale X-rays:

- random resized crops (area ``global_scale`` / ``local_scale`` of the image, aspect ratio 3:4 to
  4:3), resized with antialiasing;
- **no horizontal flip by default** (``flip_prob=0``): the patient's left is on the image's right,
  and laterality (heart on the image's right, liver on its left) is part of what an X-ray encoder
  should know. Enable it for anatomy where it does not matter;
- intensity changes a radiograph really shows: brightness and contrast (exposure and windowing),
  gamma (detector response / VOI LUT curve), Gaussian blur (focal spot, motion, resampling),
  additive noise (quantum mottle), and solarisation on the second global crop (as DINOv2, a strong
  intensity transform that removes the shortcut of matching grey levels between views). Colour
  jitter and random grayscale, meaningless on single-channel images, are left out.

Every draw comes from a ``torch.Generator`` (`mxr0.data.augment.sample_generator(seed, epoch,
index)` in `MultiCropDataset`), so a resumed run sees exactly the views an uninterrupted one would.

`BlockMasking` draws iBOT masks as DINOv2's ``MaskingGenerator`` does: rectangular blocks of random
area (at least ``min_num_patches``, at most half the grid per block) and aspect ratio (0.3 to 3.3)
are added until the target count is reached. A global crop is masked with probability
``mask_probability`` and then covers a ratio drawn uniformly from ``mask_ratio``; DINOv2 draws the
ratio per batch with stratified ranges, which needs the whole batch and would tie one sample's
views to its batch neighbours, so it is drawn per sample here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mxr0.data.augment import sample_generator
from mxr0.data.xray import read_xray

__all__ = ["BlockMasking", "MultiCrop", "MultiCropDataset", "collate_multicrop"]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


class BlockMasking:
    """Block-wise masks over an ``height`` x ``width`` patch grid (BEiT / iBOT / DINOv2)."""

    def __init__(self, height: int, width: int | None = None, min_num_patches: int = 4,
                 max_num_patches: int | None = None, min_aspect: float = 0.3, max_aspect: float | None = None):
        self.height, self.width = int(height), int(width or height)
        self.num_patches = self.height * self.width
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = int(max_num_patches if max_num_patches is not None else 0.5 * self.num_patches)
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def _add_block(self, mask: torch.Tensor, budget: int, g: torch.Generator) -> int:
        """Try (up to 10 times) to mask one new block of at most ``budget`` new patches."""
        for _ in range(10):
            area = _uniform(g, self.min_num_patches, max(budget, self.min_num_patches))
            aspect = math.exp(_uniform(g, *self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < w < self.width and 0 < h < self.height:
                top = _randint(g, 0, self.height - h)
                left = _randint(g, 0, self.width - w)
                block = mask[top:top + h, left:left + w]
                new = h * w - int(block.sum())
                if 0 < new <= budget:
                    block.fill_(True)
                    return new
        return 0

    def __call__(self, n_masked: int, generator: torch.Generator) -> torch.Tensor:
        """A bool mask [height, width] with about ``n_masked`` True patches (never more)."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < n_masked:
            delta = self._add_block(mask, min(n_masked - count, self.max_num_patches), generator)
            if delta == 0:
                break
            count += delta
        return mask

    def sample(self, generator: torch.Generator, probability: float, ratio: tuple[float, float]) -> torch.Tensor:
        """With ``probability``, a mask covering a ratio drawn from ``ratio``; else no mask. Flat [N]."""
        if probability <= 0 or float(torch.rand((), generator=generator)) >= probability:
            return torch.zeros(self.num_patches, dtype=torch.bool)
        r = _uniform(generator, ratio[0], ratio[1])
        return self(int(self.num_patches * r), generator).flatten()


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a [H, W] image (reflect padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, min(x.shape) - 1)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[None, None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y[0, 0]


@dataclass(frozen=True)
class MultiCrop:
    """Random global and local views of a [0, 1] radiograph, normalised for the encoder.

    Probabilities are per crop; ``blur_prob`` holds (first global, second and further globals,
    locals) and ``solarize_prob`` the same, DINOv2's asymmetric recipe. Normalisation uses ``mean``
    / ``std`` in [0, 1] units, replicated to ``channels``, like `mxr0.data.transforms.ImageTransform`.
    """

    global_size: int = 224
    local_size: int = 98
    n_global: int = 2
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.0
    intensity_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: tuple[float, float] = (0.7, 1.4)
    blur_prob: tuple[float, float, float] = (1.0, 0.1, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: tuple[float, float, float] = (0.0, 0.2, 0.0)
    noise_prob: float = 0.2
    noise_std: float = 0.03
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    channels: int = 3

    def __post_init__(self) -> None:
        if self.n_global < 1:
            raise ValueError(f"n_global must be >= 1, got {self.n_global}")
        if self.n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {self.n_local}")
        for name in ("global_scale", "local_scale", "aspect_ratio", "gamma", "blur_sigma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        if self.global_scale[1] > 1 or self.local_scale[1] > 1:
            raise ValueError("crop scales are fractions of the image area and must be <= 1")

    # --- one crop ---------------------------------------------------------------------------
    def _crop_box(self, h: int, w: int, scale: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_r = (math.log(self.aspect_ratio[0]), math.log(self.aspect_ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *scale)
            r = math.exp(_uniform(g, *log_r))
            cw = int(round(math.sqrt(target * r)))
            ch = int(round(math.sqrt(target / r)))
            if 0 < cw <= w and 0 < ch <= h:
                return _randint(g, 0, h - ch), _randint(g, 0, w - cw), ch, cw
        side = min(h, w)  # fallback: the central square
        return (h - side) // 2, (w - side) // 2, side, side

    def _view(self, img: torch.Tensor, size: int, scale: tuple[float, float], blur_p: float, sol_p: float,
              g: torch.Generator) -> torch.Tensor:
        h, w = img.shape
        top, left, ch, cw = self._crop_box(h, w, scale, g)
        x = img[top:top + ch, left:left + cw]
        x = F.interpolate(x[None, None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=(ch > size or cw > size))[0, 0]
        u = torch.rand(8, generator=g)  # one fixed-size draw per view keeps the stream aligned
        if u[0] < self.flip_prob:
            x = x.flip(-1)
        if u[1] < self.intensity_prob:
            b = 1 + self.brightness * (2 * float(u[2]) - 1)
            c = 1 + self.contrast * (2 * float(u[3]) - 1)
            x = (x * b).clamp(0, 1)
            x = ((x - x.mean()) * c + x.mean()).clamp(0, 1)
            gam = math.exp(math.log(self.gamma[0]) + (math.log(self.gamma[1]) - math.log(self.gamma[0])) * float(u[4]))
            x = x.clamp_min(0) ** gam
        if u[5] < blur_p:
            sigma = _uniform(g, *self.blur_sigma) * size / 224.0
            if sigma > 0.05:
                x = _gaussian_blur(x, sigma)
        if u[6] < self.noise_prob and self.noise_std > 0:
            std = _uniform(g, 0.0, self.noise_std)
            x = (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)
        if u[7] < sol_p:
            x = torch.where(x >= 0.5, 1.0 - x, x)
        c = self.channels
        mean = torch.tensor(self.mean, dtype=torch.float32).expand(c).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).expand(c).view(c, 1, 1)
        return (x.unsqueeze(0) - mean) / std

    def __call__(self, img: np.ndarray | torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(global crops [n_global, C, G, G], local crops [n_local, C, L, L]) of an (H, W) [0, 1] image."""
        x = torch.as_tensor(np.ascontiguousarray(img, dtype=np.float32)) if not isinstance(img, torch.Tensor) else img.float()
        if x.ndim != 2:
            raise ValueError(f"MultiCrop expects a 2-D (H, W) image in [0, 1], got shape {tuple(x.shape)}")
        globals_ = []
        for i in range(self.n_global):
            k = min(i, 1)
            globals_.append(self._view(x, self.global_size, self.global_scale, self.blur_prob[k], self.solarize_prob[k], generator))
        locals_ = [self._view(x, self.local_size, self.local_scale, self.blur_prob[2], self.solarize_prob[2], generator)
                   for _ in range(self.n_local)]
        c = self.channels
        loc = torch.stack(locals_) if locals_ else torch.zeros(0, c, self.local_size, self.local_size)
        return torch.stack(globals_), loc


class MultiCropDataset(torch.utils.data.Dataset):
    """Radiographs (paths) → multi-crop views and iBOT masks, reproducible per (seed, epoch, index)."""

    def __init__(self, paths: list[str], multicrop: MultiCrop, masking: BlockMasking | None = None,
                 mask_probability: float = 0.5, mask_ratio: tuple[float, float] = (0.1, 0.5), seed: int = 0):
        self.paths = list(paths)
        self.multicrop = multicrop
        self.masking = masking
        self.mask_probability = float(mask_probability)
        self.mask_ratio = (float(mask_ratio[0]), float(mask_ratio[1]))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loader each epoch: views are a function of (seed, epoch, index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:

        g = sample_generator(self.seed, self.epoch, i)
        glob, loc = self.multicrop(read_xray(self.paths[i]), g)
        if self.masking is not None:
            masks = torch.stack([self.masking.sample(g, self.mask_probability, self.mask_ratio) for _ in range(len(glob))])
        else:
            masks = torch.zeros(len(glob), 0, dtype=torch.bool)
        return {"global_crops": glob, "local_crops": loc, "masks": masks}


def collate_multicrop(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack crop-major: ``global_crops`` [n_global * B, C, G, G] (all first views, then all second
    views, …), ``local_crops`` [n_local * B, C, L, L], ``masks`` [n_global * B, n_patches]."""
    glob = torch.stack([it["global_crops"] for it in items], dim=1)  # [n_g, B, ...]
    loc = torch.stack([it["local_crops"] for it in items], dim=1)
    masks = torch.stack([it["masks"] for it in items], dim=1)
    return {
        "global_crops": glob.flatten(0, 1),
        "local_crops": loc.flatten(0, 1),
        "masks": masks.flatten(0, 1),
    }
