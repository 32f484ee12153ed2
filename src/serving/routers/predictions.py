"""``POST /predict`` and ``POST /predict/batch``: multipart images in, predictions out (produced
by :func:`src.serving.service.classify_request`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from src.config import AppConfig
from src.serving.deps import CurrentModel, require_api_key, serving_context
from src.serving.routers import body_limit
from src.serving.schemas import UPLOAD_RESPONSES, Prediction, multipart_body
from src.serving.service import classify_request


def build_router(cfg: AppConfig) -> APIRouter:
    serve = cfg.serve
    router = APIRouter(dependencies=[Depends(require_api_key)], responses=UPLOAD_RESPONSES)

    @router.post(
        "/predict",
        response_model=Prediction,
        openapi_extra=multipart_body("file", many=False, max_files=1),
        summary="Classify one image (multipart field `file`).",
    )
    @body_limit(serve.max_image_request_bytes)
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
    @body_limit(serve.max_batch_bytes)
    async def predict_batch(request: Request, model: CurrentModel) -> Response:
        ctx = serving_context(request)
        max_files = ctx.cfg.serve.max_batch_files
        results = await classify_request(request, ctx, model, field="files", max_files=max_files)
        return JSONResponse(results)

    return router
