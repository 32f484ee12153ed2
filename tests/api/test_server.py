"""Real uvicorn processes on 127.0.0.1: refusing a placeholder key, and a load test with a
promotion in the middle."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.api import REPO_ROOT, Registry, encode, free_port, sample_images, wait_until

LOAD_CLIENTS = 32
ANSWERS_PER_VERSION = 5  # each client's answers from v1 before the promotion, and from v2 after
THINK_TIME_S = 0.02  # per client between requests: bounded load on a shared 2-core machine
VERSION_OF_LABEL = {"T-shirt/top": "1", "Sneaker": "2"}


def test_placeholder_api_key_stops_startup_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "SERVE_API_KEY": "changeme", "PATHS_ROOT": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "src.api:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert "Traceback" not in result.stderr
    errors = [line for line in output if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "API key is a placeholder" in errors[0] and "SERVE_API_KEY" in errors[0]


def _multipart(field: str, blobs: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for i, blob in enumerate(blobs):
        parts.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + blob
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class LoadClient(threading.Thread):
    """One keep-alive connection posting /predict (or /predict/batch) until told to stop."""

    def __init__(self, port: int, batch: bool, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.batch, self.stop = port, batch, stop
        self.versions: list[str] = []
        self.failures: list[str] = []
        blobs = [encode(a) for a in sample_images(8 if batch else 1, seed=port % 97)]
        self.path = "/predict/batch" if batch else "/predict"
        self.body, self.content_type = _multipart("files" if batch else "file", blobs)

    def _request(self, connection: http.client.HTTPConnection) -> tuple[int, bytes]:
        connection.request(
            "POST", self.path, body=self.body, headers={"Content-Type": self.content_type}
        )
        response = connection.getresponse()
        return response.status, response.read()

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            try:
                status, raw = self._request(connection)
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                continue
            if status != 200:
                self.failures.append(f"{status}: {raw[:200]!r}")
            else:
                payload: Any = json.loads(raw)
                answers = payload if self.batch else [payload]
                # Which model computed an answer is read off its label (the two versions answer
                # different labels), not off the stamped model_version.
                computed_by = {VERSION_OF_LABEL[a["label"]] for a in answers}
                if len(computed_by) != 1:
                    self.failures.append(f"one response answered by several: {computed_by}")
                version = min(computed_by)
                if any(a["model_version"] != version for a in answers):
                    self.failures.append(f"answers computed by v{version} stamped otherwise")
                if self.versions and int(version) < int(self.versions[-1]):
                    self.failures.append(f"went back from {self.versions[-1]} to {version}")
                self.versions.append(version)
            time.sleep(THINK_TIME_S)
        connection.close()


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_load_with_a_promotion_in_the_middle(
    registry: Registry, server_factory: Any, tmp_path: Path
) -> None:
    """32 clients against a real uvicorn; Production moves from v1 to v2 once every client has
    had answers from v1, and the load goes on until every client has had answers from v2.
    Zero failed requests, every answer consistent with the version that gave it, and the
    version switches for every client."""
    registry.add_production("tshirt")
    server = server_factory(registry.tracking_uri, registry.name, SERVE_POLL_INTERVAL_S="0.5")
    port = int(server.url.rsplit(":", 1)[1])
    stop = threading.Event()
    clients = [LoadClient(port, batch=(i % 4 == 3), stop=stop) for i in range(LOAD_CLIENTS)]
    started = time.monotonic()
    for client in clients:
        client.start()

    def every_client_had(version: str) -> bool:
        assert all(c.is_alive() for c in clients), "a load client stopped"
        failed = [f for c in clients for f in c.failures]
        assert not failed, failed[:5]
        return all(c.versions.count(version) >= ANSWERS_PER_VERSION for c in clients)

    try:
        wait_until(lambda: every_client_had("1"), timeout=240, interval=0.2)
        promoted_at = time.monotonic() - started
        registry.promote(registry.add_version("sneaker"))
        wait_until(lambda: every_client_had("2"), timeout=240, interval=0.2)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=90)
    elapsed = time.monotonic() - started

    failures = [f for c in clients for f in c.failures]
    versions = Counter(v for c in clients for v in c.versions)
    total = sum(versions.values())
    print(
        f"\nload test: {LOAD_CLIENTS} clients, {elapsed:.1f} s, {total} requests "
        f"({total / elapsed:.0f}/s), promoted at {promoted_at:.1f} s, versions {dict(versions)}, "
        f"failures {len(failures)}"
    )
    assert not failures, failures[:5]
    assert set(versions) == {"1", "2"}
    for client in clients:
        assert client.versions[0] == "1" and client.versions[-1] == "2"

    # The server is still healthy and says so; its log is one JSON object per line.
    assert httpx.get(server.url + "/ready").json()["model_version"] == "2"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'model_info{name="' in metrics and 'version="2"} 1.0' in metrics
    records = [json.loads(line) for line in server.log_lines() if line.startswith("{")]
    requests = [r for r in records if r["event"] == "request" and r["route"] == "/predict"]
    assert len(requests) >= total // 2
    assert {"ts", "level", "status", "duration_ms", "model_version"} <= set(requests[-1])
    assert any(r["event"] == "model loaded" and r["model_version"] == "2" for r in records)


def test_the_server_imports_no_training_or_orchestration_code() -> None:
    """Neither torch nor MLflow (their import is most of a cold start, and MLflow's model loaders
    unpickle), nor any training or orchestration code."""
    code = (
        "import sys, src.api; "
        "print(sorted(m for m in ('torch', 'mlflow', 'lightning', 'pytorch_lightning', 'prefect', "
        "'src.model', 'src.model_io', 'src.registry', 'src.training', 'src.evaluate', "
        "'great_expectations', 'dvc') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SERVE_")},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_make_serve_honours_serve_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from src.serving import cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    monkeypatch.setenv("SERVE_HOST", "0.0.0.0")
    monkeypatch.setenv("SERVE_PORT", "8123")
    monkeypatch.setenv("SERVE_KEEP_ALIVE_TIMEOUT_S", "7")
    assert cli.main([]) == 0
    assert calls[0]["app"] == "src.api:app"
    assert (calls[0]["host"], calls[0]["port"], calls[0]["timeout_keep_alive"]) == (
        "0.0.0.0",
        8123,
        7,
    )
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "clothing-classifier serve" in makefile.split("\nserve:")[1].split("\n\n")[0]
