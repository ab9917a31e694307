"""The alignment task's data: (image, report text) pairs with sentence sampling, and the text collator."""

from __future__ import annotations

import logging

import numpy as np
import torch

from mxr0.data.augment import light_augment, sample_generator
from mxr0.data.loading import select_image
from mxr0.data.text import report_text, sample_sentences, split_sentences
from mxr0.data.xray import read_xray

log = logging.getLogger(__name__)


class AlignDataset(torch.utils.data.Dataset):
    """(image, report text) pairs: the first current image of an allowed view of each study with text.

    Training items carry ``texts_per_image`` augmented texts; evaluation items the full text."""

    def __init__(self, records, transform, sections, views=None, train=False, augment=False, sentence_keep=1.0,
                 shuffle=True, texts_per_image=1, seed=0):
        self.records, self.items = [], []
        no_image = no_text = 0
        for r in records:
            k = select_image(r, views)
            text = report_text(r, sections)
            if k is None:
                no_image += 1
                continue
            if not text:
                no_text += 1
                continue
            self.records.append(r)
            self.items.append((r["images"][k]["path"], k, text, split_sentences(text) or [text]))
        if no_image:
            log.warning("%d studies have no image of the allowed views %s and are left out", no_image, views)
        if no_text:
            log.warning("%d studies have empty %s sections and are left out", no_text, "/".join(sections))
        self.transform, self.train, self.augment = transform, train, augment
        self.keep, self.shuffle, self.k = sentence_keep, shuffle, texts_per_image
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    @property
    def texts(self) -> list[str]:
        return [it[2] for it in self.items]

    @property
    def image_index(self) -> list[int]:
        return [it[1] for it in self.items]

    def _texts(self, i: int) -> list[str]:
        _, _, text, sents = self.items[i]
        if not self.train:
            return [text]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=sample_generator(self.seed + 7, self.epoch, i))))
        if self.k == 1:
            return [sample_sentences(sents, rng, self.keep, self.shuffle)]
        idx = rng.choice(len(sents), size=self.k, replace=len(sents) < self.k)
        return [sents[j] for j in idx]

    def __getitem__(self, i: int) -> dict:
        path = self.items[i][0]
        img = read_xray(path)
        hw = torch.tensor(img.shape[:2])
        if self.train and self.augment:
            img = light_augment(img, generator=sample_generator(self.seed, self.epoch, i))
        return {"pixel_values": self.transform(img), "texts": self._texts(i), "orig_hw": hw, "index": i}


class TextCollator:
    """Stacks images and tokenises the batch's texts (image-major), padding to the longest."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[dict]) -> dict:
        texts = [t for it in items for t in it["texts"]]
        tok = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        return {
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "orig_hw": torch.stack([it["orig_hw"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
