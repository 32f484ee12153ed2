"""The production edge on real processes: two ``clothing-classifier serve`` replicas on a sqlite
registry, Debian's nginx in front of them and Prometheus scraping them, all started by
deployments/stack.py (what `make stack` runs) and seen only over HTTP and raw sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployments import stack as stack_module
from deployments.stack import Stack
from src.config import load_config
from tests.helpers.api import ModelSources, Registry, encode, sample_images, wait_until
from tests.helpers.edge import broken_version

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

# Short timeouts so the slow-client checks take seconds; the defaults are in configs/edge.yaml.
HEADER_TIMEOUT_S = 2
KEEPALIVE_TIMEOUT_S = 2
SETTINGS = {
    "client_header_timeout_s": HEADER_TIMEOUT_S,
    "keepalive_timeout_s": KEEPALIVE_TIMEOUT_S,
    "upstream_fail_timeout_s": 2,
    "scrape_interval_s": 0.5,
    "evaluation_interval_s": 0.5,
}
REPLICA_ENV = {
    "SERVE_POLL_INTERVAL_S": "0.5",
    "SERVE_RETRY_INTERVAL_S": "0.2",
    "SERVE_LOAD_BACKOFF_S": "1",
    "SERVE_LOAD_BACKOFF_MAX_S": "2",
}
SLACK_S = 2.0  # a closed connection is seen this long after its timeout at most
PNG = encode(sample_images(1)[0])
IMAGE_BODY_LIMIT = load_config(environ={}).serve.max_image_request_bytes


@pytest.fixture(scope="module")
def edge_registry(model_sources: ModelSources) -> Registry:
    from mlflow.tracking import MlflowClient

    uri = model_sources.tracking_uri
    registry = Registry(uri, f"edge-{uuid.uuid4().hex[:8]}", MlflowClient(uri, uri), model_sources)
    registry.add_production("tshirt")
    return registry


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, edge_registry: Registry) -> Iterator[Stack]:
    """Replicas, proxy and Prometheus up; all of it stopped afterwards, also on failure."""
    root = tmp_path_factory.mktemp("edge")
    env = replica_env(edge_registry)
    with stack_module.running_edge(
        root, edge_registry.tracking_uri, settings=SETTINGS, replica_env=env
    ) as stack:
        for url in stack.api_urls:
            wait_until(lambda url=url: httpx.get(f"{url}/ready").status_code == 200, 60, 0.1)
        yield stack


def replica_env(edge_registry: Registry) -> dict[str, str]:
    return {**REPLICA_ENV, "MLFLOW_REGISTERED_MODEL_NAME": edge_registry.name}


def predict(client: httpx.Client, url: str, **headers: str) -> httpx.Response:
    return client.post(
        f"{url}/predict", files={"file": ("g.png", PNG, "image/png")}, headers=headers
    )


def answered(replica_url: str) -> float:
    """/predict requests a replica answered with 200 (from its own /metrics)."""
    text = httpx.get(f"{replica_url}/metrics", timeout=5).text
    pattern = r'^http_requests_total\{method="POST",path="/predict",status="200"\} (\S+)$'
    match = re.search(pattern, text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def logged_request_ids(stack: Stack) -> set[str]:
    ids = set()
    for index in range(len(stack.api_ports)):
        for line in (stack.root / f"api-{index + 1}.log").read_text(errors="replace").splitlines():
            if line.startswith("{") and '"request_id"' in line:
                ids.add(str(json.loads(line).get("request_id")))
    return ids


def test_requests_spread_over_both_replicas(edge: Stack) -> None:
    before = [answered(url) for url in edge.api_urls]
    with httpx.Client(timeout=30) as client:
        statuses = [predict(client, edge.proxy_url).status_code for _ in range(40)]
    assert statuses == [200] * 40
    gained = [answered(url) - was for url, was in zip(edge.api_urls, before, strict=True)]
    assert sum(gained) == 40 and min(gained) >= 5, f"answers per replica: {gained}"


def test_a_request_id_passes_through_to_the_api_log_line(edge: Stack) -> None:
    mine = f"edge-test-{uuid.uuid4().hex}"
    with httpx.Client(timeout=30) as client:
        given = predict(client, edge.proxy_url, **{"X-Request-ID": mine})
        made = predict(client, edge.proxy_url)
    assert given.status_code == made.status_code == 200
    assert given.headers["x-request-id"] == mine
    proxy_made = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", proxy_made), proxy_made  # nginx's $request_id
    wait_until(lambda: {mine, proxy_made} <= logged_request_ids(edge), 10, 0.1)
    access_log = (edge.edge_dir / "nginx" / "access.log").read_text()
    assert mine in access_log and proxy_made in access_log


@pytest.mark.parametrize(
    "path", ["/metrics", "/metrics/", "//metrics", "/%6Detrics", "/./metrics", "/static/../metrics"]
)
def test_metrics_are_not_reachable_through_the_public_port(edge: Stack, path: str) -> None:
    with socket.create_connection(("127.0.0.1", edge.proxy_port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
    assert b"process_cpu_seconds" not in answer and b"http_requests_total" not in answer
    # ... while Prometheus reads them on each replica's own port.
    assert "http_requests_total" in httpx.get(f"{edge.api_urls[0]}/metrics").text


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_headers_and_bodies_are_refused_by_the_proxy(edge: Stack) -> None:
    mine = f"edge-big-{uuid.uuid4().hex}"
    with httpx.Client(timeout=30) as client:
        header = client.get(f"{edge.proxy_url}/health", headers={"X-Big": "a" * 20000})
        image = client.post(
            f"{edge.proxy_url}/predict",
            # Just over /predict's own limit, far under the batch endpoint's.
            files={"file": ("big.png", b"\0" * (IMAGE_BODY_LIMIT + 1024), "image/png")},
            headers={"X-Request-ID": mine},
        )
    assert header.status_code == 431, header.text[:300]
    assert header.json()["error"] == "headers_too_large"
    assert image.status_code == 413, image.text[:300]
    assert image.json()["error"] == "payload_too_large" and "proxy" in image.json()["detail"]
    # A batch that declares 70 MB is refused as soon as its headers are in, body unsent.
    with socket.create_connection(("127.0.0.1", edge.proxy_port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 70000000\r\nX-Request-ID: "
            + mine.encode()
            + b"\r\n\r\n"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    # Neither reached a replica: each replica (one process) logs a later request of its own, so
    # a line of the refused ones would be in its log by then.
    markers = [f"edge-after-{uuid.uuid4().hex}" for _ in edge.api_urls]
    with httpx.Client(timeout=30) as client:
        for url, marker in zip(edge.api_urls, markers, strict=True):
            assert predict(client, url, **{"X-Request-ID": marker}).status_code == 200
    wait_until(lambda: set(markers) <= logged_request_ids(edge), 60, 0.1)
    assert mine not in logged_request_ids(edge)


def _seconds_until_closed(sock: socket.socket, limit: float, trickle: bytes = b"") -> float:
    """Seconds until the peer closes ``sock`` (sending ``trickle`` byte by byte meanwhile)."""
    started = time.monotonic()
    sock.settimeout(0.25)
    sent = 0
    while time.monotonic() - started < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
            sent += 1
    raise AssertionError(f"the proxy kept the connection open for {limit:.0f} s")


def test_idle_and_slow_clients_are_closed_within_the_configured_timeout(edge: Stack) -> None:
    limit = max(HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S) + 10
    with socket.create_connection(("127.0.0.1", edge.proxy_port)) as silent:
        silent_s = _seconds_until_closed(silent, limit)
    with socket.create_connection(("127.0.0.1", edge.proxy_port)) as idle:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(10)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        idle_s = _seconds_until_closed(idle, limit)
    with socket.create_connection(("127.0.0.1", edge.proxy_port)) as slow:
        # One header byte every quarter second: it would take 10 s to finish the header.
        slow_s = _seconds_until_closed(slow, limit, b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 40)
    assert silent_s <= HEADER_TIMEOUT_S + SLACK_S, silent_s
    assert KEEPALIVE_TIMEOUT_S - 0.5 <= idle_s <= KEEPALIVE_TIMEOUT_S + SLACK_S, idle_s
    assert slow_s <= HEADER_TIMEOUT_S + SLACK_S, slow_s


class Load(threading.Thread):
    """``clients`` loops posting /predict through the proxy; every non-200 is a failure."""

    def __init__(self, url: str, clients: int = 4) -> None:
        super().__init__(daemon=True)
        self.url, self.clients = url, clients
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def _loop(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = predict(client, self.url)
                    failure = None if response.status_code == 200 else response.text[:200]
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if failure is None:
                        self.ok += 1
                    else:
                        self.failures.append(failure)

    def run(self) -> None:
        loops = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.clients)]
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.join()

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=60)


def test_a_replica_killed_and_restarted_under_load_fails_no_request(
    edge: Stack, edge_registry: Registry
) -> None:
    load = Load(edge.proxy_url)
    load.start()
    try:
        wait_until(lambda: load.ok >= 20, 30, 0.05)
        os.killpg(edge.pids["api-1"], signal.SIGKILL)  # no goodbye: in-flight requests break
        stack_module.stop_service(edge, "api-1")
        at_kill = load.ok
        wait_until(lambda: load.ok >= at_kill + 50, 60, 0.05)  # the other replica answers all
        before_restart = answered(edge.api_urls[1])
        stack_module.start_replica(edge, 0, replica_env(edge_registry))
        wait_until(lambda: _ready(edge.api_urls[0]), 60, 0.1)
        # Back in rotation once its model is in: it answers again through the proxy.
        wait_until(lambda: answered(edge.api_urls[0]) >= 10, 60, 0.1)
    finally:
        load.finish()
    assert load.failures == [], f"{len(load.failures)} failed: {load.failures[:5]}"
    assert answered(edge.api_urls[1]) > before_restart
    print(f"{load.ok} answers through the proxy, none failed, while replica 1 was killed")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def firing(edge: Stack, name: str) -> list[dict[str, Any]]:
    alerts = httpx.get(f"{edge.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def test_prometheus_alerts_while_production_fails_to_load_and_clears_on_a_good_one(
    edge: Stack, edge_registry: Registry
) -> None:
    def targets_up() -> bool:
        targets = httpx.get(f"{edge.prometheus_url}/api/v1/targets", timeout=5).json()
        active = targets["data"]["activeTargets"]
        return len(active) == 2 and all(t["health"] == "up" for t in active)

    wait_until(targets_up, 60, 0.2)
    served = {httpx.get(f"{url}/model").json()["version"] for url in edge.api_urls}
    broken = broken_version(edge_registry)
    edge_registry.promote(broken)
    instances = {url.removeprefix("http://") for url in edge.api_urls}
    wait_until(
        lambda: (
            {a["labels"]["instance"] for a in firing(edge, "ProductionFailedToLoad")} == instances
        ),
        60,
        0.2,
    )
    # Meanwhile the proxy still answers with the old version.
    with httpx.Client(timeout=30) as client:
        answer = predict(client, edge.proxy_url)
    assert answer.status_code == 200 and {str(answer.json()["model_version"])} <= served

    good = edge_registry.add_production("sneaker")
    wait_until(lambda: firing(edge, "ProductionFailedToLoad") == [], 60, 0.2)
    versions = {httpx.get(f"{url}/model").json()["version"] for url in edge.api_urls}
    assert versions == {good}
