"""The server's guards: a request size limit and the bearer token (an ASGI middleware around the app), and the
loopback test behind the rule that any other bind address needs a token."""

from __future__ import annotations

import ipaddress
import json
import secrets

from mxr0.serve.errors import error_body


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LimitAndAuth:
    """Refuses bodies over ``max_body`` bytes (413, by Content-Length or while reading) and, with a token, any
    ``/v1/`` request without ``Authorization: Bearer <token>`` (401)."""

    def __init__(self, app, max_body: int, token: str | None):
        self.app, self.max_body, self.token = app, int(max_body), token

    async def _reply(self, send, status: int, message: str, code: str) -> None:
        body = json.dumps(error_body(status, message, code)).encode()
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


__all__ = ["LimitAndAuth", "is_loopback"]
