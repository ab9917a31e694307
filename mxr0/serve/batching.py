"""A small batching queue in front of one VLM: concurrent requests become one batched ``generate`` call.

Requests wait in a bounded queue (`QueueFull` when it holds ``max_queue`` jobs: the server answers 429). One
worker thread takes the oldest job and every other waiting job with the same sampling settings (greedy, or
sampling with the same temperature / top-p / seed), up to ``max_batch``, after waiting at most ``wait_s`` for
requests still being prepared (`Batcher.preparing`: a lone request never waits); jobs with other settings wait
for a batch of their own. Rows are left-padded (`ChatCollator`), so a
greedy batch gives each row the tokens it gets alone.

Each row is followed by a `RowCriteria`, a per-row stopping criterion that also streams: after every decoding
step it appends the row's new token, decodes the row's text so far, sends the new characters to the row's
callback (one "streamer" per row: transformers' ``TextStreamer`` takes batch size 1), and stops the row on a
stop token, a ``stop`` string, the row's own ``max_tokens`` or a cancellation (a client that disconnected).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteriaList

from mxr0.data.chat import special_token_ids, stop_token_ids, visible_special_tokens
from mxr0.data.report_dataset import ChatCollator
from mxr0.precision import autocast, model_precision

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` waiting jobs."""


@dataclass(eq=False)  # identity: jobs are compared as objects (and hold tensors)
class Job:
    """One generation request: a prompt-only item (``input_ids`` list, ``pixel_values`` [n_images, 3, S, S])."""

    input_ids: list[int]
    pixel_values: torch.Tensor
    max_new_tokens: int = 160
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    on_delta: Callable[[str], None] | None = None
    """Called from the worker thread with each new piece of text (streaming)."""
    future: Future = field(default_factory=Future)
    """Resolves to ``{"text", "finish_reason", "prompt_tokens", "completion_tokens"}``."""
    cancelled: bool = False
    kind: str = "chat"
    """What the job answers (chat, report, vqa, grounding): for logs and tests, never the content."""

    @property
    def key(self) -> tuple:
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", round(float(self.temperature), 6), round(float(self.top_p), 6), self.seed)

    def cancel(self) -> None:
        """Stop this row at its next decoding step (or skip it if it has not started)."""
        self.cancelled = True


class RowCriteria:
    """Per-row stopping and streaming for one batch (a transformers ``StoppingCriteria``: called after each
    step with the ids so far, returns a bool per row)."""

    def __init__(self, jobs: list[Job], tokenizer, stop_ids: list[int], drop_tokens: list[str]):
        self.jobs, self.tok, self.stop_ids = jobs, tokenizer, set(stop_ids)
        self.drop = re.compile("|".join(re.escape(t) for t in sorted(drop_tokens, key=len, reverse=True))) if drop_tokens else None
        n = len(jobs)
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.text = [""] * n
        self.sent = [""] * n
        self.done = [False] * n
        self.reason: list[str | None] = [None] * n
        self.live = [j.on_delta is not None or any(j.stop) for j in jobs]
        """Rows whose text is needed at every step (streamed, or with stop strings)."""
        for b, j in enumerate(jobs):
            if j.cancelled:
                self._finish(b, "cancelled")

    def _finish(self, b: int, reason: str) -> None:
        self.done[b], self.reason[b] = True, reason

    def _decode(self, b: int) -> str:
        raw = self.tok.decode(self.ids[b], skip_special_tokens=False)
        return (self.drop.sub("", raw) if self.drop else raw).lstrip()

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        for b, job in enumerate(self.jobs):
            if self.done[b]:
                continue
            if job.cancelled:
                self._finish(b, "cancelled")
                continue
            tok = int(last[b])
            if tok in self.stop_ids:
                self._finish(b, "stop")
            elif not self.live[b]:  # neither streamed nor stop strings: decoded once, at the end
                self.ids[b].append(tok)
                if len(self.ids[b]) >= job.max_new_tokens:
                    self._finish(b, "length")
                continue
            else:
                self.ids[b].append(tok)
                text = self._decode(b)
                cut = min((i for i in (text.find(s) for s in job.stop if s) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    self._finish(b, "stop")
                elif len(self.ids[b]) >= job.max_new_tokens:
                    self._finish(b, "length")
                self.text[b] = text
            self._emit(b)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _emit(self, b: int, final: bool = False) -> None:
        job = self.jobs[b]
        if job.on_delta is None or job.cancelled:
            return
        text = self.text[b]
        if not (self.done[b] or final):
            hold = max((len(s) for s in job.stop if s), default=1) - 1  # a stop string may be starting
            text = text[:len(text) - hold] if hold else text
            text = text.rstrip("\ufffd")  # a character whose bytes are not all out yet
        sent = self.sent[b]
        if len(text) > len(sent) and text.startswith(sent):
            job.on_delta(text[len(sent):])
            self.sent[b] = text

    def finish(self) -> None:
        for b in range(len(self.jobs)):
            if not self.done[b]:
                self._finish(b, "length")
            if not self.live[b]:
                self.text[b] = self._decode(b)
            self._emit(b, final=True)


class Batcher:
    """The queue and its worker thread (started on the first `submit`)."""

    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64, wait_s: float = 0.05):
        self.model, self.tok = model, tokenizer
        self.max_batch, self.max_queue, self.wait_s = max(1, int(max_batch)), max(1, int(max_queue)), float(wait_s)
        gen_cfg = getattr(model, "generation_config", None)
        self.stop_ids = stop_token_ids(tokenizer, gen_cfg)
        keep = visible_special_tokens(tokenizer)
        self.drop = [t for t in tokenizer.convert_ids_to_tokens(sorted(special_token_ids(tokenizer))) if t and t not in keep]
        self.pending: list[Job] = []
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closed = False
        self._preparing = 0
        self.batches = 0
        """Batches run so far (tests read it)."""
        self.batch_sizes: list[int] = []
        self.finished: deque = deque(maxlen=256)
        """(kind, finish reason, generated tokens) of recent rows, never their content (tests and /health read it)."""

    @property
    def waiting(self) -> int:
        return len(self.pending)

    @contextlib.contextmanager
    def preparing(self):
        """Around a request's pre-processing (image decoding, prompt): an idle worker waits (at most ``wait_s``)
        for requests being prepared, so that concurrent arrivals share a batch, and never waits when none is."""
        with self.cond:
            self._preparing += 1
        try:
            yield
        finally:
            with self.cond:
                self._preparing -= 1
                self.cond.notify_all()

    def submit(self, job: Job) -> Job:
        with self.cond:
            if self.closed:
                raise RuntimeError("the server is shutting down")
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="mxr0-batcher", daemon=True)
                self.thread.start()
            if len(self.pending) >= self.max_queue:
                raise QueueFull(f"the generation queue is full ({self.max_queue} waiting requests); retry later")
            self.pending.append(job)
            self.cond.notify_all()
        return job

    def close(self) -> None:
        with self.cond:
            self.closed = True
            for j in self.pending:
                if not j.future.done():
                    j.future.set_exception(RuntimeError("the server is shutting down"))
            self.pending.clear()
            self.cond.notify_all()

    def _take(self) -> list[Job] | None:
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            if self.closed:
                return None
            deadline = time.monotonic() + self.wait_s
            while len(self.pending) < self.max_batch and self._preparing > 0 and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if not self.pending:
                return []
            key = self.pending[0].key
            group = [j for j in self.pending if j.key == key][:self.max_batch]
            taken = {id(j) for j in group}
            self.pending = [j for j in self.pending if id(j) not in taken]
            return group

    def _loop(self) -> None:
        while True:
            group = self._take()
            if group is None:
                return
            live = []
            for j in group:
                if j.cancelled:
                    j.future.set_result({"text": "", "finish_reason": "cancelled", "prompt_tokens": len(j.input_ids),
                                         "completion_tokens": 0})
                else:
                    live.append(j)
            if not live:
                continue
            try:
                self.run(live)
            except Exception as e:  # noqa: BLE001 - every waiting client gets the error, the worker keeps serving
                log.error("generation failed: %s", type(e).__name__)
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)

    @torch.no_grad()
    def run(self, jobs: list[Job]) -> None:
        """One batched ``generate`` call for ``jobs`` (same sampling settings)."""
        items = [{"input_ids": j.input_ids, "labels": [-100] * len(j.input_ids), "pixel_values": j.pixel_values,
                  "index": k} for k, j in enumerate(jobs)]
        batch = ChatCollator(self.tok.pad_token_id, "left")(items)
        param = next(self.model.parameters())
        crit = RowCriteria(jobs, self.tok, self.stop_ids, self.drop)
        first = jobs[0]
        kwargs = dict(max_new_tokens=max(j.max_new_tokens for j in jobs), eos_token_id=self.stop_ids,
                      pad_token_id=self.tok.pad_token_id, use_cache=True, num_beams=1,
                      stopping_criteria=StoppingCriteriaList([crit]))
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(first.temperature), top_p=float(first.top_p))
            if first.seed is not None:
                torch.manual_seed(int(first.seed))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        self.batches += 1
        self.batch_sizes.append(len(jobs))
        with _autocast(self.model, param.device):
            self.model.generate(input_ids=batch["input_ids"].to(param.device),
                                attention_mask=batch["attention_mask"].to(param.device),
                                pixel_values=batch["pixel_values"].to(param.device, dtype=param.dtype), **kwargs)
        crit.finish()
        for b, j in enumerate(jobs):
            self.finished.append((j.kind, crit.reason[b], len(crit.ids[b])))
            j.future.set_result({"text": crit.text[b].strip(), "finish_reason": crit.reason[b],
                                 "prompt_tokens": len(j.input_ids), "completion_tokens": len(crit.ids[b])})


def _autocast(model, device):
    """bf16 autocast when the model was loaded with ``precision="bf16"`` (`mxr0.precision`), else nothing."""
    return autocast(model_precision(model), device)
