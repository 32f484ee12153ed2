"""``GET /model`` (the served version, its metrics and data version) and ``GET /model/card``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from src.config import AppConfig
from src.monitoring.card import MODEL_CARD_TAG
from src.serving.deps import CurrentModel, serving_context
from src.serving.model_store import LoadedModel
from src.serving.schemas import BUSY, NOT_READY, RETRY_AFTER, ModelDescription, error


def describe_model(model: LoadedModel, request: Request) -> dict[str, Any]:
    ctx = serving_context(request)
    status = ctx.store.status
    failure = status.failure
    return {
        "name": model.name,
        "version": model.version,
        "run_id": model.run_id,
        "model_uri": model.model_uri,
        "metrics": model.metrics,
        "data_md5": model.data_md5,
        "split_hash": model.tags.get("split_hash"),
        "validation_status": model.tags.get("validation_status"),
        "class_names": model.class_names,
        "flip_tta": model.flip_tta,
        "runtime": model.classifier.runtime,
        "threads": model.classifier.threads,
        "micro_batching": "on" if ctx.forwarder.batches(model.batch_speedup) else "off",
        "batch_speedup": round(model.batch_speedup, 3),
        "loaded_at": model.loaded_at.isoformat(),
        "load_seconds": round(model.load_seconds, 3),
        "production_version": status.production_version,
        "load_error": failure.message if failure is not None else None,
    }


def build_router(_cfg: AppConfig) -> APIRouter:
    router = APIRouter()

    @router.get(
        "/model",
        response_model=ModelDescription,
        responses={503: error(f"Not ready: {NOT_READY}; or {BUSY}.", headers=RETRY_AFTER)},
        summary="The served model version, its metrics and data version; a Production version "
        "that failed to load.",
    )
    async def model_info(request: Request, model: CurrentModel) -> Response:
        return JSONResponse(describe_model(model, request))

    @router.get(
        "/model/card",
        response_class=Response,
        responses={
            200: {"content": {"text/markdown": {"schema": {"type": "string"}}}},
            404: error("The served version has no model card (`not_found`)."),
            503: error(f"Not ready: {NOT_READY}; or {BUSY}.", headers=RETRY_AFTER),
        },
        summary="The served version's model card (markdown).",
    )
    async def model_card(request: Request) -> Response:
        model = serving_context(request).store.current
        if model is None:
            raise HTTPException(503, "No model is loaded yet; retry once /ready answers 200.")
        card = model.tags.get(MODEL_CARD_TAG)
        if not card:
            raise HTTPException(
                404,
                f"Version {model.version} has no model card: cards are written by train-flow "
                "for the versions it registers; promote a version trained with it.",
            )
        return Response(card, media_type="text/markdown; charset=utf-8")

    return router
