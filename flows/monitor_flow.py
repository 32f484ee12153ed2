"""The Prefect flow ``monitor-flow``: is the Production model still shown what it was trained on?

    production + reference profile → window of logged predictions → drift tests → decision
    → MLflow run (experiment ``clothing-classifier-monitoring``) + report (MLflow + Prefect)
    → on drift with ``monitor.retrain_on_drift``, if the guard allows (drift in consecutive
      windows, no drift-triggered run pending, cooldown, daily cap; src/monitoring/retrain.py):
      start train-flow through its deployment

``python -m flows.monitor_flow`` runs it once (``--dry-run`` decides and logs but starts nothing);
``clothing-classifier deploy`` schedules it (``monitor-flow/hourly``, ``monitor.schedule_cron``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from src.cli import call
from src.config import AppConfig, load_config
from src.monitoring import drift, monitor, report, retrain
from src.monitoring.drift import DriftDecision
from src.monitoring.reference_profile import ReferenceProfile
from src.monitoring.retrain import RetrainVerdict, TriggeredRun

REPORT_KEY = "monitoring-report"


class MonitorFlowParams(BaseModel):
    """``None`` means as configured (``configs/monitor.yaml``, ``MONITOR_*``)."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(default=None, description="A profile in configs/profiles/.")
    window_hours: float | None = Field(default=None, gt=0, description="monitor.window_hours")
    min_predictions: int | None = Field(default=None, ge=1, description="monitor.min_predictions")
    retrain_on_drift: bool | None = Field(default=None, description="monitor.retrain_on_drift")
    dry_run: bool = Field(default=False, description="Decide and log, but start no training.")

    def load_config(self) -> AppConfig:
        fields = ("window_hours", "min_predictions", "retrain_on_drift")
        overrides = {f: getattr(self, f) for f in fields if getattr(self, f) is not None}
        return load_config(profile=self.profile, overrides={"monitor": overrides})


@task(name="load-reference", cache_policy=NO_CACHE, persist_result=False)
def reference_task(cfg: AppConfig) -> tuple[str, ReferenceProfile]:
    version, reference = monitor.production_reference(cfg)
    get_run_logger().info(
        "Production v%s: reference of %d validation images, threshold %.3f",
        version,
        reference.n,
        reference.threshold.value,
    )
    return version, reference


@task(name="read-window", cache_policy=NO_CACHE, persist_result=False)
def window_task(cfg: AppConfig, version: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, labelled = monitor.read_window(cfg, version)
    get_run_logger().info(
        "Last %g h: %d predictions of v%s, %d labelled",
        cfg.monitor.window_hours,
        len(rows),
        version,
        len(labelled),
    )
    return rows, labelled


@task(name="drift-tests", cache_policy=NO_CACHE, persist_result=False)
def decide_task(
    cfg: AppConfig,
    version: str,
    reference: ReferenceProfile,
    rows: list[dict[str, Any]],
    labelled: list[dict[str, Any]],
) -> DriftDecision:
    decision = drift.decide(rows, reference, cfg.monitor, labelled, model_version=version)
    logger = get_run_logger()
    for reason in decision.reasons:
        (logger.warning if decision.drift_detected else logger.info)(reason)
    return decision


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def report_task(
    cfg: AppConfig,
    decision: DriftDecision,
    rows: list[dict[str, Any]],
    reference: ReferenceProfile,
    tags: dict[str, str],
) -> str:
    """The report (Prefect + MLflow artifacts), the MLflow run, the decision for /metrics."""
    with tempfile.TemporaryDirectory(prefix="monitor-report-") as tmp:
        folder = Path(tmp)
        report.write_report(folder, decision, rows, reference, cfg.monitor.window_hours)
        run_id = monitor.log_to_mlflow(cfg, decision, folder, tags)
        summary = (folder / "report.md").read_text()
        plot = folder / "distributions.png"
        if plot.is_file():  # the plots inline, so the Prefect UI shows them too
            summary += f"\n![distributions](data:image/png;base64,{_b64(plot)})\n"
    create_markdown_artifact(
        markdown=summary + f"\nMLflow run `{run_id}` (experiment "
        f"`{cfg.monitor.experiment_name}`), plots in its artifact `report/report.html`.\n",
        key=REPORT_KEY,
        description=decision.reasons[0][:200] if decision.reasons else decision.status,
    )
    monitor.record_decision(cfg, decision, run_id)
    return run_id


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


def drift_triggered_runs(now: float) -> list[TriggeredRun]:
    """The train-flow runs monitor-flow started on drift: those of the last 24 h and every one
    not finished yet (bounded queries on the Prefect API)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    tags = FlowRunFilterTags(all_=list(retrain.RETRAIN_TAGS))
    active = FlowRunFilterStateType(any_=[StateType(s) for s in sorted(retrain.ACTIVE_STATES)])
    day_ago = datetime.fromtimestamp(now - retrain.DAY_S, UTC)
    found: dict[str, TriggeredRun] = {}
    with get_client(sync_client=True) as client:
        for run_filter, limit in (
            (FlowRunFilter(tags=tags, state=FlowRunFilterState(type=active)), 10),
            (
                FlowRunFilter(
                    tags=tags,
                    expected_start_time=FlowRunFilterExpectedStartTime.model_validate(
                        {"after_": day_ago}
                    ),
                ),
                100,
            ),
        ):
            for run in client.read_flow_runs(
                flow_run_filter=run_filter, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit
            ):
                created = run.created or run.expected_start_time
                found[str(run.id)] = TriggeredRun(
                    str(run.id),
                    created.timestamp() if created else now,
                    run.state_type.value if run.state_type else "UNKNOWN",
                )
    return list(found.values())


@task(name="retrain-guard", cache_policy=NO_CACHE, persist_result=False)
def retrain_guard_task(
    cfg: AppConfig, version: str, reference: ReferenceProfile, now: float
) -> RetrainVerdict:
    """Drift in consecutive windows, nothing drift-triggered pending, cooldown and daily cap."""
    earlier = cfg.monitor.retrain_consecutive_windows - 1
    drifted = 1 + monitor.drifted_windows(cfg, version, reference, now, earlier)
    verdict = retrain.retrain_verdict(drift_triggered_runs(now), drifted, cfg.monitor, now)
    (get_run_logger().info if verdict.start else get_run_logger().warning)(
        "Retraining on drift: %s (%s)", "allowed" if verdict.start else "skipped", verdict.reason
    )
    return verdict


@task(name="start-retraining", cache_policy=NO_CACHE, persist_result=False)
def retrain_task(cfg: AppConfig, decision: DriftDecision) -> str:
    """Start train-flow through its deployment (returns the new flow run's id at once)."""
    from prefect.deployments import run_deployment

    flagged = ",".join(t.name for t in decision.tests if t.drifted)
    run: Any = run_deployment(
        name=cfg.monitor.train_deployment,
        timeout=0,  # start it; do not wait for training to finish
        as_subflow=False,
        tags=[
            *retrain.RETRAIN_TAGS,  # the retrain guard finds these runs by them
            f"drift-version:{decision.model_version}",
            f"drift-tests:{flagged}",
            f"drift-share:{decision.drift_share:.2f}",
        ],
    )
    get_run_logger().warning(
        "Drift on v%s (%s): started %s as flow run %s",
        decision.model_version,
        flagged,
        cfg.monitor.train_deployment,
        run.id,
    )
    return str(run.id)


@flow(
    name="monitor-flow",
    description="Compare recent predictions with the Production version's reference profile; "
    "log the drift decision to MLflow; retrain on drift when configured.",
    log_prints=True,
)
def monitor_flow(params: MonitorFlowParams | None = None) -> dict[str, Any]:
    params = params or MonitorFlowParams()
    cfg = params.load_config()
    version, reference = reference_task(cfg)
    rows, labelled = window_task(cfg, version)
    decision = decide_task(cfg, version, reference, rows, labelled)
    verdict = None
    if decision.drift_detected and cfg.monitor.retrain_on_drift:
        verdict = retrain_guard_task(cfg, version, reference, time.time())
        decision.reasons.append(f"retraining: {verdict.reason}")
    retrain = verdict is not None and verdict.start
    tags = {"dry_run": str(params.dry_run).lower(), "retrain_requested": str(retrain).lower()}
    run_id = report_task(cfg, decision, rows, reference, tags)
    train_run_id = None
    if retrain and params.dry_run:
        get_run_logger().warning("Drift found; --dry-run: not starting train-flow.")
    elif retrain:
        train_run_id = retrain_task(cfg, decision)
    return {
        "status": decision.status,
        "model_version": version,
        "drift_detected": decision.drift_detected,
        "drift_share": decision.drift_share,
        "n_predictions": decision.n_predictions,
        "live_accuracy": decision.live_accuracy,
        "reasons": decision.reasons,
        "mlflow_run_id": run_id,
        "train_flow_run_id": train_run_id,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.monitor_flow", description="Run the monitor-flow once."
    )
    parser.add_argument("--profile", help="configs/profiles/<name>.yaml (default: $PROFILE)")
    parser.add_argument("--window-hours", type=float)
    parser.add_argument("--min-predictions", type=int)
    parser.add_argument("--retrain-on-drift", action="store_true", default=None)
    parser.add_argument("--dry-run", action="store_true", help="decide and log; start nothing")
    args = parser.parse_args(argv)
    params = MonitorFlowParams(
        profile=args.profile,
        window_hours=args.window_hours,
        min_predictions=args.min_predictions,
        retrain_on_drift=args.retrain_on_drift,
        dry_run=args.dry_run,
    )
    params.load_config()  # fail fast on bad settings, before Prefect starts
    summary = monitor_flow(params)
    verdict = "DRIFT" if summary["drift_detected"] else "no drift"
    if summary["status"] != "ok":
        verdict = "no decision"
    print(
        f"monitor-flow: {verdict} on v{summary['model_version']}; " + "; ".join(summary["reasons"])
    )
    print(f"MLflow run {summary['mlflow_run_id']} in {load_config().monitor.experiment_name}")
    if summary["train_flow_run_id"]:
        print(f"Started train-flow run {summary['train_flow_run_id']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(call("monitor", main))
