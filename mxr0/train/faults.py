"""Faults a long run must survive: unreadable samples met mid-run, and a scheduler's SIGTERM.

- `GuardedDataset` catches a sample that cannot be read (a corrupt or missing image: `XrayReadError`,
  `OSError`), logs it with its index and reason, and serves the next readable sample instead, so the
  batch keeps its size (contrastive losses gather equal shapes across ranks). The collate wrapper
  `GuardedCollate` hands the loop each batch with the list of what was skipped; the loop counts them
  over all ranks, writes them to ``bad_samples.txt`` in the run folder, and stops with an error naming
  the files when ``data.max_bad_samples`` is exceeded.
- `StopRequest` turns SIGTERM (what Slurm, Kubernetes and most schedulers send before a kill) into a
  flag; the loop checks it at every optimiser-step boundary, writes a checkpoint and returns cleanly,
  and ``--resume`` continues from it.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch

from mxr0.data.xray import XrayReadError

log = logging.getLogger("mxr0.train")

MAX_REPLACEMENT_TRIES = 16


class TooManyBadSamplesError(RuntimeError):
    """More unreadable samples than ``data.max_bad_samples`` allows."""


def _readable_errors() -> tuple[type[BaseException], ...]:

    return (XrayReadError, OSError)


def _skip_reason(e: BaseException) -> str:
    """``path: reason`` of an unreadable sample, for logs and ``bad_samples.txt``: only the path and the
    reader's own reason (no file bytes, no header values, no library message that could quote them)."""

    if isinstance(e, XrayReadError):
        return f"{e.path}: {e.reason}"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror or type(e).__name__}"
    return type(e).__name__


class GuardedDataset(torch.utils.data.Dataset):
    """``dataset[i]`` → ``(item, skipped)``: ``skipped`` lists ``"index N: reason"`` for every
    unreadable sample replaced by the next one (empty when ``i`` was fine)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:  # records, texts, … of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i: int):
        errors = _readable_errors()
        skipped: list[str] = []
        n = len(self.dataset)
        for t in range(MAX_REPLACEMENT_TRIES):
            j = (i + t) % n
            try:
                return self.dataset[j], skipped
            except errors as e:
                msg = f"index {j}: {_skip_reason(e)}"
                log.warning("unreadable training sample skipped: %s", msg)
                skipped.append(msg)
        raise TooManyBadSamplesError(
            f"{MAX_REPLACEMENT_TRIES} consecutive training samples from index {i} could not be read; "
            f"the data is broken (last: {skipped[-1]}). Check the records with `mxr0 prepare` / the image files."
        )


class GuardedCollate:
    """Collates the items of a `GuardedDataset` with the task's collate; returns ``(batch, skipped)``."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, pairs):
        skipped = [msg for _, s in pairs for msg in s]
        return self.collate([item for item, _ in pairs]), skipped


class StopRequest:
    """Remembers a SIGTERM; ``install()`` in the main thread, ``restore()`` when training ends."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.requested = True
        log.warning("received signal %d: a checkpoint is written at the end of this step, then training stops", signum)

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
