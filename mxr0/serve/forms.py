"""Reading a request: a JSON body, a multipart form and its fields (image files, text, integers), each checked
with a 4xx `ApiError` naming the field and what to send instead."""

from __future__ import annotations

import json

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from mxr0.serve.errors import ApiError
from mxr0.serve.images import XrayImage


async def json_body(request: Request) -> dict:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, not {ctype or '(none)'!r}",
                       "unsupported_media_type")
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "invalid_json")
    return body


async def form_of(request: Request):
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, f"send the image as multipart/form-data, not {ctype or '(none)'!r}",
                       "unsupported_media_type")
    try:
        return await request.form(max_files=8, max_fields=32)
    except Exception:  # noqa: BLE001 - a malformed multipart body
        raise ApiError(400, "the multipart body could not be parsed", "invalid_form") from None


async def image_field(session, form, name: str, required: bool = True) -> XrayImage | None:
    """The uploaded file ``name`` read by ``session`` (a `Pipeline`), in a worker thread; None when optional and
    absent or empty."""
    f = form.get(name)
    if f is None or isinstance(f, str):
        if required:
            raise ApiError(400, f"the form field {name!r} must be an uploaded image file", "missing_image")
        return None
    data = await f.read()
    if not data and not required:
        return None
    return await run_in_threadpool(session.read, data, name)


def text_field(form, name: str, default: str = "", limit: int = 4000) -> str:
    v = form.get(name, default)
    if not isinstance(v, str):
        raise ApiError(400, f"the form field {name!r} must be text", "invalid_field")
    if len(v) > limit:
        raise ApiError(400, f"the form field {name!r} is longer than {limit} characters", "invalid_field")
    return v


def int_field(form, name: str, default: int | None, lo: int = 1, hi: int = 4096) -> int | None:
    v = form.get(name)
    if v in (None, ""):
        return default
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be an integer", "invalid_field") from None
    if not lo <= n <= hi:
        raise ApiError(400, f"{name} must be in [{lo}, {hi}]", "invalid_field")
    return n


__all__ = ["form_of", "image_field", "int_field", "json_body", "text_field"]
