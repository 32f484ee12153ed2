"""The prediction log on a real PostgreSQL (any SQLAlchemy URL): the API writes answers and
feedback there, retention and the monitor's reads work the same."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from src.api import create_app
from src.monitoring.store import PredictionStore
from tests.helpers.api import Registry, encode, sample_images, wait_until
from tests.helpers.monitoring import monitored_config
from tests.monitoring.test_store import _record

pytestmark = pytest.mark.integration


def test_the_api_logs_to_postgresql(registry: Registry, postgres_url: str, tmp_path: Path) -> None:
    registry.add_production("varied")
    cfg = monitored_config(registry, tmp_path, {"store_url": postgres_url})
    with TestClient(create_app(cfg)) as client:
        wait_until(lambda: client.get("/ready").status_code == 200)
        answers = client.post(
            "/predict/batch",
            files=[
                ("files", (f"{i}.png", encode(img), "image/png"))
                for i, img in enumerate(sample_images(3))
            ],
        ).json()
        pid = answers[1]["prediction_id"]
        assert client.post("/feedback", json={"prediction_id": pid, "label": 8}).status_code == 202
    store = PredictionStore(postgres_url)
    try:
        rows = store.recent_predictions(time.time() - 600)
        assert {row["prediction_id"] for row in rows} >= {a["prediction_id"] for a in answers}
        [labelled] = [row for row in store.labelled(limit=100) if row["prediction_id"] == pid]
        assert labelled["true_class_id"] == 8 and labelled["class_id"] == answers[1]["class_id"]
        # More labels for the same answer: still one row (PostgreSQL's upsert), the last wins.
        later = time.time() + 1
        store.add_feedback([(pid, 1, later), (pid, 2, later + 1)])
        store.add_feedback([(pid, 3, later + 2)])
        [again] = [row for row in store.labelled(limit=100) if row["prediction_id"] == pid]
        assert (again["true_class_id"], again["label_count"]) == (3, 4)
        assert store.count_labels() == 1
        # Retention on PostgreSQL: old rows go, the newest stay.
        now = time.time()
        store.add_predictions([_record(900 + i, now - 90 * 86400 + i) for i in range(3)])
        assert store.apply_retention(30 * 86400, 10_000, now=now) == 3
        assert store.count_predictions() == len(rows)
    finally:
        store.close()
