"""Helpers for the api tests (fixtures are in tests/api/conftest.py)."""

from __future__ import annotations

import io
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from PIL import Image

from src.config import AppConfig, load_config
from src.labels import CLASS_NAMES
from src.registry import promote, record_gate_decision, register_candidate
from src.serving.app import create_app

REPO_ROOT = Path(__file__).resolve().parents[2]
registry_names = itertools.count()


def constant_model(class_id: int) -> torch.nn.Module:
    """Answers ``class_id`` for every image (so a response's label tells which model answered)."""
    linear = torch.nn.Linear(28 * 28, len(CLASS_NAMES))
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[class_id] = 6.0
    return torch.nn.Sequential(torch.nn.Flatten(), linear).eval()


def image_dependent_model() -> torch.nn.Module:
    """A small random CNN whose answer depends on the pixels (for preprocessing parity)."""
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, len(CLASS_NAMES)),
    ).eval()


@dataclass
class LoggedModel:
    uri: str
    run_id: str


@dataclass
class ModelSources:
    """Models logged once per session; registries register versions of them."""

    tracking_uri: str
    tshirt: LoggedModel  # always "T-shirt/top" (class 0)
    sneaker: LoggedModel  # always "Sneaker" (class 7)
    bag: LoggedModel  # always "Bag" (class 8)
    varied: LoggedModel  # depends on the image
    varied_module: torch.nn.Module


@dataclass
class Registry:
    """One registered model (a fresh name per test) in the session's sqlite registry."""

    tracking_uri: str
    name: str
    client: MlflowClient
    sources: ModelSources
    versions: dict[str, str] = field(default_factory=dict)

    def add_version(self, which: str = "tshirt", **tags: str) -> str:
        """Register a version of a logged model the way the train-flow does, gate passed."""
        source: LoggedModel = getattr(self.sources, which)
        return self.add_source(source.uri, source.run_id, which, **tags)

    def add_source(self, uri: str, run_id: str | None, label: str = "", **tags: str) -> str:
        mv = register_candidate(
            self.client,
            self.name,
            model_uri=uri,
            run_id=run_id,
            tags={"data_md5": f"md5-{label}", **tags},
        )
        version = str(mv.version)
        record_gate_decision(self.client, self.name, version, passed=True, reasons=["test"])
        self.versions[version] = label
        return version

    def promote(self, version: str) -> None:
        promote(self.client, self.name, version)

    def add_production(self, which: str = "tshirt") -> str:
        version = self.add_version(which)
        self.promote(version)
        return version


def app_root(tracking_uri: str) -> Path:
    """A fresh project root for one app's working files (its prediction log among them): beside
    the test's sqlite registry, or a new temporary folder; never the repo's outputs/."""
    if tracking_uri.startswith("sqlite:///"):
        parent = Path(tracking_uri[len("sqlite:///") :]).parent
        if parent.is_dir():
            return Path(tempfile.mkdtemp(prefix="app-", dir=parent))
    return Path(tempfile.mkdtemp(prefix="clothing-classifier-test-"))


def make_config(tracking_uri: str, name: str, **serve: Any) -> AppConfig:
    settings: dict[str, Any] = {"poll_interval_s": 0.2, "retry_interval_s": 0.1, **serve}
    return load_config(
        overrides={
            "paths": {"root": str(app_root(tracking_uri))},
            "mlflow": {"tracking_uri": tracking_uri, "registered_model_name": name},
            "serve": settings,
        },
        environ={},
    )


def wait_until(predicate: Any, timeout: float = 60.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def encode(array: np.ndarray, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def sample_images(count: int, seed: int = 0) -> list[np.ndarray]:
    """Dark-background 28×28 'garments' (a bright blob of random size and place)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = np.zeros((28, 28), dtype=np.uint8)
        top, left = rng.integers(0, 12, size=2)
        height, width = rng.integers(8, 16, size=2)
        image[top : top + height, left : left + width] = rng.integers(120, 255)
        image = np.clip(image + rng.integers(0, 40, size=(28, 28)), 0, 255).astype(np.uint8)
        images.append(image)
    return images


# --- real uvicorn processes -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


def uvicorn_bind(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port)]


def start_server(
    tmp_path: Path,
    tracking_uri: str,
    name: str,
    *,
    wait_ready: bool = True,
    uvicorn: tuple[str, ...] = (sys.executable, "-m", "uvicorn"),
    command: tuple[str, ...] | None = None,
    bind: Callable[[int], list[str]] | None = None,
    cwd: Path = REPO_ROOT,
    **env: str,
) -> Server:
    """``uvicorn src.api:app`` on a free port (``uvicorn``: the command, e.g. another venv's;
    ``command``: run this instead, e.g. ``make serve``'s CLI, given ``--host``/``--port``, or what
    ``bind(port)`` returns, e.g. gunicorn's ``--bind``); its
    working files (the prediction log in ``tmp_path/outputs/monitoring/``, shared by the servers of
    one test) stay in ``tmp_path``."""
    port = free_port()
    log_path = tmp_path / f"uvicorn-{port}.log"
    inherited = ("SERVE_", "MLFLOW_", "MONITOR_", "PATHS_")
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(inherited)},
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTERED_MODEL_NAME": name,
        "PATHS_ROOT": str(tmp_path),
        "PROFILE": "",
        **env,
    }
    for key in [k for k, v in env.items() if v == ""]:  # passed as "": leave it unset
        del full_env[key]
    with log_path.open("wb") as log:
        argv = command or (*uvicorn, "src.api:app")
        process = subprocess.Popen(
            [*argv, *(bind or uvicorn_bind)(port)],
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    path = "/ready" if wait_ready else "/health"

    def answered() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"uvicorn exited early:\n{log_path.read_text()}")
        try:
            return httpx.get(server.url + path, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answered, timeout=180, interval=0.1)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    """SIGTERM, then a generous wait: a graceful stop flushes the prediction log (gunicorn's
    arbiter waits for its workers to), and a kill before it ends would lose those answers."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


def api_client_for(registry: Registry, *, ready: bool = True, **serve: Any) -> TestClient:
    """An in-process app (lifespan entered) for ``registry``; waits for /ready unless told not to."""
    client = TestClient(create_app(make_config(registry.tracking_uri, registry.name, **serve)))
    client.__enter__()
    if ready:
        wait_until(lambda: client.get("/ready").status_code == 200)
    return client
