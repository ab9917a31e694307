"""The SSL task's training data from its recipe section (`SSLModelConfig`): the current images of the training
studies, and the multi-crop views and iBOT block masks drawn from them (`mxr0.data.multicrop`)."""

from __future__ import annotations

from mxr0.config import ConfigError
from mxr0.config.tasks import SSLModelConfig
from mxr0.data.multicrop import BlockMasking, MultiCrop


def image_paths(records: list[dict], views: list[str] | None, all_images: bool) -> list[str]:
    """Paths of the current images of ``views`` (None: any view): every such image of a study when ``all_images``,
    else its first."""
    paths = []
    for r in records:
        for im in r["images"]:
            if im.get("role", "current") != "current" or (views is not None and im["view"] not in views):
                continue
            paths.append(im["path"])
            if not all_images:
                break
    return paths


def multicrop_views(c: SSLModelConfig, patch: int, mean, std) -> tuple[MultiCrop, BlockMasking | None]:
    """The multi-crop augmentation (two global crops, ``n_local_crops`` local ones, normalised with ``mean`` /
    ``std``) and, when iBOT is on, the block masking of the global crops' ``patch``-sized patches."""
    for name in ("global_crop_size", "local_crop_size"):
        if getattr(c, name) % patch:
            raise ConfigError(f"model.{name}={getattr(c, name)} is not a multiple of the patch size {patch}")
    multicrop = MultiCrop(
        global_size=c.global_crop_size, local_size=c.local_crop_size, n_global=2, n_local=c.n_local_crops,
        global_scale=tuple(c.global_crop_scale), local_scale=tuple(c.local_crop_scale), flip_prob=c.flip_prob,
        intensity_prob=c.intensity_prob, brightness=c.brightness, contrast=c.contrast, gamma=tuple(c.gamma),
        blur_prob=tuple(c.blur_prob), solarize_prob=tuple(c.solarize_prob), noise_prob=c.noise_prob,
        noise_std=c.noise_std, mean=mean, std=std, channels=3,
    )
    masking = BlockMasking(c.global_crop_size // patch) if c.ibot_loss_weight > 0 else None
    return multicrop, masking
