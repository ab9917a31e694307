"""The generation tasks' data: chat examples of a study (report, VQA, grounding, localisation, grounded
report) with their images read and transformed, tokenised with the answer-only labels, and the padding collator."""

from __future__ import annotations

import logging

import numpy as np
import torch

from mxr0.config.tasks import ReportModelConfig
from mxr0.data.augment import light_augment, sample_generator
from mxr0.data.chat import encode_example, study_messages
from mxr0.data.instruct import BOX_KINDS, Prompts, boxes_answer, build_examples, grounded_report_text, image_size
from mxr0.data.xray import read_xray

log = logging.getLogger(__name__)


class ReportDataset(torch.utils.data.Dataset):
    """Chat examples of studies (`mxr0.data.instruct`: report, VQA, grounding, … as ``cfg.tasks`` says): pixel
    values of each image, input ids and answer-only labels. ``records[i]`` is example ``i``'s study."""

    def __init__(self, records, tokenizer, transform, cfg: ReportModelConfig, n_image_tokens: int, train: bool,
                 seed: int = 0, with_answer: bool = True, kinds: list[str] | None = None):

        kinds = list(kinds or [k for k, w in cfg.tasks.items() if w > 0])
        self.examples, empty = build_examples(records, kinds, views=cfg.views, target_sections=cfg.target_sections,
                                              prompts=prompts_of(cfg), vqa_answer_types=cfg.vqa_answer_types)
        self.records = [records[ex.record] for ex in self.examples]
        if empty and "report" in empty:
            log.warning("%d studies without a current frontal image or without %s text are left out", empty["report"],
                        "/".join(cfg.target_sections))
        for k, n in empty.items():
            if k != "report":
                log.info("%s: %d of %d studies give no example", k, n, len(records))
        self.tokenizer, self.transform, self.cfg = tokenizer, transform, cfg
        self.n_image_tokens, self.train, self.seed, self.epoch = n_image_tokens, train, seed, 0
        self.features: list[torch.Tensor] | None = None
        """Cached vision hidden states per example ([n_images, tokens, width]); used instead of images."""
        self.with_answer = with_answer
        """False: prompt only, for generation."""
        self._lengths: list[int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def kinds(self) -> list[str]:
        return [ex.kind for ex in self.examples]

    def messages(self, i: int) -> list[dict]:
        ex, c = self.examples[i], self.cfg
        sections = c.context_sections if ex.kind in ("report", "grounded_report") else []
        return study_messages(self.records[i], [v for v, _ in ex.images], ex.instruction, sections, c.system_prompt)

    def geometry(self, i: int):
        """How example ``i``'s (first) image lands in the model frame (for boxes)."""

        return self.transform.geometry(*image_size(self.examples[i].images[0][1]))

    def answer(self, i: int) -> str:
        """The target text; boxes are written in the model frame of the example's image."""

        ex = self.examples[i]
        if ex.kind in ("grounding", "localisation"):
            return boxes_answer(self.geometry(i).to_model(np.asarray(ex.boxes)), self.cfg.box_format)
        if ex.kind == "grounded_report" and ex.meta["phrases"]:
            g = self.geometry(i)
            phrases = [(p, g.to_model(np.asarray(b))) for p, b in ex.meta["phrases"]]
            return grounded_report_text(ex.answer, phrases, self.cfg.box_format)
        return ex.answer

    def encode(self, i: int, with_answer: bool = True) -> tuple[list[int], list[int]]:
        return encode_example(self.tokenizer, self.messages(i), self.answer(i) if with_answer else None,
                              self.n_image_tokens, self.cfg.max_length)

    @property
    def lengths(self) -> list[int]:
        """Token lengths of the examples (for length-grouped batching), computed once."""
        if self._lengths is None:
            self._lengths = [len(self.encode(i)[0]) for i in range(len(self))]
        return self._lengths

    def pixel_values(self, i: int) -> torch.Tensor:
        if self.features is not None:
            return self.features[i].float()
        return self.read_images(i)

    def read_images(self, i: int) -> torch.Tensor:
        out = []
        for k, (_, path) in enumerate(self.examples[i].images):
            img = read_xray(path)
            if self.train and self.cfg.augment and self.examples[i].kind not in BOX_KINDS:  # boxes stay put
                img = light_augment(img, generator=sample_generator(self.seed, self.epoch, i * 8 + k))
            out.append(self.transform(img))
        return torch.stack(out)

    def __getitem__(self, i: int) -> dict:
        ids, labels = self.encode(i, with_answer=self.with_answer)
        return {"pixel_values": self.pixel_values(i), "input_ids": ids, "labels": labels, "index": i}


def prompts_of(cfg: ReportModelConfig) -> Prompts:
    """The per-kind instructions of a config."""
    return Prompts(report=cfg.instruction, grounding=cfg.grounding_prompt, localisation=cfg.localisation_prompt,
                   grounded_report=cfg.grounded_instruction)


class ChatCollator:
    """Pads a batch (right for training, left for generation) and concatenates its images."""

    def __init__(self, pad_id: int, side: str = "right"):
        self.pad_id, self.side = pad_id, side

    def __call__(self, items: list[dict]) -> dict:
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), n), -100, dtype=torch.long)
        mask = torch.zeros((len(items), n), dtype=torch.long)
        for b, it in enumerate(items):
            k = len(it["input_ids"])
            sl = slice(0, k) if self.side == "right" else slice(n - k, n)
            ids[b, sl] = torch.tensor(it["input_ids"])
            labels[b, sl] = torch.tensor(it["labels"])
            mask[b, sl] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "pixel_values": torch.cat([it["pixel_values"] for it in items]),
                "index": torch.tensor([it["index"] for it in items])}
