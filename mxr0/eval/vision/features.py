"""Frozen-encoder features: one forward pass per study image, cached on disk.

Each study contributes one image (the first current image of an allowed view, as the classifier
does) through the encoder's own `mxr0.data.transforms.ImageTransform`. Features per image:

- ``cls``: the final-normed CLS token; ``mean_patch``: the mean of the final-normed patch tokens
  (registers excluded); ``last4``: the CLS tokens of the last four blocks, each through the final
  layer norm, concatenated (DINOv2's linear-evaluation option);
- ``patches`` (segmentation only): patch-token maps [n_layers, D, h, w] of evenly spaced blocks
  (the last one included), each through the final layer norm, as float16.

`cached_features` keys a cache file on the encoder (config and weight-file size / mtime, or Hub
id, or random seed), the transform, the images and the options, so an evaluation sweep (probe
learning rates, kNN k, heads) costs one feature pass.

Precision: fp32 by default; ``precision="bf16"`` (or ``"auto"``: bf16 where the device has fast bf16,
see `mxr0.precision`) runs the encoder under bf16 autocast; the features stay float32 arrays. The
environment variable ``MXR0_FEATURE_PRECISION`` sets it for `cached_features` when no argument is
given (e.g. ``MXR0_FEATURE_PRECISION=auto mxr0 eval vision ...``). The precision that ran is in
the result (``arrays["precision"]``) and in the cache key. bf16 features agree with fp32 ones to a
cosine above 0.99 (tested; ``tests/unit/test_bf16.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mxr0.data.classify_dataset import label_targets
from mxr0.data.loading import select_image
from mxr0.data.records import CHEXPERT_LABELS
from mxr0.data.xray import read_xray
from mxr0.models.encoder import encoder_transform, load_encoder, num_prefix_tokens, random_like
from mxr0.precision import autocast, resolve_precision

log = logging.getLogger(__name__)

__all__ = ["Encoder", "StudyImages", "cached_features", "collate_study_images", "encode_loader", "load_encoder_spec"]


class StudyImages(torch.utils.data.Dataset):
    """One image per study (first current image of an allowed view) with its metadata.

    Items: ``pixel_values`` and ``index``; with ``masks`` (organ names), also ``masks`` [n, S, S]
    in the model frame (resized and cropped exactly like the image, thresholded at 0.5) for
    studies that have them all (others are left out).
    """

    def __init__(self, records: list[dict], transform, views: list[str] | None = None,
                 masks: list[str] | None = None, labels: list[str] | None = None,
                 uncertain: str = "ones", blank: str = "zeros"):

        self.transform = transform
        self.mask_names = list(masks) if masks else None
        self.label_names = list(labels or CHEXPERT_LABELS)
        self.items: list[dict[str, Any]] = []
        for r in records:
            k = select_image(r, views)
            if k is None:
                continue
            item = {"path": r["images"][k]["path"], "study_id": r["study_id"], "anatomy": r["anatomy"],
                    "view": r["images"][k]["view"], "sex": r.get("sex", ""), "age": r.get("age")}
            if self.mask_names:
                by_name = {m["name"]: m["path"] for m in r.get("masks", []) if m.get("image_index", 0) == k}
                if not all(n in by_name for n in self.mask_names):
                    continue
                item["mask_paths"] = [by_name[n] for n in self.mask_names]
            y, m = label_targets(r, self.label_names, uncertain, blank)
            item["labels"], item["label_mask"] = y, m
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def meta(self, key: str) -> list:
        return [it[key] for it in self.items]

    def __getitem__(self, i: int) -> dict:

        it = self.items[i]
        img = read_xray(it["path"])
        out = {"pixel_values": self.transform(img), "index": torch.tensor(i)}
        if self.mask_names:
            out["masks"] = torch.stack([self._mask(p, img.shape) for p in it["mask_paths"]])
        return out

    def _mask(self, path: str, shape: tuple[int, int]) -> torch.Tensor:
        import torch.nn.functional as F
        from PIL import Image

        m = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        if m.shape != tuple(shape):
            raise ValueError(f"mask {path} has shape {m.shape}, its image {tuple(shape)}")
        g = self.transform.geometry(*m.shape)
        x = torch.from_numpy(m)[None, None]
        if (g.resized_height, g.resized_width) != m.shape:
            x = F.interpolate(x, size=(g.resized_height, g.resized_width), mode="bilinear", align_corners=False,
                              antialias=True)
        x = x[0, 0]
        s = g.size
        if self.transform.mode == "crop":
            x = x[-g.offset_y:-g.offset_y + s, -g.offset_x:-g.offset_x + s]
        else:
            canvas = torch.zeros(s, s)
            canvas[g.offset_y:g.offset_y + g.resized_height, g.offset_x:g.offset_x + g.resized_width] = x
            x = canvas
        return x > 0.5


def collate_study_images(items: list[dict]) -> dict[str, torch.Tensor]:
    return torch.utils.data.default_collate(items)


@torch.no_grad()
def encode_loader(backbone, loader, accelerator=None, device=None, last4: bool = False,
                  patch_layers: list[int] | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Run a frozen backbone over a `StudyImages` loader; arrays in dataset order plus metadata.

    With ``accelerator`` the loader may be sharded across ranks (``gather_for_metrics``).
    ``patch_layers``: 1-based block indices whose normed patch maps are returned as ``patches``.
    ``precision``: ``fp32``, ``bf16`` (autocast) or ``auto``; recorded as ``arrays["precision"]``.
    """

    was_training = backbone.training
    backbone.eval()
    device = device or (accelerator.device if accelerator is not None else next(backbone.parameters()).device)
    prec = resolve_precision(precision, device)
    if prec == "bf16-weights":
        raise ValueError("feature extraction runs fp32 or bf16 autocast (precision 'bf16'); 'bf16-weights' would "
                         "change the weights of a model the caller owns")
    n_prefix = num_prefix_tokens(backbone)
    want_hidden = last4 or bool(patch_layers)
    acc: dict[str, list] = {"cls": [], "mean_patch": [], "index": []}
    if last4:
        acc["last4"] = []
    if patch_layers:
        acc["patches"] = []
    if "masks" in _peek_keys(loader):
        acc["masks"] = []
    try:
        for batch in loader:
            pv = batch["pixel_values"].to(device)
            with autocast(prec, device):
                out = backbone(pixel_values=pv, output_hidden_states=want_hidden)
            h = out.last_hidden_state.float()
            res = {"cls": h[:, 0], "mean_patch": h[:, n_prefix:].mean(1), "index": batch["index"].to(device)}
            if want_hidden:
                norm = backbone.layernorm
                hs = [x.float() for x in out.hidden_states]  # embeddings + one per block, before the final norm
                if last4:
                    res["last4"] = torch.cat([norm(x[:, 0]).float() for x in hs[-4:]], dim=1)
                if patch_layers:
                    side = int(round((h.shape[1] - n_prefix) ** 0.5))
                    maps = [norm(hs[i][:, n_prefix:]).float().transpose(1, 2).reshape(h.shape[0], -1, side, side)
                            for i in patch_layers]
                    res["patches"] = torch.stack(maps, 1).half()
            if "masks" in acc:
                res["masks"] = batch["masks"].to(device)
            if accelerator is not None and accelerator.num_processes > 1:
                res = accelerator.gather_for_metrics(res)
            for k, v in res.items():
                acc[k].append(v.cpu())
    finally:
        backbone.train(was_training)
    arrays = {k: torch.cat(v).numpy() for k, v in acc.items()}
    order = np.argsort(arrays["index"], kind="stable")
    arrays = {k: v[order] for k, v in arrays.items()}
    arrays["precision"] = prec
    ds = _study_images(loader)
    if ds is not None:
        _attach_meta(arrays, ds)
    return arrays


def _study_images(loader) -> StudyImages | None:
    ds = loader.dataset
    while not isinstance(ds, StudyImages) and hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds if isinstance(ds, StudyImages) else None


def _peek_keys(loader) -> set[str]:
    ds = _study_images(loader)
    return {"masks"} if ds is not None and ds.mask_names else set()


# ---------------------------------------------------------------------------------------------
# Encoders by spec, and the cache
# ---------------------------------------------------------------------------------------------


class Encoder:
    """A frozen encoder, its transform and a fingerprint for the feature cache."""

    def __init__(self, model, transform, name: str, fingerprint: str):
        self.model, self.transform, self.name, self.fingerprint = model, transform, name, fingerprint


def _fingerprint_dir(path: Path) -> str:
    parts = []
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
            if f.suffix == ".json":
                parts.append(hashlib.sha1(f.read_bytes()).hexdigest())
    return "|".join(parts)


def load_encoder_spec(spec: str, seed: int = 0, device: str | None = None) -> Encoder:
    """``PATH`` or Hub id of any encoder source `mxr0.models.encoder.load_encoder` accepts (an XR-0 /
    DINOv2 / RAD-DINO encoder, a classifier, an alignment dual encoder or a report / VLM export: their
    vision tower) with an image-processor config, or ``random:PATH`` for the same encoder architecture and
    transform at random initialisation."""

    random = spec.startswith("random:")
    src = spec[len("random:"):] if random else spec
    model = random_like(src, seed=seed) if random else load_encoder(src)  # first: names an unknown kind of source
    transform = encoder_transform(src)
    model.eval()
    if device:
        model.to(device)
    p = Path(src)
    base = _fingerprint_dir(p) if p.is_dir() else f"hub:{src}"
    fp = f"random:{seed}:{base}" if random else base
    return Encoder(model, transform, spec, fp)


def cached_features(encoder: Encoder, dataset: StudyImages, cache_dir: str | os.PathLike | None = None,
                    batch_size: int = 64, last4: bool = False, patch_layers: list[int] | None = None,
                    num_workers: int = 0, device: str | None = None, precision: str | None = None) -> dict[str, Any]:
    """`encode_loader` over ``dataset``, read from / written to ``cache_dir`` when given. ``precision``:
    ``fp32`` / ``bf16`` / ``auto`` (default: ``$MXR0_FEATURE_PRECISION``, else fp32)."""

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    prec = resolve_precision(precision or os.environ.get("MXR0_FEATURE_PRECISION") or "fp32", dev)
    key = None
    if cache_dir is not None:
        desc = {"encoder": encoder.fingerprint, "transform": repr(encoder.transform),
                "paths": [it["path"] for it in dataset.items], "masks": dataset.mask_names,
                "last4": last4, "patch_layers": patch_layers, "version": 1}
        if prec != "fp32":  # fp32 keys stay as before, so existing caches are still found
            desc["precision"] = prec
        key = hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]
        f = Path(cache_dir) / f"features-{key}.npz"
        if f.is_file():
            with np.load(f, allow_pickle=False) as z:
                arrays: dict[str, Any] = {k: z[k] for k in z.files}
            arrays["precision"] = prec
            _attach_meta(arrays, dataset)
            log.info("features of %s read from %s", encoder.name, f)
            return arrays
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_study_images)
    encoder.model.to(dev)
    arrays = encode_loader(encoder.model, loader, device=dev, last4=last4, patch_layers=patch_layers, precision=prec)
    if key is not None:
        f = Path(cache_dir) / f"features-{key}.npz"
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, **{k: v for k, v in arrays.items() if isinstance(v, np.ndarray)})
        os.replace(tmp, f)
    return arrays


def _attach_meta(arrays: dict[str, Any], ds: StudyImages) -> None:
    idx = arrays["index"]
    for key in ("study_id", "anatomy", "view", "sex", "age"):
        arrays[key] = [ds.items[i][key] for i in idx]
    n = len(ds.label_names)
    arrays["labels"] = np.stack([ds.items[i]["labels"] for i in idx]) if len(idx) else np.zeros((0, n), np.float32)
    arrays["label_mask"] = np.stack([ds.items[i]["label_mask"] for i in idx]) if len(idx) else np.zeros((0, n), np.float32)
    arrays["label_names"] = list(ds.label_names)
