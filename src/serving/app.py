"""The app factory: :func:`create_app` wires config, model store, monitor, every router (``ROUTERS``),
errors and middleware, and owns the one lifespan (:func:`lifespan_for`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from src.config import AppConfig, ServeConfig, load_config
from src.monitoring.answers import MonitoringCollector, PredictionMonitor, build_writer
from src.package import STATIC_DIR, package_version
from src.preprocessing import ALLOWED_FORMATS
from src.serving.batching import Forwarder, MicroBatcher
from src.serving.deps import ServingContext
from src.serving.errors import install_error_handlers
from src.serving.inference import ImageLimits
from src.serving.limits import InflightBudget, RequestLimitsMiddleware, TransportLimits
from src.serving.model_store import LoadedModel, ModelStore
from src.serving.native_memory import pin_mmap_threshold
from src.serving.observability import (
    LOGGER_NAME,
    ObservabilityMiddleware,
    ServingMetrics,
    StoreGauges,
    configure_logging,
)
from src.serving.routers import (
    SMALL_BODY_LIMIT,
    body_limits_of,
    feedback,
    health,
    model,
    predictions,
    web,
)
from src.serving.schemas import TRANSPORT_RESPONSES
from src.serving.workers import worker_cores

# Every resource's router, in the order the OpenAPI schema lists them.
ROUTERS: tuple[Callable[[AppConfig], APIRouter], ...] = (
    feedback.build_router,
    predictions.build_router,
    model.build_router,
    health.build_router,
    web.build_router,
)


def worker_inflight_bytes(serve: ServeConfig) -> int:
    """The workers share the service's body budget (each its part of ``max_inflight_bytes``),
    but each can always hold one whole batch."""
    return max(serve.max_inflight_bytes // max(1, serve.workers), serve.max_batch_bytes)


def transport_limits(serve: ServeConfig, routers: list[APIRouter]) -> TransportLimits:
    """The limits middleware's settings: each route's own body limit (see
    :mod:`src.serving.routers`), the small one for paths no route serves."""
    by_path = body_limits_of(routers)
    return TransportLimits(
        limit_for=lambda path: by_path.get(path, SMALL_BODY_LIMIT),
        budget=InflightBudget(worker_inflight_bytes(serve)),
        max_header_bytes=serve.max_header_bytes,
        body_timeout_s=serve.body_timeout_s,
    )


def store_gauges(store: ModelStore) -> StoreGauges:
    """For the alerts: which version the registry names and whether it failed to load."""
    status, current = store.status, store.current
    try:
        production = float(status.production_version or -1)
    except ValueError:
        production = -1.0
    failure = status.failure
    failed = failure is not None and (current is None or failure.version != current.version)
    registered = current.registered_at if current is not None else None
    return StoreGauges(production, failed, registered or 0.0)


def build_forwarder(serve: ServeConfig, metrics: ServingMetrics) -> Forwarder:
    """Direct forwards run under the context's single/batch slots (the worker's core share)."""
    return Forwarder(
        serve.micro_batch,
        None,  # the batcher thread starts with the app (serve_from_registry)
        on_forward=lambda kind, n: metrics.batch_size.labels(kind=kind).observe(n),
    )


def start_batcher(ctx: ServingContext) -> MicroBatcher | None:
    serve, metrics = ctx.cfg.serve, ctx.metrics
    if serve.micro_batch == "off":
        return None
    batcher = MicroBatcher(
        serve.micro_batch_max,
        serve.micro_batch_wait_ms / 1000,
        on_forward=lambda n: metrics.batch_size.labels(kind="single").observe(n),
    )
    ctx.forwarder.batcher = batcher
    return batcher


INLINE_MAX_PIXELS = 256 * 256  # decodes in well under a millisecond


def inline_limits(serve: ServeConfig, limits: ImageLimits) -> ImageLimits | None:
    """Where a worker has one core, a small /predict image is decoded and forwarded on the event
    loop: handing it to a thread and back costs more CPU than the work. Larger images exceed
    this budget and go to a thread."""
    if worker_cores(serve) > 1 or serve.inference_concurrency > 1:
        return None
    return dataclasses.replace(limits, max_batch_pixels=min(INLINE_MAX_PIXELS, limits.max_pixels))


def build_context(cfg: AppConfig, metrics: ServingMetrics) -> ServingContext:
    serve = cfg.serve
    forwarder = build_forwarder(serve, metrics)

    def on_swap(old: LoadedModel | None, new: LoadedModel) -> None:
        metrics.model_swapped(
            old.name if old else None, old.version if old else None, new.name, new.version
        )
        metrics.micro_batching.set(float(forwarder.batches(new.batch_speedup)))

    store = ModelStore(
        cfg.tracking_uri,
        cfg.mlflow.registered_model_name,
        poll_interval_s=serve.poll_interval_s,
        retry_interval_s=serve.retry_interval_s,
        threads=serve.inference_threads,
        max_model_bytes=serve.max_model_bytes,
        load_backoff_s=serve.load_backoff_s,
        load_backoff_max_s=serve.load_backoff_max_s,
        reload_timeout_s=serve.reload_timeout_s,
        warmup_timeout_s=serve.warmup_timeout_s,
        batch_probe_size=serve.micro_batch_max if serve.micro_batch == "auto" else 0,
        on_swap=on_swap,
        on_check_error=lambda _message: metrics.registry_errors.inc(),
    )
    metrics.watch_reloads(store)
    metrics.watch_store(lambda: store_gauges(store))
    monitor = PredictionMonitor(cfg, build_writer(cfg))
    metrics.share_per_worker(
        MonitoringCollector(monitor), summed_gauges=frozenset({"prediction_log_queue_depth"})
    )
    slots = serve.inference_concurrency or worker_cores(serve)
    image_limits = ImageLimits(
        formats=ALLOWED_FORMATS,
        max_pixels=serve.max_image_pixels,
        max_side=serve.max_image_side,
        max_batch_pixels=serve.max_batch_pixels,
    )
    return ServingContext(
        cfg=cfg,
        store=store,
        metrics=metrics,
        logger=logging.getLogger(LOGGER_NAME),
        image_limits=image_limits,
        single_slots=anyio.CapacityLimiter(slots),
        batch_slots=anyio.CapacityLimiter(slots),
        api_key=serve.api_key.encode("utf-8") if serve.api_key is not None else None,
        forwarder=forwarder,
        inline_limits=inline_limits(serve, image_limits),
        monitor=monitor,
    )


@contextlib.contextmanager
def private_working_folder() -> Iterator[Path]:
    """Run the process from a fresh, empty folder of its own (mode 0700, removed after).

    `make serve` starts in the repo root, beside ``.stack/env.sh``, ``mlflow.db`` and the
    prediction log; whatever resolves a name against the working folder (ONNX Runtime does for
    external data) must find nothing there. Every path the app uses is absolute already.
    """
    try:
        previous: str | None = os.getcwd()
    except OSError:  # the folder it was started in is gone already
        previous = None
    folder = Path(tempfile.mkdtemp(prefix="clothing-classifier-api-"))
    os.chdir(folder)
    try:
        yield folder
    finally:
        if previous is not None:
            with contextlib.suppress(OSError):
                os.chdir(previous)
        shutil.rmtree(folder, ignore_errors=True)


async def refresh_metrics(ctx: ServingContext, every_s: float = 1.0) -> None:
    """Keep this worker's gauges current for whichever worker answers /metrics."""
    while ctx.metrics.multiprocess:
        ctx.metrics.refresh()
        await asyncio.sleep(every_s)


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def lifespan_for(ctx: ServingContext, *, private_workdir: bool = False) -> Lifespan:
    """The app's one lifespan: the prediction-log writer and the registry poller run while the
    app does, and both are stopped after it."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        writer = ctx.monitor.writer if ctx.monitor is not None else None
        if writer is not None:
            writer.start()
        try:
            async with serve_from_registry(ctx, private_workdir=private_workdir):
                yield
        finally:
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()

    return lifespan


@asynccontextmanager
async def serve_from_registry(ctx: ServingContext, *, private_workdir: bool) -> AsyncIterator[None]:
    """Logging configured, the working folder chosen and the registry poller running, while
    the ``async with`` body runs."""
    serve = ctx.cfg.serve
    configure_logging(serve.json_logs, serve.log_level)
    workdir = private_working_folder() if private_workdir else contextlib.nullcontext()
    # Before the first model loads: what a swap frees goes back to the system, not the heaps.
    heap_pinned = pin_mmap_threshold()
    with workdir:
        ctx.logger.info(
            "starting",
            extra={
                "fields": {
                    "model": ctx.cfg.mlflow.registered_model_name,
                    "tracking_uri": ctx.store.safe_uri,
                    "poll_interval_s": serve.poll_interval_s,
                    "api_key": serve.api_key is not None,
                    "inference_threads": serve.inference_threads,
                    "slots": ctx.single_slots.total_tokens,
                    "workers": serve.workers or 1,
                    "inflight_bytes": worker_inflight_bytes(serve),
                    "micro_batch": serve.micro_batch,
                    "working_folder": os.getcwd(),
                    "mmap_threshold_pinned": heap_pinned,
                }
            },
        )
        # Load in the background: /health answers at once, /ready once the model is in.
        poller = asyncio.create_task(ctx.store.run(), name="registry-poller")
        refresher = asyncio.create_task(refresh_metrics(ctx), name="metrics-refresh")
        batcher = start_batcher(ctx)
        try:
            yield
        finally:
            for task in (poller, refresher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if batcher is not None:
                batcher.close()
            ctx.metrics.worker_stopped()
            ctx.logger.info("stopped")


def create_app(cfg: AppConfig | None = None, *, private_workdir: bool = False) -> FastAPI:
    """Build the app for ``cfg`` (default: :func:`src.config.load_config`). With
    ``private_workdir`` (the server's entry, :mod:`src.api`) the process moves into an empty
    folder of its own while the app runs (:func:`private_working_folder`)."""
    cfg = cfg or load_config()
    metrics = ServingMetrics()
    ctx = build_context(cfg, metrics)
    app = FastAPI(
        title="clothing-classifier",
        summary="Classifies photos of garments into the ten Fashion-MNIST classes.",
        version=package_version(),
        lifespan=lifespan_for(ctx, private_workdir=private_workdir),
    )
    app.state.serving = ctx
    install_error_handlers(app, ctx.logger)
    routers = [build_router(cfg) for build_router in ROUTERS]
    for router in routers:
        # Every operation can answer the transport errors too (see TRANSPORT_RESPONSES).
        app.include_router(router, responses=TRANSPORT_RESPONSES)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Added first = inner: the limits run inside the metrics/logging middleware, so rejected
    # requests are counted and logged too.
    app.add_middleware(RequestLimitsMiddleware, limits=transport_limits(cfg.serve, routers))
    # Requests turned away before routing keep their path as a label when a route serves it.
    app_paths = {str(getattr(route, "path", "")) for route in app.routes} - {""}
    known_paths = frozenset(app_paths | body_limits_of(routers).keys())
    app.add_middleware(
        ObservabilityMiddleware, metrics=metrics, logger=ctx.logger, known_paths=known_paths
    )
    return app
