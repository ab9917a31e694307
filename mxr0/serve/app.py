"""``mxr0 serve``: an OpenAI-compatible chat endpoint, task endpoints and a web page over one `Session`.

Routes (JSON errors everywhere: ``{"error": {"message", "type", "code"}}``, OpenAI's shape):

- ``GET /`` the web page (static HTML + JS, no build step, no CDN); ``GET /health``; ``GET /v1/models``;
  ``GET /v1/info`` (model names, card summary, intended use, labels, views).
- ``POST /v1/chat/completions`` (JSON): OpenAI's chat API; images as ``image_url`` data URIs (PNG, JPEG,
  ``data:application/dicom;base64,…``); ``stream``, ``max_tokens`` / ``max_completion_tokens``, ``temperature``
  (omitted or 0: greedy), ``top_p``, ``seed``, ``stop`` honoured.
- multipart task endpoints: ``/v1/image`` (the image as mxr0 read it, windowed), ``/v1/report`` (frontal,
  lateral, prior + prior report; ``stream=true`` for server-sent events), ``/v1/vqa``, ``/v1/ground`` (boxes in
  original pixels), ``/v1/classify``, ``/v1/zero-shot``, ``/v1/similarity`` (patch-similarity map).

Privacy: uploads live in memory (and a private temporary file while they are decoded), are never stored or
logged; responses carry no DICOM header values except technical display fields. The server binds to 127.0.0.1
by default; any other address needs a token (``Authorization: Bearer …``, what the openai client sends as its
api key). CORS is off unless origins are named.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import time
import uuid
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the routes' (string) annotations here

from mxr0.serve.batching import Job, QueueFull
from mxr0.serve.images import WINDOW_PRESETS, ImageError, decode_data_uri, display_png, heat_png
from mxr0.serve.session import RequestError, Session

log = logging.getLogger("mxr0.serve")

STATIC = Path(__file__).with_name("static")
MAX_STOP = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request", type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


def _error_body(status: int, message: str, code: str, type_: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or ("invalid_request_error" if status < 500 else "server_error"),
                      "code": code, "param": None}}


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------------
# ASGI middleware: request size, token
# ---------------------------------------------------------------------------------------------------------
class LimitAndAuth:
    """Refuses bodies over ``max_body`` bytes (413, by Content-Length or while reading) and, with a token, any
    ``/v1/`` request without ``Authorization: Bearer <token>`` (401)."""

    def __init__(self, app, max_body: int, token: str | None):
        self.app, self.max_body, self.token = app, int(max_body), token

    async def _reply(self, send, status: int, message: str, code: str) -> None:
        body = json.dumps(_error_body(status, message, code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token and scope["path"].startswith("/v1/") and scope.get("method") != "OPTIONS":  # CORS preflights carry no token
            auth = headers.get(b"authorization", b"").decode("latin-1")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return await self._reply(send, 401, "missing or wrong token: send Authorization: Bearer <token>",
                                         "invalid_api_key")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._reply(send, 400, "invalid Content-Length", "invalid_request")
            if n > self.max_body:
                return await self._drain_and_reply(receive, send)
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            chunks, total, more = [], 0, True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                total += len(chunk)
                if total > self.max_body:
                    return await self._drain_and_reply(receive, send, more=msg.get("more_body", False))
                chunks.append(chunk)
                more = msg.get("more_body", False)
            body = b"".join(chunks)
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        return await self.app(scope, receive, send)

    async def _drain_and_reply(self, receive, send, more: bool = True):
        # read (and drop) the rest, bounded, so that the client sees the answer instead of a reset connection
        drained = 0
        while more and drained < 4 * self.max_body:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            drained += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        await self._reply(send, 413, f"the request is larger than {self.max_body} bytes (the server's limit; "
                          "--max-body-mb)", "request_too_large")


# ---------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------
def create_app(session: Session, token: str | None = None, cors_origins: list[str] | None = None,
               max_body_bytes: int = 48 << 20):
    """The FastAPI app (wrapped in the size / token middleware) serving ``session``."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="mxr0 serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    created = int(time.time())

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)

    def err(status: int, message: str, code: str, type_: str | None = None) -> JSONResponse:
        return JSONResponse(_error_body(status, message, code, type_), status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return err(e.status, e.message, e.code, e.type)

    @app.exception_handler(ImageError)
    async def _image_error(request, e: ImageError):
        return err(e.status, str(e), e.code)

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return err(e.status, str(e), e.code)

    @app.exception_handler(QueueFull)
    async def _queue_full(request, e: QueueFull):
        return err(429, str(e), "queue_full", "rate_limit_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        msg = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return err(e.status_code, msg, "not_found" if e.status_code == 404 else "http_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        return err(400, "invalid request", "invalid_request")

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.error("internal error on %s: %s", request.url.path, type(e).__name__)  # no request content
        return err(500, f"internal error ({type(e).__name__})", "internal_error")

    # --- info -------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/health")
    async def health():
        b = getattr(session, "batcher", None)
        return {"status": "ok", "models": session.names, "queue": b.waiting if b else 0,
                "max_queue": b.max_queue if b else 0, "auth": bool(token),
                "batches": len(b.batch_sizes) if b else 0, "batched_requests": sum(b.batch_sizes) if b else 0}

    def model_list() -> list[dict]:
        return [{"id": n, "object": "model", "created": created, "owned_by": "mxr0", "mxr0_role": role}
                for role, n in session.names.items()]

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": model_list()}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        for m in model_list():
            if m["id"] == model_id:
                return m
        raise ApiError(404, f"the model {model_id!r} does not exist here; served: {list(session.names.values())}",
                       "model_not_found")

    @app.get("/v1/info")
    async def info():
        return {**session.info(), "window_presets": list(WINDOW_PRESETS)}

    # --- helpers ------------------------------------------------------------------------------------------
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

    async def image_field(form, name: str, required: bool = True):
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

    def streaming(job: Job, frame, final):
        """Server-sent events: ``frame(delta)`` per piece of text, ``final(result)`` at the end, then [DONE]."""
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
                    yield _sse(_error_body(500, f"generation failed ({type(e).__name__})", "internal_error"))
                else:
                    for f in final(res):
                        yield f
                yield "data: [DONE]\n\n"
            finally:
                if not job.future.done():
                    job.cancel()  # the client disconnected: its row stops at the next step

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def submit(job: Job) -> Job:
        return session.submit(job)

    # --- OpenAI chat completions ---------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await json_body(request)
        name = session.names.get("vlm")
        if "model" not in body or not isinstance(body["model"], str):
            raise ApiError(400, "'model' is required (see GET /v1/models)", "missing_model")
        if body["model"] != name:
            raise ApiError(404, f"the model {body['model']!r} does not exist here; chat is served by {name!r}"
                           if name else f"the model {body['model']!r} does not exist here (no VLM is loaded)",
                           "model_not_found")
        gen = _sampling(body)
        messages, uris = _messages(body.get("messages"))
        with session.preparing():  # concurrent arrivals being decoded: the worker waits for them to batch
            images = []
            for k, uri in enumerate(uris):
                data, _ = decode_data_uri(uri, f"image {k + 1}", session.max_image_bytes)
                images.append(await run_in_threadpool(session.read, data, f"image {k + 1}"))
            job = await run_in_threadpool(session.chat_job, messages, images, **gen)
            cid, t0 = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            base = {"id": cid, "created": t0, "model": name, "system_fingerprint": None}
            response = None
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

                def frame(delta):
                    d = {"role": "assistant", "content": ""} if delta is None else {"content": delta}
                    yield _sse({**base, "object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]})

                def final(res):
                    yield _sse({**base, "object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                             "finish_reason": _finish(res["finish_reason"])}]})
                    if include_usage:
                        yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(res)})

                response = streaming(job, frame, final)
            submit(job)
        if response is not None:
            return response
        res = await wait(job, request)
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": res["text"], "refusal": None},
                             "logprobs": None, "finish_reason": _finish(res["finish_reason"])}],
                "usage": _usage(res)}

    # --- task endpoints ---------------------------------------------------------------------------------------
    @app.post("/v1/image")
    async def image(request: Request):
        form = await form_of(request)
        im = await image_field(form, "image")
        preset = text_field(form, "window", "default")
        png, w, h = await run_in_threadpool(display_png, im.pixels, preset)
        return {**im.info(), "window": preset, "png": png, "display_width": w, "display_height": h}

    @app.post("/v1/report")
    async def report(request: Request):
        form = await form_of(request)
        with session.preparing():
            images = {}
            for k in ("frontal", "lateral", "prior"):
                im = await image_field(form, k, required=k == "frontal")
                if im is not None:
                    images[k] = im
            sections = {s: text_field(form, s) for s in ("indication", "technique", "comparison")}
            gen = {"max_new_tokens": int_field(form, "max_tokens", None)}
            gen = {k: v for k, v in gen.items() if v is not None}
            job = await run_in_threadpool(session.study_job, images, None, sections,
                                          text_field(form, "prior_report", "", 20000), **gen)
            extra = {"views": [k for k in images if k not in job.unused_views], "unused_views": job.unused_views}
            response = None
            if text_field(form, "stream", "false").lower() in ("1", "true", "yes"):
                def frame(delta):
                    if delta is not None:
                        yield _sse({"delta": delta})

                def final(res):
                    yield _sse({"done": True, "text": res["text"], "finish_reason": _finish(res["finish_reason"]), **extra})

                response = streaming(job, frame, final)
            submit(job)
        if response is not None:
            return response
        res = await wait(job, request)
        return {"text": res["text"], "finish_reason": _finish(res["finish_reason"]), **extra}

    @app.post("/v1/vqa")
    async def vqa(request: Request):
        form = await form_of(request)
        q = text_field(form, "question").strip()
        if not q:
            raise ApiError(400, "the form field 'question' is empty", "missing_question")
        gen = {k: v for k, v in {"max_new_tokens": int_field(form, "max_tokens", None)}.items() if v is not None}
        with session.preparing():
            im = await image_field(form, "image")
            job = submit(await run_in_threadpool(session.single_job, im, q, **gen))
        res = await wait(job, request)
        return {"question": q, "answer": res["text"], "finish_reason": _finish(res["finish_reason"])}

    @app.post("/v1/ground")
    async def ground(request: Request):
        form = await form_of(request)
        phrase = text_field(form, "phrase").strip()
        if not phrase:
            raise ApiError(400, "the form field 'phrase' is empty", "missing_phrase")
        gen = {k: v for k, v in {"max_new_tokens": int_field(form, "max_tokens", None)}.items() if v is not None}
        with session.preparing():
            im = await image_field(form, "image")
            job = submit(await run_in_threadpool(session.single_job, im, session.grounding_prompt(phrase), "grounding",
                                                 **gen))
        res = await wait(job, request)
        return {"phrase": phrase, "answer": res["text"], **session.boxes_of(res["text"], im)}

    @app.post("/v1/classify")
    async def classify(request: Request):
        form = await form_of(request)
        session._need("classifier")
        im = await image_field(form, "image")
        return {"model": session.names["classifier"], "probabilities": await run_in_threadpool(session.classify, im)}

    @app.post("/v1/zero-shot")
    async def zero_shot(request: Request):
        form = await form_of(request)
        session._need("align")
        im = await image_field(form, "image")
        labels = [l.strip() for l in text_field(form, "labels").split(",") if l.strip()] or None
        return {"model": session.names["align"], "probabilities": await run_in_threadpool(session.zero_shot, im, labels)}

    @app.post("/v1/similarity")
    async def similarity(request: Request):
        form = await form_of(request)
        session._need("align")
        im = await image_field(form, "image")
        phrase = text_field(form, "phrase")
        out = await run_in_threadpool(session.similarity, im, phrase)
        png, w, h = await run_in_threadpool(heat_png, out["map"], out["geometry"], im.height, im.width)
        grid = out["grid"]
        return {"model": session.names["align"], "phrase": phrase.strip(), "heatmap_png": png, "width": w, "height": h,
                "grid": [[round(float(v), 4) for v in row] for row in grid], "min": round(float(grid.min()), 4),
                "max": round(float(grid.max()), 4),
                "image_size": {"width": im.width, "height": im.height}}

    return LimitAndAuth(app, max_body_bytes, token)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _usage(res: dict) -> dict:
    return {"prompt_tokens": res["prompt_tokens"], "completion_tokens": res["completion_tokens"],
            "total_tokens": res["prompt_tokens"] + res["completion_tokens"]}


def _sampling(body: dict) -> dict:
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


def _messages(messages) -> tuple[list[dict], list[str]]:
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


def serve(model: str, align: str | None = None, classifier: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, token: str | None = None, cors_origins: list[str] | None = None, max_batch: int = 16,
          max_queue: int = 64, max_body_mb: float = 48, device: str | None = None, name: str | None = None,
          batch_wait_ms: float = 50.0, precision: str = "fp32") -> None:
    """Load the models once and serve them with uvicorn until interrupted."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} is not a loopback address: a token is required (--token or MXR0_SERVE_TOKEN); "
                         "clients send it as Authorization: Bearer <token> (the openai client's api_key)")
    session = Session(model, align=align, classifier=classifier, device=device, max_batch=max_batch,
                      max_queue=max_queue, name=name, max_image_bytes=int(max_body_mb * (1 << 20)),
                      batch_wait_s=batch_wait_ms / 1000, precision=precision)
    app = create_app(session, token=token, cors_origins=cors_origins, max_body_bytes=int(max_body_mb * (1 << 20)))
    print(f"[mxr0] serving {', '.join(f'{k}={v}' for k, v in session.names.items())} on http://{host}:{port}/ "
          "(research use only)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
    finally:
        session.close()
