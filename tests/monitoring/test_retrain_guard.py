"""Drift-triggered retraining does not run away: a flood of identical uploads is no drift, and
retraining needs drift in consecutive windows, nothing drift-triggered pending, a cooldown and a
daily cap (checked against the real Prefect API)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from flows.monitor_flow import drift_triggered_runs
from src.api import create_app
from src.monitoring import monitor
from src.monitoring.drift import decide
from src.monitoring.retrain import RETRAIN_TAGS, RetrainVerdict, TriggeredRun, retrain_verdict
from src.monitoring.store import PredictionStore
from tests.helpers.api import Registry, encode, wait_until
from tests.helpers.config import app_config, monitor_config
from tests.helpers.flows import PrefectServer
from tests.helpers.monitoring import monitored_config
from tests.monitoring.test_drift import _reference, _window
from tests.monitoring.test_store import _record

HOUR = 3600.0


def test_a_flood_of_identical_white_pngs_is_reported_as_such_not_as_drift(
    registry: Registry, tmp_path: Path
) -> None:
    registry.add_production("varied")
    cfg = monitored_config(registry, tmp_path)
    white = encode(np.full((28, 28), 255, dtype=np.uint8))
    with TestClient(create_app(cfg)) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        for start in range(0, 200, 50):
            files = [("files", (f"{start + i}.png", white, "image/png")) for i in range(50)]
            assert client.post("/predict/batch", files=files).status_code == 200
    store = PredictionStore(cfg.monitor.store_url or "")
    try:
        rows = wait_until(lambda: (r := store.recent_predictions(0)) and len(r) == 200 and r)
    finally:
        store.close()
    decision = decide(rows, _reference(np.random.default_rng(0)), monitor_config())
    assert decision.status == "identical_inputs" and not decision.drift_detected
    assert decision.tests == [] and decision.drift_share == 0.0
    assert decision.reasons[0].startswith("200 of 200 answers (100%) are copies of 1 identical")


def test_a_few_repeats_in_a_varied_window_still_get_a_decision() -> None:
    rng = np.random.default_rng(4)
    rows = _window(rng, 300, conf=0.55, mean=0.15)
    rows += [dict(rows[0])] * 100  # one picture 100 times more: a quarter of the window
    decision = decide(rows, _reference(rng), monitor_config(min_predictions=100))
    assert decision.status == "ok" and decision.drift_detected


def _runs(*ages_h_and_states: tuple[float, str], now: float) -> list[TriggeredRun]:
    return [
        TriggeredRun(f"run-{i}", now - age * HOUR, state)
        for i, (age, state) in enumerate(ages_h_and_states)
    ]


def test_the_retrain_guard_needs_consecutive_windows_then_cooldown_and_cap() -> None:
    now = 1_000_000.0
    cfg = monitor_config(
        retrain_consecutive_windows=2, retrain_cooldown_hours=6, retrain_max_per_day=2
    )
    one_window = retrain_verdict([], 1, cfg, now)
    assert not one_window.start and "1 consecutive window(s), 2 needed" in one_window.reason
    assert retrain_verdict([], 2, cfg, now).start
    queued = retrain_verdict(_runs((30, "SCHEDULED"), now=now), 2, cfg, now)
    assert not queued.start and "run-0 is still scheduled" in queued.reason
    running = retrain_verdict(_runs((1, "RUNNING"), now=now), 5, cfg, now)
    assert not running.start and "still running" in running.reason
    cooling = retrain_verdict(_runs((2, "COMPLETED"), now=now), 2, cfg, now)
    assert not cooling.start and "started 2.0 h ago" in cooling.reason
    capped = retrain_verdict(_runs((7, "FAILED"), (20, "COMPLETED"), now=now), 2, cfg, now)
    assert (
        not capped.start and "2 drift-triggered train-flow runs in the last 24 h" in capped.reason
    )
    assert "next may start in 4.0 h" in capped.reason
    assert retrain_verdict(_runs((7, "COMPLETED"), (30, "COMPLETED"), now=now), 2, cfg, now).start


def test_drift_must_hold_in_the_windows_before_the_current_one(tmp_path: Path) -> None:
    cfg = app_config(
        monitor={
            "store_url": f"sqlite:///{tmp_path / 'log.db'}",
            "window_hours": 1,
            "min_predictions": 100,
        }
    )
    rng = np.random.default_rng(5)
    reference = _reference(rng)
    now = 10_000_000.0
    store = PredictionStore(cfg.monitor.store_url or "")

    def log_window(back: int, **shift: float) -> None:
        start = now - (back + 1) * HOUR
        records = [
            replace(_record(back * 1000 + i, start + 1 + i), **row)
            for i, row in enumerate(_window(rng, 150, **shift))
        ]
        store.add_predictions(records)

    try:
        log_window(0, conf=0.55, mean=0.15)  # the current window: drift
        log_window(1)  # the one before: clean
        log_window(2, conf=0.55, mean=0.15)
        assert monitor.drifted_windows(cfg, "1", reference, now, 2) == 0
        # An hour earlier the current window is the clean one; the one before it drifted.
        assert monitor.drifted_windows(cfg, "1", reference, now - HOUR, 1) == 1
        rows, _ = monitor.read_window(cfg, "1", now, windows_back=1)
        assert len(rows) == 150 and all(
            now - 2 * HOUR <= r["created_at"] < now - HOUR for r in rows
        )
    finally:
        store.close()


@pytest.mark.integration
def test_a_queued_drift_triggered_run_blocks_the_next_one(
    prefect_server: PrefectServer, prefect_api: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Completed

    flow = httpx.post(f"{prefect_api}/flows/", json={"name": "guard-train-flow"}, timeout=30)
    deployment = httpx.post(
        f"{prefect_api}/deployments/",
        json={"name": "guard", "flow_id": flow.json()["id"], "entrypoint": "x.py:f", "path": "."},
        timeout=30,
    )
    deployment.raise_for_status()
    cfg = monitor_config(retrain_consecutive_windows=1, retrain_cooldown_hours=6)
    # The session's Prefect server may hold drift-triggered runs of earlier tests (the closed loop).
    for _ in range(20):
        earlier = drift_triggered_runs(time.time())
        if not earlier:
            break
        for run in earlier:
            httpx.delete(f"{prefect_api}/flow_runs/{run.run_id}", timeout=30).raise_for_status()
    assert retrain_verdict(drift_triggered_runs(time.time()), 1, cfg, time.time()).start
    started = run_deployment(
        name="guard-train-flow/guard", timeout=0, as_subflow=False, tags=[*RETRAIN_TAGS, "x:y"]
    )
    # Not picked up by any worker: the run waits, and the next drift must not queue another.
    [seen] = [r for r in drift_triggered_runs(time.time()) if r.run_id == str(started.id)]
    assert seen.state == "SCHEDULED"
    queued = retrain_verdict(drift_triggered_runs(time.time()), 3, cfg, time.time())
    assert not queued.start and str(started.id) in queued.reason
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(started.id, Completed(), force=True)
    done = retrain_verdict(drift_triggered_runs(time.time()), 3, cfg, time.time())
    assert not done.start and "h ago (retrain_cooldown_hours 6)" in done.reason


def _clear_drift_triggered_runs(prefect_api: str) -> None:
    """The session's Prefect server may hold drift-triggered runs of earlier tests (the closed
    loop, the test above): they would block or cool down the verdict."""
    for _ in range(20):
        earlier = drift_triggered_runs(time.time())
        if not earlier:
            return
        for run in earlier:
            httpx.delete(f"{prefect_api}/flow_runs/{run.run_id}", timeout=30).raise_for_status()
    raise AssertionError("drift-triggered runs of earlier tests could not be cleared")


@pytest.mark.integration
def test_the_default_two_windows_retrain_only_when_the_one_before_drifted_too(
    prefect_api: str, tmp_path: Path
) -> None:
    """monitor-flow's retrain guard task at the default retrain_consecutive_windows (2), on a
    real prediction log and the real Prefect API: drift now after a clean window is one window,
    not enough; drift now and in the window before is two, enough."""
    from prefect import flow

    from flows.monitor_flow import retrain_guard_task

    cfg = app_config(
        monitor={
            "store_url": f"sqlite:///{tmp_path / 'log.db'}",
            "window_hours": 1,
            "min_predictions": 100,
        }
    )
    assert cfg.monitor.retrain_consecutive_windows == 2  # the shipped default, not a test value
    rng = np.random.default_rng(6)
    reference = _reference(rng)
    now = 10_000_000.0
    store = PredictionStore(cfg.monitor.store_url or "")

    def log_window(back: int, **shift: float) -> None:
        start = now - (back + 1) * HOUR
        records = [
            replace(_record(back * 1000 + i, start + 1 + i), **row)
            for i, row in enumerate(_window(rng, 150, **shift))
        ]
        store.add_predictions(records)

    @flow(name="retrain-guard-check", validate_parameters=False)
    def guard(at: float) -> RetrainVerdict:
        return retrain_guard_task(cfg, "1", reference, at)

    _clear_drift_triggered_runs(prefect_api)
    try:
        log_window(0, conf=0.55, mean=0.15)  # the current window: drift
        log_window(1)  # the one before: clean
        log_window(2, conf=0.55, mean=0.15)
        log_window(3, conf=0.55, mean=0.15)
        one = guard(now)
        assert not one.start and "1 consecutive window(s), 2 needed" in one.reason, one.reason
        # Two hours later the current window is the drifted one two back, and the one before
        # it drifted too.
        two = guard(now - 2 * HOUR)
        assert two.start, two.reason
    finally:
        store.close()
