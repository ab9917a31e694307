"""Generation jobs for the loaded VLM: prompts laid out exactly as in training from the export's
``mxr0_report.json`` (`mxr0.data.chat.study_messages`: one ``<View> view: <image>`` part per image, the
instruction, the context sections, the prior report), checked against the LLM's context, then queued on the
`Batcher`; and the boxes of a grounding answer mapped back to the original image."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from mxr0.data.boxes_text import parse_boxes, to_original, to_pixels
from mxr0.data.chat import encode_example, study_messages
from mxr0.serve.batching import Job
from mxr0.serve.images import XrayImage
from mxr0.serve.loading import LoadedModels, RequestError


def view_name(v: str) -> str:
    """A view of ``model.views`` as the prompt names it (``prior`` → ``prior frontal``)."""
    return "prior frontal" if v == "prior" else v


class VlmJobs(LoadedModels):
    """Builds and submits the VLM's jobs (report, single question / phrase, OpenAI-style chat)."""

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
        msgs = study_messages(record, [view_name(k) for k in used], instruction or cfg.instruction,
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
        views = [view_name(k) for k in cfg.views]
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
        if not images:
            raise RequestError("a chat request needs at least one image (an image_url part with a data URI): "
                               "this model answers about X-rays", code="missing_image")
        ids, pixels = self._item(out, images, gen["max_new_tokens"])
        return Job(ids, pixels, **gen)

    def submit(self, job: Job) -> Job:
        self._need("vlm")
        return self.batcher.submit(job)

    def preparing(self):
        """Context manager around a request's pre-processing (see `Batcher.preparing`)."""
        return self.batcher.preparing() if self.vlm is not None else contextlib.nullcontext()

    def grounding_prompt(self, phrase: str) -> str:
        return self._need("vlm")["cfg"].grounding_prompt.format(phrase=phrase.strip(), label=phrase.strip().lower())

    def boxes_of(self, text: str, image: XrayImage) -> dict:
        """Boxes parsed from generated text, in the original image's pixels (x0, y0, x1, y1) and normalised."""
        v = self._need("vlm")
        res = parse_boxes(text, v["cfg"].box_format)
        norm = to_original(res.boxes, v["transform"].geometry(image.height, image.width)) if len(res.boxes) else np.zeros((0, 4))
        px = to_pixels(norm, image.height, image.width)
        return {"boxes": [[round(float(c), 1) for c in b] for b in px],
                "boxes_normalized": [[round(float(c), 4) for c in b] for b in norm],
                "image_size": {"width": image.width, "height": image.height}, "malformed_boxes": int(res.malformed)}


__all__ = ["VlmJobs", "view_name"]
