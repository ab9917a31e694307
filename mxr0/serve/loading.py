"""The models a `mxr0.serve.Pipeline` keeps loaded, each read once from its export: the report / instruction VLM
(with its `Batcher`), the dual encoder (zero-shot, similarity maps) and the finding classifier."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from mxr0.data.transforms import ImageTransform
from mxr0.eval.align import merged_prompts
from mxr0.generate import _config_from, load_vlm
from mxr0.models.download import resolve_model_dir
from mxr0.models.dual_encoder import make_text_encoder
from mxr0.serve.batching import Batcher
from mxr0.serve.images import XrayImage, read_upload


ImageInput = XrayImage | bytes | str | os.PathLike
"""What the task calls take as an image: an `XrayImage`, a file's bytes or its path (`LoadedModels.read`)."""


class RequestError(ValueError):
    """A request the model cannot serve (too many images, over the token budget, a missing model); ``status``
    is the HTTP status."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.code = status, code


class LoadedModels:
    """Up to three models, loaded once: ``vlm``, ``align``, ``classifier`` (dicts of their parts, None when not
    given), their served names in ``names``, and the VLM's `Batcher` in ``batcher``. ``revision``: the branch, tag
    or commit of a Hub ``vlm``."""

    def __init__(self, vlm: str | os.PathLike | None = None, align: str | os.PathLike | None = None,
                 classifier: str | os.PathLike | None = None, device: str | None = None, max_batch: int = 16,
                 max_queue: int = 64, batch_wait_s: float = 0.05, name: str | None = None,
                 max_image_bytes: int = 32 << 20, precision: str = "fp32", revision: str | None = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_image_bytes = max_image_bytes
        self.vlm = self.align = self.classifier = None
        self.names: dict[str, str] = {}
        self._lock = threading.Lock()  # encoder forward passes (classifier, dual encoder) one at a time
        if vlm is not None:
            self.vlm = load_vlm_parts(vlm, self.device, precision, revision)
            self.names["vlm"] = name or _name_of(vlm)
            self.batcher = Batcher(self.vlm["model"], self.vlm["tokenizer"], max_batch=max_batch, max_queue=max_queue,
                                   wait_s=batch_wait_s)
        if align is not None:
            self.align = load_align_parts(align, self.device)
            self.names["align"] = _name_of(align)
        if classifier is not None:
            self.classifier = load_classifier_parts(classifier, self.device)
            self.names["classifier"] = _name_of(classifier)
        if not self.names:
            raise ValueError("a pipeline needs at least one model (vlm, align or classifier)")

    def read(self, source: ImageInput, what: str = "image") -> XrayImage:
        """An image as mxr0 reads it (`read_upload`: DICOM / PNG / JPEG, decided from the content): an uploaded file's
        bytes (at most ``max_image_bytes``), a file's path, or an `XrayImage` as it is."""
        if isinstance(source, XrayImage):
            return source
        if isinstance(source, (bytes, bytearray, memoryview)):
            return read_upload(bytes(source), what, self.max_image_bytes)
        path = Path(source)
        return read_upload(path.read_bytes(), path.name)

    def _need(self, part: str):
        m = getattr(self, part)
        if m is None:
            flag = {"vlm": "--model", "align": "--align", "classifier": "--classifier"}[part]
            raise RequestError(f"this server has no {part} model (start it with {flag})", 404, "model_not_loaded")
        return m


def load_vlm_parts(source: str | os.PathLike, device: str, precision: str = "fp32", revision: str | None = None) -> dict:
    """A report / instruction VLM export (folder, or Hub id at ``revision``): model, tokenizer, transform, settings
    and the prompt config built from them."""
    folder = resolve_model_dir(source, revision)
    if precision != "fp32":  # bf16 autocast / bf16 weights (`mxr0.precision`), as `mxr0 generate` runs them
        model, tok, transform, settings = load_vlm(folder, device=device, precision=precision)
    else:
        model, tok, transform, settings = load_vlm(folder, device=device)
    return {"model": model, "tokenizer": tok, "transform": transform, "settings": settings,
            "cfg": _config_from(settings), "n_image_tokens": int(settings["n_image_tokens"]), "folder": Path(folder)}


def load_align_parts(source: str | os.PathLike, device: str) -> dict:
    """A dual-encoder export: model, tokenizer, transform, a cached prompt encoder, the zero-shot prompts and the
    logit scale."""
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_model_dir(source)  # a folder, or a Hub id (downloaded / from the cache)
    sf = folder / "mxr0_align.json"
    settings = json.loads(sf.read_text()) if sf.exists() else {}
    model = AutoModel.from_pretrained(str(folder)).eval().to(device)
    tok = AutoTokenizer.from_pretrained(str(folder))
    max_length = int(settings.get("max_text_length", min(getattr(tok, "model_max_length", 512), 512)))
    encode = make_text_encoder(model, tok, max_length)
    cache: dict[str, torch.Tensor] = {}

    def cached(texts: list[str]) -> torch.Tensor:  # prompt embeddings are computed once
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for t, e in zip(missing, encode(missing)):
                cache[t] = e
        return torch.stack([cache[t] for t in texts])

    return {"model": model, "tokenizer": tok, "transform": ImageTransform.from_pretrained(str(folder)),
            "encode": cached, "prompts": merged_prompts(settings.get("zero_shot_prompts") or None),
            "logit_scale": float(model.logit_scale.detach())}


def load_classifier_parts(source: str | os.PathLike, device: str) -> dict:
    """A classifier export: model, transform and its labels in output order."""
    from transformers import AutoModelForImageClassification

    folder = resolve_model_dir(source)
    model = AutoModelForImageClassification.from_pretrained(str(folder)).eval().to(device)
    return {"model": model, "transform": ImageTransform.from_pretrained(str(folder)),
            "labels": [model.config.id2label[i] for i in range(model.config.num_labels)]}


def _name_of(path) -> str:
    p = Path(str(path))
    if p.exists():
        p = p.resolve()
        return p.parent.name if p.name == "export" else p.name
    return str(path)


__all__ = ["ImageInput", "LoadedModels", "RequestError", "load_align_parts", "load_classifier_parts",
           "load_vlm_parts"]
