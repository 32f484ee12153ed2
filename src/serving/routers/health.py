"""``GET /health`` (liveness), ``GET /ready`` (readiness) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from src.config import AppConfig
from src.serving.deps import serving_context
from src.serving.schemas import BUSY, RETRY_AFTER, ErrorBody, Health, Readiness


def build_router(_cfg: AppConfig) -> APIRouter:
    router = APIRouter()

    @router.get("/health", response_model=Health, summary="Liveness: 200 while the process runs.")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @router.get(
        "/ready",
        response_model=Readiness,
        responses={
            503: {
                "model": Readiness | ErrorBody,
                "description": "No model loaded yet (`Readiness`, `status` 'not_ready', with "
                f"the reason); or {BUSY} (`ErrorBody`).",
                "headers": RETRY_AFTER,
            }
        },
        summary="Readiness: 200 once a model is loaded, 503 with the reason before; the reason "
        "also says when Production failed to load and an older version is served.",
    )
    async def ready(request: Request) -> Response:
        store = serving_context(request).store
        model = store.current
        stuck = store.stuck_reload()
        if model is None:
            reason = stuck or store.status.reason
            return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
        body: dict[str, Any] = {"status": "ready", "model_version": model.version}
        if stuck is not None:
            body.update(reason=stuck, reload_stuck=True)
            body["production_version"] = store.status.production_version
        elif store.status.failure is not None:
            body["reason"] = store.status.reason
            body["production_version"] = store.status.production_version
        return JSONResponse(body)

    @router.get(
        "/metrics",
        summary="Prometheus metrics.",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        body = serving_context(request).metrics.exposition()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
