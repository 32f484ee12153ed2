"""The served model: find the Production version, load it, and keep it current (hot reload).

Requests read :attr:`ModelStore.current` once and use that :class:`LoadedModel` for the whole
request. A new Production version is loaded and warmed up *beside* the old one; only then is the
single ``current`` reference replaced (an atomic assignment), so no request ever sees half a swap
or mixes two versions. A version that fails to load is retried with exponential back-off, not at
every poll, and the old one keeps serving meanwhile.

Every check has an overall deadline (``reload_timeout_s``): the registry reads stop there, and
warm-up runs under its own limit. A reload that still has not finished past it (a step that
cannot be interrupted) is reported as stuck by :meth:`ModelStore.stuck_reload` (/ready, /metrics)
while the old version keeps serving.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import numpy as np

from src.labels import CLASS_NAMES
from src.onnx_model import OnnxClassifier, load_onnx_classifier, predict_within
from src.preprocessing import IMAGE_SIZE
from src.served_model import MAX_MLMODEL_BYTES, fetch_served_model
from src.serving.batching import batch_speedup
from src.serving.redact import redact_text, redact_uri
from src.serving.registry_reader import Deadline, RegistryReader, RunInfo, VersionRef, reader_for

logger = logging.getLogger("clothing_classifier.serving")

# Version tags (set by the registry module) that carry metrics.
METRIC_TAGS = ("test_accuracy", "test_macro_f1", "val_accuracy", "val_macro_f1")
__all__ = ["MAX_MLMODEL_BYTES", "LoadedModel", "ModelStore"]
# The poller gives a check this long past its deadline to stop at a checkpoint before it
# reports it stuck and polls on.
STUCK_GRACE_S = 2.0


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model version and everything /model reports about it."""

    classifier: OnnxClassifier
    name: str
    version: str
    run_id: str | None
    model_uri: str
    metrics: dict[str, float]
    data_md5: str | None
    tags: dict[str, str]
    loaded_at: datetime
    load_seconds: float
    flip_tta: bool | None = None
    registered_at: float | None = None  # Unix time the version was registered
    # Per-image forward time at batch 1 over that at the micro-batch size (measured at load).
    batch_speedup: float = 1.0
    # The served file's SHA-256, and which file of the version it was (served_model.py).
    model_sha256: str = ""
    served_file: str = ""

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(images)


@dataclass(frozen=True)
class BoundedForward:
    """``classifier``'s forward, stopped (ModelLoadError) past ``limit_s``."""

    classifier: OnnxClassifier
    limit_s: float

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return predict_within(self.classifier, images, self.limit_s)


@dataclass
class LoadFailure:
    """A Production version that failed to load, and when to try it again."""

    version: str
    message: str
    attempts: int
    retry_at: float  # time.monotonic()


@dataclass
class StoreStatus:
    """Why the store is not ready (``reason``), plus counters for /ready and logs."""

    reason: str = "starting: the first registry check has not finished yet"
    attempts: int = 0
    last_error: str | None = None
    last_check: datetime | None = None
    production_version: str | None = None
    failure: LoadFailure | None = None


def _one_line(exc: BaseException) -> str:
    text = redact_text(" ".join(str(exc).split()) or type(exc).__name__)
    return text if len(text) <= 300 else text[:297] + "..."


def _truthy(value: Any) -> bool | None:
    if value is None:
        return None
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class ModelStore:
    """Holds the current model and polls the registry for a new Production version."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        *,
        poll_interval_s: float,
        retry_interval_s: float,
        threads: int = 1,
        max_model_bytes: int = 256 * 1024 * 1024,
        load_backoff_s: float = 30.0,
        load_backoff_max_s: float = 3600.0,
        reload_timeout_s: float = 120.0,
        warmup_timeout_s: float = 30.0,
        batch_probe_size: int = 0,
        on_swap: Callable[[LoadedModel | None, LoadedModel], None] | None = None,
        on_check_error: Callable[[str], None] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.safe_uri = redact_uri(tracking_uri)
        self.model_name = model_name
        self.poll_interval_s = poll_interval_s
        self.retry_interval_s = retry_interval_s
        self.threads = threads
        self.max_model_bytes = max_model_bytes
        self.load_backoff_s = load_backoff_s
        self.load_backoff_max_s = load_backoff_max_s
        self.reload_timeout_s = reload_timeout_s
        self.warmup_timeout_s = warmup_timeout_s
        # > 1: time this batch size against single images at load (micro_batch: auto).
        self.batch_probe_size = batch_probe_size
        self.on_stuck: Callable[[str], None] | None = None
        self._on_swap = on_swap
        self._on_check_error = on_check_error
        self._current: LoadedModel | None = None
        self._check_lock = threading.Lock()
        self._failures: dict[str, LoadFailure] = {}
        self.status = StoreStatus()
        # The check in progress: when it started (time.monotonic()), for which version, and
        # the step it is in. Written by the checking thread, read by /ready and /metrics.
        self._check_started: float | None = None
        self._check_version: str | None = None
        self._check_step = ""

    # --- what requests use -------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """The model to answer with; read it once per request."""
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    def _reader(self) -> RegistryReader:
        # Stateless (nothing survives a replaced registry); one deadline for the whole check.
        return reader_for(self.tracking_uri, Deadline(self.reload_timeout_s))

    def check_running_s(self) -> float:
        """How long the check in progress has run (0 when none is)."""
        started = self._check_started
        return 0.0 if started is None else time.monotonic() - started

    def stuck_reload(self) -> str | None:
        """What a check past its deadline is stuck in, or ``None`` when none is."""
        running = self.check_running_s()
        if running <= self.reload_timeout_s:
            return None
        current = self._current
        what = f"Production v{self._check_version}" if self._check_version else "Production"
        serving = f"serving v{current.version}; " if current is not None else ""
        return (
            f"{serving}the reload of {what} has run {running:.0f} s, past its "
            f"{self.reload_timeout_s:g} s deadline ({self._check_step}); it is abandoned at its "
            "next checkpoint, else restart the API"
        )

    def _step(self, step: str) -> None:
        self._check_step = step

    # --- loading -----------------------------------------------------------------------------
    def load(self, ref: VersionRef, reader: RegistryReader | None = None) -> LoadedModel:
        """Fetch, load and warm up ``ref``'s ONNX model (does not make it current)."""
        reader = reader or self._reader()
        started = time.perf_counter()
        run = None
        if ref.run_id:
            self._step(f"reading run {ref.run_id}")
            run = reader.run(ref.run_id)
            if run is None:
                raise ValueError(f"its run {ref.run_id} is not in the tracking store")
        self._step("fetching the ONNX model")
        served = fetch_served_model(
            reader.read_artifact,
            ref.storage_location,
            run.artifact_uri if run is not None else None,
            self.max_model_bytes,
        )
        metadata = served.metadata
        class_names = metadata.get("class_names") or list(CLASS_NAMES)
        reader.deadline.check("fetching the model")
        self._step("opening and warming up the ONNX model")
        classifier = load_onnx_classifier(
            served.model_bytes,
            class_names,
            threads=self.threads,
            warmup_timeout_s=reader.deadline.timeout(self.warmup_timeout_s),
        )
        classifier.metadata = metadata
        # Timed like the warm-up: a graph whose time grows with the batch cannot hang the load.
        limit_s = reader.deadline.timeout(self.warmup_timeout_s)
        bounded = BoundedForward(classifier, limit_s)
        speedup = batch_speedup(bounded, self.batch_probe_size, (1, IMAGE_SIZE, IMAGE_SIZE))
        # NaN and infinities (an MLflow server sends them) are no JSON: /model would fail on them.
        run = run or RunInfo(artifact_uri="")
        metrics = {k: float(v) for k, v in run.metrics.items() if math.isfinite(v)}
        for key in METRIC_TAGS:
            if key in ref.tags and key not in metrics:
                try:
                    value = float(ref.tags[key])
                except ValueError:
                    continue
                if math.isfinite(value):
                    metrics[key] = value
        data_md5 = (
            ref.tags.get("data_md5") or run.params.get("data_md5") or run.tags.get("data_md5")
        )
        flip_tta = metadata.get("flip_tta", run.params.get("flip_tta"))
        return LoadedModel(
            classifier=classifier,
            name=ref.name,
            version=ref.version,
            run_id=ref.run_id,
            model_uri=f"models:/{ref.name}/{ref.version}",
            metrics=metrics,
            data_md5=data_md5 or None,
            tags=ref.tags,
            loaded_at=datetime.now(UTC),
            load_seconds=time.perf_counter() - started,
            flip_tta=_truthy(flip_tta),
            registered_at=ref.created_at,
            batch_speedup=speedup,
            model_sha256=hashlib.sha256(served.model_bytes).hexdigest(),
            served_file=served.origin,
        )

    def swap(self, new: LoadedModel) -> None:
        old = self._current
        self._current = new  # the one atomic step
        if self._on_swap is not None:
            self._on_swap(old, new)

    # --- one registry check ------------------------------------------------------------------
    def check_once(self) -> bool:
        """Ask the registry for Production; load and swap when it moved. Returns whether it
        swapped. Never raises: problems go into :attr:`status` and the log. A caller waits at
        most one deadline for a check already in progress (then returns False)."""
        if not self._check_lock.acquire(timeout=self.reload_timeout_s):
            return False
        try:
            self._check_started, self._check_version = time.monotonic(), None
            self._step("reading the registry")
            return self._check()
        finally:
            self._check_started = None
            self._check_lock.release()

    def _check(self) -> bool:
        self.status.attempts += 1
        self.status.last_check = datetime.now(UTC)
        try:
            reader = self._reader()
            ref = reader.production(self.model_name)
        except Exception as exc:
            self._check_failed(
                f"the model registry at {self.safe_uri} is unreachable or failing "
                f"({_one_line(exc)}); retrying"
            )
            return False
        self.status.production_version = ref.version if ref is not None else None
        self._check_version = ref.version if ref is not None else None
        current = self._current
        if ref is None:
            self._no_production(current)
            return False
        if current is not None and ref.version == current.version:
            self._settled()
            return False
        failure = self._failures.get(ref.version)
        if failure is not None and time.monotonic() < failure.retry_at:
            self._show_failure(failure)
            return False  # backing off: no reload at every poll
        try:
            new = self.load(ref, reader)
        except Exception as exc:
            self._load_failed(ref.version, exc, failure)
            return False
        self._failures.pop(ref.version, None)
        self.swap(new)
        self._settled()
        logger.info(
            "model loaded",
            extra={
                "fields": {
                    "model": new.name,
                    "model_version": new.version,
                    "previous_version": current.version if current else None,
                    "load_seconds": round(new.load_seconds, 3),
                }
            },
        )
        return True

    def _no_production(self, current: LoadedModel | None) -> None:
        if current is None:
            self.status.reason = (
                f"no Production version of model {self.model_name!r} in the registry at "
                f"{self.safe_uri} yet; run `make train` (retrying)"
            )
        else:
            logger.warning(
                "registry has no Production version; keeping the loaded one",
                extra={"fields": {"model_version": current.version}},
            )

    def _settled(self) -> None:
        self.status.reason = ""
        self.status.last_error = None
        self.status.failure = None

    def _load_failed(self, version: str, exc: Exception, previous: LoadFailure | None) -> None:
        attempts = previous.attempts + 1 if previous is not None else 1
        delay = min(self.load_backoff_max_s, self.load_backoff_s * 2 ** (attempts - 1))
        failure = LoadFailure(
            version=version,
            message=f"loading version {version} of {self.model_name!r} failed: {_one_line(exc)}",
            attempts=attempts,
            retry_at=time.monotonic() + delay,
        )
        self._failures[version] = failure
        logger.error(
            "model load failed",
            extra={"fields": {"error": failure.message, "retry_in_s": round(delay, 1)}},
        )
        self._show_failure(failure)
        if self._on_check_error is not None:
            self._on_check_error(failure.message)

    def _show_failure(self, failure: LoadFailure) -> None:
        self.status.failure = failure
        current = self._current
        if current is None:
            self.status.reason = f"{failure.message}; retrying"
        else:
            self.status.reason = (
                f"serving v{current.version}; Production v{failure.version} failed to load: "
                f"{failure.message}"
            )
        self.status.last_error = self.status.reason

    def _check_failed(self, message: str) -> None:
        self.status.last_error = message
        if self._current is None:
            self.status.reason = message
        if self._on_check_error is not None:
            self._on_check_error(message)

    # --- background loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Check now, then every ``retry_interval_s`` until loaded and every ``poll_interval_s``
        after. Runs until cancelled; never raises. A check stuck past its deadline is reported
        once and left to finish on its own; no second one starts beside it."""
        while True:
            if self._check_started is None:
                await self._poll()
            await anyio.sleep(self.poll_interval_s if self.ready else self.retry_interval_s)

    async def _poll(self) -> None:
        try:
            with anyio.move_on_after(self.reload_timeout_s + STUCK_GRACE_S) as scope:
                # Abandon on cancel: a hung registry call must not block shutdown.
                await anyio.to_thread.run_sync(self.check_once, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # check_once does not raise; belt and braces
            logger.exception("registry check crashed", extra={"fields": {"error": str(exc)}})
            return
        stuck = self.stuck_reload() if scope.cancelled_caught else None
        if stuck is not None:
            logger.error("model reload stuck", extra={"fields": {"error": stuck}})
            if self.on_stuck is not None:
                self.on_stuck(stuck)
