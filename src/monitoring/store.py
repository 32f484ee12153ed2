"""The prediction log: one table of answers, one of feedback labels, one of monitor decisions.

SQLAlchemy Core over any URL: a sqlite file under ``outputs/`` by default, PostgreSQL (or any
SQLAlchemy database) via ``monitor.store_url``. The API writes through
:class:`src.monitoring.writer.PredictionLogWriter`, batched and off the request path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from src.config import AppConfig

metadata = sa.MetaData()

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("prediction_id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("class_id", sa.Integer, nullable=False),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("margin", sa.Float, nullable=True),
    sa.Column("low_confidence", sa.Boolean, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("input_mean", sa.Float, nullable=False),
    sa.Column("input_std", sa.Float, nullable=False),
    sa.Column("inverted", sa.Boolean, nullable=False),
    sa.Column("image", sa.LargeBinary, nullable=True),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("feedback_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(32), nullable=False, index=True),
    sa.Column("true_class_id", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)

monitor_runs = sa.Table(
    "monitor_runs",
    metadata,
    sa.Column("run_at", sa.Float, primary_key=True),
    sa.Column("model_version", sa.String(64), nullable=True),
    sa.Column("drift_detected", sa.Boolean, nullable=True),
    sa.Column("drift_share", sa.Float, nullable=True),
    sa.Column("n_predictions", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
)


@dataclass(frozen=True)
class PredictionRecord:
    """One answered image, as logged."""

    prediction_id: str
    created_at: float
    model_version: str
    class_id: int
    label: str
    confidence: float
    margin: float | None  # top-1 minus top-2 probability (None if only top-1 is known)
    low_confidence: bool
    width: int
    height: int
    mode: str
    input_mean: float
    input_std: float
    inverted: bool
    image: bytes | None = None


RECORD_FIELDS = tuple(f.name for f in fields(PredictionRecord))


def store_url(cfg: AppConfig) -> str:
    """``monitor.store_url``, or the default sqlite file under ``outputs/monitoring/``."""
    if cfg.monitor.store_url:
        return cfg.monitor.store_url
    return f"sqlite:///{cfg.paths.outputs / 'monitoring' / 'predictions.db'}"


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable store URL>"


class PredictionStore:
    """Reads and writes the prediction log; thread-safe (one engine, short transactions)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- writes --------------------------------------------------------------------------------
    def add_predictions(self, records: Sequence[PredictionRecord]) -> None:
        if records:
            with self.engine.begin() as conn:
                conn.execute(predictions.insert(), [vars(r) for r in records])  # no deep copy

    def add_feedback(self, items: Sequence[tuple[str, int, float]]) -> None:
        rows = [{"prediction_id": p, "true_class_id": c, "created_at": t} for p, c, t in items]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(feedback.insert(), rows)

    def add_monitor_run(self, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(monitor_runs.insert(), [{"run_at": time.time(), **values}])

    def apply_retention(self, max_age_s: float, max_rows: int, now: float | None = None) -> int:
        """Delete rows older than ``max_age_s`` and all but the newest ``max_rows``; returns the
        number of predictions deleted (their feedback goes with them)."""
        cutoff = (now if now is not None else time.time()) - max_age_s
        with self.engine.begin() as conn:
            nth = conn.execute(
                sa.select(predictions.c.created_at)
                .order_by(predictions.c.created_at.desc())
                .offset(max_rows)
                .limit(1)
            ).scalar()
            if nth is not None:
                cutoff = max(cutoff, float(nth) + 1e-9)
            deleted = conn.execute(
                predictions.delete().where(predictions.c.created_at < cutoff)
            ).rowcount
            if deleted:
                kept = sa.select(predictions.c.prediction_id)
                conn.execute(feedback.delete().where(feedback.c.prediction_id.not_in(kept)))
            conn.execute(
                monitor_runs.delete().where(monitor_runs.c.run_at < time.time() - max_age_s)
            )
        return int(deleted or 0)

    # --- reads ---------------------------------------------------------------------------------
    def has_prediction(self, prediction_id: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(predictions.c.prediction_id).where(
                    predictions.c.prediction_id == prediction_id
                )
            ).first()
        return found is not None

    def count_predictions(self) -> int:
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar()
        return int(count or 0)

    def recent_predictions(
        self, since: float, model_version: str | None = None
    ) -> list[dict[str, Any]]:
        """Predictions made at or after ``since`` (unix time), oldest first, without images."""
        columns = [c for c in predictions.c if c.name != "image"]
        query = sa.select(*columns).where(predictions.c.created_at >= since)
        if model_version is not None:
            query = query.where(predictions.c.model_version == model_version)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(predictions.c.created_at)).mappings().all()
        return [dict(row) for row in rows]

    def labelled(self, since: float | None = None) -> list[dict[str, Any]]:
        """Predictions with feedback (the newest label per prediction), images included."""
        query = sa.select(
            predictions, feedback.c.true_class_id, feedback.c.created_at.label("labelled_at")
        ).join(feedback, feedback.c.prediction_id == predictions.c.prediction_id)
        if since is not None:
            query = query.where(predictions.c.created_at >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(feedback.c.created_at)).mappings().all()
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:
            newest[row["prediction_id"]] = dict(row)
        return list(newest.values())

    def last_monitor_run(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(monitor_runs).order_by(monitor_runs.c.run_at.desc()))
                .mappings()
                .first()
            )
        return dict(row) if row is not None else None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the monitor read while the API writes; the busy timeout waits out a writer.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def records_from_rows(rows: Iterable[dict[str, Any]]) -> list[PredictionRecord]:
    return [PredictionRecord(**{k: row[k] for k in RECORD_FIELDS if k in row}) for row in rows]
