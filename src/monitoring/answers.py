"""What the API records for monitoring: a plain library, no web framework.

:class:`PredictionMonitor` gives each answer a ``prediction_id`` and a ``low_confidence`` flag
and queues the answer for the prediction log (:mod:`src.monitoring.writer`, built by
:func:`build_writer`); :class:`MonitoringCollector` gives the log's and the last drift decision's
gauges. The app (:mod:`src.serving.app`) starts and stops the writer and serves the routes. No
MLflow or Prefect import: the threshold arrives as a version tag with the model the API loads.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from src.config import AppConfig
from src.monitoring.inputs import InputInfo
from src.monitoring.reference_profile import THRESHOLD_TAG
from src.monitoring.store import PredictionRecord, PredictionStore, store_url
from src.monitoring.writer import PredictionLogWriter


class ServedModel(Protocol):
    @property
    def version(self) -> str: ...
    @property
    def tags(self) -> dict[str, str]: ...


def low_confidence_threshold(model: ServedModel) -> float | None:
    """The version's calibrated threshold (tag ``low_confidence_threshold``), if it has one."""
    raw = model.tags.get(THRESHOLD_TAG)
    try:
        value = float(raw) if raw is not None else math.nan
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


class PredictionMonitor:
    """Stamps answers and feeds the writer; one per app."""

    def __init__(self, cfg: AppConfig, writer: PredictionLogWriter | None) -> None:
        self.cfg = cfg
        self.writer = writer
        self.store_images = cfg.monitor.store_images
        self.low_confidence_answers = 0
        self.feedback_received = 0

    def record(
        self,
        model: ServedModel,
        inputs: Sequence[InputInfo],
        results: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Add ``prediction_id`` and ``low_confidence`` to each answer and queue it for the log."""
        threshold = low_confidence_threshold(model)
        now = time.time()
        for index, result in enumerate(results):
            result["prediction_id"] = uuid.uuid4().hex
            confidence = float(result["confidence"])
            low = threshold is not None and confidence < threshold
            result["low_confidence"] = low
            self.low_confidence_answers += low
            if self.writer is not None and index < len(inputs):
                self.writer.put(self._record(model, inputs[index], result, now))
        return results

    def _record(
        self, model: ServedModel, info: InputInfo, result: dict[str, Any], now: float
    ) -> PredictionRecord:
        top = result.get("top_k") or []
        second = float(top[1]["probability"]) if len(top) > 1 else None
        keep_image = self.store_images and info.array is not None
        return PredictionRecord(
            prediction_id=result["prediction_id"],
            created_at=now,
            model_version=str(model.version),
            class_id=int(result["class_id"]),
            label=str(result["label"]),
            confidence=float(result["confidence"]),
            margin=None if second is None else float(result["confidence"]) - second,
            low_confidence=bool(result["low_confidence"]),
            width=info.width,
            height=info.height,
            mode=info.mode,
            input_mean=info.mean,
            input_std=info.std,
            inverted=info.inverted,
            image=info.array.tobytes() if keep_image and info.array is not None else None,
        )

    def add_feedback(self, prediction_id: str, class_id: int) -> bool:
        if self.writer is None:
            return False
        self.feedback_received += 1
        return self.writer.put((prediction_id, class_id, time.time()))


class MonitoringCollector(Collector):
    """Prometheus families for the prediction log and the monitor's last decision."""

    def __init__(self, monitor: PredictionMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        writer = self.monitor.writer
        stats = writer.stats if writer is not None else None
        counters = {
            "prediction_log_records_written": ("Answers written to the prediction log.", "written"),
            "prediction_log_records_dropped": (
                "Answers not logged (queue full or writes failing).",
                "dropped",
            ),
            "prediction_log_write_errors": ("Failed writes to the prediction log.", "write_errors"),
            "prediction_log_rows_deleted": (
                "Rows removed by retention (age and row limits).",
                "deleted_by_retention",
            ),
        }
        for name, (doc, attr) in counters.items():
            yield CounterMetricFamily(name, doc, value=getattr(stats, attr) if stats else 0)
        yield CounterMetricFamily(
            "low_confidence_answers",
            "Answers flagged low_confidence.",
            value=self.monitor.low_confidence_answers,
        )
        yield CounterMetricFamily(
            "feedback_received",
            "Labels received on POST /feedback.",
            value=self.monitor.feedback_received,
        )
        gauges = {
            "prediction_log_queue_depth": (
                "Answers waiting to be written.",
                writer.queue_depth if writer else 0,
            ),
            "prediction_log_rows": (
                "Rows in the prediction log (-1 until counted).",
                stats.rows if stats else -1,
            ),
            "monitor_drift_detected": (
                "Last monitor-flow decision: 1 drift, 0 none, -1 no decision yet.",
                stats.last_drift_detected if stats else -1,
            ),
            "monitor_drift_share": (
                "Share of drift tests that flagged drift in the last decision (-1: none yet).",
                stats.last_drift_share if stats else -1,
            ),
            "monitor_last_run_timestamp_seconds": (
                "Unix time of the last monitor-flow run (0: none yet).",
                stats.last_monitor_run_at if stats else 0,
            ),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=float(value))


def build_writer(cfg: AppConfig) -> PredictionLogWriter | None:
    if not cfg.monitor.log_predictions:
        return None
    url = store_url(cfg)
    monitor = cfg.monitor
    return PredictionLogWriter(
        lambda: PredictionStore(url),
        url_for_logs=url,
        queue_size=monitor.queue_size,
        batch_size=monitor.batch_size,
        flush_interval_s=monitor.flush_interval_s,
        retention_s=monitor.retention_days * 86400.0,
        retention_max_rows=monitor.retention_max_rows,
        stats_interval_s=monitor.stats_interval_s,
    )
