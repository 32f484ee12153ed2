"""The closed loop end to end on real processes: a model trained on real Fashion-MNIST images with
its reference profile, threshold and card; a real uvicorn answering and logging; the real
``python -m flows.monitor_flow`` on a real Prefect server and a real MLflow registry.

clean images -> no drift; rotated noisy images -> drift (--dry-run starts nothing); with
``retrain_on_drift`` a train-flow run is created through its deployment, the reason in its tags.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from src.config import AppConfig, load_config
from src.data.io import read_images
from src.gate import evaluate_gate
from src.model_io import log_classifier, log_onnx
from src.monitoring import attachments
from src.monitoring.card import build_card
from tests.helpers.api import encode, start_server, stop_server, wait_until
from tests.helpers.flows import QUIET_ENV, PrefectServer, api_post
from tests.helpers.mlflow_db import new_sqlite_store

REPO = Path(__file__).resolve().parents[2]
NAME = "loop-classifier"
# Its own train-flow deployment: the session's Prefect server also holds train-flow/weekly and its
# runs (tests/flows/test_deployments.py).
DEPLOYMENT = "train-flow/closed-loop"


@dataclass
class World:
    root: Path
    tracking_uri: str
    store_url: str
    version: str
    clean: tuple[np.ndarray, np.ndarray]
    shifted: np.ndarray
    cfg: AppConfig


def _train_logistic(x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    """A softmax regression on normalised pixels: seconds to fit, ~80 % right."""
    from src.preprocessing import normalize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    inputs, targets = normalize(x), torch.as_tensor(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimiser.step()
    return model.eval()


def _register(cfg: AppConfig, root: Path, dataset: Path, model: torch.nn.Module) -> str:
    """Log, register, profile + card (the train-flow's monitoring step), promote."""
    client = MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    try:
        experiment = mlflow.create_experiment("loop", artifact_location=(root / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_params({"model": "softmax-regression", "epochs": 150})
            info = log_classifier(model)
            log_onnx(client, run.info.run_id, model)  # the served form, as the trainer logs it
        location = mlflow.get_logged_model(info.model_id).artifact_location
    finally:
        mlflow.set_tracking_uri(previous)
    client.create_registered_model(NAME)
    version = str(client.create_model_version(NAME, location, run.info.run_id).version)
    with np.load(dataset) as data:
        x_test, y_test = data["x_test"], data["y_test"]
    from src.preprocessing import normalize

    y_pred = model(normalize(x_test)).argmax(1).numpy()
    profile = attachments.validation_profile(cfg, client, run.info.run_id, dataset)
    inputs = attachments.card_inputs(
        cfg,
        client,
        version=version,
        run_id=run.info.run_id,
        data_md5="md5-of-the-test-data",
        split_hash="split-of-the-test-data",
        y_true=y_test,
        y_pred=y_pred,
        gate=evaluate_gate(y_test, y_pred, cfg.gate),
        reference=profile,
    )
    attachments.attach_to_version(
        cfg, client, version, run.info.run_id, profile, build_card(inputs)
    )
    client.set_registered_model_alias(NAME, "production", version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client.transition_model_version_stage(NAME, version, "Production")
    return version


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path) -> World:
    root = tmp_path_factory.mktemp("loop")
    images, labels = read_images(shared_data_dir)
    order = np.random.default_rng(7).permutation(len(labels))
    parts = np.split(order[:5600], [3000, 4500, 5000, 5300])  # train, val, test, clean, shifted
    dataset = root / "splits.npz"
    np.savez(
        dataset,
        **{f"x_{p}": images[i] for p, i in zip(("train", "val", "test"), parts[:3], strict=False)},
        **{f"y_{p}": labels[i] for p, i in zip(("train", "val", "test"), parts[:3], strict=False)},
    )
    tracking_uri = new_sqlite_store(root / "mlflow.db")
    cfg = load_config(
        overrides={
            "mlflow": {"tracking_uri": tracking_uri, "registered_model_name": NAME},
            "paths": {"root": str(root)},
            "gate": {"min_accuracy": 0.5, "min_macro_f1": 0.5},
        },
        environ={},
    )
    model = _train_logistic(images[parts[0]], labels[parts[0]])
    version = _register(cfg, root, dataset, model)
    # Rotated a quarter turn, with sensor noise: what a badly mounted camera would send.
    rng = np.random.default_rng(8)
    rotated = np.rot90(images[parts[4]], k=1, axes=(1, 2)).astype(np.float64)
    shifted = np.clip(rotated + rng.normal(0, 50, rotated.shape), 0, 255).astype(np.uint8)
    return World(
        root=root,
        tracking_uri=tracking_uri,
        store_url=f"sqlite:///{root}/predictions.db",
        version=version,
        clean=(images[parts[3]], labels[parts[3]]),
        shifted=shifted,
        cfg=cfg,
    )


def _send(url: str, images: np.ndarray) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    for start in range(0, len(images), 50):
        files = [
            ("files", (f"{i}.png", encode(img), "image/png"))
            for i, img in enumerate(images[start : start + 50])
        ]
        response = httpx.post(url + "/predict/batch", files=files, timeout=60)
        assert response.status_code == 200, response.text
        answers += response.json()
    return answers


def _monitor(
    world: World, server: PrefectServer, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MONITOR_", "MLFLOW_"))},
        **server.env,
        **QUIET_ENV,
        "PROFILE": "",
        "MLFLOW_TRACKING_URI": world.tracking_uri,
        "MLFLOW_REGISTERED_MODEL_NAME": NAME,
        "MLFLOW_ARTIFACT_LOCATION": str(world.root / "monitoring-artifacts"),
        "MONITOR_STORE_URL": world.store_url,
        "MONITOR_MIN_PREDICTIONS": "200",
        "MONITOR_TRAIN_DEPLOYMENT": DEPLOYMENT,
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "flows.monitor_flow", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _monitor_runs(world: World) -> list[Any]:
    client = MlflowClient(tracking_uri=world.tracking_uri)
    experiment = client.get_experiment_by_name("clothing-classifier-monitoring")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _train_deployment(server: PrefectServer) -> str:
    flow_id = httpx.post(f"{server.api_url}/flows/", json={"name": "train-flow"}, timeout=30)
    deployment = httpx.post(
        f"{server.api_url}/deployments/",
        json={
            "name": DEPLOYMENT.split("/")[1],
            "flow_id": flow_id.json()["id"],
            "entrypoint": "flows/train_flow.py:train_flow",
            "path": str(REPO),
        },
        timeout=30,
    )
    deployment.raise_for_status()
    return str(deployment.json()["id"])


@pytest.mark.integration  # a real server: prefect_server, shared_data_dirstart_server(
def test_clean_then_shifted_images_and_retraining(
    world: World, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    deployment_id = _train_deployment(prefect_server)
    server = start_server(
        tmp_path,
        world.tracking_uri,
        NAME,
        MONITOR_STORE_URL=world.store_url,
        MONITOR_FLUSH_INTERVAL_S="0.1",
        MONITOR_STATS_INTERVAL_S="0.5",
        MONITOR_FEEDBACK_BURST="100",  # 40 labels from one client at once
    )
    try:
        card = httpx.get(server.url + "/model/card", timeout=10)
        assert card.status_code == 200 and f"v{world.version}" in card.text
        assert "Confusion matrix" in card.text and "McNemar" not in card.text.split("## Gate")[0]

        # 1. Clean images, 40 of them labelled through /feedback: no drift.
        images, labels = world.clean
        answers = _send(server.url, images)
        assert sum(a["low_confidence"] for a in answers) < len(answers) / 2
        for answer, label in list(zip(answers, labels, strict=True))[:40]:
            body = {"prediction_id": answer["prediction_id"], "label": int(label)}
            assert httpx.post(server.url + "/feedback", json=body, timeout=30).status_code == 202
        clean = _monitor(world, prefect_server, MONITOR_RETRAIN_ON_DRIFT="true")
        assert clean.returncode == 0, clean.stderr[-3000:]
        assert "no drift" in clean.stdout, clean.stdout[-2000:]
        [run] = _monitor_runs(world)
        assert run.data.metrics["drift_detected"] == 0.0
        assert run.data.metrics["n_predictions"] == 300.0
        assert run.data.metrics["n_feedback"] == 40.0
        expected = float(
            np.mean([a["class_id"] == y for a, y in zip(answers[:40], labels[:40], strict=True)])
        )
        assert run.data.metrics["live_accuracy"] == pytest.approx(expected)
        assert (
            "class_shares_p_value" in run.data.metrics
            and "confidence_statistic" in run.data.metrics
        )
        artifacts = {
            a.path
            for a in MlflowClient(world.tracking_uri).list_artifacts(run.info.run_id, "report")
        }
        assert {"report/report.html", "report/report.md", "report/distributions.png"} <= artifacts
        wait_until(
            lambda: re.search(
                r"^monitor_drift_detected 0\.0$", httpx.get(server.url + "/metrics").text, re.M
            ),
            timeout=30,
        )

    finally:
        stop_server(server)

    # 2. Rotated, noisy images, logged by a second server into a fresh log: drift;
    #    --dry-run starts nothing.
    world.store_url = f"sqlite:///{world.root}/predictions-shifted.db"
    server = start_server(
        tmp_path,
        world.tracking_uri,
        NAME,
        MONITOR_STORE_URL=world.store_url,
        MONITOR_FLUSH_INTERVAL_S="0.1",
        MONITOR_STATS_INTERVAL_S="0.5",
    )
    try:
        _send(server.url, world.shifted)
        dry = _monitor(world, prefect_server, "--dry-run", MONITOR_RETRAIN_ON_DRIFT="true")
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert "DRIFT" in dry.stdout and "Started train-flow" not in dry.stdout, dry.stdout
        runs = _monitor_runs(world)
        assert runs[-1].data.metrics["drift_detected"] == 1.0
        assert runs[-1].data.metrics["n_predictions"] == 300.0
        assert runs[-1].data.tags["dry_run"] == "true"
        found = api_post(
            prefect_server.api_url,
            "flow_runs/filter",
            {"deployments": {"id": {"any_": [deployment_id]}}},
        )
        assert found == []

        # 3. The same with retraining on: a train-flow run, the reason in its tags.
        #    (One window of drift is enough here; the log holds no earlier window.)
        retrain_env = {
            "MONITOR_RETRAIN_ON_DRIFT": "true",
            "MONITOR_RETRAIN_CONSECUTIVE_WINDOWS": "1",
        }
        wet = _monitor(world, prefect_server, **retrain_env)
        assert wet.returncode == 0, wet.stderr[-3000:]
        [train_run] = api_post(
            prefect_server.api_url,
            "flow_runs/filter",
            {"deployments": {"id": {"any_": [deployment_id]}}},
        )
        tags = train_run["tags"]
        assert "reason:drift" in tags and "triggered-by:monitor-flow" in tags
        assert f"drift-version:{world.version}" in tags
        assert train_run["id"] in wet.stdout
        # 4. The next run still sees the drift, but that train-flow run is still queued (no
        #    worker here): it starts no other.
        again = _monitor(world, prefect_server, **retrain_env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Started train-flow" not in again.stdout and "still scheduled" in again.stdout
        assert (
            len(
                api_post(
                    prefect_server.api_url,
                    "flow_runs/filter",
                    {"deployments": {"id": {"any_": [deployment_id]}}},
                )
            )
            == 1
        )
        wait_until(
            lambda: re.search(
                r"^monitor_drift_detected 1\.0$", httpx.get(server.url + "/metrics").text, re.M
            ),
            timeout=30,
        )
        assert re.search(
            r"^prediction_log_rows 300\.0$", httpx.get(server.url + "/metrics").text, re.M
        )
    finally:
        stop_server(server)
    report = api_post(
        prefect_server.api_url,
        "artifacts/filter",
        {"artifacts": {"key": {"any_": ["monitoring-report"]}}},
    )
    assert len(report) == 4 and any("DRIFT" in json.dumps(a["data"]) for a in report)
