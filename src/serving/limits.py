"""Transport limits enforced before the app reads a request, as one pure ASGI middleware.

* 431 when the request headers are over ``max_header_bytes``;
* 400 for a ``Content-Length`` that is not a number, or a body that ends short of it;
* 413 when ``Content-Length`` (or a streamed body) is over the limit for the path: at most that
  many bytes are ever read;
* 503 + ``Retry-After`` when the bytes of all bodies in flight would pass ``max_inflight_bytes``
  (a global memory budget: each request reserves its declared size before any of it is read);
* 408 when the body stalls longer than ``body_timeout_s`` between two chunks.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from src.serving.errors import TransportError, error_bytes


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def too_large_message(path: str, limit: int, size: int | None = None) -> str:
    size_text = f" ({_mib(size)})" if size is not None else ""
    return (
        f"The request body{size_text} is over the {_mib(limit)} limit for {path}; "
        "send a smaller image (or fewer images per batch)."
    )


class InflightBudget:
    """Bytes of request bodies the process holds at once (thread-safe counter)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if size and self.used + size > self.limit:
                return False
            self.used += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.used -= size


@dataclass(frozen=True)
class TransportLimits:
    limit_for: Callable[[str], int]  # body bytes allowed for a path
    budget: InflightBudget
    max_header_bytes: int
    body_timeout_s: float
    retry_after_s: int = 1


async def send_error(
    send: Send, status: int, error: str, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = error_bytes(error, detail)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            if not value.isdigit():
                raise ValueError(value)
            return int(value)
    return None


class RequestLimitsMiddleware:
    """Pure ASGI middleware applying :class:`TransportLimits` (see the module docstring)."""

    def __init__(self, app: ASGIApp, limits: TransportLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits, path = self.limits, scope.get("path", "")
        state = scope.setdefault("state", {})
        header_bytes = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
        if header_bytes > limits.max_header_bytes:
            state["error"] = "headers_too_large"
            detail = f"The request headers are over the {_mib(limits.max_header_bytes)} limit."
            await send_error(send, 431, "headers_too_large", detail)
            return
        try:
            declared = _declared_length(scope)
        except ValueError:
            await send_error(send, 400, "bad_request", "Content-Length is not a number.")
            return
        limit = limits.limit_for(path)
        if declared is not None and declared > limit:
            state["error"] = "payload_too_large"
            detail = too_large_message(path, limit, declared)
            await send_error(send, 413, "payload_too_large", detail)
            return
        chunked = any(k == b"transfer-encoding" for k, _ in scope.get("headers", []))
        reserved = declared if declared is not None else (limit if chunked else 0)
        if not limits.budget.reserve(reserved):
            state["error"] = "busy"
            retry = ((b"retry-after", str(limits.retry_after_s).encode()),)
            detail = "The server is busy with other uploads; retry in a moment."
            await send_error(send, 503, "busy", detail, retry)
            return
        try:
            await self._run(scope, receive, send, limit, declared)
        finally:
            limits.budget.release(reserved)

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, limit: int, declared: int | None
    ) -> None:
        path, timeout = scope.get("path", ""), self.limits.body_timeout_s
        received, body_done, response_started = 0, declared == 0, False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # after the body: only the disconnect is left to wait for
            with anyio.move_on_after(timeout) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                detail = f"The request body stalled for over {math.ceil(timeout)} s; send it whole."
                raise TransportError(408, "request_timeout", detail)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise TransportError(413, "payload_too_large", too_large_message(path, limit))
                if not message.get("more_body", False):
                    body_done = True
                    if declared is not None and received != declared:
                        detail = f"The body has {received} bytes; Content-Length said {declared}."
                        raise TransportError(400, "short_body", detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except TransportError as exc:
            if response_started:
                raise
            scope.setdefault("state", {})["error"] = exc.error
            await send_error(send, exc.status, exc.error, exc.detail)
