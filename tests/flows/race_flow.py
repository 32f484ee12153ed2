"""A train-flow whose training is a tiny logged model: the real reconcile, evaluate, register,
gate and promote tasks, run as a separate process so several can race on one registry.

    python -m tests.flows.race_flow DATASET SEED BARRIER_DIR RUNNERS

Configuration comes from the environment (``tests.flows.conftest.project_env``). Each run waits at
a barrier after registering, so every gate reads the same Production and every promotion races.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from prefect import flow

from flows.monitoring_tasks import describe_version_task
from flows.training_tasks import (
    evaluate_task,
    gate_task,
    promote_task,
    reconcile_task,
    register_task,
)
from src.config import load_config
from src.data.split import PreparedData
from src.model_io import log_classifier, log_onnx
from tests.helpers.flows import tiny_model


@dataclass
class Trained:
    run_id: str
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)


def wait_for_all(barrier: Path, seed: int, runners: int) -> None:
    barrier.mkdir(parents=True, exist_ok=True)
    (barrier / f"ready-{seed}").touch()
    deadline = time.monotonic() + 300
    while len(list(barrier.glob("ready-*"))) < runners:
        if time.monotonic() > deadline:
            raise TimeoutError("the other race flows never reached the barrier")
        time.sleep(0.05)


@flow(name="race-train-flow")
def race_flow(dataset: str, seed: int, barrier: str, runners: int) -> dict[str, Any]:
    cfg = load_config()
    reconcile_task(cfg)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    experiment = mlflow.create_experiment(
        f"race-{seed}", artifact_location=str(cfg.paths.root / f"race-{seed}")
    )
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_classifier(tiny_model(seed))
        log_onnx(MlflowClient(cfg.tracking_uri), run.info.run_id, tiny_model(seed))
    prepared = PreparedData.from_file(Path(dataset), data_md5="race-md5", split_hash="race-split")
    trained = Trained(run.info.run_id, info.model_uri)
    evaluation = evaluate_task(prepared, trained, cfg)
    version = register_task(prepared, trained, evaluation, cfg)
    wait_for_all(Path(barrier), seed, runners)
    outcome = gate_task(prepared, trained, evaluation, version, cfg)
    describe_version_task(prepared, trained, evaluation, version, outcome, cfg)
    promotion = promote_task(prepared, trained, evaluation, version, outcome, cfg)
    return {"version": version, "gated_against": outcome.champion_version, **promotion}


if __name__ == "__main__":
    dataset, seed, barrier, runners = sys.argv[1:5]
    print("RESULT " + json.dumps(race_flow(dataset, int(seed), barrier, int(runners))))
