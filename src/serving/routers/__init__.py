"""One router per resource, each built by a ``build_router(cfg)`` factory in its own module.

A route that takes a body declares how many bytes it accepts with :func:`body_limit`, under its
decorator; :class:`~src.serving.limits.RequestLimitsMiddleware` enforces it before the body is
read (:func:`body_limits_of`). Routes that declare none accept :data:`SMALL_BODY_LIMIT`.
Adding an endpoint means adding a router module and listing it in :mod:`src.serving.app`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi.routing import APIRoute

SMALL_BODY_LIMIT = 64 * 1024  # a JSON body at most
_BODY_LIMIT = "__body_limit__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def body_limit(limit: int) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint as accepting a body of at most ``limit`` bytes."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _BODY_LIMIT, limit)
        return endpoint

    return mark


def body_limits_of(routers: Iterable[APIRouter]) -> dict[str, int]:
    """Each route's path -> the body bytes it accepts (its :func:`body_limit`, or the small one).

    Keyed by path because the limits run before routing; every path here is static.
    """
    limits: dict[str, int] = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                declared = getattr(route.endpoint, _BODY_LIMIT, SMALL_BODY_LIMIT)
                limits[route.path] = max(limits.get(route.path, 0), declared)
    return limits
