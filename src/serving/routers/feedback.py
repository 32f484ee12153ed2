"""``POST /feedback``: the true garment for an earlier answer, matched in the prediction log
(:mod:`src.monitoring.writer`) by its ``prediction_id``."""

from __future__ import annotations

import math
import re

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from src.config import AppConfig
from src.labels import CLASS_NAMES
from src.monitoring.answers import PredictionMonitor
from src.serving.deps import require_api_key, serving_context
from src.serving.rate_limit import ClientRateLimiter
from src.serving.schemas import (
    API_KEY_RESPONSES,
    BODY_READ,
    BODY_RESPONSES,
    BUSY,
    RETRY_AFTER,
    Responses,
    error,
)

PREDICTION_ID = re.compile(r"^[0-9a-f]{32}$")


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(description="The `prediction_id` of an answer from /predict.")
    label: str | int = Field(description="The true garment: a class name ('Shirt') or id (0-9).")


class FeedbackAccepted(BaseModel):
    status: str
    prediction_id: str
    true_label: str
    true_class_id: int


FEEDBACK_RESPONSES: Responses = {
    **BODY_RESPONSES,
    **API_KEY_RESPONSES,
    400: error(f"The body cannot be decoded as JSON text (`bad_request`), or {BODY_READ}."),
    404: error("No answer with this `prediction_id` in the prediction log (`not_found`)."),
    422: error(
        "The body is not JSON or not this shape (`invalid_request`, each field in `problems`), "
        "a malformed `prediction_id` or an unknown label (`invalid_request`)."
    ),
    429: error(
        "Too many feedback posts from this client (`too_many_requests`).", headers=RETRY_AFTER
    ),
    503: error(
        f"The prediction log is off, unavailable or overloaded (`not_ready`); or {BUSY}.",
        headers=RETRY_AFTER,
    ),
}


def class_id_of(label: str | int) -> int:
    """A class name (any case) or id → the class id; ``ValueError`` with the choices otherwise."""
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(CLASS_NAMES):
        return label
    if isinstance(label, str):
        text = label.strip()
        if text.isdigit() and int(text) < len(CLASS_NAMES):
            return int(text)
        for index, name in enumerate(CLASS_NAMES):
            if name.lower() == text.lower():
                return index
    raise ValueError(
        f"Unknown label {label!r}: use one of {', '.join(CLASS_NAMES)} or a class id 0-9."
    )


def build_router(cfg: AppConfig) -> APIRouter:
    router = APIRouter()
    settings = cfg.monitor
    limiter = ClientRateLimiter(
        settings.feedback_rate_per_minute, settings.feedback_burst, settings.feedback_max_clients
    )

    @router.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        dependencies=[Depends(require_api_key)],
        responses=FEEDBACK_RESPONSES,
        summary="Record the true garment for an answer (its `prediction_id`).",
    )
    async def post_feedback(body: FeedbackRequest, request: Request) -> Response:
        _take_rate(limiter, request, settings.feedback_rate_per_minute)
        if not PREDICTION_ID.match(body.prediction_id):
            raise HTTPException(
                422, "prediction_id must be the 32-character id from a /predict answer."
            )
        try:
            class_id = class_id_of(body.label)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        monitor = serving_context(request).monitor
        if monitor is None or monitor.writer is None:
            raise HTTPException(
                503,
                "The prediction log is off (MONITOR_LOG_PREDICTIONS=false); feedback "
                "cannot be matched to an answer.",
            )
        found = await anyio.to_thread.run_sync(_known_prediction, monitor, body.prediction_id)
        if found is None:
            raise HTTPException(503, "The prediction log is unavailable; retry later.")
        if not found:
            raise HTTPException(
                404,
                f"No answer with prediction_id {body.prediction_id} in the prediction log "
                "(unknown, or removed by retention); send the id of a recent /predict answer.",
            )
        if not monitor.add_feedback(body.prediction_id, class_id):
            raise HTTPException(503, "The prediction log is overloaded; retry in a moment.")
        return JSONResponse(
            {
                "status": "recorded",
                "prediction_id": body.prediction_id,
                "true_label": CLASS_NAMES[class_id],
                "true_class_id": class_id,
            },
            status_code=202,
        )

    return router


def _take_rate(limiter: ClientRateLimiter, request: Request, per_minute: float) -> None:
    """429 + ``Retry-After`` once this client used up its feedback rate. Per client address:
    behind a reverse proxy that is the proxy's (see the README)."""
    wait = limiter.acquire(request.client.host if request.client else "unknown")
    if wait > 0:
        raise HTTPException(
            429,
            f"Too many feedback posts from this client (at most {per_minute:g} a minute); "
            f"retry in {math.ceil(wait)} s.",
            headers={"Retry-After": str(math.ceil(wait))},
        )


def _known_prediction(monitor: PredictionMonitor, prediction_id: str) -> bool | None:
    """Whether the log holds ``prediction_id`` (after writing what is queued); ``None`` if the
    log cannot be read."""
    writer = monitor.writer
    if writer is None:
        return None
    writer.flush(timeout=5.0)
    store = writer.store(timeout=5.0)
    if store is None:
        return None
    try:
        return store.has_prediction(prediction_id)
    except Exception:
        return None
