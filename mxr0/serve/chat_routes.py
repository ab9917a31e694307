"""``POST /v1/chat/completions``: OpenAI's chat API on the loaded VLM (the official ``openai`` client works
unchanged). Images are ``image_url`` data URIs (PNG, JPEG, ``data:application/dicom;base64,…``); ``stream``,
``max_tokens`` / ``max_completion_tokens``, ``temperature`` (omitted or 0: greedy), ``top_p``, ``seed`` and
``stop`` are honoured; anything else unsupported is a 400 naming it."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request  # at module level: FastAPI resolves the routes' (string) annotations here
from starlette.concurrency import run_in_threadpool

from mxr0.serve.errors import ApiError
from mxr0.serve.forms import json_body
from mxr0.serve.images import decode_data_uri
from mxr0.serve.replies import finish, sse, streaming, usage, wait

MAX_STOP = 4

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat(request: Request):
    session = request.app.state.session
    body = await json_body(request)
    name = session.names.get("vlm")
    if "model" not in body or not isinstance(body["model"], str):
        raise ApiError(400, "'model' is required (see GET /v1/models)", "missing_model")
    if body["model"] != name:
        raise ApiError(404, f"the model {body['model']!r} does not exist here; chat is served by {name!r}"
                       if name else f"the model {body['model']!r} does not exist here (no VLM is loaded)",
                       "model_not_found")
    gen = sampling(body)
    messages, uris = messages_of(body.get("messages"))
    with session.preparing():  # concurrent arrivals being decoded: the worker waits for them to batch
        images = []
        for k, uri in enumerate(uris):
            data, _ = decode_data_uri(uri, f"image {k + 1}", session.max_image_bytes)
            images.append(await run_in_threadpool(session.read, data, f"image {k + 1}"))
        job = await run_in_threadpool(session.chat_job, messages, images, **gen)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": name,
                "system_fingerprint": None}
        response = _stream(job, base, body) if body.get("stream") else None
        session.submit(job)
    if response is not None:
        return response
    res = await wait(job, request)
    return {**base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res["text"], "refusal": None},
                         "logprobs": None, "finish_reason": finish(res["finish_reason"])}],
            "usage": usage(res)}


def _stream(job, base: dict, body: dict):
    """The SSE answer: a role chunk, content chunks, a finish chunk and, when asked, a usage chunk."""
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def frame(delta):
        d = {"role": "assistant", "content": ""} if delta is None else {"content": delta}
        yield sse({**base, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]})

    def final(res):
        yield sse({**base, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish(res["finish_reason"])}]})
        if include_usage:
            yield sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage(res)})

    return streaming(job, frame, final)


def sampling(body: dict) -> dict:
    """Generation settings from an OpenAI request (checked; unsupported values are 400)."""
    out: dict = {}
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    if mt is not None:
        if not isinstance(mt, int) or isinstance(mt, bool) or not 1 <= mt <= 4096:
            raise ApiError(400, "max_tokens must be an integer in [1, 4096]", "invalid_max_tokens")
        out["max_new_tokens"] = mt
    t = body.get("temperature")
    if t is not None:
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 <= t <= 2:
            raise ApiError(400, "temperature must be a number in [0, 2]", "invalid_temperature")
        out["temperature"] = float(t)
    p = body.get("top_p")
    if p is not None:
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 < p <= 1:
            raise ApiError(400, "top_p must be a number in (0, 1]", "invalid_top_p")
        out["top_p"] = float(p)
    s = body.get("seed")
    if s is not None:
        if not isinstance(s, int) or isinstance(s, bool):
            raise ApiError(400, "seed must be an integer", "invalid_seed")
        out["seed"] = s
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(x, str) and x for x in stop):
            raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", "invalid_stop")
        out["stop"] = stop
    n = body.get("n", 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", "invalid_n")
    return out


def messages_of(messages) -> tuple[list[dict], list[str]]:
    """OpenAI messages → (messages with ``{"type": "text"|"image"}`` parts, the image URIs in order)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "invalid_messages")
    out, uris = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}]: role must be system, developer, user or assistant", "invalid_messages")
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", "invalid_messages")
        parts = []
        for j, p in enumerate(content):
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text" and isinstance(p.get("text"), str):
                parts.append({"type": "text", "text": p["text"]})
            elif kind == "image_url":
                url = p.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if role != "user":
                    raise ApiError(400, f"messages[{i}]: images are accepted in user messages only", "invalid_messages")
                uris.append(url)
                parts.append({"type": "image"})
            else:
                raise ApiError(400, f"messages[{i}].content[{j}]: expected a text or image_url part", "invalid_messages")
        out.append({"role": role, "content": parts})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", "invalid_messages")
    return out, uris


__all__ = ["MAX_STOP", "messages_of", "router", "sampling"]
