"""From a scored candidate to Production: the gate against the champion, then the promotion.

1. :func:`score_model` scores a model's ONNX graph, the file the API serves, on the test split;
   :func:`store_test_predictions` keeps the answers in the run.
2. :func:`decide` applies the gate (:mod:`src.gate`): the floors, then the comparison with the
   champion (Production) on the same test split, whose answers :func:`champion_predictions`
   reuses from its run or re-scores.
3. :func:`promote_gated` promotes a passing candidate as a compare-and-swap against the champion
   the gate compared with (:func:`src.registry.promote_candidate`); when another run promoted in
   between, the candidate is gated again against the new Production first.

Plain functions over an ``MlflowClient``: the train-flow's tasks (``flows/training_tasks.py``)
add the lock, the logs and the Prefect artifacts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from src import registry
from src.config.gate import GateConfig
from src.data.split import PreparedData
from src.gate import GateDecision, evaluate_gate

# Where the candidate's predictions on the test split are kept in its MLflow run, so a later
# challenger on the same split hash can be compared with it without re-scoring.
PREDICTIONS_ARTIFACT = "gate/test_predictions.npy"


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
    champion_source: str | None  # how the champion's answers were had (stored or re-scored)


@dataclass
class Promotion:
    result: registry.PromotionResult
    outcome: GateOutcome  # the gate that decided it (the second one when it was re-gated)
    regated: bool


def score_model(
    client: MlflowClient, run_id: str | None, dataset_path: Path, model_uri: str | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """Score a model's ONNX graph, the file the API serves, on the whole test split, in ONNX
    Runtime as the API runs it (nothing from the artifact store is unpickled). The model:
    ``model_uri`` (a registered version or logged model), else run ``run_id``'s model.

    Returns (metrics, predicted class ids); metrics: accuracy, macro_f1, per_class_f1 by name.
    """
    from src.evaluate import evaluate_classifier
    from src.model_io import MODEL_ARTIFACT_NAME, load_served_classifier

    if model_uri is None and run_id:
        model_uri = f"runs:/{run_id}/{MODEL_ARTIFACT_NAME}"
    classifier = load_served_classifier(client, model_uri, run_id)
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


def store_test_predictions(client: MlflowClient, run_id: str, predictions: np.ndarray) -> None:
    """Keep a model's test-split predictions in its run (``gate/test_predictions.npy``)."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / Path(PREDICTIONS_ARTIFACT).name
        np.save(staged, np.asarray(predictions, dtype=np.int64))
        client.log_artifact(run_id, str(staged), str(Path(PREDICTIONS_ARTIFACT).parent))


def champion_predictions(
    client: MlflowClient,
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
        _, predictions = score_model(
            client,
            champion.run_id,
            prepared.dataset_path,
            registry.model_version_uri(champion.name, str(champion.version)),
        )
    except ValueError as exc:
        raise ValueError(f"Production v{champion.version} cannot be re-scored: {exc}") from exc
    return predictions, "re-scored on this run's test split"


def decide(
    client: MlflowClient,
    prepared: PreparedData,
    evaluation: Evaluation,
    candidate_version: str,
    gate: GateConfig,
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
    decision = evaluate_gate(
        y_true, candidate, gate, champion_pred=champion_pred, champion_version=champion_version
    )
    decision.details.update(
        candidate_version=candidate_version,
        champion_predictions=champion_source,
        split_hash=prepared.split_hash,
        data_md5=prepared.data_md5,
    )
    return GateOutcome(decision, champion_version, champion_source)


def promote_gated(
    client: MlflowClient,
    name: str,
    prepared: PreparedData,
    evaluation: Evaluation,
    version: str,
    outcome: GateOutcome,
    gate: GateConfig,
    *,
    actor: str,
    on_regate: Callable[[str | None, GateOutcome], None] = lambda _moved_from, _outcome: None,
) -> Promotion:
    """Record ``outcome``'s verdict on candidate ``version`` and promote it when it passed, as a compare-and-swap against the champion the gate compared with.

    When Production is no longer that champion (another run promoted meanwhile), the candidate is
    gated again against the new Production and ``on_regate(previous champion, new outcome)`` runs
    before the swap, so every promotion is decided against the version it replaces. The caller
    holds the promotion lock."""
    now = registry.current_production(client, name)
    regated = (str(now.version) if now is not None else None) != outcome.champion_version
    if regated:
        moved_from = outcome.champion_version
        outcome = decide(client, prepared, evaluation, version, gate, now)
        on_regate(moved_from, outcome)
    result = registry.promote_candidate(
        client,
        name,
        version,
        passed=outcome.decision.passed,
        reasons=outcome.decision.reasons,
        details=outcome.decision.details,
        expected_production=outcome.champion_version,
        check_expected=True,
        actor=actor,
    )
    return Promotion(result, outcome, regated)
