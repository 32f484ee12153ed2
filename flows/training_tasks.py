"""Prefect tasks for the model half of the train-flow: train → evaluate → register → gate → promote.

The work is done by plain functions in ``src/`` (training, evaluation, :mod:`src.gate`,
:mod:`src.registry`); these tasks add logging, Prefect artifacts and the MLflow bookkeeping that
ties the steps together. None of them retries: a failed training run, a failed evaluation or a
refused promotion is not transient, and retrying would only hide it (the registry steps are
repaired by ``reconcile_production`` at the start of the next run instead).

Concurrent runs: reconcile and promotion hold :func:`flows.locks.promotion_lock`; the promotion
is a compare-and-swap against the Production version the gate compared with, and when another
run promoted in between, the candidate is gated again against the new Production first.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.locks import promotion_lock
from flows.monitoring_tasks import describe_version
from src import registry
from src.config import AppConfig
from src.data.split import PreparedData
from src.gate import GateDecision, evaluate_gate

# Where the candidate's predictions on the test split are kept in its MLflow run, so a later
# challenger on the same split hash can be compared with it without re-scoring.
PREDICTIONS_ARTIFACT = "gate/test_predictions.npy"


class TrainResultLike(Protocol):
    """What training hands over (``src.training.train.TrainResult``)."""

    @property
    def run_id(self) -> str: ...
    @property
    def model_uri(self) -> str: ...
    @property
    def metrics(self) -> dict[str, float]: ...


@dataclass
class Evaluation:
    """The logged (to-be-served) model scored on the test split."""

    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    n_test: int
    predictions_path: Path
    metrics_table: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class GateOutcome:
    decision: GateDecision
    champion_version: str | None
    champion_source: str | None


def _use_tracking(cfg: AppConfig) -> None:
    # models:/ URIs and MLflow's fluent calls go through MLflow's global tracking/registry URI.
    mlflow.set_tracking_uri(cfg.tracking_uri)
    mlflow.set_registry_uri(cfg.tracking_uri)


def score_model(
    client: Any, run_id: str | None, dataset_path: Path
) -> tuple[dict[str, Any], np.ndarray]:
    """Score run ``run_id``'s ONNX model, the file the API serves, on the whole test split, in
    ONNX Runtime as the API runs it (nothing from the artifact store is unpickled).

    Returns (metrics, predicted class ids); metrics: accuracy, macro_f1, per_class_f1 by name.
    """
    from src.evaluate import evaluate_classifier
    from src.model_io import load_served_classifier

    classifier = load_served_classifier(client, run_id)
    result = evaluate_classifier(classifier, dataset_path, split="test")
    metrics = {
        "accuracy": float(result.accuracy),
        "macro_f1": float(result.macro_f1),
        "per_class_f1": {name: float(value) for name, value in result.per_class_f1.items()},
    }
    return metrics, np.asarray(result.predictions, dtype=np.int64)


def load_test_labels(dataset_path: Path) -> np.ndarray:
    with np.load(dataset_path) as data:
        return np.asarray(data["y_test"], dtype=np.int64)


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
    metrics, predictions = score_model(client, trained.run_id, prepared.dataset_path)
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


def store_test_predictions(client: Any, run_id: str, predictions: np.ndarray) -> None:
    """Keep a model's test-split predictions in its run (``gate/test_predictions.npy``)."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / Path(PREDICTIONS_ARTIFACT).name
        np.save(staged, np.asarray(predictions, dtype=np.int64))
        client.log_artifact(run_id, str(staged), str(Path(PREDICTIONS_ARTIFACT).parent))


def champion_predictions(
    client: Any,
    champion: ModelVersion,
    prepared: PreparedData,
    n_test: int,
) -> tuple[np.ndarray, str]:
    """Production's predictions on the candidate's test split: reused from its run only when it
    was scored on the same data (md5) *and* the same split (hash), otherwise re-scored from the
    registry. The split hash alone does not do: a pixel-only data fix keeps it."""
    same_data = champion.tags.get("data_md5") == prepared.data_md5
    if same_data and champion.tags.get("split_hash") == prepared.split_hash and champion.run_id:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(champion.run_id, PREDICTIONS_ARTIFACT, tmp)
                stored = np.load(local)
            if len(stored) == n_test:
                return stored.astype(np.int64), "stored predictions (same data md5 and split hash)"
        except (MlflowException, OSError, ValueError):
            pass
    try:
        _, predictions = score_model(client, champion.run_id, prepared.dataset_path)
    except ValueError as exc:
        raise ValueError(f"Production v{champion.version} cannot be re-scored: {exc}") from exc
    return predictions, "re-scored on this run's test split"


def decide(
    client: Any,
    prepared: PreparedData,
    evaluation: Evaluation,
    candidate_version: str,
    cfg: AppConfig,
    champion: ModelVersion | None,
) -> GateOutcome:
    """Floors, then the comparison with ``champion`` (Production) on the same test split."""
    y_true = load_test_labels(prepared.dataset_path)
    candidate = np.load(evaluation.predictions_path)
    champion_pred: np.ndarray | None = None
    champion_version = champion_source = None
    if champion is not None and str(champion.version) != candidate_version:
        champion_version = str(champion.version)
        champion_pred, champion_source = champion_predictions(
            client, champion, prepared, len(y_true)
        )
        get_run_logger().info("Production v%s: %s", champion_version, champion_source)
    decision = evaluate_gate(
        y_true, candidate, cfg.gate, champion_pred=champion_pred, champion_version=champion_version
    )
    decision.details.update(
        candidate_version=candidate_version,
        champion_predictions=champion_source,
        split_hash=prepared.split_hash,
        data_md5=prepared.data_md5,
    )
    return GateOutcome(decision, champion_version, champion_source)


def publish_gate(
    client: Any, run_id: str, outcome: GateOutcome, cfg: AppConfig, version: str
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
    outcome = decide(client, prepared, evaluation, candidate_version, cfg, champion)
    publish_gate(client, trained.run_id, outcome, cfg, candidate_version)
    return outcome


def flow_actor() -> str:
    """Who changes Production from a flow: ``flow run <name> (<id>)``."""
    from prefect.runtime import flow_run

    if flow_run.id:
        return f"flow run {flow_run.name} ({flow_run.id})"
    return registry.default_actor()


@task(name="promote", cache_policy=NO_CACHE, persist_result=False)
def promote_task(
    prepared: PreparedData,
    trained: TrainResultLike,
    evaluation: Evaluation,
    candidate_version: str,
    outcome: GateOutcome,
    cfg: AppConfig,
) -> dict[str, Any]:
    """Tag the verdict on the version; a passing one becomes Production (alias + stage).

    Holding the promotion lock, Production is read again: when it is no longer the version the
    gate compared with (another run promoted meanwhile), the candidate is gated again against
    the new Production, so every promotion is decided against the version it replaces."""
    name = cfg.mlflow.registered_model_name
    client = registry.get_client(cfg.tracking_uri)
    regated = False
    with promotion_lock(cfg):
        now = registry.current_production(client, name)
        if (str(now.version) if now is not None else None) != outcome.champion_version:
            get_run_logger().warning(
                "Production moved from v%s to v%s since the gate; gating v%s again against it",
                outcome.champion_version or "-",
                now.version if now is not None else "-",
                candidate_version,
            )
            _use_tracking(cfg)
            outcome = decide(client, prepared, evaluation, candidate_version, cfg, now)
            publish_gate(client, trained.run_id, outcome, cfg, candidate_version)
            # The model card states the gate's verdict: rewrite it before the version can serve.
            describe_version(prepared, trained, evaluation, candidate_version, outcome, cfg)
            regated = True
        result = registry.promote_candidate(
            client,
            name,
            candidate_version,
            passed=outcome.decision.passed,
            reasons=outcome.decision.reasons,
            details=outcome.decision.details,
            expected_production=outcome.champion_version,
            check_expected=True,
            actor=flow_actor(),
        )
    _publish_promotion(result, name)
    return {
        **asdict(result),
        "regated": regated,
        "champion_version": outcome.champion_version,
        "gate_passed": outcome.decision.passed,
        "gate_reasons": outcome.decision.reasons,
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
