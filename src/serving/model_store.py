"""The served model: find the Production version, load it, and keep it current (hot reload).

Requests read :attr:`ModelStore.current` once and use that :class:`LoadedModel` for the whole
request. A new Production version is loaded and warmed up *beside* the old one; only then is the
single ``current`` reference replaced (an atomic assignment), so no request ever sees half a swap
or mixes two versions.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import anyio
import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from src.labels import IMAGE_SIZE
from src.model_io import Classifier, load_classifier_from_path
from src.registry import current_production, get_client, model_version_uri

logger = logging.getLogger("clothing_classifier.serving")

# Version tags (set by the registry module) that carry metrics.
METRIC_TAGS = ("test_accuracy", "test_macro_f1", "val_accuracy", "val_macro_f1")


@dataclass(frozen=True)
class ProductionRef:
    """What the registry says Production is."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model version and everything /model reports about it."""

    classifier: Classifier
    name: str
    version: str
    run_id: str | None
    model_uri: str
    metrics: dict[str, float]
    data_md5: str | None
    tags: dict[str, str]
    loaded_at: datetime
    load_seconds: float

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    def predict_proba(self, images: torch.Tensor) -> np.ndarray:
        return self.classifier.predict_proba(images)


@dataclass
class StoreStatus:
    """Why the store is not ready (``reason``), plus counters for /ready and logs."""

    reason: str = "starting: the first registry check has not finished yet"
    attempts: int = 0
    last_error: str | None = None
    last_check: datetime | None = None


def _local_dir(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(location)
    return None


def prewarm() -> None:
    """Import what the first model load needs (``torch.export.load`` pulls in torch._dynamo,
    ~2-3 s) so it is done while waiting for the registry rather than after it answers."""
    try:
        import torch._export.serde.serialize
        import torch.export.pt2_archive._package  # noqa: F401
    except Exception:  # only an optimisation
        logger.debug("prewarm failed", exc_info=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class ModelStore:
    """Holds the current model and polls the registry for a new Production version."""

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        *,
        poll_interval_s: float,
        retry_interval_s: float,
        on_swap: Callable[[LoadedModel | None, LoadedModel], None] | None = None,
        on_check_error: Callable[[str], None] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.poll_interval_s = poll_interval_s
        self.retry_interval_s = retry_interval_s
        self._on_swap = on_swap
        self._on_check_error = on_check_error
        self._current: LoadedModel | None = None
        self._client: MlflowClient | None = None
        self._check_lock = threading.Lock()
        self._failed_versions: dict[str, str] = {}
        self.status = StoreStatus()

    # --- what requests use -------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """The model to answer with; read it once per request."""
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    # --- registry ----------------------------------------------------------------------------
    def _registry(self) -> MlflowClient:
        if self._client is None:
            self._client = get_client(self.tracking_uri)
        return self._client

    def resolve_production(self) -> ProductionRef | None:
        """Alias ``production``, else the newest version in stage Production, else ``None``."""
        mv = current_production(self._registry(), self.model_name)
        if mv is None:
            return None
        return ProductionRef(
            name=self.model_name,
            version=str(mv.version),
            run_id=mv.run_id or None,
            source=str(mv.source or ""),
            tags=dict(mv.tags or {}),
        )

    def _run_details(self, ref: ProductionRef) -> tuple[dict[str, float], str | None]:
        metrics: dict[str, float] = {}
        data_md5 = ref.tags.get("data_md5") or None
        if ref.run_id:
            try:
                run = self._registry().get_run(ref.run_id)
                metrics.update({k: float(v) for k, v in run.data.metrics.items()})
                data_md5 = (
                    data_md5 or run.data.params.get("data_md5") or run.data.tags.get("data_md5")
                )
            except Exception as exc:  # the run may have been deleted; the model still serves
                logger.warning(
                    "run details unavailable",
                    extra={"fields": {"run_id": ref.run_id, "error": _one_line(exc)}},
                )
        for key in METRIC_TAGS:
            if key in ref.tags and key not in metrics:
                try:
                    value = float(ref.tags[key])
                except ValueError:
                    continue
                if math.isfinite(value):
                    metrics[key] = value
        return metrics, data_md5

    def load(self, ref: ProductionRef) -> LoadedModel:
        """Download, load and warm up ``ref`` (does not make it current)."""
        started = time.perf_counter()
        uri = model_version_uri(ref.name, ref.version)
        # Resolve the artifact location with OUR client: a ``models:/`` URI handed to MLflow's
        # download helpers would be resolved against the process-global registry instead.
        location = self._registry().get_model_version_download_uri(ref.name, ref.version)
        local_dir = _local_dir(location)
        if local_dir is not None and (local_dir / "MLmodel").is_file():
            classifier = load_classifier_from_path(local_dir, model_uri=uri)  # no copy needed
        else:
            with tempfile.TemporaryDirectory(prefix="serve-model-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=location, dst_path=tmp, tracking_uri=self.tracking_uri
                )
                classifier = load_classifier_from_path(Path(local), model_uri=uri)
        # Warm up (first calls of an exported graph are slower) and check the output shape.
        for batch in (1, 2):
            probabilities = classifier.predict_proba(
                torch.zeros(batch, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
            )
            if probabilities.shape != (batch, len(classifier.class_names)):
                raise ValueError(
                    f"model {uri} answers shape {probabilities.shape} for {batch} images; "
                    f"expected ({batch}, {len(classifier.class_names)})"
                )
        metrics, data_md5 = self._run_details(ref)
        return LoadedModel(
            classifier=classifier,
            name=ref.name,
            version=ref.version,
            run_id=ref.run_id,
            model_uri=uri,
            metrics=metrics,
            data_md5=data_md5,
            tags=ref.tags,
            loaded_at=datetime.now(UTC),
            load_seconds=time.perf_counter() - started,
        )

    def swap(self, new: LoadedModel) -> None:
        old = self._current
        self._current = new  # the one atomic step
        if self._on_swap is not None:
            self._on_swap(old, new)

    def check_once(self) -> bool:
        """Ask the registry for Production; load and swap when it moved. Returns whether it
        swapped. Never raises: problems go into :attr:`status` and the log."""
        with self._check_lock:
            self.status.attempts += 1
            self.status.last_check = datetime.now(UTC)
            try:
                ref = self.resolve_production()
            except Exception as exc:
                self._check_failed(
                    f"the model registry at {self.tracking_uri} is unreachable or failing "
                    f"({_one_line(exc)}); retrying"
                )
                return False
            current = self._current
            if ref is None:
                if current is None:
                    self.status.reason = (
                        f"no Production version of model {self.model_name!r} in the registry at "
                        f"{self.tracking_uri} yet; run `make train` (retrying)"
                    )
                else:
                    logger.warning(
                        "registry has no Production version; keeping the loaded one",
                        extra={"fields": {"model_version": current.version}},
                    )
                return False
            if current is not None and ref.version == current.version:
                return False
            failed_before = self._failed_versions.get(ref.version)
            try:
                new = self.load(ref)
            except Exception as exc:
                message = (
                    f"loading version {ref.version} of {self.model_name!r} failed "
                    f"({_one_line(exc)}); "
                    + (f"still serving version {current.version}" if current else "retrying")
                )
                self._failed_versions[ref.version] = message
                if failed_before is None:
                    logger.error("model load failed", extra={"fields": {"error": message}})
                self._check_failed(message)
                return False
            self._failed_versions.pop(ref.version, None)
            self.swap(new)
            self.status.reason = ""
            self.status.last_error = None
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

    def _check_failed(self, message: str) -> None:
        self.status.last_error = message
        if self._current is None:
            self.status.reason = message
        if self._on_check_error is not None:
            self._on_check_error(message)

    # --- background loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Check now, then every ``retry_interval_s`` until loaded and every ``poll_interval_s``
        after. Runs until cancelled; never raises."""
        await anyio.to_thread.run_sync(prewarm, abandon_on_cancel=True)
        while True:
            try:
                # Abandon on cancel: a hung registry call must not block shutdown.
                await anyio.to_thread.run_sync(self.check_once, abandon_on_cancel=True)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # check_once does not raise; belt and braces
                logger.exception("registry check crashed", extra={"fields": {"error": str(exc)}})
            await anyio.sleep(self.poll_interval_s if self.ready else self.retry_interval_s)

    def describe(self) -> dict[str, Any]:
        model = self._current
        return {
            "ready": model is not None,
            "reason": self.status.reason or None,
            "model_version": model.version if model else None,
            "last_error": self.status.last_error,
            "checks": self.status.attempts,
        }
