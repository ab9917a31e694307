"""The one model-facing image transform: [0, 1] radiograph -> normalised square tensor.

Everything that turns a decoded X-ray (see :mod:`mxr0.data.xray`) into encoder input goes through
:class:`ImageTransform`, and every box that crosses between the original image and the model frame
goes through its :class:`Geometry`, so training, grounding targets, inference and exported
``preprocessor_config.json`` files all agree on one mapping.

Pipeline (crop mode, the Hugging Face ``BitImageProcessor`` / DINOv2 convention): resize so that the
shortest side equals ``resize_size`` (default ``size``), centre-crop ``size`` x ``size``, replicate to
``channels`` and normalise with ``mean`` / ``std``. Pad mode instead resizes the longest side to
``size`` and pads (centred) to a square with ``pad_value``; nothing is cut off, which is what box
and mask tasks near the image border want. Resizing is bilinear with antialiasing
(``torch.nn.functional.interpolate``), edge-aligned (``align_corners=False``), so a point at
normalised position u in the original image sits at normalised position u of the resized image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .processor_config import processor_config, read_processor_config, transform_arguments

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Geometry", "ImageTransform"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_RESIZE_MODES = ("shortest", "stretch")
_MODES = ("crop", "pad")


def _as_boxes(boxes: Any) -> tuple[np.ndarray, bool]:
    """Boxes as a float64 [N, 4] array, and whether the input was a single [4] box."""
    b = np.asarray(boxes, dtype=np.float64)
    single = b.ndim == 1
    if single:
        b = b[None, :]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (x0, y0, x1, y1 normalised), got {np.shape(boxes)}")
    return b, single


@dataclass(frozen=True)
class Geometry:
    """How an original ``height`` x ``width`` image lands in the ``size`` x ``size`` model frame.

    The original is resized to ``resized_height`` x ``resized_width`` pixels and placed with its
    top-left corner at pixel (``offset_x``, ``offset_y``) of the model frame: negative offsets mean
    the resized image was cropped (crop mode), positive ones that it was padded (pad mode).
    Boxes are float arrays [N, 4] of (x0, y0, x1, y1), normalised to [0, 1] in their frame.
    """

    height: int
    width: int
    size: int
    resized_height: int
    resized_width: int
    offset_x: int
    offset_y: int

    def _affine(self) -> tuple[np.ndarray, np.ndarray]:
        s = float(self.size)
        scale = np.array([self.resized_width, self.resized_height] * 2, dtype=np.float64) / s
        shift = np.array([self.offset_x, self.offset_y] * 2, dtype=np.float64) / s
        return scale, shift

    @property
    def crop_box(self) -> np.ndarray:
        """The part of the original image that is visible in the model frame (normalised xyxy)."""
        return self.to_original(np.array([0.0, 0.0, 1.0, 1.0]))

    def visible(self, boxes_original: Any) -> np.ndarray:
        """Bool [N]: whether each original-frame box overlaps the model frame (not cropped away)."""
        b, _ = _as_boxes(boxes_original)
        scale, shift = self._affine()
        m = b * scale + shift
        return ~((m[:, 2] <= 0) | (m[:, 0] >= 1) | (m[:, 3] <= 0) | (m[:, 1] >= 1))

    def to_model(self, boxes_original: Any) -> np.ndarray:
        """Map normalised original-frame boxes to the normalised model frame, clipped to [0, 1].

        Boxes entirely outside the model frame (cropped away) come back as rows of NaN; filter with
        ``~np.isnan(out).any(axis=1)`` or :meth:`visible`. A [4] input gives a [4] output.
        """
        b, single = _as_boxes(boxes_original)
        scale, shift = self._affine()
        m = b * scale + shift
        outside = (m[:, 2] <= 0) | (m[:, 0] >= 1) | (m[:, 3] <= 0) | (m[:, 1] >= 1)
        m = np.clip(m, 0.0, 1.0)
        m[outside] = np.nan
        return m[0] if single else m

    def to_original(self, boxes_model: Any) -> np.ndarray:
        """Map normalised model-frame boxes (e.g. predictions) back to the normalised original frame.

        The result is clipped to [0, 1]: parts of a box lying on padding are dropped. For boxes inside
        the visible region, ``to_original(to_model(b)) == b`` up to float rounding.
        """
        b, single = _as_boxes(boxes_model)
        scale, shift = self._affine()
        o = np.clip((b - shift) / scale, 0.0, 1.0)
        return o[0] if single else o


def _placement(h: int, w: int, s: int, mode: str, resize: str, resize_size: int | None) -> Geometry:
    """The :class:`Geometry` of an ``h`` x ``w`` original in an ``s`` x ``s`` frame (see :class:`ImageTransform`)."""
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if mode == "pad":
        if h >= w:
            nh, nw = s, max(1, round(s * w / h))
        else:
            nh, nw = max(1, round(s * h / w)), s
        return Geometry(h, w, s, nh, nw, (s - nw) // 2, (s - nh) // 2)
    r = resize_size or s
    if resize == "stretch":
        nh = nw = r
    elif h <= w:  # shortest edge to r; long edge truncated like transformers' resize
        nh, nw = r, int(r * w / h)
    else:
        nh, nw = int(r * h / w), r
    nh, nw = max(nh, s), max(nw, s)
    return Geometry(h, w, s, nh, nw, -((nw - s) // 2), -((nh - s) // 2))


@dataclass(frozen=True)
class ImageTransform:
    """Resize, crop or pad, replicate channels and normalise a [0, 1] X-ray for the encoder.

    ``size``: output side. ``resize``: ``"shortest"`` keeps the aspect ratio and brings the shortest
    side to ``resize_size`` (crop mode); ``"stretch"`` resizes to ``resize_size`` x ``resize_size``
    ignoring the aspect ratio (HF ``size={"height", "width"}``). ``mode``: ``"crop"`` centre-crops to
    ``size`` x ``size``; ``"pad"`` brings the LONGEST side to ``size`` and pads to a square with
    ``pad_value`` (in [0, 1] units, before normalisation). ``resize_size`` defaults to ``size``; it
    is the shortest-edge target before cropping (HF ``size.shortest_edge`` vs ``crop_size``).
    ``mean`` / ``std`` have one value or ``channels`` values (in [0, 1] units).
    """

    size: int
    resize: str = "shortest"
    mode: str = "crop"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    resize_size: int | None = None
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.size, (int, np.integer)) or self.size < 1:
            raise ValueError(f"size must be a positive int, got {self.size!r}")
        if self.resize not in _RESIZE_MODES:
            raise ValueError(f"resize must be one of {_RESIZE_MODES}, got {self.resize!r}")
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        rs = self.size if self.resize_size is None else int(self.resize_size)
        if self.mode == "pad" and (self.resize != "shortest" or rs != self.size):
            raise ValueError(
                "pad mode resizes the longest side to `size`; leave resize='shortest' and resize_size=None"
            )
        if self.mode == "crop" and rs < self.size:
            raise ValueError(f"resize_size ({rs}) must be >= size ({self.size}) to centre-crop without padding")
        mean = tuple(float(v) for v in np.atleast_1d(np.asarray(self.mean, dtype=np.float64)))
        std = tuple(float(v) for v in np.atleast_1d(np.asarray(self.std, dtype=np.float64)))
        for name, vals in (("mean", mean), ("std", std)):
            if len(vals) not in (1, self.channels):
                raise ValueError(f"{name} must have 1 or {self.channels} values (channels={self.channels}), got {vals}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {std}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "resize_size", None if self.resize_size is None else rs)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "pad_value", float(self.pad_value))

    # -----------------------------------------------------------------------------------------
    # Geometry and pixels
    # -----------------------------------------------------------------------------------------

    def geometry(self, h: int, w: int) -> Geometry:
        """The placement of an ``h`` x ``w`` original in the model frame (same arithmetic as HF)."""
        return _placement(h, w, self.size, self.mode, self.resize, self.resize_size)

    def __call__(self, img: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Transform an (H, W) float image in [0, 1] into a normalised [channels, size, size] tensor."""
        if isinstance(img, torch.Tensor):
            x = img
        else:
            arr = np.ascontiguousarray(img, dtype=np.float32)
            x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        if x.ndim != 2:
            raise ValueError(f"ImageTransform expects a 2-D (H, W) image in [0, 1], got shape {tuple(x.shape)}")
        x = x.to(torch.float32)
        h, w = x.shape
        g = self.geometry(h, w)
        if (g.resized_height, g.resized_width) != (h, w):
            x = F.interpolate(
                x[None, None], size=(g.resized_height, g.resized_width), mode="bilinear",
                align_corners=False, antialias=True,
            )[0, 0]
        s = self.size
        if self.mode == "crop":
            top, left = -g.offset_y, -g.offset_x
            x = x[top : top + s, left : left + s]
        else:
            canvas = torch.full((s, s), self.pad_value, dtype=torch.float32)
            canvas[g.offset_y : g.offset_y + g.resized_height, g.offset_x : g.offset_x + g.resized_width] = x
            x = canvas
        c = self.channels
        mean = torch.tensor(self.mean, dtype=torch.float32).expand(c).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).expand(c).view(c, 1, 1)
        return ((x.unsqueeze(0) - mean) / std).contiguous()

    # -----------------------------------------------------------------------------------------
    # Hugging Face image-processor configs
    # -----------------------------------------------------------------------------------------

    @classmethod
    def from_processor_config(cls, cfg: dict[str, Any]) -> ImageTransform:
        """Build the transform a Hugging Face image-processor config describes (BitImageProcessor style).

        ``size={"shortest_edge": N}`` resizes the shortest side to N, ``size={"height": H, "width": H}``
        stretches to H x H; ``do_center_crop`` with ``crop_size`` gives the output side. Rescaling and
        normalisation are folded into ``mean`` / ``std`` in [0, 1] units, so the same input gives
        the same normalised values. The resampling filter is not copied (ours is always bilinear).
        Configs whose output would not be square (no crop after a shortest-edge resize) are refused.
        """
        return cls(**transform_arguments(cfg))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike[str]) -> ImageTransform:
        """Read ``preprocessor_config.json`` from a local folder (or that json file itself), else ask
        ``transformers.AutoImageProcessor`` for a Hub id (needs network or a cached copy)."""
        return cls.from_processor_config(read_processor_config(name_or_path))

    @classmethod
    def for_encoder(cls, name_or_path: str | os.PathLike[str] | None, size: int, mean, std) -> ImageTransform:
        """The transform of a pretrained encoder (its image-processor config) when ``name_or_path`` is
        set, else a new encoder's: ``size`` with the recipe's ``mean`` / ``std`` (what every task does)."""
        if name_or_path:
            return cls.from_pretrained(name_or_path)
        return cls(size=size, mean=tuple(mean), std=tuple(std))

    def to_image_processor(self):
        """This transform as a Hugging Face ``BitImageProcessor`` (its PIL backend where transformers has one,
        saved as the same type: no torchvision needed), for processors bundled with a model."""
        import transformers

        cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
        return cls(**{k: v for k, v in self.to_processor_config().items()
                      if k not in ("image_processor_type", "processor_class")})

    def save_pretrained(self, out_dir: str | os.PathLike[str], keep_existing: bool = False) -> Path:
        """Write ``preprocessor_config.json`` (what `from_pretrained` and ``AutoImageProcessor`` read) into
        ``out_dir``; ``keep_existing`` leaves one already written by a processor's ``save_pretrained``."""
        path = Path(out_dir) / "preprocessor_config.json"
        if not (keep_existing and path.exists()):
            path.write_text(json.dumps(self.to_processor_config(), indent=2))
        return path

    def to_processor_config(self) -> dict[str, Any]:
        """A ``BitImageProcessor`` config equivalent to this transform (no remote code needed).

        Resampling is written as 2 (bilinear, as this transform resizes); PIL's bilinear filter and
        ours agree closely but not bit for bit. Pad mode and 1-channel transforms have
        no BitImageProcessor equivalent and raise ``ValueError``.
        """
        return processor_config(self)
