"""The prediction log: one table of answers, one of feedback labels (one row per answer), one of
monitor decisions.

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
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

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

# One row per answer: a later label for the same prediction replaces the earlier one (the last
# label wins, e.g. a user correcting a mis-click); the first label's time and the number of
# labels received are kept. Rows go with their prediction, so retention caps both alike.
feedback = sa.Table(
    "feedback_labels",
    metadata,
    sa.Column("prediction_id", sa.String(32), primary_key=True),
    sa.Column("true_class_id", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),  # the first label
    sa.Column("updated_at", sa.Float, nullable=False, index=True),  # the last label (it wins)
    sa.Column("label_count", sa.Integer, nullable=False),
)
# Before one-row-per-prediction: every post appended a row (migrated on open, then dropped).
LEGACY_FEEDBACK = "feedback"

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
        _migrate_legacy_feedback(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # --- writes --------------------------------------------------------------------------------
    def add_batch(
        self, records: Sequence[PredictionRecord], labels: Sequence[tuple[str, int, float]]
    ) -> None:
        """Answers and labels in ONE transaction: a failed write leaves nothing behind, so the
        retried batch never meets its own rows (and an answer already stored is skipped)."""
        with self.engine.begin() as conn:
            if records:
                rows = [vars(r) for r in records]  # no deep copy
                conn.execute(_insert_skipping_existing(conn, predictions), rows)
            _upsert_labels(conn, labels)

    def add_predictions(self, records: Sequence[PredictionRecord]) -> None:
        self.add_batch(records, ())

    def add_feedback(self, items: Sequence[tuple[str, int, float]]) -> None:
        """``(prediction_id, true class id, unix time)``: one row per prediction, last label wins."""
        self.add_batch((), items)

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
        self, since: float, model_version: str | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Predictions made at or after ``since`` (and before ``until``; unix times), oldest
        first, without images."""
        columns = [c for c in predictions.c if c.name != "image"]
        query = sa.select(*columns).where(predictions.c.created_at >= since)
        if until is not None:
            query = query.where(predictions.c.created_at < until)
        if model_version is not None:
            query = query.where(predictions.c.model_version == model_version)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(predictions.c.created_at)).mappings().all()
        return [dict(row) for row in rows]

    def labelled(
        self,
        *,
        limit: int,
        since: float | None = None,
        until: float | None = None,
        model_version: str | None = None,
        images: bool = True,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` labelled answers (by their last label), oldest first: each
        prediction once, with its last label (``true_class_id``, ``labelled_at``), the first
        label's time and the number of labels received. Chosen and bounded in SQL."""
        columns = [c for c in predictions.c if images or c.name != "image"]
        query = sa.select(
            *columns,
            feedback.c.true_class_id,
            feedback.c.updated_at.label("labelled_at"),
            feedback.c.created_at.label("first_labelled_at"),
            feedback.c.label_count,
        ).join(feedback, feedback.c.prediction_id == predictions.c.prediction_id)
        if since is not None:
            query = query.where(predictions.c.created_at >= since)
        if until is not None:
            query = query.where(predictions.c.created_at < until)
        if model_version is not None:
            query = query.where(predictions.c.model_version == model_version)
        query = query.order_by(feedback.c.updated_at.desc(), feedback.c.prediction_id).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [dict(row) for row in reversed(rows)]

    def count_labels(self) -> int:
        with self.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar()
        return int(count or 0)

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


def _insert_skipping_existing(conn: sa.Connection, table: sa.Table) -> Any:
    """``INSERT`` that skips rows whose primary key is already stored (sqlite, PostgreSQL)."""
    if conn.dialect.name == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "postgresql":
        return postgres_insert(table).on_conflict_do_nothing()
    return table.insert()


def _collapse(items: Sequence[tuple[str, int, float]]) -> list[dict[str, Any]]:
    """One row per prediction of a batch, in time order: the last label wins."""
    merged: dict[str, dict[str, Any]] = {}
    for prediction_id, class_id, at in sorted(items, key=lambda item: item[2]):
        row = merged.setdefault(
            prediction_id,
            {"prediction_id": prediction_id, "created_at": at, "label_count": 0},
        )
        row.update(true_class_id=class_id, updated_at=at, label_count=row["label_count"] + 1)
    return list(merged.values())


def _upsert_labels(conn: sa.Connection, items: Sequence[tuple[str, int, float]]) -> None:
    rows = _collapse(items)
    if not rows:
        return
    if conn.dialect.name not in ("sqlite", "postgresql"):
        for row in rows:  # any other database: read, then update or insert, in this transaction
            _merge_one(conn, row)
        return
    insert = (sqlite_insert if conn.dialect.name == "sqlite" else postgres_insert)(feedback)
    new, old = insert.excluded, feedback.c
    newer = new.updated_at >= old.updated_at
    conn.execute(
        insert.on_conflict_do_update(
            index_elements=[old.prediction_id],
            set_={
                "true_class_id": sa.case((newer, new.true_class_id), else_=old.true_class_id),
                "updated_at": sa.case((newer, new.updated_at), else_=old.updated_at),
                "created_at": sa.case(
                    (new.created_at < old.created_at, new.created_at), else_=old.created_at
                ),
                "label_count": old.label_count + new.label_count,
            },
        ),
        rows,
    )


def _merge_one(conn: sa.Connection, row: dict[str, Any]) -> None:
    key = feedback.c.prediction_id == row["prediction_id"]
    current = conn.execute(sa.select(feedback).where(key)).mappings().first()
    if current is None:
        conn.execute(feedback.insert(), [row])
        return
    newer = row["updated_at"] >= current["updated_at"]
    conn.execute(
        feedback.update()
        .where(key)
        .values(
            true_class_id=row["true_class_id"] if newer else current["true_class_id"],
            updated_at=max(row["updated_at"], current["updated_at"]),
            created_at=min(row["created_at"], current["created_at"]),
            label_count=current["label_count"] + row["label_count"],
        )
    )


def _migrate_legacy_feedback(engine: sa.Engine) -> None:
    """Fold the old append-only ``feedback`` table (a row per post) into one row per
    prediction, last label winning, then drop it."""
    if LEGACY_FEEDBACK not in sa.inspect(engine).get_table_names():
        return
    legacy = sa.Table(LEGACY_FEEDBACK, sa.MetaData(), autoload_with=engine)
    if "feedback_id" not in legacy.c:
        return
    try:
        with engine.begin() as conn:
            rows = conn.execute(
                sa.select(
                    legacy.c.prediction_id, legacy.c.true_class_id, legacy.c.created_at
                ).order_by(legacy.c.created_at, legacy.c.feedback_id)
            ).all()
            _upsert_labels(conn, [(str(p), int(c), float(t)) for p, c, t in rows])
            legacy.drop(conn)
    except sa.exc.SQLAlchemyError:
        # Another process opening the log at the same moment migrated it first.
        if LEGACY_FEEDBACK in sa.inspect(engine).get_table_names():
            raise


def records_from_rows(rows: Iterable[dict[str, Any]]) -> list[PredictionRecord]:
    return [PredictionRecord(**{k: row[k] for k in RECORD_FIELDS if k in row}) for row in rows]
