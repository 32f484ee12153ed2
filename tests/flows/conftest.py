"""Fixtures for the flow, gate and registry tests: a throw-away MLflow store and tiny models."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.api import free_port
from tests.helpers.flows import (
    BIN,
    QUIET_ENV,
    TINY_PER_CLASS,
    PrefectServer,
    TinySources,
    TinyStore,
    open_tiny_store,
)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStore]:
    """A sqlite MLflow store in a temp dir holding one logged tiny model."""
    with open_tiny_store(tmp_path_factory.mktemp("mlflow")) as store:
        yield store


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` with a temporary PREFECT_HOME; stopped after the session."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **QUIET_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Prefect server did not start; see {home / 'server.log'}:\n"
                    + (home / "server.log").read_text()[-2000:]
                )
            time.sleep(0.3)
        yield PrefectServer(api_url=api_url, home=home, env=env)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> Iterator[str]:
    """Point in-process flows at the test server (not the user's ~/.prefect), as Prefect's own
    ``prefect_test_harness`` does, and flush the log/event workers before leaving."""
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}),
        prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()),
    ):
        try:
            yield prefect_server.api_url
        finally:
            with contextlib.suppress(RuntimeError):
                APILogWorker.drain_all()
            EventsWorker.drain_all()


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> TinySources:
    """Small IDX sources cut from the real Fashion-MNIST files."""
    import numpy as np

    from src.data.io import read_images, write_idx

    images, labels = read_images(shared_data_dir)
    picks = np.sort(
        np.concatenate([np.flatnonzero(labels == c)[:TINY_PER_CLASS] for c in range(10)])
    )
    root = tmp_path_factory.mktemp("sources")
    write_idx(root / "good", images[picks], labels[picks])
    broken = labels[picks].copy()
    broken[[3, 141, 592]] = 12  # no such class
    write_idx(root / "bad", images[picks], broken)
    return TinySources(root / "good", root / "bad")
