"""Request body size limit, enforced before any of the body is read or spooled."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised from ``receive`` once more than the allowed bytes have streamed in."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def too_large_message(path: str, limit: int, size: int | None = None) -> str:
    size_text = f" ({_mib(size)})" if size is not None else ""
    return (
        f"The request body{size_text} is over the {_mib(limit)} limit for {path}; "
        "send a smaller image (or fewer images per batch)."
    )


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: 413 when ``Content-Length`` is over the limit for the path (the
    body is never read), and 413 as soon as a streamed (chunked) body passes the limit (at
    most ``limit`` bytes are ever read)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_for(path)
        declared: int | None = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "bad_request", "Content-Length is not a number.")
                    return
                break
        if declared is not None and declared > limit:
            scope.setdefault("state", {})["error"] = "payload_too_large"
            await _send_error(
                send, 413, "payload_too_large", too_large_message(path, limit, declared)
            )
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if response_started:
                raise
            scope.setdefault("state", {})["error"] = "payload_too_large"
            await _send_error(send, 413, "payload_too_large", too_large_message(path, limit))


async def _send_error(send: Send, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
