"""Prefect tasks for the model half of the train-flow: train → evaluate → register → gate → promote.

The work is done by plain functions in ``src/`` (training, evaluation, :mod:`src.promotion`,
:mod:`src.gate`, :mod:`src.registry`); these tasks add the lock, logging and Prefect artifacts.
None of them retries: a failed training run, a failed evaluation or a refused promotion is not
transient, and retrying would only hide it (the registry steps are repaired by
``reconcile_production`` at the start of the next run instead).

Concurrent runs: reconcile and promotion hold :func:`flows.locks.promotion_lock`; the promotion
is a compare-and-swap against the Production version the gate compared with, and when another
run promoted in between, the candidate is gated again against the new Production first
(:func:`src.promotion.promote_gated`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.locks import flow_actor, promotion_lock
from flows.monitoring_tasks import describe_version
from src import registry
from src.config import AppConfig
from src.data.split import PreparedData
from src.gate import GateDecision
from src.promotion import (
    Evaluation,
    GateOutcome,
    decide,
    load_test_labels,
    promote_gated,
    score_model,
    store_test_predictions,
)


class TrainResultLike(Protocol):
    """What training hands over (``src.training.train.TrainResult``)."""

    @property
    def run_id(self) -> str: ...
    @property
    def model_uri(self) -> str: ...
    @property
    def metrics(self) -> dict[str, float]: ...


def _use_tracking(cfg: AppConfig) -> None:
    # models:/ URIs and MLflow's fluent calls go through MLflow's global tracking/registry URI.
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)


@task(name="reconcile-registry", cache_policy=NO_CACHE, persist_result=False)
def reconcile_task(cfg: AppConfig) -> str | None:
    """Repair alias/stage drift left by a crashed run; return the Production version."""
    logger = get_run_logger()
    client = registry.get_client(cfg.tracking_uri)
    with promotion_lock(cfg):
        report = registry.reconcile_production(
            client, cfg.mlflow.registered_model_name, actor=flow_actor()
        )
    for action in report.actions:
        logger.warning("Registry repaired: %s", action)
    logger.info("Production before this run: %s", report.production_version or "none")
    return report.production_version


@task(name="train", cache_policy=NO_CACHE, persist_result=False)
def train_task(prepared: PreparedData, cfg: AppConfig) -> TrainResultLike:
    from src.training.train import train_model

    logger = get_run_logger()
    result: TrainResultLike = train_model(prepared, cfg, notify=logger.log)
    logger.info("Trained run %s -> %s", result.run_id, result.model_uri)
    return result


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate_task(prepared: PreparedData, trained: TrainResultLike, cfg: AppConfig) -> Evaluation:
    """Score the logged model — the exact artefact that would be served — on the test split,
    keep its predictions in the run, and publish the metrics table."""
    _use_tracking(cfg)
    client = registry.get_client(cfg.tracking_uri)
    metrics, predictions = score_model(
        client, trained.run_id, prepared.dataset_path, trained.model_uri
    )
    y_true = load_test_labels(prepared.dataset_path)
    if len(predictions) != len(y_true):
        raise ValueError(
            f"Evaluation returned {len(predictions)} predictions for {len(y_true)} test images; "
            "the evaluation must cover the whole test split."
        )
    out_dir = cfg.paths.outputs / "gate"
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions_path = out_dir / f"{trained.run_id}_test_predictions.npy"
    np.save(predictions_path, predictions)
    store_test_predictions(client, trained.run_id, predictions)

    rows: list[dict[str, Any]] = [
        {"metric": "test accuracy (served model)", "value": round(metrics["accuracy"], 4)},
        {"metric": "test macro-F1 (served model)", "value": round(metrics["macro_f1"], 4)},
    ]
    rows += [
        {"metric": f"test F1 {name}", "value": round(value, 4)}
        for name, value in metrics["per_class_f1"].items()
    ]
    trainer_predictions = getattr(trained, "test_predictions_path", None)
    if trainer_predictions is not None and Path(trainer_predictions).is_file():
        # The trainer scored its in-memory model; this run scored the logged artefact.
        from_trainer = np.load(trainer_predictions)
        if len(from_trainer) == len(predictions):
            agreement = float(np.mean(from_trainer == predictions))
            rows.append({"metric": "agreement with the trainer's predictions", "value": agreement})
    rows += [
        {"metric": f"training run: {key}", "value": round(float(value), 4)}
        for key, value in sorted(trained.metrics.items())
    ]
    create_table_artifact(
        table=rows,
        key="train-metrics",
        description=(
            f"MLflow run {trained.run_id}; {len(y_true)} test images; data md5 "
            f"{prepared.data_md5}; split hash {prepared.split_hash}"
        ),
    )
    get_run_logger().info(
        "Served model on the test split: accuracy %.4f, macro-F1 %.4f",
        metrics["accuracy"],
        metrics["macro_f1"],
    )
    return Evaluation(
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"],
        per_class_f1=metrics["per_class_f1"],
        n_test=len(y_true),
        predictions_path=predictions_path,
        metrics_table=rows,
    )


@task(name="register-candidate", cache_policy=NO_CACHE, persist_result=False)
def register_task(
    prepared: PreparedData, trained: TrainResultLike, evaluation: Evaluation, cfg: AppConfig
) -> str:
    """Register the candidate as a new version tagged ``validation_status=pending``."""
    client = registry.get_client(cfg.tracking_uri)
    mv = registry.register_candidate(
        client,
        cfg.mlflow.registered_model_name,
        model_uri=trained.model_uri,
        run_id=trained.run_id,
        tags={
            "data_md5": prepared.data_md5,
            "split_hash": prepared.split_hash,
            "test_accuracy": f"{evaluation.accuracy:.6f}",
            "test_macro_f1": f"{evaluation.macro_f1:.6f}",
            "profile": cfg.profile,
        },
    )
    get_run_logger().info(
        "Registered %s version %s (pending)", cfg.mlflow.registered_model_name, mv.version
    )
    return str(mv.version)


def publish_gate(
    client: MlflowClient, run_id: str, outcome: GateOutcome, cfg: AppConfig, version: str
) -> None:
    """The decision as ``gate/decision.json`` in the run and a Prefect artifact."""
    decision = outcome.decision
    client.log_dict(run_id, _jsonable(asdict(decision)), "gate/decision.json")
    create_markdown_artifact(
        markdown=gate_markdown(decision, cfg.mlflow.registered_model_name, version),
        key="gate-decision",
        description=decision.summary()[:200],
    )
    logger = get_run_logger()
    (logger.info if decision.passed else logger.warning)("Gate %s", decision.summary())


def gate(
    client: MlflowClient,
    prepared: PreparedData,
    evaluation: Evaluation,
    candidate_version: str,
    cfg: AppConfig,
    champion: ModelVersion | None,
) -> GateOutcome:
    """:func:`src.promotion.decide`, logging where the champion's answers came from."""
    outcome = decide(client, prepared, evaluation, candidate_version, cfg.gate, champion)
    if outcome.champion_version is not None:
        get_run_logger().info(
            "Production v%s: %s", outcome.champion_version, outcome.champion_source
        )
    return outcome


@task(name="gate", cache_policy=NO_CACHE, persist_result=False)
def gate_task(
    prepared: PreparedData,
    trained: TrainResultLike,
    evaluation: Evaluation,
    candidate_version: str,
    cfg: AppConfig,
) -> GateOutcome:
    """Floors, then the comparison with Production on the same test split."""
    _use_tracking(cfg)
    client = registry.get_client(cfg.tracking_uri)
    champion = registry.current_production(client, cfg.mlflow.registered_model_name)
    outcome = gate(client, prepared, evaluation, candidate_version, cfg, champion)
    publish_gate(client, trained.run_id, outcome, cfg, candidate_version)
    return outcome


@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote_task(
    prepared: PreparedData,
    trained: TrainResultLike,
    evaluation: Evaluation,
    candidate_version: str,
    outcome: GateOutcome,
    cfg: AppConfig,
) -> dict[str, Any]:
    """Tag the verdict on the version; a passing one becomes Production (alias + stage), under
    the promotion lock and re-gated when Production moved since the gate
    (:func:`src.promotion.promote_gated`)."""
    name = cfg.mlflow.registered_model_name
    client = registry.get_client(cfg.tracking_uri)

    def publish_regate(moved_from: str | None, regated: GateOutcome) -> None:
        logger = get_run_logger()
        logger.warning(
            "Production moved from v%s to v%s since the gate; gated v%s again against it",
            moved_from or "-",
            regated.champion_version or "-",
            candidate_version,
        )
        if regated.champion_version is not None:
            logger.info("Production v%s: %s", regated.champion_version, regated.champion_source)
        publish_gate(client, trained.run_id, regated, cfg, candidate_version)
        # The model card states the gate's verdict: rewrite it before the version can serve.
        describe_version(prepared, trained, evaluation, candidate_version, regated, cfg)

    _use_tracking(cfg)  # a re-gate re-scores Production through MLflow's global URIs
    with promotion_lock(cfg):
        promotion = promote_gated(
            client,
            name,
            prepared,
            evaluation,
            candidate_version,
            outcome,
            cfg.gate,
            actor=flow_actor(),
            on_regate=publish_regate,
        )
    _publish_promotion(promotion.result, name)
    return {
        **asdict(promotion.result),
        "regated": promotion.regated,
        "champion_version": promotion.outcome.champion_version,
        "gate_passed": promotion.outcome.decision.passed,
        "gate_reasons": promotion.outcome.decision.reasons,
    }


def _publish_promotion(result: registry.PromotionResult, name: str) -> None:
    create_markdown_artifact(
        markdown=(
            f"## Promotion: {name}\n\n{result.summary()}\n\n"
            f"| | |\n|---|---|\n| candidate | v{result.version} |\n"
            f"| validation_status | {result.status} |\n| promoted | {result.promoted} |\n"
            f"| Production now | v{result.production_version or '-'} |\n"
            f"| Production before | v{result.previous_production_version or '-'} |\n"
            f"| served as | `models:/{name}@{registry.PRODUCTION_ALIAS}` |\n"
        ),
        key="promotion",
        description=result.summary(),
    )
    get_run_logger().info(result.summary())


def gate_markdown(decision: GateDecision, name: str, version: str) -> str:
    verdict = "PASSED" if decision.passed else "FAILED"
    lines = [f"## Gate {verdict}: {name} v{version}", ""]
    lines += [f"- {reason}" for reason in decision.reasons]
    lines += ["", "| detail | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in decision.details.items()]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
