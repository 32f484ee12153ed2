"""HTTP API: ``uvicorn src.api:app`` serves the Production model from the MLflow registry.

Endpoints: ``POST /predict`` (multipart field ``file``), ``POST /predict/batch`` (field
``files``), ``GET /model``, ``GET /health``, ``GET /ready``, ``GET /metrics``, and the web page at
``/``. Settings: the ``serve`` section of the config (``configs/serve.yaml``, ``SERVE_*``
variables); the registry is ``MLFLOW_TRACKING_URI`` (config section ``mlflow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import torch
from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from src.config import AppConfig, ConfigError, load_config
from src.monitoring.inputs import InputInfo
from src.monitoring.service import install_monitoring
from src.preprocessing import ALLOWED_FORMATS
from src.serving.inference import BadImages, classify
from src.serving.limits import BodySizeLimitMiddleware, BodyTooLarge, too_large_message
from src.serving.model_store import LoadedModel, ModelStore
from src.serving.multipart import MultipartError, TooManyFiles, read_parts
from src.serving.observability import (
    LOGGER_NAME,
    ObservabilityMiddleware,
    ServingMetrics,
    configure_logging,
)
from src.serving.schemas import (
    ERROR_RESPONSES,
    Health,
    ModelDescription,
    Prediction,
    Readiness,
    multipart_body,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around one image
SMALL_BODY_LIMIT = 64 * 1024  # every other endpoint takes no body
MAX_FORM_FIELDS = 16  # plain (non-file) form fields tolerated beside the files
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "not_ready",
}


class ApiError(HTTPException):
    """An HTTP error with a machine-readable code; rendered as ``{"error", "detail"}``."""

    def __init__(
        self,
        status_code: int,
        error: str,
        detail: str,
        problems: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail)
        self.error = error
        self.problems = problems


def _error_response(
    status: int, error: str, detail: str, problems: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "detail": detail}
    if problems is not None:
        body["problems"] = problems
    return JSONResponse(body, status_code=status)


def create_app(cfg: AppConfig | None = None) -> FastAPI:
    """Build the app for ``cfg`` (default: :func:`src.config.load_config`)."""
    cfg = cfg or load_config()
    serve = cfg.serve
    metrics = ServingMetrics()
    logger = logging.getLogger(LOGGER_NAME)

    def on_swap(old: LoadedModel | None, new: LoadedModel) -> None:
        metrics.model_swapped(
            old.name if old else None, old.version if old else None, new.name, new.version
        )

    store = ModelStore(
        cfg.tracking_uri,
        cfg.mlflow.registered_model_name,
        poll_interval_s=serve.poll_interval_s,
        retry_interval_s=serve.retry_interval_s,
        on_swap=on_swap,
        on_check_error=lambda _message: metrics.registry_errors.inc(),
    )
    concurrency = serve.inference_concurrency or os.cpu_count() or 1
    limiter = anyio.CapacityLimiter(concurrency)
    formats: Sequence[str] = ALLOWED_FORMATS

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        previous_pixels = Image.MAX_IMAGE_PIXELS
        previous_threads = torch.get_num_threads()
        Image.MAX_IMAGE_PIXELS = serve.max_image_pixels  # PIL's own decompression-bomb guard
        torch.set_num_threads(serve.torch_threads)
        configure_logging(serve.json_logs, serve.log_level)
        logger.info(
            "starting",
            extra={
                "fields": {
                    "model": cfg.mlflow.registered_model_name,
                    "tracking_uri": cfg.tracking_uri,
                    "poll_interval_s": serve.poll_interval_s,
                    "api_key": serve.api_key is not None,
                    "torch_threads": serve.torch_threads,
                    "inference_concurrency": concurrency,
                }
            },
        )
        # Load in the background: /health answers at once, /ready once the model is in.
        poller = asyncio.create_task(store.run(), name="registry-poller")
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            Image.MAX_IMAGE_PIXELS = previous_pixels
            torch.set_num_threads(previous_threads)
            logger.info("stopped")

    app = FastAPI(
        title="clothing-classifier",
        summary="Classifies photos of garments into the ten Fashion-MNIST classes.",
        version="1.0.0",
        lifespan=lifespan,
    )
    app.state.config = cfg
    app.state.store = store
    app.state.metrics = metrics

    # --- errors: always JSON, never a 500 for a client's mistake ----------------------------
    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        error = getattr(exc, "error", None) or ERROR_CODES.get(exc.status_code, "error")
        response = _error_response(
            exc.status_code, error, str(exc.detail), getattr(exc, "problems", None)
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": [str(part) for part in err.get("loc", ())], "detail": str(err.get("msg"))}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'])}: {p['detail']}" for p in problems)
        return _error_response(422, "invalid_request", f"Invalid request: {summary}", problems)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        request.state.error = "payload_too_large"
        response = _error_response(
            413, "payload_too_large", too_large_message(request.url.path, exc.limit)
        )
        response.headers["connection"] = "close"
        return response

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_request: Request, _exc: ClientDisconnect) -> JSONResponse:
        return _error_response(400, "client_disconnected", "The client closed the connection.")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "unhandled error",
            exc_info=exc,
            extra={"fields": {"path": request.url.path, "error": type(exc).__name__}},
        )
        return _error_response(
            500, "internal_error", "Internal server error; it has been logged. Please retry."
        )

    # --- security ----------------------------------------------------------------------------
    api_key_header = APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        description="Needed for the predict endpoints when the server has SERVE_API_KEY set.",
    )
    expected_key = serve.api_key.encode("utf-8") if serve.api_key is not None else None

    async def require_api_key(provided: str | None = Security(api_key_header)) -> None:
        if expected_key is None:
            return
        if not provided:
            raise ApiError(
                401,
                "unauthorized",
                "Missing X-API-Key header: this server needs an API key for predictions.",
            )
        if not hmac.compare_digest(provided.encode("utf-8", "surrogateescape"), expected_key):
            raise ApiError(401, "unauthorized", "Wrong API key in the X-API-Key header.")

    # Monitoring (prediction log, /feedback, /model/card, gauges): one call; answers go through
    # monitor.record in run_model.
    monitor = install_monitoring(
        app,
        cfg,
        registry=metrics.registry,
        current_model=lambda: store.current,
        require_api_key=require_api_key,
    )

    # --- helpers -----------------------------------------------------------------------------
    def require_ready() -> None:
        if not store.ready:
            raise ApiError(503, "not_ready", f"No model is loaded yet: {store.status.reason}")

    def grab_model() -> LoadedModel:
        model = store.current  # read ONCE; this object answers the whole request
        if model is None:
            raise ApiError(503, "not_ready", f"No model is loaded yet: {store.status.reason}")
        return model

    async def read_uploads(
        request: Request, field: str, max_files: int
    ) -> tuple[list[bytes], list[str | None]]:
        """The files of multipart field ``field``, read under the size and count limits."""
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"Send the image as multipart/form-data in the field '{field}' (got Content-Type "
                f"{content_type or 'none'!r}), e.g. curl -F {field}=@shirt.png ...",
            )
        try:
            parts = await read_parts(
                request.stream(),
                content_type,
                max_files=max_files,
                max_fields=MAX_FORM_FIELDS,
                max_file_bytes=serve.max_image_bytes,
                max_field_bytes=SMALL_BODY_LIMIT,
            )
        except TooManyFiles as exc:
            hint = "; use /predict/batch for several images" if max_files == 1 else ""
            raise ApiError(
                413,
                exc.error,
                f"Too many files: {request.url.path} takes at most {max_files} per request{hint}.",
            ) from exc
        except MultipartError as exc:
            raise ApiError(exc.status, exc.error, str(exc)) from exc
        values = [part for part in parts if part.name == field]
        if not values:
            raise ApiError(
                422,
                "missing_field",
                f"The multipart form has no field '{field}'; send the image as "
                f"-F {field}=@image.png.",
            )
        for index, part in enumerate(values):
            if part.filename is None:
                raise ApiError(
                    422,
                    "not_a_file",
                    f"Field '{field}' (#{index}) is plain text, not a file upload; send it as a "
                    f"file, e.g. -F {field}=@image.png.",
                )
        return [part.data for part in values], [part.filename for part in values]

    async def run_model(
        request: Request, blobs: list[bytes], names: list[str | None]
    ) -> list[dict[str, Any]]:
        model = grab_model()
        request.state.model_version = model.version
        request.state.images = len(blobs)
        inputs: list[InputInfo] = []
        try:
            results = await anyio.to_thread.run_sync(
                partial(
                    classify,
                    model,
                    blobs,
                    names,
                    formats=formats,
                    max_pixels=serve.max_image_pixels,
                    top_k=serve.top_k,
                    inputs=inputs,
                ),
                limiter=limiter,
            )
        except BadImages as exc:
            metrics.images_rejected.inc(len(exc.problems))
            request.state.error = "bad_image"
            if len(blobs) == 1:
                detail = exc.problems[0].message
            else:
                detail = f"{len(exc.problems)} of {len(blobs)} files cannot be classified: " + (
                    "; ".join(f"#{p.index} ({p.filename}): {p.message}" for p in exc.problems[:5])
                )
            raise ApiError(422, "bad_image", detail, [p.as_dict() for p in exc.problems]) from exc
        for label, count in Counter(result["label"] for result in results).items():
            metrics.predictions.labels(label=label).inc(count)
        return monitor.record(model, inputs, results)

    # --- endpoints ---------------------------------------------------------------------------
    @app.post(
        "/predict",
        response_model=Prediction,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_api_key)],
        openapi_extra=multipart_body("file", many=False, max_files=1),
        summary="Classify one image (multipart field `file`).",
    )
    async def predict(request: Request) -> Response:
        require_ready()
        blobs, names = await read_uploads(request, "file", max_files=1)
        results = await run_model(request, blobs, names)
        return JSONResponse(results[0])

    @app.post(
        "/predict/batch",
        response_model=list[Prediction],
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_api_key)],
        openapi_extra=multipart_body("files", many=True, max_files=serve.max_batch_files),
        summary=f"Classify up to {serve.max_batch_files} images (multipart field `files`), "
        "answers in the same order.",
    )
    async def predict_batch(request: Request) -> Response:
        require_ready()
        blobs, names = await read_uploads(request, "files", max_files=serve.max_batch_files)
        results = await run_model(request, blobs, names)
        return JSONResponse(results)

    @app.get(
        "/model",
        response_model=ModelDescription,
        responses={503: ERROR_RESPONSES[503]},
        summary="The served model version, its metrics and data version.",
    )
    async def model_info() -> Response:
        model = grab_model()
        return JSONResponse(
            {
                "name": model.name,
                "version": model.version,
                "run_id": model.run_id,
                "model_uri": model.model_uri,
                "metrics": model.metrics,
                "data_md5": model.data_md5,
                "split_hash": model.tags.get("split_hash"),
                "validation_status": model.tags.get("validation_status"),
                "class_names": model.class_names,
                "loaded_at": model.loaded_at.isoformat(),
                "load_seconds": round(model.load_seconds, 3),
            }
        )

    @app.get("/health", response_model=Health, summary="Liveness: 200 while the process runs.")
    async def health() -> dict[str, str]:
        return {"status": "alive"}

    @app.get(
        "/ready",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "No model loaded yet."}},
        summary="Readiness: 200 once a model is loaded, 503 with the reason before.",
    )
    async def ready() -> Response:
        model = store.current
        if model is None:
            return JSONResponse(
                {"status": "not_ready", "reason": store.status.reason}, status_code=503
            )
        return JSONResponse({"status": "ready", "model_version": model.version})

    @app.get(
        "/metrics",
        summary="Prometheus metrics.",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def limit_for(path: str) -> int:
        if path == "/predict/batch":
            return serve.max_batch_bytes
        if path == "/predict":
            return serve.max_image_bytes + MULTIPART_OVERHEAD
        return SMALL_BODY_LIMIT

    # Added first = inner: the size limit runs inside the metrics/logging middleware, so
    # rejected requests are counted and logged too.
    app.add_middleware(BodySizeLimitMiddleware, limit_for=limit_for)
    known_paths = frozenset(str(getattr(route, "path", "")) for route in app.routes)
    app.add_middleware(
        ObservabilityMiddleware, metrics=metrics, logger=logger, known_paths=known_paths
    )
    return app


def _app_from_environment() -> FastAPI:
    try:
        return create_app()
    except ConfigError as exc:
        # One line, no traceback: `uvicorn src.api:app` exits with this message.
        print(f"error: cannot start the API: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = _app_from_environment()
