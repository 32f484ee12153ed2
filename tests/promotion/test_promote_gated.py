"""The promotion is a compare-and-swap against the champion the gate compared with: when
Production moved meanwhile, the candidate is gated again against the new one first."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from src import registry
from src.data.split import PreparedData
from src.promotion import Evaluation, GateOutcome, decide, promote_gated, score_model
from tests.helpers.config import app_config
from tests.helpers.flows import TinyStore

NAME = "promote-gated"


def _candidate(tiny_store: TinyStore, tmp_path: Path) -> tuple[PreparedData, Evaluation]:
    rng = np.random.default_rng(5)
    dataset = tmp_path / "splits.npz"
    np.savez(
        dataset, x_test=rng.integers(0, 256, (40, 28, 28), np.uint8), y_test=rng.integers(0, 10, 40)
    )
    prepared = PreparedData.from_file(dataset, data_md5="md5", split_hash="split")
    client = registry.get_client(tiny_store.tracking_uri)
    metrics, predictions = score_model(client, tiny_store.run_id, dataset)
    np.save(tmp_path / "candidate.npy", predictions)
    evaluation = Evaluation(
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["per_class_f1"],
        40,
        tmp_path / "candidate.npy",
    )
    return prepared, evaluation


def _register(tiny_store: TinyStore, name: str) -> str:
    client = registry.get_client(tiny_store.tracking_uri)
    mv = registry.register_candidate(
        client, name, model_uri=tiny_store.model_uri, run_id=tiny_store.run_id, tags={}
    )
    # Gate-passed, so the test can promote it by hand.
    registry.record_gate_decision(client, name, str(mv.version), passed=True, reasons=["test"])
    return str(mv.version)


def test_a_candidate_is_gated_again_when_production_moved(
    tiny_store: TinyStore, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    client = registry.get_client(tiny_store.tracking_uri)
    gate = app_config().gate
    first, second, candidate = (_register(tiny_store, NAME) for _ in range(3))
    registry.promote(client, NAME, first)
    prepared, evaluation = _candidate(tiny_store, tmp_path)
    champion = registry.current_production(client, NAME)
    outcome = decide(client, prepared, evaluation, candidate, gate, champion)
    assert outcome.champion_version == first
    registry.promote(client, NAME, second)  # another run promoted after this gate

    regates: list[tuple[str | None, GateOutcome]] = []
    promotion = promote_gated(
        client,
        NAME,
        prepared,
        evaluation,
        candidate,
        outcome,
        gate,
        actor="test",
        on_regate=lambda moved_from, new: regates.append((moved_from, new)),
    )
    assert promotion.regated
    assert [(moved_from, new.champion_version) for moved_from, new in regates] == [(first, second)]
    assert promotion.outcome.champion_version == second
    assert promotion.result.previous_production_version == second


def test_no_second_gate_when_production_stayed(tiny_store: TinyStore, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(tiny_store.tracking_uri)
    client = registry.get_client(tiny_store.tracking_uri)
    gate = app_config().gate
    name = NAME + "-stayed"
    champion_version, candidate = (_register(tiny_store, name) for _ in range(2))
    registry.promote(client, name, champion_version)
    prepared, evaluation = _candidate(tiny_store, tmp_path)
    outcome = decide(
        client, prepared, evaluation, candidate, gate, registry.current_production(client, name)
    )
    regates: list[object] = []
    promotion = promote_gated(
        client,
        name,
        prepared,
        evaluation,
        candidate,
        outcome,
        gate,
        actor="test",
        on_regate=lambda *args: regates.append(args),
    )
    assert not promotion.regated and not regates
    assert promotion.outcome is outcome
    assert promotion.result.previous_production_version == champion_version
