"""The prediction log store and writer: retention by age and rows, a bounded queue."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from src.monitoring.store import PredictionRecord, PredictionStore, feedback
from src.monitoring.writer import PredictionLogWriter
from tests.helpers.api import wait_until


def _record(index: int, created_at: float) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=f"{index:032x}",
        created_at=created_at,
        model_version="1",
        class_id=index % 10,
        label="x",
        confidence=0.9,
        margin=0.5,
        low_confidence=False,
        width=28,
        height=28,
        mode="L",
        input_mean=0.3,
        input_std=0.3,
        inverted=False,
    )


def test_retention_removes_old_rows_and_keeps_the_newest(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}")
    now = 1_000_000.0
    day = 86400.0
    # 5 rows 40 days old, 10 recent rows one second apart.
    store.add_predictions([_record(i, now - 40 * day + i) for i in range(5)])
    store.add_predictions([_record(100 + i, now - 100 + i) for i in range(10)])
    store.add_feedback([(f"{0:032x}", 3, now - 40 * day), (f"{109:032x}", 4, now)])
    deleted = store.apply_retention(max_age_s=30 * day, max_rows=6, now=now)
    kept = [row["prediction_id"] for row in store.recent_predictions(0)]
    assert deleted == 9
    assert kept == [f"{100 + i:032x}" for i in range(4, 10)]  # the newest six
    assert [row["prediction_id"] for row in store.labelled(limit=100)] == [f"{109:032x}"]
    store.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = PredictionLogWriter(
        lambda: PredictionStore(url),
        url_for_logs=url,
        queue_size=3,
        batch_size=10,
        flush_interval_s=0.05,
        retention_s=86400.0,
        retention_max_rows=100,
        stats_interval_s=0.1,
    )
    accepted: list[bool] = []
    # The writer thread is not started: a put that waited for room would never return.
    putter = threading.Thread(
        target=lambda: accepted.extend(writer.put(_record(i, time.time())) for i in range(5)),
        daemon=True,
    )
    putter.start()
    putter.join(timeout=60)
    assert not putter.is_alive(), "put() blocked on a full queue"
    assert accepted == [True, True, True, False, False] and writer.stats.dropped == 2
    writer.start()
    assert writer.flush(timeout=10)
    writer.close()
    store = PredictionStore(url)
    assert len(store.recent_predictions(0)) == 3 and writer.stats.written == 3
    store.close()


def test_labelled_feedback_exports_as_an_idx_dataset(tmp_path: Path) -> None:
    from src.data.io import read_images, write_idx
    from src.monitoring.feedback import export_feedback

    store = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}")
    pixels = np.arange(784, dtype=np.uint8).reshape(28, 28)
    with_image = replace(_record(1, 100.0), image=pixels.tobytes())
    store.add_predictions([with_image, _record(2, 101.0), _record(3, 102.0)])
    store.add_feedback([(f"{1:032x}", 6, 200.0), (f"{2:032x}", 4, 201.0)])
    base = tmp_path / "base"
    write_idx(base, np.zeros((2, 28, 28), dtype=np.uint8), np.array([1, 2]))
    result = export_feedback(store.labelled(limit=100), tmp_path / "out", merge_with=base)
    store.close()
    assert (result.labelled, result.with_images, result.total_images) == (2, 1, 3)
    images, labels = read_images(tmp_path / "out")
    assert labels.tolist() == [1, 2, 6] and np.array_equal(images[2], pixels)
    lines = (tmp_path / "out" / "feedback.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith(f"{1:032x},") and ",Shirt," in lines[1]


def _writer(
    factory: Any, queue_size: int = 100, flush_interval_s: float = 0.02
) -> PredictionLogWriter:
    return PredictionLogWriter(
        factory,
        url_for_logs="postgresql://monitor:s3cret-pw@db.invalid/log",
        queue_size=queue_size,
        batch_size=10,
        flush_interval_s=flush_interval_s,
        retention_s=86400.0,
        retention_max_rows=100,
        stats_interval_s=60.0,
    )


def test_a_failed_write_is_retried_without_losing_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"

    class FlakyStore(PredictionStore):
        failures = 2

        def add_batch(self, records: Any, labels: Any) -> None:
            if FlakyStore.failures:
                FlakyStore.failures -= 1
                raise OSError("database is restarting")
            super().add_batch(records, labels)

    writer = _writer(lambda: FlakyStore(url))
    writer.start()
    for i in range(5):
        writer.put(_record(i, time.time()))
    assert writer.flush(timeout=30)
    writer.close()
    assert writer.stats.write_errors == 2 and writer.stats.written == 5
    assert writer.stats.dropped == 0
    store = PredictionStore(url)
    assert len(store.recent_predictions(0)) == 5
    store.close()


def test_an_unreachable_store_never_blocks_and_shutdown_is_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def unreachable() -> PredictionStore:
        raise OSError("connection refused")

    writer = _writer(unreachable, queue_size=50)
    writer.start()
    for i in range(30):
        assert writer.put(_record(i, time.time()))
    thread = writer._thread
    assert thread is not None
    writer.close(timeout=60)  # the thread waits between connection attempts: close cuts it short
    assert not thread.is_alive(), "the writer thread outlived close()"
    assert writer.stats.dropped == 30 and writer.stats.write_errors >= 1
    assert writer.flush(timeout=1)
    # The store's password never reaches the log.
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "s3cret-pw" not in logged and "monitor:***@db.invalid" in logged


def test_answers_are_written_a_full_batch_at_a_time(tmp_path: Path) -> None:
    """With an hour's interval the writer wakes only for a full batch (10 here) or flush():
    20 answers are two writes, not twenty, and flush() does not wait out the hour."""
    url = f"sqlite:///{tmp_path / 'log.db'}"
    writer = _writer(lambda: PredictionStore(url), flush_interval_s=3600.0)
    writer.start()
    writer.store()
    try:
        for batch in range(2):
            for i in range(10):
                writer.put(_record(batch * 10 + i, time.time()))
            wait_until(lambda batch=batch: writer.stats.written == 10 * (batch + 1), timeout=60)
        assert writer.stats.batches == 2
        writer.put(_record(99, time.time()))
        assert writer.flush(timeout=60)
        assert writer.stats.written == 21 and writer.stats.batches == 3
    finally:
        writer.close()


def _label_rows(store: PredictionStore) -> int:
    """Rows in the feedback table, counted in SQL (not through the store's own reads)."""
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar() or 0)


def test_a_transient_error_on_the_labels_loses_neither_labels_nor_answers(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    failures = [1]

    def flaky_labels() -> PredictionStore:
        store = PredictionStore(url)

        def fail_once(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if failures[0] and statement.lstrip().upper().startswith("INSERT INTO FEEDBACK"):
                failures[0] -= 1
                raise OSError("disk I/O error")

        sa.event.listen(store.engine, "before_cursor_execute", fail_once)
        return store

    writer = _writer(flaky_labels)
    pid = f"{1:032x}"
    # Queued before the thread starts, so the answer and its label are one batch.
    writer.put(_record(1, time.time()))
    writer.put((pid, 6, time.time()))
    writer.start()
    assert writer.flush(timeout=30)
    writer.close()
    assert failures == [0] and writer.stats.write_errors == 1
    assert writer.stats.dropped == 0 and writer.stats.written == 1
    store = PredictionStore(url)
    assert [(r["prediction_id"], r["true_class_id"]) for r in store.labelled(limit=10)] == [
        (pid, 6)
    ]
    store.close()


def test_a_flood_of_labels_for_one_answer_is_one_row_and_the_last_wins(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}")
    pid = f"{7:032x}"
    store.add_predictions([_record(7, 100.0)])
    # 3,000 posts in three writer batches, the class cycling 0..9; the last post says 9.
    for batch in range(3):
        store.add_feedback([(pid, i % 10, 1000.0 + batch * 1000 + i) for i in range(1000)])
    assert _label_rows(store) == 1
    [row] = store.labelled(limit=10)
    assert (row["true_class_id"], row["label_count"]) == (9, 3000)
    assert (row["first_labelled_at"], row["labelled_at"]) == (1000.0, 3999.0)
    # A late-arriving older label does not overwrite a newer one.
    store.add_feedback([(pid, 2, 500.0)])
    [row] = store.labelled(limit=10)
    assert (row["true_class_id"], row["first_labelled_at"], row["label_count"]) == (9, 500.0, 3001)
    store.close()


def test_labelled_answers_are_chosen_and_bounded_in_sql(tmp_path: Path) -> None:
    store = PredictionStore(f"sqlite:///{tmp_path / 'log.db'}")
    store.add_predictions([_record(i, 100.0 + i) for i in range(5)])
    store.add_feedback([(f"{i:032x}", 1, 200.0 + (i * 7) % 5) for i in range(5)])
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(str(a[2])))
    newest = store.labelled(limit=2, images=False)
    # The two most recently labelled (times 203 and 204: ids 4 and 2), oldest first.
    assert [r["prediction_id"] for r in newest] == [f"{4:032x}", f"{2:032x}"]
    assert "image" not in newest[0]
    [select] = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert "LIMIT" in select.upper()
    store.close()


def test_an_old_append_only_feedback_table_is_folded_into_one_row_per_answer(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    store = PredictionStore(url)
    store.add_predictions([_record(1, 100.0), _record(2, 101.0)])
    store.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE feedback (feedback_id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "prediction_id VARCHAR(32) NOT NULL, true_class_id INTEGER NOT NULL, "
            "created_at FLOAT NOT NULL)"
        )
        conn.exec_driver_sql(
            "INSERT INTO feedback (prediction_id, true_class_id, created_at) VALUES "
            f"('{1:032x}', 3, 200.0), ('{1:032x}', 5, 300.0), ('{2:032x}', 4, 250.0)"
        )
    engine.dispose()
    store = PredictionStore(url)
    labels = {
        r["prediction_id"]: (r["true_class_id"], r["label_count"]) for r in store.labelled(limit=10)
    }
    assert labels == {f"{1:032x}": (5, 2), f"{2:032x}": (4, 1)}
    assert "feedback" not in sa.inspect(store.engine).get_table_names()
    store.close()
