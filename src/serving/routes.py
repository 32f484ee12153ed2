"""The endpoints. Each reads what it needs from :mod:`src.serving.deps`; predictions are produced
in :func:`src.serving.service.classify_request`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from src.config import ServeConfig
from src.package import STATIC_DIR
from src.serving.deps import CurrentModel, require_api_key, serving_context
from src.serving.model_store import LoadedModel
from src.serving.schemas import (
    ERROR_RESPONSES,
    Health,
    ModelDescription,
    Prediction,
    Readiness,
    multipart_body,
)
from src.serving.service import classify_request


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


def prediction_router(serve: ServeConfig) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)

    @router.post(
        "/predict",
        response_model=Prediction,
        openapi_extra=multipart_body("file", many=False, max_files=1),
        summary="Classify one image (multipart field `file`).",
    )
    async def predict(request: Request, model: CurrentModel) -> Response:
        ctx = serving_context(request)
        results = await classify_request(request, ctx, model, field="file", max_files=1)
        return JSONResponse(results[0])

    @router.post(
        "/predict/batch",
        response_model=list[Prediction],
        openapi_extra=multipart_body("files", many=True, max_files=serve.max_batch_files),
        summary=f"Classify up to {serve.max_batch_files} images (multipart field `files`), "
        "answers in the same order.",
    )
    async def predict_batch(request: Request, model: CurrentModel) -> Response:
        ctx = serving_context(request)
        max_files = ctx.cfg.serve.max_batch_files
        results = await classify_request(request, ctx, model, field="files", max_files=max_files)
        return JSONResponse(results)

    return router


router = APIRouter()


@router.get(
    "/model",
    response_model=ModelDescription,
    responses={503: ERROR_RESPONSES[503]},
    summary="The served model version, its metrics and data version; a Production version that "
    "failed to load.",
)
async def model_info(request: Request, model: CurrentModel) -> Response:
    return JSONResponse(describe_model(model, request))


@router.get("/health", response_model=Health, summary="Liveness: 200 while the process runs.")
async def health() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "No model loaded yet."}},
    summary="Readiness: 200 once a model is loaded, 503 with the reason before; the reason also "
    "says when Production failed to load and an older version is served.",
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
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def prometheus_metrics(request: Request) -> Response:
    body = serving_context(request).metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
