"""A session that keeps mxr0's models loaded: a report / instruction VLM, optionally a dual encoder
(zero-shot scores, patch-similarity maps) and a finding classifier. The server uses one; so can Python:

    from mxr0.serve import Session
    s = Session.from_pretrained("runs/tiny-mixture/export", align="runs/tiny-align/export",
                                classifier="runs/demo/classify/export")
    img = s.read(open("cxr.png", "rb").read())
    print(s.report(img)["text"], s.ground(img, "left pleural effusion")["boxes"], s.classify(img))

Prompts are built exactly as in training from the export's ``mxr0_report.json`` (`mxr0.data.chat.study_messages`:
one ``<View> view: <image>`` part per image, the instruction, the context sections, the prior report), and
generation goes through the `Batcher`, so concurrent callers share batched ``generate`` calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path

import numpy as np
import torch

from mxr0.data.boxes_text import parse_boxes, to_original, to_pixels
from mxr0.data.chat import encode_example, study_messages
from mxr0.data.transforms import ImageTransform
from mxr0.eval.align import merged_prompts, similarity_map, zero_shot_scores
from mxr0.generate import _config_from, load_vlm
from mxr0.hub import DISCLAIMER
from mxr0.models.download import resolve_model_dir
from mxr0.models.dual_encoder import image_outputs, make_text_encoder
from mxr0.serve.batching import Batcher, Job
from mxr0.serve.images import ImageError, XrayImage, read_upload
from mxr0.tasks.report import InstructTask, ReportTask

log = logging.getLogger(__name__)

INTENDED_USE = ("Research on radiology vision-language models: benchmarking, ablations and demonstrations on "
                "de-identified or synthetic images.")


class RequestError(ValueError):
    """A request the model cannot serve (too many images, over the token budget, a missing model); ``status``
    is the HTTP status."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.code = status, code


def _view_name(v: str) -> str:
    return "prior frontal" if v == "prior" else v


class Session:
    """Models loaded once; see the module docstring."""

    def __init__(self, vlm: str | os.PathLike | None = None, align: str | os.PathLike | None = None,
                 classifier: str | os.PathLike | None = None, device: str | None = None, max_batch: int = 16,
                 max_queue: int = 64, batch_wait_s: float = 0.05, name: str | None = None,
                 max_image_bytes: int = 32 << 20, precision: str = "fp32"):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_image_bytes = max_image_bytes
        self.vlm = self.align = self.classifier = None
        self.names: dict[str, str] = {}
        self._lock = threading.Lock()  # encoder forward passes (classifier, dual encoder) one at a time
        if vlm is not None:
            folder = resolve_model_dir(vlm)
            if precision != "fp32":  # bf16 autocast / bf16 weights (`mxr0.precision`), as `mxr0 generate` runs them
                model, tok, transform, settings = load_vlm(folder, device=self.device, precision=precision)
            else:
                model, tok, transform, settings = load_vlm(folder, device=self.device)
            self.vlm = {"model": model, "tokenizer": tok, "transform": transform, "settings": settings,
                        "cfg": _config_from(settings), "n_image_tokens": int(settings["n_image_tokens"]),
                        "folder": Path(folder)}
            self.names["vlm"] = name or _name_of(vlm)
            self.batcher = Batcher(model, tok, max_batch=max_batch, max_queue=max_queue, wait_s=batch_wait_s)
        if align is not None:
            from transformers import AutoModel, AutoTokenizer

            folder = resolve_model_dir(align)  # a folder, or a Hub id (downloaded / from the cache)
            sf = folder / "mxr0_align.json"
            settings = json.loads(sf.read_text()) if sf.exists() else {}
            model = AutoModel.from_pretrained(str(folder)).eval().to(self.device)
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

            self.align = {"model": model, "tokenizer": tok, "transform": ImageTransform.from_pretrained(str(folder)),
                          "encode": cached, "prompts": merged_prompts(settings.get("zero_shot_prompts") or None),
                          "logit_scale": float(model.logit_scale.detach())}
            self.names["align"] = _name_of(align)
        if classifier is not None:
            from transformers import AutoModelForImageClassification

            folder = resolve_model_dir(classifier)
            model = AutoModelForImageClassification.from_pretrained(str(folder)).eval().to(self.device)
            self.classifier = {"model": model, "transform": ImageTransform.from_pretrained(str(folder)),
                               "labels": [model.config.id2label[i] for i in range(model.config.num_labels)]}
            self.names["classifier"] = _name_of(classifier)
        if not self.names:
            raise ValueError("a session needs at least one model (vlm, align or classifier)")

    @classmethod
    def from_pretrained(cls, vlm: str | os.PathLike | None = None, **kwargs) -> Session:
        """``Session(vlm, align=…, classifier=…, …)``: every model loaded once."""
        return cls(vlm, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # description
    # ------------------------------------------------------------------------------------------------
    def info(self) -> dict:
        """The served models: names, what they do (the model card's summary), intended use and the prompt
        settings the page needs."""
        out: dict = {"models": dict(self.names), "disclaimer": DISCLAIMER.replace("**", ""),
                     "intended_use": INTENDED_USE}
        if self.vlm is not None:
            s = self.vlm["settings"]
            tasks = [k for k, w in (s.get("tasks") or {"report": 1.0}).items() if w]
            out["vlm"] = {"name": self.names["vlm"], "summary": _card_summary(self.vlm["folder"], tasks),
                          "tasks": tasks, "views": [_view_name(v) for v in self.vlm["cfg"].views],
                          "context_sections": list(self.vlm["cfg"].context_sections),
                          "box_format": self.vlm["cfg"].box_format}
        if self.align is not None:
            out["align"] = {"name": self.names["align"], "labels": list(self.align["prompts"])}
        if self.classifier is not None:
            out["classifier"] = {"name": self.names["classifier"], "labels": self.classifier["labels"]}
        return out

    # ------------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------------
    def read(self, data: bytes, what: str = "image") -> XrayImage:
        """An uploaded file's bytes as mxr0 reads them (`read_upload`)."""
        return read_upload(data, what, self.max_image_bytes)

    def _need(self, part: str):
        m = getattr(self, part)
        if m is None:
            flag = {"vlm": "--model", "align": "--align", "classifier": "--classifier"}[part]
            raise RequestError(f"this server has no {part} model (start it with {flag})", 404, "model_not_loaded")
        return m

    def _check_budget(self, ids: list[int], max_new_tokens: int, n_images: int) -> None:
        v = self.vlm
        cfg = v["model"].config
        limit = getattr(getattr(cfg, "text_config", cfg), "max_position_embeddings", None)
        if limit and len(ids) + max_new_tokens > limit:
            raise RequestError(f"the prompt ({len(ids)} tokens, {n_images} image(s) of {v['n_image_tokens']} tokens "
                               f"each) plus max_tokens={max_new_tokens} exceeds the model's context of {limit} "
                               "tokens: send fewer images, a shorter text or a smaller max_tokens",
                               code="context_length_exceeded")

    def _item(self, messages: list[dict], images: list[XrayImage], max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
        v = self._need("vlm")
        ids, _ = encode_example(v["tokenizer"], messages, None, v["n_image_tokens"])
        self._check_budget(ids, max_new_tokens, len(images))
        pixels = torch.stack([v["transform"](im.pixels) for im in images])
        return ids, pixels

    def study_job(self, images: dict[str, XrayImage], instruction: str | None = None, sections: dict | None = None,
                  prior_report: str = "", **gen) -> Job:
        """A report job: ``images`` maps ``frontal`` (required), ``lateral`` and ``prior`` to images; only the views
        the model was trained with are used (`unused_views` says which were left out)."""
        v = self._need("vlm")
        cfg = v["cfg"]
        if "frontal" not in images:
            raise RequestError("a report needs a frontal image", code="missing_image")
        used = [k for k in cfg.views if k in images]
        record = {k: str(t) for k, t in (sections or {}).items() if t}
        if prior_report:
            record["prior_report"] = prior_report
        msgs = study_messages(record, [_view_name(k) for k in used], instruction or cfg.instruction,
                              cfg.context_sections, cfg.system_prompt)
        gen.setdefault("max_new_tokens", cfg.max_new_tokens)
        ids, pixels = self._item(msgs, [images[k] for k in used], gen["max_new_tokens"])
        job = Job(ids, pixels, kind="report", **gen)
        job.unused_views = [k for k in images if k not in used]  # type: ignore[attr-defined]
        return job

    def single_job(self, image: XrayImage, text: str, kind: str = "vqa", **gen) -> Job:
        """One frontal image and one user instruction (``kind`` vqa: a question; grounding: the grounding prompt)."""
        v = self._need("vlm")
        gen.setdefault("max_new_tokens", v["cfg"].max_new_tokens_short)
        msgs = study_messages({}, ["frontal"], text, [], v["cfg"].system_prompt)
        ids, pixels = self._item(msgs, [image], gen["max_new_tokens"])
        return Job(ids, pixels, kind=kind, **gen)

    def chat_job(self, messages: list[dict], images: list[XrayImage], **gen) -> Job:
        """A job from OpenAI-style messages already split into text parts and ``{"type": "image"}`` parts (the images,
        in order, in ``images``). A user turn with images is laid out as in training: each image as
        ``<View> view: <image>`` (frontal, lateral, prior frontal, in the model's view order), then its text (the
        report instruction when it has none)."""
        v = self._need("vlm")
        cfg = v["cfg"]
        views = [_view_name(k) for k in cfg.views]
        if len(images) > len(views):
            raise RequestError(f"too many images ({len(images)}): this model reads at most {len(views)} per conversation "
                               f"({', '.join(views)})", code="too_many_images")
        out, k = [], 0
        for m in messages:
            parts = m["content"]
            if isinstance(parts, str) or not any(p["type"] == "image" for p in parts):
                text = parts if isinstance(parts, str) else "".join(p["text"] for p in parts)
                out.append({"role": m["role"], "content": text})
                continue
            content: list[dict] = []
            for p in parts:
                if p["type"] == "image":
                    content += [{"type": "text", "text": f"{views[k].capitalize()} view: "}, {"type": "image"},
                                {"type": "text", "text": "\n"}]
                    k += 1
            text = "".join(p["text"] for p in parts if p["type"] == "text").strip()
            content.append({"type": "text", "text": text or cfg.instruction})
            out.append({"role": m["role"], "content": content})
        if cfg.system_prompt and not any(m["role"] == "system" for m in out):
            out.insert(0, {"role": "system", "content": cfg.system_prompt})
        gen.setdefault("max_new_tokens", cfg.max_new_tokens)
        ids, pixels = self._item(out, images, gen["max_new_tokens"]) if images else self._text_item(out, gen)
        return Job(ids, pixels, **gen)

    def _text_item(self, messages, gen):
        raise RequestError("a chat request needs at least one image (an image_url part with a data URI): "
                           "this model answers about X-rays", code="missing_image")

    def submit(self, job: Job) -> Job:
        self._need("vlm")
        return self.batcher.submit(job)

    def preparing(self):
        """Context manager around a request's pre-processing (see `Batcher.preparing`)."""
        return self.batcher.preparing() if self.vlm is not None else contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------------
    # blocking task calls (Python use; the server awaits the jobs instead)
    # ------------------------------------------------------------------------------------------------
    def _run(self, job: Job) -> dict:
        return self.submit(job).future.result()

    def report(self, frontal: XrayImage, lateral: XrayImage | None = None, prior: XrayImage | None = None,
               prior_report: str = "", **sections) -> dict:
        images = {k: im for k, im in (("frontal", frontal), ("lateral", lateral), ("prior", prior)) if im is not None}
        return self._run(self.study_job(images, sections=sections, prior_report=prior_report))

    def ask(self, image: XrayImage, question: str, **gen) -> dict:
        return self._run(self.single_job(image, question.strip(), **gen))

    def grounding_prompt(self, phrase: str) -> str:
        return self._need("vlm")["cfg"].grounding_prompt.format(phrase=phrase.strip(), label=phrase.strip().lower())

    def ground(self, image: XrayImage, phrase: str, **gen) -> dict:
        out = self._run(self.single_job(image, self.grounding_prompt(phrase), kind="grounding", **gen))
        return {**out, **self.boxes_of(out["text"], image)}

    def boxes_of(self, text: str, image: XrayImage) -> dict:
        """Boxes parsed from generated text, in the original image's pixels (x0, y0, x1, y1) and normalised."""
        v = self._need("vlm")
        res = parse_boxes(text, v["cfg"].box_format)
        norm = to_original(res.boxes, v["transform"].geometry(image.height, image.width)) if len(res.boxes) else np.zeros((0, 4))
        px = to_pixels(norm, image.height, image.width)
        return {"boxes": [[round(float(c), 1) for c in b] for b in px],
                "boxes_normalized": [[round(float(c), 4) for c in b] for b in norm],
                "image_size": {"width": image.width, "height": image.height}, "malformed_boxes": int(res.malformed)}

    # ------------------------------------------------------------------------------------------------
    # encoders
    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def classify(self, image: XrayImage) -> list[dict]:
        """Per-finding probabilities (sigmoid: the classifier is multi-label)."""
        c = self._need("classifier")
        x = c["transform"](image.pixels)[None].to(self.device)
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
    def zero_shot(self, image: XrayImage, labels: list[str] | None = None) -> list[dict]:
        """CheXzero-style zero-shot probability per observation (positive vs negative prompts, softmax)."""
        a = self._need("align")
        labels = labels or list(a["prompts"])
        bad = [l for l in labels if l not in a["prompts"]]
        if bad:
            raise RequestError(f"unknown zero-shot labels {bad}; choose from {list(a['prompts'])}", code="invalid_label")
        emb, _, _ = self._image_outputs(image)
        with self._lock:
            s = zero_shot_scores(emb, a["encode"], labels, a["prompts"], a["logit_scale"])[0]
        return [{"label": l, "probability": round(float(p), 4)} for l, p in zip(labels, s)]

    @torch.no_grad()
    def similarity(self, image: XrayImage, phrase: str) -> dict:
        """The cosine similarity of ``phrase`` with every patch: the grid, its model-frame map and the geometry
        that places the model frame on the original image."""
        a = self._need("align")
        if not phrase.strip():
            raise RequestError("a phrase is needed for the similarity map", code="missing_phrase")
        _, patches, grid = self._image_outputs(image)
        with self._lock:
            text = a["encode"]([phrase.strip()])[0]
        size = a["transform"].size
        sim = similarity_map(patches[0], text, grid, size)
        raw = (patches[0] @ text).reshape(grid).numpy()
        return {"map": sim, "grid": raw, "geometry": a["transform"].geometry(image.height, image.width)}

    def close(self) -> None:
        if self.vlm is not None:
            self.batcher.close()


def _name_of(path) -> str:
    p = Path(str(path))
    if p.exists():
        p = p.resolve()
        return p.parent.name if p.name == "export" else p.name
    return str(path)


def _card_summary(folder: Path, tasks: list[str]) -> str:
    """The first paragraph of the export's model card (README.md after `mxr0 push`), else the task's card summary."""
    card = folder / "README.md"
    if card.exists():
        text = card.read_text(errors="replace")
        if text.startswith("---"):
            text = text.split("---", 2)[-1]
        paras = [p.strip() for p in text.split("\n\n") if p.strip() and not p.strip().startswith(("#", "|", "```", "<"))]
        if paras:
            return paras[0][:600]
    cls = ReportTask if tasks == ["report"] else InstructTask
    try:
        return cls.card_info("", folder).summary
    except Exception:  # noqa: BLE001 - a description, never a failure
        return "an mxr0 vision-language model"


__all__ = ["INTENDED_USE", "ImageError", "RequestError", "Session"]
