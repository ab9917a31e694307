"""The encoder capabilities of a `mxr0.serve.Pipeline`: the classifier's per-finding probabilities, the dual
encoder's zero-shot scores and patch-similarity maps (one forward pass at a time; images as `LoadedModels.read`
takes them)."""

from __future__ import annotations

import torch

from mxr0.eval.align import similarity_map, zero_shot_scores
from mxr0.models.dual_encoder import image_outputs
from mxr0.serve.images import XrayImage
from mxr0.serve.loading import ImageInput, LoadedModels, RequestError


class EncoderCalls(LoadedModels):
    """``classify``, ``zero_shot`` and ``similarity`` on the loaded classifier / dual encoder."""

    @torch.no_grad()
    def classify(self, image: ImageInput) -> list[dict]:
        """Per-finding probabilities (sigmoid: the classifier is multi-label)."""
        c = self._need("classifier")
        x = c["transform"](self.read(image).pixels)[None].to(self.device)
        with self._lock:
            logits = c["model"](pixel_values=x).logits[0].float()
        return [{"label": l, "probability": round(float(p), 4)} for l, p in zip(c["labels"], torch.sigmoid(logits))]

    @torch.no_grad()
    def _image_outputs(self, image: XrayImage):
        a = self._need("align")
        x = a["transform"](image.pixels)[None].to(self.device)
        with self._lock:
            emb, patches, grid = image_outputs(a["model"], x)
        return (torch.nn.functional.normalize(emb.float(), dim=-1).cpu(),
                torch.nn.functional.normalize(patches.float(), dim=-1).cpu(), grid)

    @torch.no_grad()
    def zero_shot(self, image: ImageInput, labels: list[str] | None = None) -> list[dict]:
        """CheXzero-style zero-shot probability per observation (positive vs negative prompts, softmax)."""
        a = self._need("align")
        labels = labels or list(a["prompts"])
        bad = [l for l in labels if l not in a["prompts"]]
        if bad:
            raise RequestError(f"unknown zero-shot labels {bad}; choose from {list(a['prompts'])}", code="invalid_label")
        emb, _, _ = self._image_outputs(self.read(image))
        with self._lock:
            s = zero_shot_scores(emb, a["encode"], labels, a["prompts"], a["logit_scale"])[0]
        return [{"label": l, "probability": round(float(p), 4)} for l, p in zip(labels, s)]

    @torch.no_grad()
    def similarity(self, image: ImageInput, phrase: str) -> dict:
        """The cosine similarity of ``phrase`` with every patch: the grid, its model-frame map and the geometry
        that places the model frame on the original image."""
        a = self._need("align")
        if not phrase.strip():
            raise RequestError("a phrase is needed for the similarity map", code="missing_phrase")
        image = self.read(image)
        _, patches, grid = self._image_outputs(image)
        with self._lock:
            text = a["encode"]([phrase.strip()])[0]
        size = a["transform"].size
        sim = similarity_map(patches[0], text, grid, size)
        raw = (patches[0] @ text).reshape(grid).numpy()
        return {"map": sim, "grid": raw, "geometry": a["transform"].geometry(image.height, image.width)}


__all__ = ["EncoderCalls"]
