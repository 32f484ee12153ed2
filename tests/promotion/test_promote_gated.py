"""The promotion is a compare-and-swap against the champion the gate compared with: when
Production moved meanwhile, the candidate is gated again against the new one first, and that
second verdict decides.

The test split's labels are a model's own answers, so the gate's verdict is known in advance:
labelled by the candidate, it passes every floor (accuracy 1.0) and is not worse than the same
model; labelled by a different model, that model is far better than the candidate."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from src import registry
from src.config.gate import GateConfig
from src.data.split import PreparedData
from src.model_io import log_classifier, log_onnx
from src.promotion import Evaluation, GateOutcome, decide, promote_gated, score_model
from tests.helpers.config import app_config, gate_config
from tests.helpers.flows import TinyStore, tiny_model

NAME = "promote-gated"
N_TEST = 40


def _labelled_by(client: MlflowClient, run_id: str, tmp_path: Path) -> Path:
    """40 fixed images labelled with run ``run_id``'s own answers."""
    images = np.random.default_rng(5).integers(0, 256, (N_TEST, 28, 28), np.uint8)
    dataset = tmp_path / f"splits-{run_id}.npz"
    np.savez(dataset, x_test=images, y_test=np.zeros(N_TEST, np.int64))
    _, answers = score_model(client, run_id, dataset)
    np.savez(dataset, x_test=images, y_test=answers)
    return dataset


def _candidate(
    tiny_store: TinyStore, tmp_path: Path, labels_run_id: str | None = None
) -> tuple[PreparedData, Evaluation]:
    client = registry.get_client(tiny_store.tracking_uri)
    dataset = _labelled_by(client, labels_run_id or tiny_store.run_id, tmp_path)
    prepared = PreparedData.from_file(dataset, data_md5="md5", split_hash="split")
    metrics, predictions = score_model(client, tiny_store.run_id, dataset)
    np.save(tmp_path / "candidate.npy", predictions)
    evaluation = Evaluation(
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["per_class_f1"],
        N_TEST,
        tmp_path / "candidate.npy",
    )
    return prepared, evaluation


def _register(tiny_store: TinyStore, name: str, model_uri: str = "", run_id: str = "") -> str:
    client = registry.get_client(tiny_store.tracking_uri)
    mv = registry.register_candidate(
        client,
        name,
        model_uri=model_uri or tiny_store.model_uri,
        run_id=run_id or tiny_store.run_id,
        tags={},
    )
    # Gate-passed, so the test can promote it by hand.
    registry.record_gate_decision(client, name, str(mv.version), passed=True, reasons=["test"])
    return str(mv.version)


def _production(client: MlflowClient, name: str) -> str | None:
    production = registry.current_production(client, name)
    return str(production.version) if production is not None else None


def _promote_gated(
    client: MlflowClient,
    name: str,
    candidate: tuple[PreparedData, Evaluation],
    version: str,
    outcome: GateOutcome,
    gate: GateConfig,
) -> tuple[registry.PromotionResult, GateOutcome, bool, list[tuple[str | None, GateOutcome]]]:
    prepared, evaluation = candidate
    regates: list[tuple[str | None, GateOutcome]] = []
    promotion = promote_gated(
        client,
        name,
        prepared,
        evaluation,
        version,
        outcome,
        gate,
        actor="test",
        on_regate=lambda moved_from, new: regates.append((moved_from, new)),
    )
    return promotion.result, promotion.outcome, promotion.regated, regates


def test_a_candidate_is_gated_again_when_production_moved(
    tiny_store: TinyStore, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    client = registry.get_client(tiny_store.tracking_uri)
    gate = app_config().gate  # the default floors (0.9): the candidate meets them (accuracy 1.0)
    first, second, candidate = (_register(tiny_store, NAME) for _ in range(3))
    registry.promote(client, NAME, first)
    prepared, evaluation = scored = _candidate(tiny_store, tmp_path)
    assert evaluation.accuracy == 1.0
    outcome = decide(
        client, prepared, evaluation, candidate, gate, client.get_model_version(NAME, first)
    )
    assert outcome.champion_version == first and outcome.decision.passed
    registry.promote(client, NAME, second)  # another run promoted after this gate

    result, final, regated, regates = _promote_gated(client, NAME, scored, candidate, outcome, gate)
    assert regated
    assert [(moved_from, new.champion_version) for moved_from, new in regates] == [(first, second)]
    assert final.champion_version == second and final.decision.passed
    assert result.previous_production_version == second
    assert result.promoted and _production(client, NAME) == candidate


def test_no_second_gate_when_production_stayed(tiny_store: TinyStore, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    client = registry.get_client(tiny_store.tracking_uri)
    gate = app_config().gate
    name = NAME + "-stayed"
    champion_version, candidate = (_register(tiny_store, name) for _ in range(2))
    registry.promote(client, name, champion_version)
    prepared, evaluation = scored = _candidate(tiny_store, tmp_path)
    outcome = decide(
        client, prepared, evaluation, candidate, gate, registry.current_production(client, name)
    )
    assert outcome.decision.passed
    result, final, regated, regates = _promote_gated(client, name, scored, candidate, outcome, gate)
    assert not regated and not regates
    assert final is outcome
    assert result.previous_production_version == champion_version
    assert result.promoted and _production(client, name) == candidate


def test_the_second_gate_s_failure_keeps_the_new_production(
    tiny_store: TinyStore, tmp_path: Path
) -> None:
    """The first gate passed (against the candidate's own model); the Production that moved in
    meanwhile is far better on this split, so the second gate fails and nothing is promoted."""
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    client = registry.get_client(tiny_store.tracking_uri)
    name = NAME + "-better"
    # Floors at 0: only the comparison with the champion decides.
    gate = gate_config(min_accuracy=0.0, min_macro_f1=0.0)
    experiment = mlflow.create_experiment(
        name, artifact_location=(tmp_path / "better-artifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment) as run:
        better = log_classifier(tiny_model(seed=1))
        log_onnx(client, run.info.run_id, tiny_model(seed=1))
    first, candidate = (_register(tiny_store, name) for _ in range(2))
    better_version = _register(tiny_store, name, better.model_uri, run.info.run_id)
    registry.promote(client, name, first)
    prepared, evaluation = scored = _candidate(tiny_store, tmp_path, run.info.run_id)
    outcome = decide(
        client, prepared, evaluation, candidate, gate, client.get_model_version(name, first)
    )
    assert outcome.decision.passed, outcome.decision.summary()
    registry.promote(client, name, better_version)

    result, final, regated, regates = _promote_gated(client, name, scored, candidate, outcome, gate)
    assert regated and [new.champion_version for _, new in regates] == [better_version]
    assert not final.decision.passed, final.decision.summary()
    assert "significantly worse" in final.decision.summary()
    assert not result.promoted and result.status == registry.FAILED
    assert _production(client, name) == better_version
