"""``mxr0 serve``: an OpenAI-compatible chat endpoint, task endpoints and a web page over one `Pipeline`.

`create_app` assembles the routes (`mxr0.serve.chat_routes`, `mxr0.serve.task_routes`,
`mxr0.serve.page_routes`), the JSON error handlers (`mxr0.serve.errors`: ``{"error": {"message", "type",
"code"}}``, OpenAI's shape, everywhere), CORS and the size / token guard (`mxr0.serve.guard`); `serve` loads the
models once and runs uvicorn.

Privacy: uploads live in memory (and a private temporary file while they are decoded), are never stored or
logged; responses carry no DICOM header values except technical display fields. The server binds to 127.0.0.1
by default; any other address needs a token (``Authorization: Bearer …``, what the openai client sends as its
api key). CORS is off unless origins are named.
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from mxr0.serve.chat_routes import router as chat_router
from mxr0.serve.errors import add_error_handlers
from mxr0.serve.guard import LimitAndAuth, is_loopback
from mxr0.serve.page_routes import STATIC, router as page_router
from mxr0.serve.pipeline import Pipeline
from mxr0.serve.task_routes import router as task_router


def create_app(session: Pipeline, token: str | None = None, cors_origins: list[str] | None = None,
               max_body_bytes: int = 48 << 20):
    """The FastAPI app (wrapped in the size / token middleware) serving ``session`` (a `Pipeline`)."""
    app = FastAPI(title="mxr0 serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session
    app.state.created = int(time.time())
    app.state.auth = bool(token)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)
    add_error_handlers(app)
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.include_router(chat_router)
    app.include_router(task_router)
    return LimitAndAuth(app, max_body_bytes, token)


def serve(model: str, align: str | None = None, classifier: str | None = None, host: str = "127.0.0.1",
          port: int = 8000, token: str | None = None, cors_origins: list[str] | None = None, max_batch: int = 16,
          max_queue: int = 64, max_body_mb: float = 48, device: str | None = None, name: str | None = None,
          batch_wait_ms: float = 50.0, precision: str = "fp32") -> None:
    """Load the models once and serve them with uvicorn until interrupted."""
    import uvicorn

    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} is not a loopback address: a token is required (--token or MXR0_SERVE_TOKEN); "
                         "clients send it as Authorization: Bearer <token> (the openai client's api_key)")
    session = Pipeline(model, align=align, classifier=classifier, device=device, max_batch=max_batch,
                       max_queue=max_queue, name=name, max_image_bytes=int(max_body_mb * (1 << 20)),
                       batch_wait_s=batch_wait_ms / 1000, precision=precision)
    app = create_app(session, token=token, cors_origins=cors_origins, max_body_bytes=int(max_body_mb * (1 << 20)))
    print(f"[mxr0] serving {', '.join(f'{k}={v}' for k, v in session.names.items())} on http://{host}:{port}/ "
          "(research use only)", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
    finally:
        session.close()


__all__ = ["create_app", "serve"]
