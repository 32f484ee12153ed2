"""Registry promotion on a real sqlite MLflow registry, including crashes between steps."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from src import registry
from src.model_io import load_classifier
from tests.flows.conftest import TinyStore

_names = itertools.count()


class SimulatedCrash(RuntimeError):
    pass


class CrashingClient(MlflowClient):
    """An MlflowClient that dies right before the n-th call of ``method`` (a process crash)."""

    def __init__(self, uri: str, method: str, nth: int = 1) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self._method, self._left = method, nth

    def __getattribute__(self, item: str) -> Any:
        attr = super().__getattribute__(item)
        if item == object.__getattribute__(self, "_method"):

            def crash(*args: Any, **kwargs: Any) -> Any:
                self._left -= 1
                if self._left <= 0:
                    raise SimulatedCrash(item)
                return attr(*args, **kwargs)

            return crash
        return attr


@pytest.fixture
def name() -> str:
    return f"model-{next(_names)}"


@pytest.fixture
def client(tiny_store: TinyStore) -> MlflowClient:
    return registry.get_client(tiny_store.tracking_uri)


def _candidate(client: MlflowClient, store: TinyStore, name: str, **tags: Any) -> str:
    mv = registry.register_candidate(
        client,
        name,
        model_uri=store.model_uri,
        run_id=store.run_id,
        tags={"data_md5": "abc", "split_hash": "s1", "test_accuracy": 0.93, **tags},
    )
    return str(mv.version)


def _run(client: MlflowClient, store: TinyStore, name: str, passed: bool) -> str:
    version = _candidate(client, store, name)
    registry.promote_candidate(client, name, version, passed=passed, reasons=["r"])
    return version


def _stage(client: MlflowClient, name: str, version: str) -> str:
    return str(client.get_model_version(name, version).current_stage)


def _assert_one_production(client: MlflowClient, name: str, expected: str | None) -> None:
    assert registry.production_consistent(client, name)
    production = registry.current_production(client, name)
    assert (str(production.version) if production else None) == expected
    in_stage = [
        str(mv.version)
        for mv in client.search_model_versions(f"name = '{name}'")
        if mv.current_stage == "Production"
    ]
    assert in_stage == ([expected] if expected else [])


def test_no_model_means_no_production(client: MlflowClient, name: str) -> None:
    assert registry.current_production(client, name) is None
    assert registry.reconcile_production(client, name).production_version is None


def test_candidate_is_tagged_pending_then_passed_and_promoted(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    version = _candidate(client, tiny_store, name)
    mv = client.get_model_version(name, version)
    assert mv.tags["validation_status"] == "pending"
    assert mv.tags["data_md5"] == "abc" and mv.tags["split_hash"] == "s1"
    assert mv.tags["test_accuracy"] == "0.93"
    assert mv.run_id == tiny_store.run_id
    result = registry.promote_candidate(
        client, name, version, passed=True, reasons=["accuracy ok"], details={"p": 0.5}
    )
    assert result.promoted and result.production_version == version
    mv = client.get_model_version(name, version)
    assert mv.tags["validation_status"] == "passed"
    assert mv.tags["gate_reasons"] == "accuracy ok"
    assert registry.PRODUCTION_ALIAS in mv.aliases
    _assert_one_production(client, name, version)
    # The served URI resolves to a loadable classifier.
    classifier = load_classifier(f"models:/{name}@production")
    assert len(classifier.class_names) == 10


def test_failed_candidate_is_not_promoted(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    first = _run(client, tiny_store, name, passed=True)
    second = _candidate(client, tiny_store, name)
    result = registry.promote_candidate(
        client, name, second, passed=False, reasons=["accuracy 0.5 is below the floor 0.9"]
    )
    assert not result.promoted
    assert result.production_version == first == result.previous_production_version
    mv = client.get_model_version(name, second)
    assert mv.tags["validation_status"] == "failed"
    assert "below the floor" in mv.tags["gate_reasons"]
    _assert_one_production(client, name, first)


def test_passing_candidates_archive_the_previous_one(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    versions = [_run(client, tiny_store, name, passed=True) for _ in range(3)]
    _assert_one_production(client, name, versions[-1])
    assert [_stage(client, name, v) for v in versions[:-1]] == ["Archived", "Archived"]


def test_promote_refuses_unvalidated_versions(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    version = _candidate(client, tiny_store, name)
    with pytest.raises(registry.RegistryError, match="validation_status='pending'"):
        registry.promote(client, name, version)


@pytest.mark.parametrize(
    ("method", "nth", "promoted"),
    [
        # crash after register, before any gate tag: stays pending, old Production kept
        ("set_model_version_tag", 1, False),
        # crash after the reasons tag, before the status tag
        ("set_model_version_tag", 2, False),
        # crash after "passed", before the alias moved
        ("set_registered_model_alias", 1, False),
        # crash after the alias moved, before the stage transition: the alias wins
        ("transition_model_version_stage", 1, True),
    ],
)
def test_crash_between_steps_is_repaired(
    tiny_store: TinyStore, client: MlflowClient, name: str, method: str, nth: int, promoted: bool
) -> None:
    old = _run(client, tiny_store, name, passed=True)
    crashing = CrashingClient(tiny_store.tracking_uri, method, nth)
    new = _candidate(client, tiny_store, name)
    with pytest.raises(SimulatedCrash):
        registry.promote_candidate(crashing, name, new, passed=True, reasons=["ok"])
    # The next flow run starts with a reconcile.
    registry.reconcile_production(client, name)
    _assert_one_production(client, name, new if promoted else old)
    # ... and a later successful run still works.
    newest = _run(client, tiny_store, name, passed=True)
    _assert_one_production(client, name, newest)


def test_reconcile_repairs_two_versions_in_production(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    # A half-done stage transition (or a hand edit in the UI): both in Production.
    old = _run(client, tiny_store, name, passed=True)
    new = _run(client, tiny_store, name, passed=True)
    client.transition_model_version_stage(name, old, "Production")
    assert not registry.production_consistent(client, name)
    report = registry.reconcile_production(client, name)
    assert report.production_version == new
    assert any(f"version {old} was also in Production" in a for a in report.actions)
    _assert_one_production(client, name, new)


def test_reconcile_sets_a_missing_alias(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    version = _run(client, tiny_store, name, passed=True)
    client.delete_registered_model_alias(name, registry.PRODUCTION_ALIAS)
    fallback = registry.current_production(client, name)  # found by stage
    assert fallback is not None and str(fallback.version) == version
    report = registry.reconcile_production(client, name)
    assert "alias 'production' was missing" in report.actions[0]
    _assert_one_production(client, name, version)
    assert registry.reconcile_production(client, name).actions == []


def test_random_runs_with_crashes_keep_one_production(
    client: MlflowClient, tiny_store: TinyStore, name: str
) -> None:
    rng = random.Random(7)
    steps = [
        ("set_model_version_tag", 1),
        ("set_model_version_tag", 2),
        ("set_model_version_tag", 3),
        ("set_registered_model_alias", 1),
        ("transition_model_version_stage", 1),
        ("transition_model_version_stage", 2),
        (None, 0),
        (None, 0),
    ]
    expected: str | None = None
    for _ in range(10):
        registry.reconcile_production(client, name)  # what every flow run does first
        _assert_one_production(client, name, expected)
        passed = rng.random() < 0.7
        method, nth = rng.choice(steps)
        version = _candidate(client, tiny_store, name)
        use = client if method is None else CrashingClient(tiny_store.tracking_uri, method, nth)
        try:
            registry.promote_candidate(use, name, version, passed=passed, reasons=["x"])
        except SimulatedCrash:
            alias = registry.current_production(client, name)
            expected = str(alias.version) if alias else None
        else:
            if passed:
                expected = version
    registry.reconcile_production(client, name)
    _assert_one_production(client, name, expected)
