"""Batched, bounded writes of the prediction log, off the request path.

Requests only put a record on a bounded queue (no I/O, no waiting); one daemon thread takes up to
``batch_size`` records at a time, writes them in one transaction, applies retention and refreshes
the numbers ``/metrics`` shows. When the queue is full (the database is down or too slow) new
records are dropped and counted instead of slowing or failing the answers.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from src.monitoring.store import PredictionRecord, PredictionStore, redact_url

logger = logging.getLogger("clothing_classifier.monitoring")

Feedback = tuple[str, int, float]  # prediction_id, true class id, unix time
Item = PredictionRecord | Feedback
# After a failed write the batch is kept and retried; this many failures in a row drop it.
MAX_WRITE_ATTEMPTS = 5


@dataclass
class WriterStats:
    written: int = 0
    batches: int = 0  # successful writes (transactions)
    dropped: int = 0
    write_errors: int = 0
    feedback_written: int = 0
    deleted_by_retention: int = 0
    rows: int = -1  # -1 until the first count
    last_drift_detected: float = -1.0  # -1 = no monitor run recorded yet
    last_drift_share: float = -1.0
    last_monitor_run_at: float = 0.0


class PredictionLogWriter:
    """Owns the queue, the thread and (inside the thread) the :class:`PredictionStore`."""

    def __init__(
        self,
        store_factory: Callable[[], PredictionStore],
        *,
        url_for_logs: str,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        retention_s: float,
        retention_max_rows: int,
        stats_interval_s: float,
    ) -> None:
        self._factory = store_factory
        self._url = redact_url(url_for_logs)
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retention_s = retention_s
        self._retention_max_rows = retention_max_rows
        self._stats_interval_s = stats_interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: PredictionStore | None = None
        self._store_ready = threading.Event()
        self.stats = WriterStats()

    # --- request side: never blocks ------------------------------------------------------------
    def put(self, item: Item) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.stats.dropped += 1
            return False
        if self._queue.qsize() >= self._batch_size:
            self._wake.set()  # a full batch is waiting: write it now
        return True

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="prediction-log-writer", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread and release the database."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._store is not None:
            self._store.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or dropped); ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def store(self, timeout: float = 30.0) -> PredictionStore | None:
        """The open store once the thread has connected (``None`` if it could not)."""
        self._store_ready.wait(timeout)
        return self._store

    # --- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        self._connect()
        pending: list[Item] = []
        attempts = 0
        next_stats = 0.0
        while True:
            stopping = self._stop.is_set()
            if stopping and self._store is None:  # never connected: nothing can be written
                self._drop_queued(pending)
                return
            pending += self._take(self._batch_size - len(pending), wait=not stopping)
            if pending and self._store is not None:
                attempts += 1
                if self._write(pending) or attempts >= MAX_WRITE_ATTEMPTS:
                    if attempts >= MAX_WRITE_ATTEMPTS and pending:
                        self.stats.dropped += len(pending)
                    for _ in pending:
                        self._queue.task_done()
                    pending, attempts = [], 0
                elif not stopping:
                    self._stop.wait(min(5.0, self._flush_interval_s * attempts))
            if time.monotonic() >= next_stats:
                self._housekeeping()
                next_stats = time.monotonic() + self._stats_interval_s
            if stopping and (not pending or self._store is None) and self._queue.empty():
                return

    def _drop_queued(self, pending: list[Item]) -> None:
        dropped = len(pending) + sum(1 for _ in self._take(self._queue.qsize() + 1, wait=False))
        self.stats.dropped += dropped
        for _ in range(dropped):
            self._queue.task_done()

    def _connect(self) -> None:
        while not self._stop.is_set():
            try:
                self._store = self._factory()
                break
            except Exception as exc:
                self.stats.write_errors += 1
                logger.error(
                    "prediction log unavailable",
                    extra={"fields": {"store": self._url, "error": _short(exc)}},
                )
                self._stop.wait(5.0)
        self._store_ready.set()

    def _take(self, limit: int, *, wait: bool) -> list[Item]:
        """Up to ``limit`` queued items; with ``wait``, first sleep one ``flush_interval_s``
        (cut short by a full batch, flush() or close()). The thread wakes once per interval,
        not once per answer: a commit costs far more than a row, and every wake-up makes the
        request threads hand over the GIL."""
        if wait:
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
        items: list[Item] = []
        while len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _write(self, items: list[Item]) -> bool:
        assert self._store is not None
        records = [item for item in items if isinstance(item, PredictionRecord)]
        labels = [item for item in items if not isinstance(item, PredictionRecord)]
        try:
            # One transaction: a failure keeps nothing, so the retry writes the whole batch.
            self._store.add_batch(records, labels)
        except Exception as exc:
            self.stats.write_errors += 1
            logger.error(
                "prediction log write failed; will retry",
                extra={"fields": {"store": self._url, "rows": len(items), "error": _short(exc)}},
            )
            return False
        self.stats.written += len(records)
        self.stats.batches += 1
        self.stats.feedback_written += len(labels)
        return True

    def _housekeeping(self) -> None:
        if self._store is None:
            return
        try:
            self.stats.deleted_by_retention += self._store.apply_retention(
                self._retention_s, self._retention_max_rows
            )
            self.stats.rows = self._store.count_predictions()
            self._read_last_run(self._store.last_monitor_run())
        except Exception as exc:
            logger.warning(
                "prediction log housekeeping failed",
                extra={"fields": {"store": self._url, "error": _short(exc)}},
            )

    def _read_last_run(self, run: dict[str, Any] | None) -> None:
        if run is None:
            return
        self.stats.last_monitor_run_at = float(run["run_at"])
        detected = run.get("drift_detected")
        self.stats.last_drift_detected = -1.0 if detected is None else float(bool(detected))
        share = run.get("drift_share")
        self.stats.last_drift_share = -1.0 if share is None else float(share)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
