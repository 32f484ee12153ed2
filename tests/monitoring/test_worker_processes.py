"""Several worker processes (``make serve``'s default: one per core) are one service: every
answer lands in the prediction log exactly once, on sqlite and on PostgreSQL, and ``/metrics``
of any worker counts the requests of all of them."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from src.monitoring.store import PredictionStore
from tests.helpers.api import (
    Registry,
    Server,
    encode,
    sample_images,
    start_server,
    stop_server,
    wait_until,
)

pytestmark = pytest.mark.integration

SERVE_CLI = (sys.executable, "-m", "src.serving.cli")
REQUESTS = 120


def two_workers(tmp_path: Path, registry: Registry, **env: str) -> Server:
    """The service once both workers have their model (``model_ready`` is the lowest of them)."""
    server = start_server(
        tmp_path,
        registry.tracking_uri,
        registry.name,
        command=SERVE_CLI,
        SERVE_WORKERS="2",
        SERVE_JSON_LOGS="true",
        **env,
    )
    wait_until(
        lambda: metric_total(server.url, "model_ready") == 1 and len(worker_series(server)) == 2
    )
    return server


def worker_series(server: Server) -> list[str]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return [line for line in text.splitlines() if line.startswith("worker_resident_memory_bytes{")]


def post_images(url: str, count: int) -> list[str]:
    """``count`` /predict requests from 8 clients at once → their prediction ids."""
    blobs = [encode(image) for image in sample_images(16)]

    def one(index: int) -> str:
        with httpx.Client(base_url=url, timeout=30) as client:
            files = {"file": (f"{index}.png", blobs[index % len(blobs)], "image/png")}
            response = client.post("/predict", files=files)
        assert response.status_code == 200, response.text
        return str(response.json()["prediction_id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def metric_total(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def answering_pids(server: Server) -> set[int]:
    pids = set()
    for line in server.log_lines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "request" and record.get("route") == "/predict":
                pids.add(int(record["pid"]))
    return pids


def logged_ids(url: str) -> list[str]:
    store = PredictionStore(url)
    try:
        return [row["prediction_id"] for row in store.recent_predictions(0)]
    finally:
        store.close()


def check_one_service(tmp_path: Path, registry: Registry, store_url: str, **env: str) -> None:
    registry.add_production("varied")
    server = two_workers(tmp_path, registry, **env)
    try:
        ids = post_images(server.url, REQUESTS)
        # Whichever worker answers /metrics, it counts both workers' answers.
        for _ in range(4):
            assert metric_total(server.url, "predictions_total") == REQUESTS
        assert len(worker_series(server)) == 2
    finally:
        stop_server(server)  # the workers flush their log queues as they stop
    assert len(answering_pids(server)) == 2, "both workers should have answered"
    logged = logged_ids(store_url)
    assert len(ids) == len(set(ids)) == REQUESTS
    assert sorted(logged) == sorted(ids)  # every answer once, nothing lost, nothing twice


def test_two_workers_log_every_answer_once_on_sqlite(registry: Registry, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'outputs' / 'monitoring' / 'predictions.db'}"
    check_one_service(tmp_path, registry, url)


def test_two_workers_log_every_answer_once_on_postgresql(
    registry: Registry, postgres_url: str, tmp_path: Path
) -> None:
    check_one_service(tmp_path, registry, postgres_url, MONITOR_STORE_URL=postgres_url)
