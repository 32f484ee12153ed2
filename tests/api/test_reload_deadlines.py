"""Hot reload cannot freeze silently or leak credentials: the registry reader follows no redirect
(credentials stay with their origin), reads only regular files, and stops every read at the
check's deadline; warm-up runs under a time limit; a reload stuck past its deadline shows in
/ready and /metrics while the previous version keeps serving."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from src.labels import CLASS_NAMES
from src.onnx_model import ModelLoadError, load_onnx_classifier
from src.serving.model_store import ModelStore
from src.serving.registry_reader import Deadline, HttpRegistry, RegistryReadError
from tests.helpers.api import Registry, encode, sample_images, wait_until
from tests.helpers.onnx_graphs import (
    add_onnx_version,
    endless_loop_model,
    long_kernel_model,
    long_kernel_side,
    served_file,
)

GOOD_PNG = encode(sample_images(1)[0])
# The stuck-reload test's single kernel runs about this long (4x its 2 s reload deadline).
LONG_KERNEL_S = 8.0


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Collector(Quiet):
    """Another host: records what reaches it."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        Collector.seen.append(dict(self.headers))
        body = b'{"registered_model": {"aliases": [{"alias": "production", "version": "1"}]}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Redirector(Quiet):
    target: ClassVar[str] = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", f"http://{Redirector.target}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_credentials_never_follow_a_redirect_to_another_host() -> None:
    Collector.seen = []
    with http_server(Collector) as other, http_server(Redirector) as tracking:
        Redirector.target = other
        uri = f"http://alice:s3cret-pw@{tracking}"
        with pytest.raises(RegistryReadError, match="redirected") as caught:
            HttpRegistry(uri).production("clf")
        store = ModelStore(uri, "clf", poll_interval_s=1, retry_interval_s=1)
        assert not store.check_once()
    assert Collector.seen == [], "a request (with the credentials) reached the redirect's host"
    assert "s3cret" not in str(caught.value) and "MLFLOW_TRACKING_URI" in str(caught.value)
    assert "redirected" in store.status.reason and "s3cret" not in store.status.reason


class Trickle(Quiet):
    """Answers one byte every 50 ms for 20 s (400 bytes): in the body, or in the headers;
    ``sent`` counts what went out before the reader hung up, ``ended`` is set after."""

    in_headers: ClassVar[bool] = False
    sent: ClassVar[int] = 0
    ended: ClassVar[threading.Event] = threading.Event()

    def do_GET(self) -> None:
        try:
            if Trickle.in_headers:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            else:
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
            for _ in range(400):
                self.wfile.write(b"x")
                self.wfile.flush()
                Trickle.sent += 1
                time.sleep(0.05)
        except OSError:
            pass  # the reader hung up, as it should
        finally:
            Trickle.ended.set()


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_a_trickling_server_is_cut_off_at_the_deadline(in_headers: bool) -> None:
    Trickle.in_headers, Trickle.sent = in_headers, 0
    Trickle.ended.clear()
    with http_server(Trickle) as host:
        reader = HttpRegistry(f"http://{host}", Deadline(1.0))
        with pytest.raises(RegistryReadError, match=r"within the reload's 1 s deadline"):
            reader.read_artifact("mlflow-artifacts:/1/run/artifacts", "onnx/model.onnx", 10**7)
        # The reader hung up mid-trickle: the server's next bytes found the socket closed.
        assert Trickle.ended.wait(60)
    assert Trickle.sent < 400


def _release(path: Path) -> None:
    """Unblock a reader stuck opening the FIFO (the old reader opened it blocking)."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def _store(registry: Registry, **settings: Any) -> ModelStore:
    return ModelStore(
        registry.tracking_uri,
        registry.name,
        poll_interval_s=0.1,
        retry_interval_s=0.1,
        load_backoff_s=60,
        **settings,
    )


@pytest.mark.parametrize("kind", ["FIFO", "folder", "symbolic link"])
def test_only_a_regular_file_is_read_as_the_model(registry: Registry, kind: str) -> None:
    registry.add_production("tshirt")
    store = _store(registry)
    assert store.check_once()
    version = add_onnx_version(registry, b"replaced below", kind)
    path = served_file(registry, version)
    path.unlink()
    good = served_file(registry, "1")
    {"FIFO": os.mkfifo, "folder": os.mkdir, "symbolic link": lambda p: p.symlink_to(good)}[kind](
        path
    )
    registry.promote(version)
    done = threading.Event()
    threading.Thread(target=lambda: (store.check_once(), done.set()), daemon=True).start()
    try:
        assert done.wait(30), "the reload blocked on the artifact"
    finally:
        if kind == "FIFO":
            _release(path)
    assert store.current is not None and store.current.version == "1"
    assert f"Production v{version} failed to load" in store.status.reason
    assert kind in store.status.reason and "only regular files" in store.status.reason


def test_warm_up_of_an_endless_loop_is_stopped_at_its_time_limit(registry: Registry) -> None:
    with pytest.raises(ModelLoadError, match=r"did not answer a warm-up batch within 0.5 s"):
        load_onnx_classifier(endless_loop_model(), CLASS_NAMES, threads=1, warmup_timeout_s=0.5)
    registry.add_production("tshirt")
    store = _store(registry, warmup_timeout_s=1.0, reload_timeout_s=60)
    assert store.check_once()
    registry.promote(add_onnx_version(registry, endless_loop_model(), "loop"))
    assert not store.check_once()  # returns at all: the loop would run for ages
    assert store.current is not None and store.current.version == "1"
    assert "did not answer a warm-up batch within 1 s" in store.status.reason


def _metric(server_url: str, name: str) -> float:
    text = httpx.get(server_url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


@pytest.mark.integration  # a real server: server_factory
def test_a_stuck_reload_shows_in_ready_and_metrics_while_the_old_version_serves(
    registry: Registry, server_factory: Any
) -> None:
    registry.add_production("tshirt")
    server = server_factory(
        registry.tracking_uri,
        registry.name,
        SERVE_POLL_INTERVAL_S="0.2",
        SERVE_RELOAD_TIMEOUT_S="2",
        SERVE_WARMUP_TIMEOUT_S="1",
    )
    assert _metric(server.url, "model_reload_stuck") == 0.0
    side = long_kernel_side(LONG_KERNEL_S)
    version = add_onnx_version(registry, long_kernel_model(side), "long-kernel")
    registry.promote(version)

    def stuck() -> Any:
        body = httpx.get(server.url + "/ready", timeout=5).json()
        return body.get("reload_stuck") and body

    body = wait_until(stuck, timeout=60, interval=0.05)
    assert body["status"] == "ready" and body["model_version"] == "1"
    assert f"the reload of Production v{version} has run" in body["reason"]
    assert "past its 2 s deadline (opening and warming up the ONNX model)" in body["reason"]
    assert _metric(server.url, "model_reload_stuck") == 1.0
    assert _metric(server.url, "model_reload_running_seconds") > 2.0
    answer = httpx.post(
        server.url + "/predict", files={"file": ("x.png", GOOD_PNG, "image/png")}, timeout=10
    )
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"

    # When the kernel returns, the reload stops at its next checkpoint: a failed load, no swap.
    def settled() -> Any:
        body = httpx.get(server.url + "/ready", timeout=5).json()
        return f"Production v{version} failed to load" in body.get("reason", "") and body

    body = wait_until(settled, timeout=300, interval=0.2)
    assert body["model_version"] == "1" and "warm-up" in body["reason"]
    assert _metric(server.url, "model_reload_stuck") == 0.0
