"""`Pipeline` (``mxr0.Pipeline``): mxr0's exported models loaded once and kept, usable from Python; the server
(`mxr0 serve`) runs one.

    import mxr0
    p = mxr0.Pipeline.from_pretrained("runs/tiny-mixture/export", align="runs/tiny-align/export",
                                      classifier="runs/demo/classify/export")
    p.report("frontal.dcm", lateral="lateral.dcm", indication="Cough.")["text"]
    p.ask("cxr.png", "Is there a pleural effusion?")["text"]
    p.ground("cxr.png", "left pleural effusion")["boxes"]        # original image pixels
    p.classify("cxr.png"); p.zero_shot("cxr.png"); p.similarity("cxr.png", "cardiomegaly")["grid"]

Images are paths, a file's bytes or an `XrayImage` (`Pipeline.read`: mxr0's DICOM / PNG / JPEG reader). Prompts are
built as in training (`mxr0.serve.vlm_jobs`) and generation goes through the `Batcher`, so concurrent callers
(threads, the server's requests) share batched ``generate`` calls; greedy answers equal one-by-one decoding.
"""

from __future__ import annotations

import os
from pathlib import Path

from mxr0.hub import DISCLAIMER
from mxr0.serve.batching import Job
from mxr0.serve.encoder_calls import EncoderCalls
from mxr0.serve.loading import ImageInput
from mxr0.serve.vlm_jobs import VlmJobs, view_name
from mxr0.tasks.report import InstructTask, ReportTask

INTENDED_USE = ("Research on radiology vision-language models: benchmarking, ablations and demonstrations on "
                "de-identified or synthetic images.")

class Pipeline(VlmJobs, EncoderCalls):
    """Models loaded once (a report / instruction VLM, a dual encoder, a finding classifier: any of them) and the
    task calls on them; see the module docstring. ``Pipeline(vlm, align=…, classifier=…, device=…, max_batch=…,
    max_queue=…, batch_wait_s=…, name=…, max_image_bytes=…, precision=…, revision=…)``."""

    @classmethod
    def from_pretrained(cls, vlm: str | os.PathLike | None = None, **kwargs) -> Pipeline:
        """``Pipeline(vlm, align=…, classifier=…, …)``: every export (folder or Hub id) loaded once."""
        return cls(vlm, **kwargs)

    def info(self) -> dict:
        """The served models: names, what they do (the model card's summary), intended use and the prompt
        settings the page needs."""
        out: dict = {"models": dict(self.names), "disclaimer": DISCLAIMER.replace("**", ""),
                     "intended_use": INTENDED_USE}
        if self.vlm is not None:
            s = self.vlm["settings"]
            tasks = [k for k, w in (s.get("tasks") or {"report": 1.0}).items() if w]
            out["vlm"] = {"name": self.names["vlm"], "summary": _card_summary(self.vlm["folder"], tasks),
                          "tasks": tasks, "views": [view_name(v) for v in self.vlm["cfg"].views],
                          "context_sections": list(self.vlm["cfg"].context_sections),
                          "box_format": self.vlm["cfg"].box_format}
        if self.align is not None:
            out["align"] = {"name": self.names["align"], "labels": list(self.align["prompts"])}
        if self.classifier is not None:
            out["classifier"] = {"name": self.names["classifier"], "labels": self.classifier["labels"]}
        return out

    # blocking task calls (Python use; the server awaits the jobs instead). ``gen``: the `Job`'s generation
    # settings (max_new_tokens, temperature, top_p, seed, stop) and ``on_delta`` (called with each new piece of text)
    def _run(self, job: Job) -> dict:
        return self.submit(job).future.result()

    def report(self, frontal: ImageInput, lateral: ImageInput | None = None, prior: ImageInput | None = None,
               prior_report: str = "", indication: str = "", technique: str = "", comparison: str = "", **gen) -> dict:
        """A report (``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``) from the current frontal
        image, optionally the lateral, the prior frontal and its report, and the context sections the model was
        trained with (views and sections it was not trained with are left out)."""
        images = {k: self.read(im, k) for k, im in (("frontal", frontal), ("lateral", lateral), ("prior", prior))
                  if im is not None}
        sections = {"indication": indication, "technique": technique, "comparison": comparison}
        return self._run(self.study_job(images, sections=sections, prior_report=prior_report, **gen))

    def ask(self, image: ImageInput, question: str, **gen) -> dict:
        """The answer to a question about one frontal image (VQA)."""
        return self._run(self.single_job(self.read(image), question.strip(), **gen))

    def ground(self, image: ImageInput, phrase: str, **gen) -> dict:
        """The boxes of a phrase: the answer plus ``boxes`` (original pixels, x0, y0, x1, y1), ``boxes_normalized``
        and ``image_size`` (`boxes_of`)."""
        image = self.read(image)
        out = self._run(self.single_job(image, self.grounding_prompt(phrase), kind="grounding", **gen))
        return {**out, **self.boxes_of(out["text"], image)}

    def close(self) -> None:
        """Stop the batching worker (queued jobs fail with "shutting down")."""
        if self.vlm is not None:
            self.batcher.close()


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


__all__ = ["INTENDED_USE", "Pipeline"]
