"""Scale-out on real services: PostgreSQL, an S3 store (moto), the MLflow and Prefect servers and a
process worker, all started by deployments/stack.py (what `make stack` runs) on 127.0.0.1.

The smoke train-flow runs as a Prefect deployment; the tests then look where everything landed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deployments.stack import DVC_BUCKET, DVC_PREFIX, MLFLOW_BUCKET, psql
from src.data.versioning import folder_md5, read_dvc_md5
from tests.flows.conftest import BIN
from tests.services.conftest import MODEL_NAME, DeploymentRun, Team

pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]


def bucket_keys(team: Team, bucket: str, prefix: str = "") -> list[str]:
    pages = team.stack.s3_client().get_paginator("list_objects_v2")
    return [
        item["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]


def test_flow_run_and_model_registry_live_in_postgres(
    team: Team, deployment_run: DeploymentRun
) -> None:
    flow_run_id = deployment_run.flow_run["id"]
    [(state, params)] = psql(
        team.stack,
        "prefect",
        f"SELECT state_type, parameters FROM flow_run WHERE id = '{flow_run_id}'",
    )
    assert state == "COMPLETED"
    assert '"profile": "smoke"' in params
    runs = psql(team.stack, "mlflow", "SELECT run_uuid, status FROM runs")
    assert any(status == "FINISHED" for _, status in runs), runs
    versions = psql(
        team.stack,
        "mlflow",
        f"SELECT version, current_stage, run_id FROM model_versions WHERE name = '{MODEL_NAME}'",
    )
    assert [(v, stage) for v, stage, _ in versions] == [("1", "Production")]
    assert versions[0][2] in {run_id for run_id, _ in runs}
    aliases = psql(
        team.stack,
        "mlflow",
        f"SELECT alias, version FROM registered_model_aliases WHERE name = '{MODEL_NAME}'",
    )
    assert aliases == [("production", "1")]


def test_model_artifacts_are_in_the_mlflow_bucket(
    team: Team, deployment_run: DeploymentRun
) -> None:
    keys = bucket_keys(team, MLFLOW_BUCKET)
    model_files = [key for key in keys if "/models/" in key]
    assert any(key.endswith("/MLmodel") for key in model_files), keys
    assert any(key.endswith(".pt2") for key in model_files), model_files
    # Nothing was written beside the flow's project: artefacts went through the server's proxy.
    assert not (team.project / "mlartifacts").exists()


def test_data_is_in_the_dvc_bucket_and_a_fresh_clone_pulls_it(
    team: Team, deployment_run: DeploymentRun, tmp_path: Path
) -> None:
    md5 = read_dvc_md5(team.project / "data.dvc")
    assert md5 is not None and md5.endswith(".dir")
    keys = bucket_keys(team, DVC_BUCKET, f"{DVC_PREFIX}/")
    assert f"{DVC_PREFIX}/files/md5/{md5[:2]}/{md5[2:]}" in keys, keys
    assert len(keys) >= 3, keys  # the listing and the data files

    # A fresh clone: the committed files only (no cache, no .dvc/config.local), then the
    # documented remote set-up and `dvc pull`.
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(team.project / "data.dvc", clone / "data.dvc")
    stack = team.stack
    env = {**os.environ, **stack.aws_env(), "DVC_NO_ANALYTICS": "1"}
    for args in (
        ["init", "--no-scm"],
        ["remote", "add", "--local", "-d", "s3", stack.dvc_remote_url],
        ["remote", "modify", "--local", "s3", "endpointurl", stack.s3_url],
        ["pull"],
    ):
        result = subprocess.run(
            [str(BIN / "dvc"), *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}{result.stderr}"
    assert folder_md5(clone / "data") == md5
    # The flow wrote the endpoint from the settings into its own (git-ignored) local config.
    local = (team.project / ".dvc" / "config.local").read_text()
    assert stack.s3_url in local and stack.dvc_remote_url in local
    assert yaml.safe_load((team.project / "data.dvc").read_text())["outs"][0]["md5"] == md5
