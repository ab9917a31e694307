"""Hugging Face image-processor configs (``preprocessor_config.json``) to and from ``ImageTransform``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_processor_config", "transform_arguments", "processor_config"]


def read_processor_config(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """``preprocessor_config.json`` of a local folder (or that json file itself), else the config of
    ``transformers.AutoImageProcessor`` for a Hub id (needs network or a cached copy)."""
    p = Path(name_or_path)
    cfg_file = p / "preprocessor_config.json" if p.is_dir() else p
    if cfg_file.is_file():
        with open(cfg_file, encoding="utf-8") as f:
            return json.load(f)
    if p.is_dir():
        raise FileNotFoundError(f"no preprocessor_config.json in '{p}'; export the model with its image processor")
    from transformers import AutoImageProcessor  # heavy import, only when needed

    return AutoImageProcessor.from_pretrained(str(name_or_path)).to_dict()


def _resize(cfg: dict[str, Any]) -> tuple[str, int]:
    """(resize mode, resize side) of a processor config's ``size``."""
    size = cfg.get("size")
    if isinstance(size, (int, float)):
        size = {"shortest_edge": int(size)}
    if not isinstance(size, dict):
        raise ValueError(f"processor config has no usable 'size': {size!r}")
    size = {k: v for k, v in size.items() if v is not None}
    if "shortest_edge" in size and "longest_edge" not in size:
        return "shortest", int(size["shortest_edge"])
    if "height" in size and "width" in size:
        if int(size["height"]) != int(size["width"]):
            raise ValueError(f"non-square resize {size} is not supported")
        return "stretch", int(size["height"])
    raise ValueError(f"unsupported processor 'size' {size}; expected shortest_edge or height/width")


def _output_side(cfg: dict[str, Any], resize: str, resize_size: int) -> int:
    """The output side: the square ``crop_size`` of a centre crop, or the side of a stretch resize."""
    do_crop = cfg.get("do_center_crop", "crop_size" in cfg)
    if do_crop:
        crop = cfg.get("crop_size")
        if isinstance(crop, (int, float)):
            crop = {"height": int(crop), "width": int(crop)}
        if not isinstance(crop, dict) or int(crop["height"]) != int(crop["width"]):
            raise ValueError(f"crop_size must be square, got {crop!r}")
        return int(crop["height"])
    if resize == "stretch":
        return resize_size
    raise ValueError("a shortest-edge resize without centre crop gives non-square outputs; not supported")


def _normalisation(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Rescaling and normalisation folded into 3-channel ``mean`` / ``std`` in [0, 1] units."""
    k = 255.0 * (float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0)
    if cfg.get("do_normalize", True):
        if cfg.get("image_mean") is None or cfg.get("image_std") is None:
            raise ValueError("processor config has do_normalize but no image_mean / image_std")
        mean = np.atleast_1d(np.asarray(cfg["image_mean"], dtype=np.float64))
        std = np.atleast_1d(np.asarray(cfg["image_std"], dtype=np.float64))
    else:
        mean, std = np.zeros(1), np.ones(1)
    # HF: (x255 * r - m) / s with x255 = 255 x  ==  (x - m / k) / (s / k), k = 255 r.
    return np.broadcast_to(mean / k, (3,)), np.broadcast_to(std / k, (3,))


def transform_arguments(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``ImageTransform`` arguments a processor config describes (see ``ImageTransform.from_processor_config``)."""
    if not cfg.get("do_resize", True):
        raise ValueError("processor configs with do_resize=False are not supported (inputs vary in size)")
    resize, resize_size = _resize(cfg)
    out = _output_side(cfg, resize, resize_size)
    mean, std = _normalisation(cfg)
    return dict(
        size=out,
        resize=resize,
        mode="crop",
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        channels=3,
        resize_size=None if resize_size == out else resize_size,
    )


def processor_config(t) -> dict[str, Any]:
    """The ``BitImageProcessor`` config of the transform ``t`` (see ``ImageTransform.to_processor_config``)."""
    if t.mode != "crop":
        raise ValueError("pad mode cannot be expressed as a BitImageProcessor config")
    if t.channels != 3:
        raise ValueError("BitImageProcessor produces 3 channels; this transform has 1")
    r = t.resize_size or t.size
    size = {"shortest_edge": r} if t.resize == "shortest" else {"height": r, "width": r}
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": size,
        "resample": 2,  # bilinear (PIL code 2), as our own transform resizes
        "do_center_crop": True,
        "crop_size": {"height": t.size, "width": t.size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in np.broadcast_to(t.mean, (3,))],
        "image_std": [float(v) for v in np.broadcast_to(t.std, (3,))],
        "do_convert_rgb": True,
    }
