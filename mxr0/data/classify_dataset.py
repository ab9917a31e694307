"""The finding classifier's data: CheXpert label targets under an uncertainty / blank policy, and the study
image dataset (one image of an allowed view per study, read, transformed and optionally augmented)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from mxr0.data.augment import light_augment, sample_generator
from mxr0.data.loading import select_image
from mxr0.data.xray import read_xray

log = logging.getLogger(__name__)


def label_targets(record: dict, labels: list[str], uncertain: str, blank: str) -> tuple[np.ndarray, np.ndarray]:
    """(targets, mask) float arrays for ``labels`` under the uncertain / blank policy."""
    y = np.zeros(len(labels), dtype=np.float32)
    m = np.ones(len(labels), dtype=np.float32)
    for i, name in enumerate(labels):
        v = record["labels"].get(name)
        if v is None:
            if blank == "ignore":
                m[i] = 0
        elif v == -1:
            if uncertain == "ones":
                y[i] = 1
            elif uncertain == "ignore":
                m[i] = 0
        else:
            y[i] = float(v)
    return y, m


class StudyImageDataset(torch.utils.data.Dataset):
    """One image per study (the first current image of an allowed view), transformed for the model,
    with multi-label targets and a mask."""

    def __init__(self, records, labels, transform, uncertain="ones", blank="zeros", views=None, augment=False, seed=0):
        self.items = []
        skipped = 0
        for r in records:
            k = select_image(r, views)
            if k is None:
                skipped += 1
                continue
            y, m = label_targets(r, labels, uncertain, blank)
            self.items.append((r["images"][k]["path"], y, m, r["study_id"]))
        if skipped:
            log.warning("%d studies have no image of the allowed views %s and are left out", skipped, views)
        self.transform = transform
        self.augment = augment
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the loader each epoch: augmentations are a function of (seed, epoch, index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, y, m, _ = self.items[i]
        img = read_xray(path)
        if self.augment:
            img = light_augment(img, generator=sample_generator(self.seed, self.epoch, i))
        return {"pixel_values": self.transform(img), "labels": torch.from_numpy(y), "label_mask": torch.from_numpy(m)}
