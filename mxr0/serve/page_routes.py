"""The web page and the descriptive routes: ``GET /`` (static HTML + JS under ``/static``, no build step, no CDN),
``GET /health``, ``GET /v1/models`` (OpenAI's model list), ``GET /v1/models/{id}`` and ``GET /v1/info`` (model
names, card summary, intended use, labels, views, window presets)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request  # at module level: FastAPI resolves the routes' (string) annotations here
from fastapi.responses import FileResponse

from mxr0.serve.errors import ApiError
from mxr0.serve.images import WINDOW_PRESETS

STATIC = Path(__file__).with_name("static")

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index():
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    b = getattr(state.session, "batcher", None)
    return {"status": "ok", "models": state.session.names, "queue": b.waiting if b else 0,
            "max_queue": b.max_queue if b else 0, "auth": state.auth,
            "batches": len(b.batch_sizes) if b else 0, "batched_requests": sum(b.batch_sizes) if b else 0}


def _model_list(request: Request) -> list[dict]:
    state = request.app.state
    return [{"id": n, "object": "model", "created": state.created, "owned_by": "mxr0", "mxr0_role": role}
            for role, n in state.session.names.items()]


@router.get("/v1/models")
async def models(request: Request):
    return {"object": "list", "data": _model_list(request)}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request):
    for m in _model_list(request):
        if m["id"] == model_id:
            return m
    raise ApiError(404, f"the model {model_id!r} does not exist here; served: "
                   f"{list(request.app.state.session.names.values())}", "model_not_found")


@router.get("/v1/info")
async def info(request: Request):
    return {**request.app.state.session.info(), "window_presets": list(WINDOW_PRESETS)}


__all__ = ["STATIC", "router"]
