"""The whole train-flow in-process on real components (Prefect server, DVC, Great Expectations,
Lightning, MLflow sqlite registry) with the smoke profile and 1,000 real images.

Failure paths: a transient download error is retried; a candidate below the floor or worse than
Production is not promoted; invalid data stops the flow before training. Re-runs on unchanged
data reuse the download, validation and split results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

import flows.data_flow as data_flow_module
from flows.train_flow import TrainFlowParams, train_flow
from src import registry
from src.data.sources import TransientDownloadError
from src.model_io import log_classifier, log_onnx
from src.promotion import score_model, store_test_predictions
from tests.flows.fakes import Constant, Memorizer
from tests.helpers.flows import (
    TinySources,
    api_post,
    flow_run_artifacts,
    task_run_states,
    use_project,
)

pytestmark = pytest.mark.integration

NAME = "clothing-classifier"
SMOKE = TrainFlowParams(profile="smoke")


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str, tiny_sources: TinySources
) -> Path:
    return use_project(tmp_path / "project", tiny_sources.good, monkeypatch)


def _uri(root: Path) -> str:
    return f"sqlite:///{root}/mlflow.db"


def _seed_production(
    root: Path, model: Any, split_hash: str, data_md5: str = "an-older-md5"
) -> tuple[str, str]:
    """Log ``model``, register it as passed and promote it; returns (version, run id)."""
    mlflow.set_tracking_uri(_uri(root))
    experiment = mlflow.get_experiment_by_name("seeded")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment("seeded", artifact_location=str(root / "seeded"))
    )
    client = registry.get_client(_uri(root))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = log_classifier(model)
        log_onnx(client, run.info.run_id, model)  # the served form, which the gate scores
    mv = registry.register_candidate(
        client,
        NAME,
        model_uri=info.model_uri,
        run_id=run.info.run_id,
        tags={"split_hash": split_hash, "data_md5": data_md5},
    )
    registry.promote_candidate(client, NAME, str(mv.version), passed=True, reasons=["seeded"])
    return str(mv.version), run.info.run_id


def _run(params: TrainFlowParams) -> tuple[Any, str]:
    state = train_flow(params, return_state=True)
    return state, str(state.state_details.flow_run_id)


def _data_task_states(api: str, parent_flow_run_id: str) -> dict[str, str]:
    [subflow] = api_post(
        api,
        "flow_runs/filter",
        {"flow_runs": {"parent_flow_run_id": {"any_": [parent_flow_run_id]}}},
    )
    return task_run_states(api, subflow["id"])


def _production(root: Path) -> str | None:
    client = registry.get_client(_uri(root))
    assert registry.production_consistent(client, NAME)
    mv = registry.current_production(client, NAME)
    return str(mv.version) if mv else None


def test_retry_floor_cache_and_champion(
    project: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = registry.get_client(_uri(project))
    # An older Production model, scored on some other split (so the gate re-scores it).
    seeded, _ = _seed_production(project, Constant(0), split_hash="an-older-split")

    # 1) The first download attempt hits a transient network error; the task retries.
    real_fetch = data_flow_module.fetch_source
    calls: list[int] = []

    def flaky_fetch(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise TransientDownloadError("connection reset by peer (simulated)")
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(data_flow_module, "fetch_source", flaky_fetch)
    # ... and the candidate misses an (unreachable) accuracy floor.
    state, run_id = _run(TrainFlowParams(profile="smoke", min_accuracy=0.99))
    assert state.is_completed(), state.message
    first = state.result()
    assert len(calls) == 2
    data_tasks = api_post(
        prefect_api, "task_runs/filter", {"task_runs": {"name": {"like_": "download"}}}
    )
    assert any(t["run_count"] == 2 and t["state"]["type"] == "COMPLETED" for t in data_tasks)
    assert not first["promoted"]
    assert any("below the floor 0.9900" in reason for reason in first["gate_reasons"])
    assert first["champion_version"] == seeded
    assert _production(project) == seeded  # the old Production is still served
    failed = client.get_model_version(NAME, first["candidate_version"])
    assert failed.tags["validation_status"] == "failed"
    assert "below the floor" in failed.tags["gate_reasons"]
    assert failed.tags["split_hash"] == first["split_hash"]
    assert failed.tags["data_md5"] == first["data_md5"]
    decision = client.get_model_version(NAME, first["candidate_version"]).tags["gate_details"]
    assert "re-scored on this run's test split" in decision
    artifacts = flow_run_artifacts(prefect_api, run_id)
    assert {"train-metrics", "gate-decision", "promotion"} <= set(artifacts)
    assert "Gate FAILED" in artifacts["gate-decision"]["data"]
    assert any(key.startswith("data-validation") for key in _all_artifact_keys(prefect_api))

    # 2) A Production model that knows this test split by heart (and whose predictions on it are
    # stored, as the flow stores every candidate's) beats any smoke candidate.
    dataset = Path(first["dataset_path"])
    with np.load(dataset) as data:
        memorizer = Memorizer(data["x_test"], data["y_test"])
    champion, champion_run = _seed_production(
        project, memorizer, split_hash=first["split_hash"], data_md5=first["data_md5"]
    )
    metrics, predictions = score_model(client, champion_run, dataset)
    assert metrics["accuracy"] == 1.0
    store_test_predictions(client, champion_run, predictions)

    state, run_id = _run(SMOKE)
    assert state.is_completed(), state.message
    second = state.result()
    # Unchanged data: download, validation and split come from the cache.
    states = _data_task_states(prefect_api, run_id)
    assert states["download"] == states["validate"] == states["split"] == "Cached"
    assert second["data_md5"] == first["data_md5"]
    assert second["split_hash"] == first["split_hash"]
    assert len(calls) == 2  # no new fetch
    # Significantly worse than Production: refused; Production unchanged.
    assert not second["promoted"]
    assert second["champion_version"] == champion
    assert any(
        f"significantly worse than Production v{champion}" in r for r in second["gate_reasons"]
    )
    assert _production(project) == champion
    details = client.get_model_version(NAME, second["candidate_version"]).tags["gate_details"]
    assert "stored predictions (same data md5 and split hash)" in details


def _all_artifact_keys(api: str) -> set[str]:
    return {item["key"] for item in api_post(api, "artifacts/filter", {}) if item.get("key")}


def test_invalid_data_fails_before_training(
    project: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch, tiny_sources: TinySources
) -> None:
    seeded, _ = _seed_production(project, Constant(1), split_hash="s")
    monkeypatch.setenv("DATA_SOURCE", str(tiny_sources.bad))
    state, run_id = _run(SMOKE)
    assert state.is_failed()
    assert "label" in (state.message or "").lower() or "expect" in (state.message or "").lower()
    ran = task_run_states(prefect_api, run_id)
    assert "train" not in ran and "register-candidate" not in ran
    # Nothing was trained or registered; the old Production is still the one served.
    client = registry.get_client(_uri(project))
    assert [str(mv.version) for mv in client.search_model_versions(f"name = '{NAME}'")] == [seeded]
    assert mlflow.get_experiment_by_name("clothing-classifier") is None
    assert _production(project) == seeded
    # The bad files never reached data/ or the DVC remote.
    assert not (project / "data").exists()
    remote = project.parent / "dvc-remote"
    assert not remote.exists() or not any(remote.rglob("*"))
