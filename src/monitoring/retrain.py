"""When drift may start a retraining: the guard between monitor-flow's decision and train-flow.

Retraining on the same data cannot remove a drift in what users send, so without a guard every
hourly run that still sees the drift would queue another train-flow. A drift-triggered run is
started only when the drift held in ``retrain_consecutive_windows`` consecutive windows, no
earlier drift-triggered run is still queued or running, the last one started at least
``retrain_cooldown_hours`` ago, and fewer than ``retrain_max_per_day`` started in the last 24 h.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from src.config.monitor import MonitorConfig

# The tags monitor-flow puts on the train-flow runs it starts (and finds them by).
RETRAIN_TAGS = ("triggered-by:monitor-flow", "reason:drift")
# Prefect state types of a run that has not finished yet.
ACTIVE_STATES = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"})
DAY_S = 86400.0


@dataclass(frozen=True)
class TriggeredRun:
    """A train-flow run that an earlier monitor-flow started on drift."""

    run_id: str
    created_at: float  # unix time
    state: str  # Prefect state type, e.g. "SCHEDULED", "COMPLETED"


@dataclass(frozen=True)
class RetrainVerdict:
    start: bool
    reason: str


def retrain_verdict(
    runs: Sequence[TriggeredRun], drifted_windows: int, cfg: MonitorConfig, now: float
) -> RetrainVerdict:
    """Whether to start a drift-triggered train-flow now. ``runs``: the drift-triggered runs of
    at least the last 24 h and every one not finished; ``drifted_windows``: consecutive windows
    with drift, the current one included."""
    need = cfg.retrain_consecutive_windows
    if drifted_windows < need:
        return RetrainVerdict(
            False,
            f"drift in {drifted_windows} consecutive window(s), {need} needed "
            "(retrain_consecutive_windows); not retraining yet",
        )
    active = [run for run in runs if run.state in ACTIVE_STATES]
    if active:
        return RetrainVerdict(
            False,
            f"drift-triggered train-flow run {active[0].run_id} is still "
            f"{active[0].state.lower()}; not starting another",
        )
    today = sorted(run.created_at for run in runs if now - run.created_at < DAY_S)
    if len(today) >= cfg.retrain_max_per_day:
        wait_h = (today[-cfg.retrain_max_per_day] + DAY_S - now) / 3600.0
        return RetrainVerdict(
            False,
            f"{len(today)} drift-triggered train-flow runs in the last 24 h (retrain_max_per_day "
            f"{cfg.retrain_max_per_day}); the next may start in {wait_h:.1f} h",
        )
    last = max((run.created_at for run in runs), default=None)
    cooldown_s = cfg.retrain_cooldown_hours * 3600.0
    if last is not None and now - last < cooldown_s:
        return RetrainVerdict(
            False,
            f"the last drift-triggered train-flow run started {(now - last) / 3600.0:.1f} h ago "
            f"(retrain_cooldown_hours {cfg.retrain_cooldown_hours:g}); not yet",
        )
    return RetrainVerdict(
        True, f"drift in {drifted_windows} consecutive window(s); no drift-triggered run pending"
    )
