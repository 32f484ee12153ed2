"""train-flow's monitoring step on real components (smoke profile, 1,000 real images): the
candidate gets its reference profile, calibrated threshold and model card before promotion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flows.train_flow import TrainFlowParams, train_flow
from src import registry
from src.monitoring.reference_profile import PROFILE_ARTIFACT, ReferenceProfile
from tests.helpers.flows import TinySources, flow_run_artifacts, use_project

pytestmark = pytest.mark.integration


def test_train_flow_attaches_profile_threshold_and_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str, tiny_sources: TinySources
) -> None:
    root = use_project(tmp_path / "project", tiny_sources.good, monkeypatch)
    state = train_flow(TrainFlowParams(profile="smoke"), return_state=True)
    summary = state.result()
    assert summary["promoted"], summary["gate_reasons"]

    client = registry.get_client(f"sqlite:///{root}/mlflow.db")
    mv = registry.current_production(client, "clothing-classifier")
    assert mv is not None and str(mv.version) == summary["candidate_version"]
    with np.load(summary["dataset_path"]) as data:
        n_val = len(data["y_val"])
    local = client.download_artifacts(mv.run_id, PROFILE_ARTIFACT, str(tmp_path))
    profile = ReferenceProfile.from_dict(json.loads(Path(local).read_text()))
    assert profile.n == n_val and len(profile.class_shares) == 10
    assert sum(profile.class_shares) == pytest.approx(1.0)
    assert float(mv.tags["low_confidence_threshold"]) == pytest.approx(
        profile.threshold.value, abs=1e-6
    )
    card = mv.tags["model_card"]
    assert card.startswith(f"# Model card: clothing-classifier v{mv.version}")
    for expected in (summary["data_md5"], summary["split_hash"], "Confusion matrix", "## Gate"):
        assert expected in card
    assert all(reason in card for reason in summary["gate_reasons"])
    assert "Model card" in (mv.description or "")
    run_id = str(state.state_details.flow_run_id)
    assert "model-card" in flow_run_artifacts(prefect_api, run_id)
