"""What one monitoring pass does, as plain functions (``flows/monitor_flow.py`` wraps them):
find Production and its reference profile, read the window, decide, record the decision."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from src.config import AppConfig
from src.errors import Refused
from src.monitoring import drift
from src.monitoring.drift import DriftDecision
from src.monitoring.reference_profile import PROFILE_ARTIFACT, ReferenceProfile
from src.monitoring.store import PredictionStore, store_url


class MonitorError(Refused):
    """Monitoring cannot run; the message says why and what to do."""


def production_reference(cfg: AppConfig) -> tuple[str, ReferenceProfile]:
    """The Production version and the reference profile logged with it at training time."""
    from src import registry

    client = registry.get_client(cfg.tracking_uri)
    name = cfg.mlflow.registered_model_name
    version = registry.current_production(client, name)
    if version is None:
        from src.serving.redact import redact_text

        raise MonitorError(
            f"No Production version of {name!r} at {redact_text(cfg.tracking_uri)}: nothing to "
            "monitor; run `make train` first."
        )
    if not version.run_id:
        raise MonitorError(f"{name} v{version.version} has no training run to read its profile.")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(version.run_id, PROFILE_ARTIFACT, tmp)
            payload = json.loads(Path(local).read_text())
    except Exception as exc:
        raise MonitorError(
            f"{name} v{version.version} has no reference profile ({PROFILE_ARTIFACT} in run "
            f"{version.run_id}): it was trained before monitoring existed; retrain it with "
            "train-flow to monitor it."
        ) from exc
    profile = ReferenceProfile.from_dict(payload)
    profile.model_version = str(version.version)
    return str(version.version), profile


def read_window(
    cfg: AppConfig, model_version: str, now: float | None = None, windows_back: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The version's logged answers of the last ``monitor.window_hours`` (``windows_back``
    windows earlier: the window that many widths before), and their feedback."""
    width = cfg.monitor.window_hours * 3600.0
    end = (now if now is not None else time.time()) - windows_back * width
    store = PredictionStore(store_url(cfg))
    try:
        until = end if windows_back else None
        rows = store.recent_predictions(end - width, model_version=model_version, until=until)
        labelled = store.labelled(
            limit=cfg.monitor.max_labelled_rows,
            since=end - width,
            until=until,
            model_version=model_version,
            images=False,
        )
    finally:
        store.close()
    return rows, labelled


def drifted_windows(
    cfg: AppConfig, model_version: str, profile: ReferenceProfile, now: float, count: int
) -> int:
    """Of the ``count`` windows right before the current one, how many found drift, counting
    back until the first that did not (a window without enough answers ends the count)."""
    found = 0
    for back in range(1, count + 1):
        rows, labelled = read_window(cfg, model_version, now, windows_back=back)
        earlier = drift.decide(rows, profile, cfg.monitor, labelled, model_version=model_version)
        if not earlier.drift_detected:
            break
        found += 1
    return found


def record_decision(cfg: AppConfig, decision: DriftDecision, mlflow_run_id: str | None) -> None:
    """Store the decision beside the log, where the API's /metrics picks it up."""
    store = PredictionStore(store_url(cfg))
    try:
        store.add_monitor_run(
            model_version=decision.model_version,
            drift_detected=decision.drift_detected if decision.status == "ok" else None,
            drift_share=decision.drift_share if decision.status == "ok" else None,
            n_predictions=decision.n_predictions,
            status=decision.status,
            mlflow_run_id=mlflow_run_id,
        )
    finally:
        store.close()


def log_to_mlflow(
    cfg: AppConfig, decision: DriftDecision, report_dir: Path, tags: dict[str, str]
) -> str:
    """One run in ``monitor.experiment_name``: metrics, settings, the report folder."""
    from src import registry

    client = registry.get_client(cfg.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.monitor.experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(
            cfg.monitor.experiment_name,
            artifact_location=cfg.mlflow.resolved_artifact_location(cfg.paths.root),
        )
    )
    run = client.create_run(
        experiment_id,
        run_name=f"monitor v{decision.model_version or '-'}",
        tags={
            "status": decision.status,
            "model_version": str(decision.model_version),
            "drift_detected": str(decision.drift_detected).lower(),
            **tags,
        },
    )
    run_id = run.info.run_id
    try:
        settings = cfg.monitor.model_dump(
            include={
                "window_hours",
                "min_predictions",
                "alpha",
                "drift_min_flagged",
                "retrain_on_drift",
            }
        )
        for name, test in cfg.monitor.drift_tests.items():
            settings[f"{name}_min_effect"] = test.min_effect
        for key, value in settings.items():
            client.log_param(run_id, key, value)
        for key, value in decision.metrics().items():
            client.log_metric(run_id, key, value)
        client.log_dict(run_id, _jsonable(asdict(decision)), "decision.json")
        client.log_artifacts(run_id, str(report_dir), "report")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, allow_nan=True).replace("NaN", "null"))
