"""Answering a generation request: wait for its job (cancelled when the client goes away) or stream it as
server-sent events, and the OpenAI fields of a result (finish reason, usage)."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from fastapi.responses import StreamingResponse

from mxr0.serve.batching import Job
from mxr0.serve.errors import ApiError, error_body


async def wait(job: Job, request: Request) -> dict:
    """The job's result; the job is cancelled when the client goes away."""
    fut = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({fut}, timeout=0.25)
            if done:
                return fut.result()
            if await request.is_disconnected():
                job.cancel()
                raise ApiError(499, "client disconnected", "client_closed")
    finally:
        if not job.future.done():
            job.cancel()


def streaming(job: Job, frame, final) -> StreamingResponse:
    """Server-sent events: ``frame(delta)`` per piece of text (``frame(None)`` first), ``final(result)`` at the end,
    then [DONE]. Call it before the job is submitted (it sets the job's ``on_delta``)."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    job.on_delta = lambda s: loop.call_soon_threadsafe(q.put_nowait, s)

    async def events():
        fut = asyncio.wrap_future(job.future)
        try:
            for f in frame(None):
                yield f
            while True:
                getter = asyncio.ensure_future(q.get())
                done, _ = await asyncio.wait({getter, fut}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    for f in frame(getter.result()):
                        yield f
                    continue
                getter.cancel()
                while not q.empty():
                    for f in frame(q.get_nowait()):
                        yield f
                break
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - reported in the stream
                yield sse(error_body(500, f"generation failed ({type(e).__name__})", "internal_error"))
            else:
                for f in final(res):
                    yield f
            yield "data: [DONE]\n\n"
        finally:
            if not job.future.done():
                job.cancel()  # the client disconnected: its row stops at the next step

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def finish(reason: str | None) -> str:
    """OpenAI's finish reason of a job's (``length`` or ``stop``; a stop string or a cancellation is ``stop``)."""
    return "length" if reason == "length" else "stop"


def usage(res: dict) -> dict:
    return {"prompt_tokens": res["prompt_tokens"], "completion_tokens": res["completion_tokens"],
            "total_tokens": res["prompt_tokens"] + res["completion_tokens"]}


__all__ = ["finish", "sse", "streaming", "usage", "wait"]
