"""A running API follows a rollback like a promotion: real ``uvicorn src.api:app`` on 127.0.0.1,
a real sqlite registry, the ``rollback-flow`` on a real Prefect server; the API is only seen
over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
import torch

from flows.rollback_flow import rollback_flow
from src import registry
from src.labels import CLASS_NAMES
from src.model_io import log_classifier, log_onnx
from src.preprocessing import normalize
from tests.helpers.api import Server, encode, sample_images, start_server, stop_server
from tests.helpers.flows import tiny_model

NAME = "rollback-model"


IMAGE = sample_images(1, seed=3)[0]


def _expected_top_k(seed: int) -> list[tuple[str, float]]:
    """The top-3 (label, probability) that ``tiny_model(seed)`` computes for IMAGE in process."""
    with torch.no_grad():
        probabilities = torch.softmax(tiny_model(seed)(normalize(IMAGE)), dim=1)[0]
    order = torch.argsort(probabilities, descending=True)[:3]
    return [(CLASS_NAMES[int(i)], float(probabilities[i])) for i in order]


def _assert_answer_computed_by(server: Server, seed: int, version: str) -> None:
    """The served answer is what the model of ``seed`` computes, stamped ``version``."""
    response = httpx.post(
        f"{server.url}/predict", files={"file": ("x.png", encode(IMAGE), "image/png")}, timeout=10
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert str(body["model_version"]) == version
    served = [(item["label"], item["probability"]) for item in body["top_k"]]
    expected = _expected_top_k(seed)
    assert [label for label, _ in served] == [label for label, _ in expected]
    for (_, got), (_, want) in zip(served, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def _served_version(url: str) -> str | None:
    try:
        response = httpx.get(f"{url}/ready", timeout=2)
    except httpx.HTTPError:
        return None
    return str(response.json().get("model_version")) if response.status_code == 200 else None


def _wait_for_version(server: Server, version: str) -> float:
    started = time.monotonic()
    while _served_version(server.url) != version:
        assert server.process.poll() is None, server.log_path.read_text()[-3000:]
        assert time.monotonic() - started < 120, (
            f"API never served v{version}:\n" + (server.log_path.read_text()[-3000:])
        )
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.fixture
def two_versions(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """v1 then v2 promoted through the gate's path; returns (tracking URI, v1, v2)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = registry.get_client(uri)
    experiment = mlflow.create_experiment("rollback", artifact_location=str(tmp_path / "art"))
    versions = []
    for seed in (1, 2):
        with mlflow.start_run(experiment_id=experiment) as run:
            info = log_classifier(tiny_model(seed))
        log_onnx(client, run.info.run_id, tiny_model(seed))  # the form the API serves
        mv = registry.register_candidate(
            client, NAME, model_uri=info.model_uri, run_id=run.info.run_id
        )
        registry.promote_candidate(client, NAME, str(mv.version), passed=True, reasons=["ok"])
        versions.append(str(mv.version))
    try:
        yield uri, versions[0], versions[1]
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_running_api_follows_a_rollback(
    two_versions: tuple[str, str, str],
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, v1, v2 = two_versions
    # The two versions' answers tell them apart (checked on the models themselves first).
    assert _expected_top_k(1) != _expected_top_k(2)
    server = start_server(tmp_path, uri, NAME, wait_ready=False, SERVE_POLL_INTERVAL_S="0.5")
    try:
        _wait_for_version(server, v2)
        _assert_answer_computed_by(server, seed=2, version=v2)
        # The rollback-flow, as the Prefect UI would run it, on this registry.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_REGISTERED_MODEL_NAME", NAME)
        monkeypatch.setenv("PATHS_ROOT", str(tmp_path))
        monkeypatch.delenv("PROFILE", raising=False)
        change = rollback_flow("v2 misreads sandals")
        assert (change["from_version"], change["to_version"]) == (v2, v1)
        waited = _wait_for_version(server, v1)
        print(f"API served the rolled-back v{v1} {waited:.1f} s after the rollback")
        model = httpx.get(f"{server.url}/model", timeout=5).json()
        assert str(model["version"]) == v1
        _assert_answer_computed_by(server, seed=1, version=v1)
    finally:
        stop_server(server)
    client = registry.get_client(uri)
    last = registry.production_history(client, NAME)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", v2, v1)
    assert last.by.startswith("flow run ") and last.reason == "v2 misreads sandals"
