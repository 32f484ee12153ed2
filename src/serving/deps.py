"""What the routes depend on: the serving context, the API key check and the current model."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from src.config import AppConfig
from src.monitoring.answers import PredictionMonitor
from src.serving.batching import Forwarder
from src.serving.errors import ApiError
from src.serving.inference import ImageLimits
from src.serving.model_store import LoadedModel, ModelStore
from src.serving.observability import ServingMetrics


@dataclass
class ServingContext:
    """Everything one app instance shares between requests (``app.state.serving``)."""

    cfg: AppConfig
    store: ModelStore
    metrics: ServingMetrics
    logger: logging.Logger
    image_limits: ImageLimits
    # Separate slots for single images and batches, so batches never queue a /predict.
    single_slots: anyio.CapacityLimiter
    batch_slots: anyio.CapacityLimiter
    api_key: bytes | None
    # Forwards each request's images: micro-batched (/predict) or directly.
    forwarder: Forwarder
    # A worker with one core decodes a /predict image this small on the event loop; None: never.
    inline_limits: ImageLimits | None = None
    # Built by build_context: stamps prediction_id/low_confidence and queues answers for the log.
    monitor: PredictionMonitor | None = None


def serving_context(request: Request) -> ServingContext:
    context: ServingContext = request.app.state.serving
    return context


API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Needed for the predict endpoints when the server has SERVE_API_KEY set.",
)


async def require_api_key(
    request: Request, provided: str | None = Security(API_KEY_HEADER)
) -> None:
    """The X-API-Key header must equal SERVE_API_KEY, compared in constant time as UTF-8 bytes."""
    expected = serving_context(request).api_key
    if expected is None:
        return
    if not provided:
        raise ApiError(
            401, "unauthorized", "Missing X-API-Key header: this server needs an API key."
        )
    # HTTP headers arrive as bytes that the ASGI layer decodes as latin-1: encoding back to
    # latin-1 gives the bytes the client sent, which for a UTF-8 key are the key's UTF-8 bytes.
    if not hmac.compare_digest(provided.encode("latin-1"), expected):
        raise ApiError(401, "unauthorized", "Wrong API key in the X-API-Key header.")


async def current_model(request: Request) -> LoadedModel:
    """The model that answers this whole request (read once), or 503 with the reason. Async:
    FastAPI would run a plain function in a worker thread, a thread hop per request."""
    store = serving_context(request).store
    model = store.current
    if model is None:
        raise ApiError(503, "not_ready", f"No model is loaded yet: {store.status.reason}")
    return model


CurrentModel = Annotated[LoadedModel, Depends(current_model)]
