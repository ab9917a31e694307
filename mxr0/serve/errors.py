"""The server's errors: every failure answers JSON in OpenAI's shape, ``{"error": {"message", "type", "code"}}``,
naming the problem (never the request's content), and the server keeps serving."""

from __future__ import annotations

import logging

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mxr0.serve.batching import QueueFull
from mxr0.serve.images import ImageError
from mxr0.serve.loading import RequestError

log = logging.getLogger("mxr0.serve")


class ApiError(Exception):
    """A request refused by the HTTP layer: ``status``, a message naming the reason, an OpenAI-style ``code``."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


def error_body(status: int, message: str, code: str, type_: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or ("invalid_request_error" if status < 500 else "server_error"),
                      "code": code, "param": None}}


def _reply(status: int, message: str, code: str, type_: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, type_), status_code=status)


def add_error_handlers(app) -> None:
    """``app``'s exception handlers: each known error its status and code, anything else a 500 naming its type."""

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _reply(e.status, e.message, e.code, e.type)

    @app.exception_handler(ImageError)
    async def _image_error(request, e: ImageError):
        return _reply(e.status, str(e), e.code)

    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        return _reply(e.status, str(e), e.code)

    @app.exception_handler(QueueFull)
    async def _queue_full(request, e: QueueFull):
        return _reply(429, str(e), "queue_full", "rate_limit_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        msg = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return _reply(e.status_code, msg, "not_found" if e.status_code == 404 else "http_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(request, e: RequestValidationError):
        return _reply(400, "invalid request", "invalid_request")

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):
        log.error("internal error on %s: %s", request.url.path, type(e).__name__)  # no request content
        return _reply(500, f"internal error ({type(e).__name__})", "internal_error")


__all__ = ["ApiError", "add_error_handlers", "error_body"]
