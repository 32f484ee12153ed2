"""Prometheus metrics and one structured (JSON) log line per request."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOGGER_NAME = "clothing_classifier.serving"
REQUEST_ID_HEADER = b"x-request-id"
# A request id from the proxy or client is kept only when it is short and plain (it goes into
# every log line); otherwise the API makes its own.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def multiprocess_mode() -> bool:
    """Whether this process is one of several workers sharing metrics through files (set up by
    :func:`src.serving.cli.shared_metrics_folder` before the workers start)."""
    return bool(os.environ.get(MULTIPROC_DIR_ENV))


class ServingMetrics:
    """All metrics of one app, in their own registries (several apps can live in one process).

    ``registry`` holds the counters, gauges and histograms. With several worker processes their
    values live in shared files and ``/metrics`` (:meth:`exposition`) merges every worker's:
    counters and histograms add up, gauges say how they combine (``multiprocess_mode``).
    ``live`` holds collectors computed by the scraped process at scrape time (the registry's
    view, the prediction log, process metrics of that worker).
    """

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        self.live = CollectorRegistry()
        self._define_request_metrics()
        self._define_model_metrics()
        self._reload_sources: tuple[Callable[[], float], Callable[[], bool]] | None = None
        self._shared: list[WorkerFamilies] = []
        ProcessCollector(registry=self.live)
        PlatformCollector(registry=self.live)

    def _define_request_metrics(self) -> None:
        self.requests = Counter(
            "http_requests",
            "HTTP requests by method, route and status code.",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route.",
            ["method", "path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "predictions",
            "Images classified, by predicted class.",
            ["label"],
            registry=self.registry,
        )
        self.images_rejected = Counter(
            "images_rejected",
            "Uploaded files refused as not decodable / too large.",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Images per model forward: micro-batches of /predict requests (kind=single) and "
            "/predict/batch requests (kind=batch).",
            ["kind"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.micro_batching = Gauge(
            "micro_batching_enabled",
            "1 while concurrent /predict images are forwarded together (lowest over workers).",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.worker_memory = Gauge(
            "worker_resident_memory_bytes",
            "Resident memory of each worker process (sum: the whole service).",
            registry=self.registry,
            multiprocess_mode="liveall",
        )

    def _define_model_metrics(self) -> None:
        self.model_info = Gauge(
            "model_info",
            "The served model: 1 for each loaded name/version (any worker).",
            ["name", "version"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_version = Gauge(
            "model_version",
            "Registry version number of the served model (0 while none is loaded; the lowest "
            "over workers).",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.model_ready = Gauge(
            "model_ready",
            "1 once a model is loaded and answering (in every worker).",
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.model_loaded_timestamp = Gauge(
            "model_loaded_timestamp_seconds",
            "Unix time the served model was loaded (the latest over workers).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.model_reloads = Counter(
            "model_reloads", "Model (re)loads that completed.", registry=self.registry
        )
        self.registry_errors = Counter(
            "registry_check_errors",
            "Registry checks or model loads that failed.",
            registry=self.registry,
        )
        self.reload_running = Gauge(
            "model_reload_running_seconds",
            "How long the registry check in progress (fetch, load, warm-up) has run; 0 if none.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.reload_stuck = Gauge(
            "model_reload_stuck",
            "1 while a registry check runs past its deadline (the loaded model keeps serving).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.reload_timeouts = Counter(
            "model_reload_timeouts",
            "Registry checks found still running past their deadline.",
            registry=self.registry,
        )

    def watch_reloads(self, store: Any) -> None:
        """Read the reload gauges from ``store`` (a :class:`src.serving.model_store.ModelStore`)
        at every scrape and :meth:`refresh`, so a stuck check shows while it is stuck."""
        self._reload_sources = (store.check_running_s, lambda: store.stuck_reload() is not None)
        store.on_stuck = lambda _message: self.reload_timeouts.inc()

    def share_per_worker(
        self, collector: Collector, summed_gauges: frozenset[str] = frozenset()
    ) -> None:
        """Export a collector whose values each worker counts on its own (the prediction log's
        counters): read by the scraped process alone, or, with several workers, copied into
        shared metrics at every :meth:`refresh` so /metrics adds the workers up (counters, and
        the gauges named in ``summed_gauges``; other gauges: the highest over the workers)."""
        if self.multiprocess:
            self._shared.append(WorkerFamilies(collector, self.registry, summed_gauges))
        else:
            self.live.register(collector)

    def watch_store(self, status: Callable[[], StoreGauges]) -> None:
        """Export what the model store knows about the registry at every scrape."""
        self.live.register(_StoreCollector(status))

    def refresh(self) -> None:
        """Set the gauges read off this process (each worker calls it every second)."""
        if self._reload_sources is not None:
            running, stuck = self._reload_sources
            self.reload_running.set(running())
            self.reload_stuck.set(float(stuck()))
        self.worker_memory.set(resident_memory_bytes())
        for families in self._shared:
            families.copy()

    def exposition(self) -> bytes:
        """The ``/metrics`` body: the whole service's values, then the live collectors."""
        self.refresh()
        if not self.multiprocess:
            return generate_latest(self.registry) + generate_latest(self.live)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return generate_latest(merged) + generate_latest(self.live)

    def worker_stopped(self) -> None:
        """Drop this worker's live gauges from the shared files (its counters stay counted)."""
        if self.multiprocess:
            mark_process_dead(os.getpid())

    def model_swapped(
        self, old_name: str | None, old_version: str | None, name: str, version: str
    ) -> None:
        if old_name is not None and old_version is not None:
            # Set to 0 rather than removed: a removed child would live on in the shared files.
            self.model_info.labels(name=old_name, version=old_version).set(0)
        self.model_info.labels(name=name, version=version).set(1)
        try:
            self.model_version.set(float(version))
        except ValueError:
            self.model_version.set(0)
        self.model_ready.set(1)
        self.model_loaded_timestamp.set(time.time())
        self.model_reloads.inc()


class WorkerFamilies:
    """Copies one worker's collector into shared metrics: counters by their increase since the
    last copy (so they add up over workers and outlive a stopped one), gauges as the sum over
    the live workers (``summed``) or their highest value."""

    def __init__(
        self, collector: Collector, registry: CollectorRegistry, summed: frozenset[str]
    ) -> None:
        self.collector = collector
        self.registry = registry
        self.summed = summed
        self._counters: dict[str, tuple[Counter, float]] = {}
        self._gauges: dict[str, Gauge] = {}

    def copy(self) -> None:
        for family in self.collector.collect():
            value = family.samples[0].value if family.samples else 0.0
            if family.type == "counter":
                self._add(family, value)
            elif family.type == "gauge":
                self._gauge(family).set(value)

    def _add(self, family: Metric, value: float) -> None:
        counter, seen = self._counters.get(family.name) or (
            Counter(family.name, family.documentation, registry=self.registry),
            0.0,
        )
        if value > seen:
            counter.inc(value - seen)
        self._counters[family.name] = (counter, max(seen, value))

    def _gauge(self, family: Metric) -> Gauge:
        if family.name not in self._gauges:
            self._gauges[family.name] = Gauge(
                family.name,
                family.documentation,
                registry=self.registry,
                multiprocess_mode="livesum",
            )
        return self._gauges[family.name]


def resident_memory_bytes() -> float:
    """This process's resident memory (``/proc/self/statm``; 0 where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return float(pages * os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True)
class StoreGauges:
    """The store's view of the registry, as numbers."""

    production: float  # the Production version; -1: none or not read yet
    load_failed: bool  # Production failed to load (an older version, or none, is served)
    registered_at: float  # Unix time the served version was registered; 0: unknown


class _StoreCollector:
    def __init__(self, status: Callable[[], StoreGauges]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        gauges = self.status()
        yield GaugeMetricFamily(
            "model_production_version",
            "The registry's Production version at the last check (-1: none or not read yet).",
            value=gauges.production,
        )
        yield GaugeMetricFamily(
            "model_load_failed",
            "1 while the registry's Production version failed to load (an older one is served).",
            value=1.0 if gauges.load_failed else 0.0,
        )
        yield GaugeMetricFamily(
            "model_registered_timestamp_seconds",
            "Unix time the served version was registered (0: none served or unknown).",
            value=gauges.registered_at,
        )


def request_id(scope: Scope) -> str:
    """The request's id: the proxy's ``X-Request-ID`` when it is sane, else a new one."""
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER and _SAFE_REQUEST_ID.fullmatch(value):
            return value.decode("ascii")
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "event", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,  # which worker process
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return base


def configure_logging(json_logs: bool, level: str) -> logging.Logger:
    """Give the serving logger one stderr handler (idempotent) and quiet uvicorn's access log,
    which the request log below replaces."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        if getattr(handler, "_serving_handler", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else PlainFormatter("%(asctime)s %(levelname)s %(message)s")
    )
    handler._serving_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logging.getLogger("uvicorn.access").disabled = True
    return logger


class ObservabilityMiddleware:
    """Pure ASGI: counts and times every request and logs one line for it.

    The ``path`` label is the matched route template (``/predict``), never the raw URL, so a
    scanner cannot blow up the metric's cardinality.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServingMetrics,
        logger: logging.Logger,
        known_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logger
        # Routes that a middleware may answer before routing (e.g. 413 on /predict).
        self.known_paths = known_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_bytes = 0
        rid = request_id(scope)

        async def observed_send(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [h for h in message.get("headers", []) if h[0] != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode())]}
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None)
            if path is None:
                raw = scope.get("path", "")
                path = raw if raw in self.known_paths else "<unmatched>"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, path=path, status=str(status)).inc()
            self.metrics.latency.labels(method=method, path=path).observe(elapsed)
            state = scope.get("state") or {}
            client = scope.get("client")
            fields: dict[str, Any] = {
                "method": method,
                "path": scope.get("path", ""),
                "route": path,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "response_bytes": response_bytes,
                "client": f"{client[0]}:{client[1]}" if client else None,
                "request_id": rid,
            }
            for key in ("model_version", "images", "error"):
                if key in state:
                    fields[key] = state[key]
            self.logger.info("request", extra={"fields": fields})
